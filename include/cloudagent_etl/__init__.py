"""cloudagent-etl: sync Ozonetel CloudAgent Campaign Dial Status data into a warehouse.

Plain Python, no Airflow import: the DAGs in ``dags/`` and the adapters in ``plugins/`` are thin glue.
"""

__version__ = "0.1.0"
