"""cloudagent-etl: sync Ozonetel CloudAgent Campaign Dial Status data into a warehouse.

Plain Python, no Airflow import: the DAGs in ``dags/`` and the Airflow provider ``cloudagent_airflow``
are thin glue.
"""

__version__ = "0.1.0"
