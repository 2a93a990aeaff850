"""``cloudagent-etl simulate``: run the CloudAgent simulator (flags and defaults below).

One account by default (``--user``/``--api-key``/``--campaigns``/``--seed``/``--timezone``), or several
with a repeatable ``--account USER:APIKEY[:CAMPAIGNS[:TIMEZONE]]``. The apiKey is never logged, and no
error message quotes an ``--account`` value (only its user name).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from cloudagent_etl.simulator.accounts import DEFAULT_SEED, DEFAULT_TIMEZONE, SimulatedAccount
from cloudagent_etl.simulator.server import DELIVERY_STYLES, Behaviour, SimulatorSettings, create_app

ACCOUNT_SYNTAX = "USER:APIKEY[:CAMPAIGNS[:TIMEZONE]]"
DEFAULT_USER = "demo_user"
DEFAULT_API_KEY = "demo-api-key"
#: The flags of the one default account, which --account replaces: (flag, argparse dest).
_ONE_ACCOUNT_FLAGS = (("--user", "user"), ("--api-key", "api_key"), ("--seed", "seed"))


def _campaign_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(","))


def parse_account(
    value: str, *, default_campaigns: tuple[str, ...], default_timezone: str
) -> SimulatedAccount:
    """One ``--account`` value: ``USER:APIKEY[:CAMPAIGNS[:TIMEZONE]]``.

    ``:`` separates the fields and may appear in none of them (time zone names have none), ``,`` separates
    the campaigns; so every accepted value has exactly one reading. A field left out takes the default
    (``--campaigns``, ``--timezone``); a field given empty is refused. The seed comes from the user name.
    """
    fields = value.split(":")
    if len(fields) < 2:
        raise ValueError(f"an --account value must be {ACCOUNT_SYNTAX}")
    user = fields[0]
    if len(fields) > 4:
        raise ValueError(f"--account of user {user!r}: more than 4 fields; ':' may appear in no field")
    campaigns, timezone = default_campaigns, default_timezone
    if len(fields) >= 3:
        campaigns = _campaign_names(fields[2])
        if not all(campaigns):
            raise ValueError(
                f"--account of user {user!r}: a campaign name is empty (leave CAMPAIGNS out for --campaigns)"
            )
    if len(fields) == 4:
        timezone = fields[3]
        if not timezone:
            raise ValueError(f"--account of user {user!r}: TIMEZONE is empty (leave it out for --timezone)")
    return SimulatedAccount(user, fields[1], campaigns, timezone=timezone)


def settings_from_args(args: argparse.Namespace) -> SimulatorSettings:
    """The settings the flags describe; ValueError (naming no key) when they are inconsistent."""
    behaviour = Behaviour(
        delivery=args.delivery,
        callback_delay_s=args.callback_delay_s,
        records_per_day=args.records_per_day,
        delivery_attempts=args.delivery_attempts,
        delivery_backoff_s=args.delivery_backoff_s,
    )
    campaigns = tuple(name for name in _campaign_names(args.campaigns) if name)
    account_values: list[str] = getattr(args, "account", [])
    if account_values:
        given = [flag for flag, dest in _ONE_ACCOUNT_FLAGS if hasattr(args, dest)]
        if given:
            raise ValueError(f"{', '.join(given)} describe the one default account: not with --account")
        accounts = tuple(
            parse_account(value, default_campaigns=campaigns, default_timezone=args.timezone)
            for value in account_values
        )
    else:
        user = getattr(args, "user", DEFAULT_USER)
        api_key = getattr(args, "api_key", DEFAULT_API_KEY)
        seed = getattr(args, "seed", DEFAULT_SEED)
        accounts = (SimulatedAccount(user, api_key, campaigns, seed, args.timezone),)
    return SimulatorSettings(
        accounts=accounts, rate_limit_per_minute=args.rate_limit_per_minute, behaviour=behaviour
    )


def _run_simulator(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        logging.getLogger(__name__).error("invalid simulator settings: %s", exc)
        return 2
    # httpx logs every request URL at INFO; a callback URL carries the receiver's token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger(__name__).info(
        "CloudAgent simulator on http://%s:%d with %d account(s): %s",
        args.host, args.port, len(settings.accounts),
        "; ".join(
            f"user={a.user} campaigns={','.join(a.campaigns)} timezone={a.timezone} seed={a.data_seed}"
            for a in settings.accounts
        ),
    )  # fmt: skip
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


def add_simulate_command(subparsers: Any) -> None:
    """Register ``simulate`` on the ``cloudagent-etl`` sub-command parser."""
    parser = subparsers.add_parser(
        "simulate",
        help="run a local CloudAgent stand-in (export API + callbacks)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="One CloudAgent account (--user, --api-key, --campaigns, --seed, --timezone), or several "
        f"with --account {ACCOUNT_SYNTAX}, repeated once per account.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on")
    # No argparse default: --account must be able to tell these were given (refused with it).
    parser.add_argument(
        "--user", default=argparse.SUPPRESS, help=f"the one account's userName (default: {DEFAULT_USER})"
    )
    parser.add_argument(
        "--api-key", default=argparse.SUPPRESS, help=f"the one account's apiKey (default: {DEFAULT_API_KEY})"
    )
    parser.add_argument(
        "--campaigns",
        default="A,B,C",
        help="comma-separated campaign names: the one account's, and those of an --account without CAMPAIGNS",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=argparse.SUPPRESS,
        help=f"the one account's data seed (default: {DEFAULT_SEED}); an --account's comes from its user",
    )
    parser.add_argument(
        "--timezone",
        default=DEFAULT_TIMEZONE,
        help="IANA zone of fromDate/toDate and record times: the one account's, and that of an --account "
        "without TIMEZONE",
    )
    parser.add_argument(
        "--account",
        action="append",
        default=argparse.SUPPRESS,
        metavar=ACCOUNT_SYNTAX,
        help="serve this account (repeat for several; replaces --user/--api-key/--seed). Fields are "
        "separated by ':', which no field may contain; CAMPAIGNS is comma-separated; a field left out "
        "takes --campaigns / --timezone, e.g. --account client_a:KEY_A:Sales,Support "
        "--account client_b:KEY_B:Sales:Asia/Dubai",
    )
    parser.add_argument("--records-per-day", type=int, default=200, help="leads created per campaign per day")
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
