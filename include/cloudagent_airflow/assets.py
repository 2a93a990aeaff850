"""The Assets the DAGs update, so downstream DAGs can be scheduled on them."""

from __future__ import annotations

from airflow.sdk import Asset

#: The warehouse table ``dial_status`` (and its history), updated by every successful sync or reprocess.
DIAL_STATUS = Asset(name="cloudagent_dial_status", uri="cloudagent://warehouse/dial_status")
