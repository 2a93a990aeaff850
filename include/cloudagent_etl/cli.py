"""The ``cloudagent-etl`` command (sub-commands import their implementation lazily: ``--help`` is fast)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING

from cloudagent_etl import settings

if TYPE_CHECKING:
    from cloudagent_etl.status import BackfillCommand


DESCRIPTION = """\
Ozonetel CloudAgent dial status -> warehouse: check the settings, see what is synced and what is missing,
and run the pieces outside Airflow (the callback receiver, the simulator).

The warehouse is CLOUDAGENT_DB_URL (or --database-url); without it, the SQLite file data/cloudagent.db
under the current folder (CLOUDAGENT_DATA_DIR). The local stack (make airflow) prints the URL it uses.
"""


def _cmd_migrate(args: argparse.Namespace) -> int:
    from cloudagent_etl.db import migrate

    migrate(args.database_url or settings.database_url())
    print("migrations applied")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from cloudagent_etl.preflight import checks_from_env

    checks = checks_from_env(database_url=args.database_url)
    for check in checks:
        print(check.line())
    failed = sum(1 for check in checks if not check.ok)
    print(f"{failed} problem(s) found" if failed else "every check passed")
    return 1 if failed else 0


def data_dictionary_markdown() -> str:
    """The warehouse data dictionary as markdown tables (the README embeds this output verbatim)."""
    from cloudagent_etl.warehouse.tables import DATA_DICTIONARY

    sections = []
    for table, columns in DATA_DICTIONARY.items():
        rows = "\n".join(f"| `{name}` | {meaning} |" for name, meaning in columns.items())
        sections.append(f"#### `{table}`\n\n| column | meaning |\n|---|---|\n{rows}\n")
    return "\n".join(sections)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from cloudagent_etl.db import create_db_engine
    from cloudagent_etl.pipeline import sweep

    engine = create_db_engine(args.database_url or settings.database_url())
    try:
        report = sweep(engine)
    finally:
        engine.dispose()
    print(report.summary())
    for request_id in report.expired:
        print(f"  expired  {request_id}")
    for request_id, counts in report.loaded.items():
        print(f"  loaded   {request_id}: {counts['rows_in']} records, {counts['inserted']} new rows")
    for request_id, error in report.failed.items():
        print(f"  failed   {request_id}: {error}")
    return 1 if report.failed else 0


def _cmd_status(args: argparse.Namespace) -> int:
    import os

    from cloudagent_etl.accounts import parse_accounts, parse_campaigns
    from cloudagent_etl.db import create_db_engine
    from cloudagent_etl.status import format_report, status_report

    accounts: dict[str, list[str]] = {}
    if value := args.accounts if args.accounts is not None else os.environ.get("CLOUDAGENT_ACCOUNTS"):
        accounts = parse_accounts(value, setting="--accounts / CLOUDAGENT_ACCOUNTS")
    elif value := args.campaigns if args.campaigns is not None else os.environ.get("CLOUDAGENT_CAMPAIGNS"):
        accounts = {settings.DEFAULT_CONNECTION: parse_campaigns(value)}
    from cloudagent_etl.targets import sync_start_from_env

    sync_start = sync_start_from_env(os.environ)
    url = args.database_url or settings.database_url()
    if (problem := _unreadable(url, args.database_url)) is not None:
        print(problem, file=sys.stderr)
        return 1
    engine = create_db_engine(url)
    try:
        report = status_report(
            engine, days=args.days, until=args.until, accounts=accounts, sync_start=sync_start
        )
    finally:
        engine.dispose()
    print(format_report(report, _backfill_command()), end="")
    return 0


def _unreadable(url: str, given: str | None) -> str | None:
    """One line when there is no migrated warehouse at ``url`` to read (nothing is created), else None."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.engine import make_url

    from cloudagent_etl.db import create_db_engine, database_missing, head_revision, to_sqlalchemy_url

    setting = "--database-url" if given else "CLOUDAGENT_DB_URL"
    shown = make_url(to_sqlalchemy_url(url)).render_as_string(hide_password=True)
    advice = (
        f"set {setting} to the warehouse (the local stack prints its URL: make airflow-status), "
        "or create it with `cloudagent-etl migrate`"
    )
    if missing := database_missing(url):
        return f"no warehouse at {shown} ({missing}): {advice}"
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:  # any driver error: the URL, the server, the credentials
        return f"the warehouse at {shown} does not answer ({type(exc).__name__}): check {setting}"
    finally:
        engine.dispose()
    if current != head_revision():
        state = "not migrated" if current is None else f"at revision {current}"
        return f"the warehouse at {shown} is {state}: {advice}"
    return None


