"""Development tooling for cloudagent-etl, not part of the product: ``make demo``, ``make airflow``, the
process and server helpers shared by the tests and the benchmarks, and scratch databases.

Needs the ``dev`` extra (psutil). ``cloudagent_etl`` never imports this package.
"""
