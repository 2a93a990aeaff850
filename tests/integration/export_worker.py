"""One OS process of the one-live-export test: request one campaign's window, at the test's go.

Run as ``python -m tests.integration.export_worker --db-url URL``; the CloudAgent connection comes from
``CLOUDAGENT_API_BASE_URL``/``_USER``/``_KEY`` (the key is never on a command line). Prints ``ready``
once set up, asks when it reads ``go`` (tests.timing.start_together), and prints the request id it ended
up with.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from cloudagent_etl import pipeline
from cloudagent_etl.api.request import ExportFilters
from cloudagent_etl.db import create_db_engine
from cloudagent_etl.exports import Export
from cloudagent_etl.settings import ApiSettings
from tests.timing import wait_for_go

WINDOW = (datetime(2026, 1, 1, 18, 30, tzinfo=UTC), datetime(2026, 1, 2, 18, 30, tzinfo=UTC))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--campaign", default="Alpha")
    args = parser.parse_args()
    engine = create_db_engine(args.db_url)
    settings = ApiSettings.from_env()
    wait_for_go()
    export = Export.of(settings, args.campaign, WINDOW, ExportFilters(), "http://127.0.0.1:9")
    request_id = pipeline.request_export(engine, settings, export)
    print(request_id, flush=True)
    engine.dispose()


if __name__ == "__main__":
    main()
