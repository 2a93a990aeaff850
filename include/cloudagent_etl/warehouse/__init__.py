"""The warehouse: its tables (:mod:`.tables`), the merge of a payload into them (:mod:`.load`) and what they
say about loads (:mod:`.reads`). It never reads or writes the landing tables: the pipeline hands it a
payload's body and records the outcome in ``landing``."""

from cloudagent_etl.warehouse.load import (
    MERGE_SPEC,
    LoadCounts,
    PayloadToLoad,
    merge_batches,
    merge_payload,
    record_failed_load,
    renumber_rejects,
    suppressed_pseudonyms,
)
from cloudagent_etl.warehouse.reads import (
    DayRate,
    RejectCount,
    answer_rates,
    key_problems,
    load_counts_by_request,
    reject_counts,
)

__all__ = [
    "MERGE_SPEC",
    "DayRate",
    "LoadCounts",
    "PayloadToLoad",
    "RejectCount",
    "answer_rates",
    "key_problems",
    "load_counts_by_request",
    "merge_batches",
    "merge_payload",
    "record_failed_load",
    "reject_counts",
    "renumber_rejects",
    "suppressed_pseudonyms",
]
