# cloudagent-etl: every command a developer or CI needs. `make install` is idempotent and fast (uv).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PY      = $(BIN)/python
STAMP   = $(VENV)/.installed

.PHONY: install lock wheel dbt-venv lock-dbt dbt-docs dbt-build test test-distributed lint format demo airflow airflow-stop airflow-status bench bench-peer bench-receiver clean

install: $(STAMP)

# Reinstall when the lock or the package metadata changes. uv is a pip package; pip is the fallback.
# Installed packages are compiled to bytecode as pip does (uv does not by default): a process that may not
# write bytecode (PYTHONDONTWRITEBYTECODE) would otherwise compile every module it imports from source,
# each time (importing pandas 1.5 s instead of 0.4 s, airflow.sdk 3.6 s instead of 1.6 s).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if $(PY) -m pip install -q uv; then \
		$(BIN)/uv pip install -q --compile-bytecode --python $(PY) -r requirements.txt && \
		$(BIN)/uv pip install -q --python $(PY) --no-deps -e . ; \
	else \
		$(PY) -m pip install -q -r requirements.txt && \
		$(PY) -m pip install -q --no-deps -e . ; \
	fi
	# The editable build leaves its metadata in include/, which is on sys.path: Python would find the
	# distribution twice (and Airflow would report its plugin as registered twice).
	rm -rf include/cloudagent_etl.egg-info
	touch $(STAMP)

# Recompile the full pinned lock from the direct dependencies in requirements.in.
lock:
	$(BIN)/uv pip compile requirements.in -o requirements.txt --python-version 3.11

# The production artifact: dist/cloudagent_etl-<version>-py3-none-any.whl (and the sdist). The build's
# by-products in the tree (build/, include/*.egg-info) are removed: include/ is on sys.path.
wheel: install
	rm -rf dist
	$(BIN)/uv build -q -o dist .
	rm -rf build include/*.egg-info

# dbt (the analyst models in dbt/) lives in its own venv: its dependencies never meet Airflow's pins.
# Idempotent and fast like `make install`: rebuilt only when requirements-dbt.txt changes.
DBT_VENV  = .venv-dbt
DBT_STAMP = $(DBT_VENV)/.installed
dbt-venv: $(DBT_STAMP)

$(DBT_STAMP): requirements-dbt.txt $(STAMP)
	test -x $(DBT_VENV)/bin/python || $(BIN)/uv venv -q --python $(PY) $(DBT_VENV)
	$(BIN)/uv pip install -q --compile-bytecode --python $(DBT_VENV)/bin/python -r requirements-dbt.txt
	touch $(DBT_STAMP)

lock-dbt: install
	$(BIN)/uv pip compile requirements-dbt.in -o requirements-dbt.txt --python-version 3.11

# Rewrite dbt/'s generated files (sources, staging columns, doc blocks) from the data dictionary.
dbt-docs: install
	$(PY) -m cloudagent_etl.cli dbt-docs --write

# Build the models and run their tests on the warehouse of CLOUDAGENT_DB_URL (PostgreSQL).
dbt-build: install dbt-venv
	$(PY) -m cloudagent_etl.cli dbt build

# Tests run in parallel: most of the suite waits on servers, callbacks and the limiter, so more workers
# than cores pay. Slow tests start first and each worker takes one test at a time (the longest never
# start last); the ten slowest are listed at the end.
# The distributed test (a backfill on CeleryExecutor, several minutes of rate limit) runs alone:
# `make test-distributed`.
TEST_WORKERS ?= 4
test: install dbt-venv
	$(BIN)/pytest -n $(TEST_WORKERS) --dist load --maxschedchunk 1 --durations=10 -m "not distributed"

test-distributed: install
	$(BIN)/pytest -m distributed -s --durations=0 tests/integration/test_distributed.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: install
	$(PY) -m cloudagent_dev.demo

# The local stack without Docker (Airflow api-server/scheduler/dag-processor/triggerer, receiver, simulator),
# detached on loopback under $CLOUDAGENT_LOCALSTACK_DIR (default data/airflow-local). `make airflow-stop`
# stops exactly what it started; stop and status in a folder without a stack name the stacks running
# elsewhere and the command that stops each (exit codes: `python -m cloudagent_dev.localstack --help`).
# `make airflow EXECUTOR=celery WORKERS=3`: CeleryExecutor with N workers (Redis as broker, PostgreSQL
# metadata required: CLOUDAGENT_AIRFLOW_DB_URL); see "Scaling out" in the README.
# `make airflow ACCOUNTS=2`: two simulated CloudAgent accounts side by side (CLOUDAGENT_LOCALSTACK_ACCOUNTS).
airflow: install
	$(if $(EXECUTOR),CLOUDAGENT_EXECUTOR=$(EXECUTOR)) $(if $(WORKERS),CLOUDAGENT_WORKERS=$(WORKERS)) \
		$(if $(ACCOUNTS),CLOUDAGENT_LOCALSTACK_ACCOUNTS=$(ACCOUNTS)) $(PY) -m cloudagent_dev.localstack start

airflow-stop:
	$(PY) -m cloudagent_dev.localstack stop

airflow-status:
	$(PY) -m cloudagent_dev.localstack status

# `make bench LARGE_RECORDS=0` leaves out the 10M-record loads of --scaling (tens of GB of disk, 30-40 min).
LARGE_RECORDS ?= 10000000
bench: install
	$(PY) -m benchmarks.bench_load
	$(PY) -m benchmarks.bench_load --scaling --large-records $(LARGE_RECORDS)

# The load against its peer, dlt's fastest merge path: dlt (the `bench` extra) goes into its own venv,
# never into the one CI and the tests use.
PEER_VENV = .venv-peer
bench-peer: install
	test -x $(PEER_VENV)/bin/python || $(BIN)/uv venv -q --python $(PY) $(PEER_VENV)
	$(BIN)/uv pip install -q --compile-bytecode --python $(PEER_VENV)/bin/python -e ".[bench,dev]"
	# As in install: the editable build's metadata in include/ would make the distribution found twice.
	rm -rf include/cloudagent_etl.egg-info
	$(PEER_VENV)/bin/python -m benchmarks.bench_load --peer

bench-receiver: install
	$(PY) -m benchmarks.bench_receiver

clean:
	rm -rf $(VENV) $(PEER_VENV) $(DBT_VENV) dbt/target dbt/logs data dist build .pytest_cache .mypy_cache .ruff_cache
