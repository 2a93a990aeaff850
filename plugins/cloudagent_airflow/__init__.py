"""Airflow adapters for cloudagent-etl: hooks (connections -> settings), callback trigger, wait operator.

Only glue lives here; the steps themselves are in ``cloudagent_etl.pipeline`` (plain Python).
"""
