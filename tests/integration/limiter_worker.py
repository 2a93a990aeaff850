"""One OS process of the cross-process limiter test: fire ``--calls`` export requests through a RateLimiter.

Run as ``python -m tests.integration.limiter_worker --db-url URL --calls N``; the CloudAgent connection
comes from ``CLOUDAGENT_API_BASE_URL``/``_USER``/``_KEY`` (ApiSettings.from_env), so the key is never on a
command line. Prints ``ready`` once set up and starts when it reads ``go`` (tests.timing.start_together);
then one JSON line per accepted call, and one per pause the limiter asked for (when it read its clock:
between ``attempt_began`` and ``asked_at``).
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
from tests.timing import wait_for_go


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--name", default="worker")
    parser.add_argument("--campaigns", default="Alpha,Beta,Gamma")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(name)s %(message)s")

    settings = ApiSettings.from_env()
    engine = create_db_engine(args.db_url)
    attempt_began = 0.0

    def pause(seconds: float) -> None:
        nonlocal attempt_began
        asked = {"attempt_began": attempt_began, "asked_at": time.time(), "seconds": seconds}
        print(json.dumps({"worker": args.name, "pause": asked}), flush=True)
        time.sleep(seconds)
        attempt_began = time.time()

    limiter = RateLimiter(engine, settings.user_name, settings.rate_limit_per_minute, sleep=pause)
    campaigns = args.campaigns.split(",")
    with CloudAgentClient(settings, limiter=limiter) as client:
        wait_for_go()
        for call in range(args.calls):
            attempt_began = time.time()
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
