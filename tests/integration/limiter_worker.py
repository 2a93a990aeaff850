"""One OS process of the cross-process limiter test: fire ``--calls`` export requests through a RateLimiter.

Run as ``python -m tests.integration.limiter_worker --db-url URL --calls N --start-at UNIX_TIME``; the
CloudAgent connection comes from ``CLOUDAGENT_API_BASE_URL``/``_USER``/``_KEY`` (ApiSettings.from_env), so
the key is never on a command line. Prints one JSON line per accepted call.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime

from cloudagent_etl.api import CloudAgentClient, DialStatusRequest, RateLimiter
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.settings import ApiSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument(
        "--start-at", type=float, required=True, help="UNIX time at which to fire the first call"
    )
    parser.add_argument("--name", default="worker")
    parser.add_argument("--campaigns", default="Alpha,Beta,Gamma")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(name)s %(message)s")

    settings = ApiSettings.from_env()
    engine = create_db_engine(args.db_url)
    limiter = RateLimiter(engine, settings.user_name, settings.rate_limit_per_minute)
    campaigns = args.campaigns.split(",")
    with CloudAgentClient(settings, limiter=limiter) as client:
        time.sleep(max(0.0, args.start_at - time.time()))
        for call in range(args.calls):
            request = DialStatusRequest(
                campaign_name=campaigns[call % len(campaigns)],
                user_name=settings.user_name,
                from_date=datetime(2026, 1, 1, 18, 30, tzinfo=UTC),
                to_date=datetime(2026, 1, 2, 18, 29, 59, tzinfo=UTC),
                callback_url="http://127.0.0.1:9/callbacks/dial-status/limiter-test/unused",
            )
            unique_id = client.request_export(request, purpose=f"{args.name}-{call}")
            print(
                json.dumps({"worker": args.name, "call": call, "unique_id": unique_id, "at": time.time()}),
                flush=True,
            )
    engine.dispose()


if __name__ == "__main__":
    main()
