# The image every Airflow service, the receiver and the simulator run: the official Airflow image plus our lock.
# The project code is not baked in: dags/, plugins/ and include/ are mounted (see docker-compose.yaml).
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:0 requirements.txt /opt/cloudagent/requirements.txt
RUN pip install --no-cache-dir -r /opt/cloudagent/requirements.txt

ENV PYTHONPATH=/opt/airflow/include
