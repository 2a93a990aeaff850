#!/usr/bin/env bash
# Runs once, on the first start of the postgres volume: one server, separate roles and databases for
# Airflow's metadata and for the CloudAgent landing + warehouse tables.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v cloudagent_pw="$CLOUDAGENT_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE cloudagent LOGIN PASSWORD :'cloudagent_pw';
CREATE DATABASE cloudagent OWNER cloudagent;
REVOKE ALL ON DATABASE cloudagent FROM PUBLIC;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
SQL
