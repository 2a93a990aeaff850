"""The erasure and retention DAGs under ``dag.test()``, after a real nightly run (simulator and receiver as
real processes), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from cloudagent_etl.personal_data.phones import PseudonymKey
from cloudagent_etl.warehouse.tables import dial_status, dial_status_history, erasure_receipts, load_runs
from tests.checks import LOGICAL_DATE, Sync

pytestmark = pytest.mark.usefixtures("airflow_home")


def test_the_erasure_dag_erases_a_person_and_the_next_run_keeps_them_out(sync: Sync) -> None:
    state, _ = sync.run(campaigns=["Alpha"])
    assert state == "success"
    with sync.engine.connect() as conn:
        e164 = conn.execute(
            select(dial_status.c.phone_e164).where(dial_status.c.phone_e164.is_not(None)).limit(1)
        ).scalar_one()
    pseudonym = PseudonymKey.from_env().pseudonym(e164)
    national = "0" + e164[3:8] + "-" + e164[8:]  # as a person would give it: 098765-43210

    later = LOGICAL_DATE + timedelta(hours=1)
    state, tis = sync.run("cloudagent_erasure", logical_date=later, phone=national, reason="ticket 7",
                          requested_by="dpo", dry_run=False)  # fmt: skip

    assert state == "success", {key: ti.state for key, ti in tis.items()}
    with sync.engine.connect() as conn:
        left = conn.execute(
            select(func.count())
            .select_from(dial_status_history)
            .where(dial_status_history.c.phone_e164 == e164)
        ).scalar_one()
        receipt = conn.execute(select(erasure_receipts.c.phone_pseudonym, erasure_receipts.c.reason)).one()
    assert left == 0
    assert tuple(receipt) == (pseudonym, "ticket 7")

    # The same window again: the simulator sends the person again, the load keeps them out.
    state, _ = sync.run(campaigns=["Alpha"], logical_date=LOGICAL_DATE)
    assert state == "success"
    with sync.engine.connect() as conn:
        back = conn.execute(
            select(func.count())
            .select_from(dial_status_history)
            .where(dial_status_history.c.phone_pseudonym == pseudonym)
        ).scalar_one()
        erased = conn.execute(select(func.sum(load_runs.c.erased))).scalar_one()
    assert back == 0
    assert erased >= 1


def test_the_retention_dag_dry_run_counts_and_changes_nothing(sync: Sync) -> None:
    state, _ = sync.run(campaigns=["Alpha"])
    assert state == "success"
    before = sync.warehouse()

    state, tis = sync.run("cloudagent_retention", dry_run=True)

    assert state == "success", {key: ti.state for key, ti in tis.items()}
    summary = tis[("purge", -1)].xcom_pull(task_ids="purge")["summary"]
    assert summary.startswith("would purge 0 raw bodies")  # nothing is 30 days old yet
    assert sync.warehouse() == before
