"""The ``cloudagent-etl`` command: receiver, simulate, migrate and demo helpers.

Each sub-command imports its implementation lazily so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cloudagent_etl import settings


def _cmd_migrate(args: argparse.Namespace) -> int:
    from cloudagent_etl.db import migrate

    migrate(args.database_url or settings.database_url())
    print("migrations applied")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudagent-etl", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="apply the Alembic migrations (idempotent)")
    migrate.add_argument("--database-url", default=None, help="default: CLOUDAGENT_DB_URL or the SQLite file")
    migrate.set_defaults(handler=_cmd_migrate)

    from cloudagent_etl.receiver.cli import add_receiver_command
    from cloudagent_etl.simulator.cli import add_simulate_command

    add_receiver_command(commands)
    add_simulate_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
