"""``cloudagent-etl simulate``: run the CloudAgent simulator (flags and defaults below)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from cloudagent_etl.simulator.server import DELIVERY_STYLES, Behaviour, SimulatorSettings, create_app


def _run_simulator(args: argparse.Namespace) -> int:
    import uvicorn

    campaigns = tuple(name.strip() for name in args.campaigns.split(",") if name.strip())
    try:
        behaviour = Behaviour(
            delivery=args.delivery,
            callback_delay_s=args.callback_delay_s,
            records_per_day=args.records_per_day,
            delivery_attempts=args.delivery_attempts,
            delivery_backoff_s=args.delivery_backoff_s,
        )
        settings = SimulatorSettings(
            user=args.user,
            api_key=args.api_key,
            campaigns=campaigns,
            seed=args.seed,
            rate_limit_per_minute=args.rate_limit_per_minute,
            behaviour=behaviour,
        )
    except ValueError as exc:
        logging.getLogger(__name__).error("invalid simulator settings: %s", exc)
        return 2
    # httpx logs every request URL at INFO; a callback URL carries the receiver's token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger(__name__).info(
        "CloudAgent simulator on http://%s:%d user=%s campaigns=%s seed=%d",
        args.host, args.port, args.user, ",".join(campaigns), args.seed,
    )  # fmt: skip
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


def add_simulate_command(subparsers: Any) -> None:
    """Register ``simulate`` on the ``cloudagent-etl`` sub-command parser."""
    parser = subparsers.add_parser(
        "simulate",
        help="run a local CloudAgent stand-in (export API + callbacks)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on")
    parser.add_argument("--user", default="demo_user", help="the account's userName")
    parser.add_argument("--api-key", default="demo-api-key", help="the account's apiKey")
    parser.add_argument("--campaigns", default="A,B,C", help="comma-separated campaign names")
    parser.add_argument("--seed", type=int, default=42, help="seed of the generated data")
    parser.add_argument(
        "--records-per-day", type=int, default=200, help="leads created per campaign per IST day"
    )
    parser.add_argument("--callback-delay-s", type=float, default=0.5, help="delay before posting the data")
    parser.add_argument(
        "--delivery", choices=DELIVERY_STYLES, default="json-array", help="callback body style"
    )
    parser.add_argument(
        "--rate-limit-per-minute", type=int, default=10, help="admitted requests per account per 60 s"
    )
    parser.add_argument("--delivery-attempts", type=int, default=5, help="attempts per delivery until a 2xx")
    parser.add_argument(
        "--delivery-backoff-s", type=float, default=0.5, help="wait before the 2nd attempt; doubles after"
    )
    parser.set_defaults(handler=_run_simulator)