def _backfill_command() -> BackfillCommand | None:
    """How this installation's orchestrator starts a backfill: the renderer an installed package declares in
    the entry point group ``cloudagent_etl.backfill_commands`` (the Airflow provider does), if any."""
    from importlib.metadata import entry_points

    found = sorted(entry_points(group="cloudagent_etl.backfill_commands"), key=lambda entry: entry.name)
    return found[0].load() if found else None


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of days, at least 1: {value!r}")
    return int(value)


def _cmd_erase(args: argparse.Namespace) -> int:
    from cloudagent_etl.db import create_db_engine
    from cloudagent_etl.errors import ConfigurationError
    from cloudagent_etl.personal_data.erasure import erase
    from cloudagent_etl.personal_data.phones import PseudonymKey, phone_region

    try:
        key, region = PseudonymKey.from_env(), phone_region()
        engine = create_db_engine(args.database_url or settings.database_url())
        try:
            report = erase(
                engine,
                args.phone,
                key=key,
                region=region,
                requested_by=args.requested_by,
                reason=args.reason,
                dry_run=args.dry_run,
            )
        finally:
            engine.dispose()
    except ConfigurationError as exc:  # a number that cannot be read, or no key: nothing was changed
        print(f"cloudagent-etl erase: {exc}", file=sys.stderr)
        return 2
    print(f"pseudonym {report.phone_pseudonym}: {report.summary()}")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from cloudagent_etl.db import create_db_engine
    from cloudagent_etl.personal_data.retention import RetentionSettings, purge

    retention = RetentionSettings.from_env()
    engine = create_db_engine(args.database_url or settings.database_url())
    try:
        report = purge(engine, retention, now=datetime.now(UTC), dry_run=args.dry_run)
    finally:
        engine.dispose()
    print(report.summary())
    return 0


