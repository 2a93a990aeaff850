"""Alembic migrations; run them with ``cloudagent-etl migrate`` or :func:`cloudagent_etl.db.migrate`."""
