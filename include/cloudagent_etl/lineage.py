"""What a load read and wrote, named as OpenLineage names datasets (the Airflow side turns these into events).

Input: the CloudAgent export, in the namespace of the account's API host (``cloudagent://<host>``), named
``<account>/<campaign>/<window start>/<window end>`` with CloudAgent's ``uniqueId`` in a facet. Outputs:
the warehouse tables the load writes, as OpenLineage's naming spec names them: on PostgreSQL namespace
``postgres://<host>:<port>``, name ``<database>.<schema>.<table>``. The spec has no SQLite entry; by its
general rule (namespace = the data source, name = the dataset) a SQLite table is ``sqlite://<file path>`` +
``<table>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine

from cloudagent_etl.databases import database_for
from cloudagent_etl.landing import ExportRequest

#: The warehouse tables a load writes (``dial_status_superseded`` through the trigger on ``dial_status``).
WRITTEN_TABLES = ("dial_status", "dial_status_superseded", "dial_status_rejects", "load_runs")


@dataclass(frozen=True)
class Dataset:
    """One OpenLineage dataset: namespace, name, and facets as plain values."""

    namespace: str
    name: str
    facets: dict[str, Any] = field(default_factory=dict)


def export_dataset(request: ExportRequest, api_base_url: str) -> Dataset:
    """The CloudAgent export a request asked for (a re-request names the same window)."""
    host = urlsplit(api_base_url).hostname or "unknown-host"
    window = f"{request.window_start.isoformat()}/{request.window_end.isoformat()}"
    return Dataset(
        namespace=f"cloudagent://{host}",
        name=f"{request.account}/{request.campaign_name}/{window}",
        facets={
            "uniqueId": request.unique_id,
            "requestId": request.request_id,
            "attempt": request.attempt,
            "filters": dict(request.filters),
        },
    )


def warehouse_datasets(engine: Engine) -> list[Dataset]:
    """The tables a load writes, named as OpenLineage names tables of this database."""
    namespace, names = database_for(engine).lineage_names(engine, WRITTEN_TABLES)
    return [Dataset(namespace, name) for name in names]
