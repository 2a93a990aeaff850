"""One OS process of the one-live-export test: request one campaign's window, at a given instant.

Run as ``python -m tests.integration.export_worker --db-url URL --start-at UNIX_TIME``; the CloudAgent
connection comes from ``CLOUDAGENT_API_BASE_URL``/``_USER``/``_KEY`` (the key is never on a command line).
Prints the request id it ended up with.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from cloudagent_etl import pipeline
from cloudagent_etl.api.request import ExportFilters
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.exports import Export
from cloudagent_etl.settings import ApiSettings

WINDOW = (datetime(2026, 1, 1, 18, 30, tzinfo=UTC), datetime(2026, 1, 2, 18, 30, tzinfo=UTC))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--start-at", type=float, required=True, help="UNIX time at which to ask")
    parser.add_argument("--campaign", default="Alpha")
    args = parser.parse_args()
    engine = create_db_engine(args.db_url)
    settings = ApiSettings.from_env()
    time.sleep(max(0.0, args.start_at - time.time()))
    export = Export.of(settings, args.campaign, WINDOW, ExportFilters(), "http://127.0.0.1:9")
    request_id = pipeline.request_export(engine, settings, export)
    print(request_id, flush=True)
    engine.dispose()


if __name__ == "__main__":
    main()