def _cmd_pseudonyms(args: argparse.Namespace) -> int:
    from cloudagent_etl.db import create_db_engine
    from cloudagent_etl.errors import ConfigurationError
    from cloudagent_etl.personal_data.phones import PseudonymKey, phone_region
    from cloudagent_etl.personal_data.rebuild import rebuild_pseudonyms

    engine = create_db_engine(args.database_url or settings.database_url())
    try:
        report = rebuild_pseudonyms(
            engine, PseudonymKey.from_env(), phone_region(), accept_unsuppressed=args.accept_unsuppressed
        )
    except ConfigurationError as exc:
        print(f"cloudagent-etl pseudonyms rebuild: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(report.summary())
    return 0


def _cmd_analyst_fields(args: argparse.Namespace) -> int:
    from cloudagent_etl.db import create_db_engine
    from cloudagent_etl.personal_data.analyst import analyst_fields, create_analyst_views

    fields = analyst_fields()
    engine = create_db_engine(args.database_url or settings.database_url())
    try:
        with engine.begin() as conn:
            create_analyst_views(conn, fields)
    finally:
        engine.dispose()
    print(f"analyst views made with the custom fields: {', '.join(fields) or '(none)'}")
    return 0


def _cmd_data_dictionary(_args: argparse.Namespace) -> int:
    print(data_dictionary_markdown(), end="")
    return 0


def _cmd_dbt_docs(args: argparse.Namespace) -> int:
    from cloudagent_etl import analytics

    project = analytics.project_dir()
    if args.write:
        written = analytics.write_generated_files(project)
        print("\n".join(f"wrote {project / name}" for name in written) or "already up to date")
        return 0
    drifted = analytics.drifted_files(project)
    for name in drifted:
        print(f"{project / name} differs from the data dictionary: run `make dbt-docs`")
    return 1 if drifted else 0


def _cmd_dbt(args: argparse.Namespace) -> int:
    from cloudagent_etl import analytics

    try:
        done = analytics.run_dbt(args.dbt_args, args.database_url or settings.database_url())
    except analytics.DbtError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(done.stdout, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudagent-etl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="apply the Alembic migrations (idempotent)")
    migrate.add_argument("--database-url", default=None, help="default: CLOUDAGENT_DB_URL or the SQLite file")
    migrate.set_defaults(handler=_cmd_migrate)

    doctor = commands.add_parser(
        "doctor",
        help="check the settings (account, database, callback URL, campaigns) as a run's preflight does, and "
        "ask CloudAgent whether it accepts each account and campaign (no export; "
        "CLOUDAGENT_ACCOUNT_CHECK=off to skip)",
    )
    doctor.add_argument("--database-url", default=None, help="default: CLOUDAGENT_DB_URL or the SQLite file")
    doctor.set_defaults(handler=_cmd_doctor)

    sweeper = commands.add_parser(
        "sweep", help="expire requests past their callback deadline and load payloads left behind"
    )
    sweeper.add_argument("--database-url", default=None, help="default: CLOUDAGENT_DB_URL or the SQLite file")
    sweeper.set_defaults(handler=_cmd_sweep)

    status = commands.add_parser(
        "status",
        help="print the coverage grid (campaign x IST day), the loads, what is missing and how to backfill "
        "it, and the rejects by reason",
    )
    status.add_argument("--days", type=_positive, default=7, help="days to show (default 7)")
    status.add_argument(
        "--until", type=_day, default=None, help="last IST day to show (default: the last complete one)"
    )
    status.add_argument(
        "--accounts",
        default=None,
        help="accounts and campaigns that should be there: a JSON object, connection id -> campaigns "
        "(default CLOUDAGENT_ACCOUNTS); campaigns with requests in the range are shown anyway",
    )
    status.add_argument(
        "--campaigns",
        default=None,
        help="with one account (cloudagent_default): its campaigns that should be there (JSON list or "
        "comma-separated; default CLOUDAGENT_CAMPAIGNS)",
    )
    status.add_argument("--database-url", default=None, help="default: CLOUDAGENT_DB_URL or the SQLite file")
    status.set_defaults(handler=_cmd_status)

    dictionary = commands.add_parser("data-dictionary", help="print the warehouse data dictionary (markdown)")
    dictionary.set_defaults(handler=_cmd_data_dictionary)

    dbt_docs = commands.add_parser(
        "dbt-docs",
        help="check (default) or --write the dbt project's files generated from the data dictionary",
    )
    dbt_docs.add_argument("--write", action="store_true", help="rewrite the files that differ")
    dbt_docs.set_defaults(handler=_cmd_dbt_docs)

    dbt = commands.add_parser(
        "dbt",
        help="run dbt (its own venv: make dbt-venv) on the PostgreSQL warehouse: `cloudagent-etl dbt build`",
    )
    dbt.add_argument("--database-url", default=None, help="default: CLOUDAGENT_DB_URL")
    dbt.add_argument("dbt_args", nargs=argparse.REMAINDER, help="dbt's own command and options")
    dbt.set_defaults(handler=_cmd_dbt)

    _add_personal_data_commands(commands)

    from cloudagent_etl.receiver.cli import add_receiver_command
    from cloudagent_etl.simulator.cli import add_simulate_command

    add_receiver_command(commands)
    add_simulate_command(commands)
    return parser


def _add_personal_data_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    database_help = "default: CLOUDAGENT_DB_URL or the SQLite file"
    eraser = commands.add_parser(
        "erase",
        help="erase one person, by phone number, from raw bodies, dial_status, history and rejects, and keep "
        "them out of later loads (CLOUDAGENT_PSEUDONYM_KEY)",
    )
    eraser.add_argument(
        "--phone", required=True, help="the number in any common writing: +91 98765 43210, ..."
    )
    eraser.add_argument("--dry-run", action="store_true", help="print what would be removed; change nothing")
    eraser.add_argument("--reason", default=None, help="why (kept in the receipt), e.g. the request's ticket")
    eraser.add_argument("--requested-by", default=None, help="who asked (kept in the receipt)")
    eraser.add_argument("--database-url", default=None, help=database_help)
    eraser.set_defaults(handler=_cmd_erase)

    purger = commands.add_parser(
        "purge",
        help="purge raw bodies and rejects' raw records older than CLOUDAGENT_RAW_RETENTION_DAYS (and "
        "superseded versions older than CLOUDAGENT_HISTORY_RETENTION_DAYS, when set)",
    )
    purger.add_argument("--dry-run", action="store_true", help="print what would be purged; change nothing")
    purger.add_argument("--database-url", default=None, help=database_help)
    purger.set_defaults(handler=_cmd_purge)

    pseudonyms = commands.add_parser("pseudonyms", help="pseudonym maintenance")
    actions = pseudonyms.add_subparsers(dest="action", required=True)
    rebuild = actions.add_parser(
        "rebuild", help="compute every stored pseudonym again under today's key (after a key rotation)"
    )
    rebuild.add_argument(
        "--accept-unsuppressed",
        action="store_true",
        help="rebuild although people erased under the old key will no longer be recognised by loads",
    )
    rebuild.add_argument("--database-url", default=None, help=database_help)
    rebuild.set_defaults(handler=_cmd_pseudonyms)

    fields = commands.add_parser(
        "analyst-fields", help="make the analyst views again with the allow-list CLOUDAGENT_ANALYST_FIELDS"
    )
    fields.add_argument("--database-url", default=None, help=database_help)
    fields.set_defaults(handler=_cmd_analyst_fields)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
