# The image every Airflow service, the receiver and the simulator run: the official Airflow image plus this
# project installed as a package (cloudagent_etl, and the provider cloudagent_airflow that Airflow finds
# through its entry point). Only dags/ is mounted (see docker-compose.yaml), as a git-sync would provide it.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:0 requirements.txt /opt/cloudagent/requirements.txt
RUN pip install --no-cache-dir -r /opt/cloudagent/requirements.txt

COPY --chown=airflow:0 pyproject.toml README.md /opt/cloudagent/
COPY --chown=airflow:0 include /opt/cloudagent/include
RUN pip install --no-cache-dir --no-deps /opt/cloudagent

# dbt, for the analytics DAG, in a venv of its own (its dependencies never meet Airflow's), and the project.
COPY --chown=airflow:0 requirements-dbt.txt /opt/cloudagent/requirements-dbt.txt
RUN python -m venv /home/airflow/.venv-dbt \
    && /home/airflow/.venv-dbt/bin/pip install --no-cache-dir -r /opt/cloudagent/requirements-dbt.txt
COPY --chown=airflow:0 dbt /opt/cloudagent/dbt
ENV CLOUDAGENT_DBT_PROJECT_DIR=/opt/cloudagent/dbt \
    CLOUDAGENT_DBT_EXECUTABLE=/home/airflow/.venv-dbt/bin/dbt
