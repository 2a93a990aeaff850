"""The warehouse: its tables (:mod:`.tables`) and the load that merges rows into them (:mod:`.load`)."""

from cloudagent_etl.warehouse.load import LoadResult, load_payload, load_payloads, merge_batches

__all__ = ["LoadResult", "load_payload", "load_payloads", "merge_batches"]
