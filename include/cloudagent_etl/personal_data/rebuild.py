"""Key rotation: every stored version's ``phone_e164`` and ``phone_pseudonym`` computed again.

From ``phone_number_raw`` (rows loaded before pseudonyms existed get theirs too), under the key in force,
in one transaction holding the personal-data lock. The suppression list cannot follow a new key: it holds
pseudonyms, never numbers. So a rebuild with people on it is refused unless the caller accepts that later
loads stop recognising them (``docs/personal-data.md``: keep the old key, or erase them again with the new
one from the numbers of the original requests).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, func, select, update

from cloudagent_etl.databases import database_for
from cloudagent_etl.errors import ConfigurationError
from cloudagent_etl.personal_data.phones import PseudonymKey, to_e164
from cloudagent_etl.warehouse.tables import dial_status, dial_status_superseded, suppressed_pseudonyms

#: Rows read and updated at a time.
_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class RebuildReport:
    rows: dict[str, int]
    suppressed_left_behind: int

    def summary(self) -> str:
        rows = ", ".join(f"{table}: {count}" for table, count in self.rows.items())
        return (
            f"pseudonyms rebuilt ({rows}); {self.suppressed_left_behind} suppressed pseudonyms of the old key"
        )


def rebuild_pseudonyms(
    engine: Engine, key: PseudonymKey, region: str, *, accept_unsuppressed: bool = False
) -> RebuildReport:
    database = database_for(engine)
    counts: dict[str, int] = {}
    with database.write_transaction(engine) as conn:
        database.hold_personal_data_lock(conn, exclusive=True)
        suppressed = int(conn.execute(select(func.count()).select_from(suppressed_pseudonyms)).scalar_one())
        if suppressed and not accept_unsuppressed:
            raise ConfigurationError(
                f"{suppressed} people erased on request are kept out of loads by pseudonyms of the current "
                "key; a new key would let them back in. Keep the old key, or rebuild with "
                "--accept-unsuppressed and erase them again with the new key (docs/personal-data.md)"
            )
        for table in (dial_status, dial_status_superseded):
            key_columns = [column for column in table.primary_key.columns]
            rows = conn.execute(select(*key_columns, table.c.phone_number_raw)).all()
            statement = (
                update(table)
                .where(*(column == bindparam(f"k_{column.name}") for column in key_columns))
                .values(phone_e164=bindparam("e164"), phone_pseudonym=bindparam("pseudonym"))
            )
            for first in range(0, len(rows), _BATCH_ROWS):
                params = []
                for row in rows[first : first + _BATCH_ROWS]:
                    *key_values, raw = row
                    e164 = None if raw is None else to_e164(raw, region)
                    params.append(
                        {
                            **{
                                f"k_{column.name}": value
                                for column, value in zip(key_columns, key_values, strict=True)
                            },
                            "e164": e164,
                            "pseudonym": None if e164 is None else key.pseudonym(e164),
                        }
                    )
                if params:
                    conn.execute(statement, params)
            counts[table.name] = len(rows)
    return RebuildReport(counts, suppressed)
