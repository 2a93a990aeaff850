"""The load's own OpenLineage facets: the CloudAgent export it read, and what the load did."""

from __future__ import annotations

from typing import Any

import attr
from openlineage.client.facet_v2 import DatasetFacet, RunFacet


@attr.define
class CloudAgentExportDatasetFacet(DatasetFacet):  # fields in camelCase, as OpenLineage facets are
    """The CloudAgent export behind an input dataset: CloudAgent's ``uniqueId`` and our request."""

    uniqueId: str | None
    requestId: str
    attempt: int
    filters: dict[str, Any]


@attr.define
class CloudAgentLoadRunFacet(RunFacet):
    """What one load of an export did: the counts the task returns (and load_runs holds per payload)."""

    requestId: str
    payloads: int
    failedPayloads: int
    rowsIn: int
    inserted: int
    updated: int
    unchanged: int
    duplicates: int
    rejected: int

    @classmethod
    def of(cls, request_id: str, counts: dict[str, Any]) -> CloudAgentLoadRunFacet:
        return cls(
            requestId=request_id,
            payloads=counts["payloads"],
            failedPayloads=counts["failed_payloads"],
            rowsIn=counts["rows_in"],
            inserted=counts["inserted"],
            updated=counts["updated"],
            unchanged=counts["unchanged"],
            duplicates=counts["duplicates"],
            rejected=counts["rejected"],
        )
