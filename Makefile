# Two commands a fresh machine needs (Python 3.11, Java 17): `make run` and `make test`.
# Everything else here is what they are made of.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SHOP := data/demo_shop

# `make run INPUT=... FORMAT=online_retail CONF='{"top_n": 5}'`
INPUT ?=
FORMAT ?=
CONF ?= {}

.PHONY: run test setup jdbc-driver native-blas class-archive browser demo-shop unit e2e lint recs similar summary rollback serve airflow-ui clean

setup: $(STAMP) jdbc-driver native-blas class-archive

# The PostgreSQL JDBC driver (Debian's package) for publishing to a database; only
# installed when missing. Elsewhere set RECS_JDBC_JARS or RECS_JDBC_PACKAGES (README).
JDBC_JAR := /usr/share/java/postgresql.jar
jdbc-driver:
	@test -f $(JDBC_JAR) || ! command -v apt-get >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpostgresql-jdbc-java) || true
	@test -f $(JDBC_JAR) || echo "note: no $(JDBC_JAR): set RECS_JDBC_JARS to publish to PostgreSQL (README)"

# A native BLAS and LAPACK for Spark MLlib (dev.ludovic.netlib): Debian's OpenBLAS built
# with threads, only installed when missing; the Spark tasks point netlib at it on
# `local[*]`, one thread per call (plugins/recs_airflow/spark_tasks.py). Its serial build
# is not safe for two tasks calling at once (wrong rows). One ALS fit at M (rank 64, two
# tasks at once): 39 s on one thread per call, 57-64 s with OpenBLAS's own threads (a
# fifth of the CPU time in the kernel), 49 s on netlib's Java fallback.
NATIVE_BLAS := ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 /usr/lib/*-linux-gnu/openblas-pthread/liblapack.so.3 >/dev/null 2>&1
native-blas:
	@($(NATIVE_BLAS)) || ! command -v apt-get >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread) || true
	@($(NATIVE_BLAS)) || echo "note: no native OpenBLAS: Spark's ALS runs slower (README)"

# A class-data-sharing archive of the classes a Spark driver loads, built once per JVM and
# pyspark version (plugins/recs_airflow/class_archive.py, about a minute): every step is a
# spark-submit of its own, and each starts seconds sooner with it (a trivial one: 12.7 s,
# 8.1 s with it). Without one the steps run as before.
class-archive: $(STAMP)
	@PYTHONPATH=plugins $(BIN)/python -m recs_airflow.class_archive

# Reinstall only when the pinned requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -c "import pyspark, airflow.providers.apache.spark; print('pyspark', pyspark.__version__)"
	touch $(STAMP)

demo-shop: setup
	test -f $(DEMO_SHOP)/products.csv || $(BIN)/python -m recs.synthetic --out $(DEMO_SHOP)

run: setup
	@if [ -z "$(INPUT)" ]; then $(MAKE) --no-print-directory demo-shop; fi
	PYTHONPATH=plugins $(BIN)/python -m recs_airflow.local_run \
		$(if $(INPUT),--input "$(INPUT)") $(if $(FORMAT),--format "$(FORMAT)") --conf '$(CONF)'

# Headless Chromium for the browser test of the pages (tests/e2e/test_serving.py): Debian's
# package, installed only when missing.
browser:
	@command -v chromium >/dev/null || ! command -v apt-get >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || true
	@command -v chromium >/dev/null || echo "note: no chromium: the browser test of the pages will fail under CI"

# Two test processes, a file each at a time: the end-to-end DAG runs wait on JVM starts
# as much as they compute.
TEST_WORKERS ?= 2
test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

unit: setup
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider -m "not e2e"

e2e: setup browser
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider -m e2e

lint: setup
	$(BIN)/ruff check .

# Look at what was published: make recs CUSTOMER=U00042 / make similar PRODUCT=P00017
# (CUSTOMER, not USER: the shell sets USER to your login name.)
CUSTOMER ?=
PRODUCT ?=
recs: setup
	@$(BIN)/python -m recs.reader user "$(CUSTOMER)"

similar: setup
	@$(BIN)/python -m recs.reader similar "$(PRODUCT)"

summary: setup
	@$(BIN)/python -m recs.reader summary

# The API and pages on http://127.0.0.1:8000 (/docs, /runs): PostgreSQL when RECS_DATABASE_URL
# is set, else the Parquet tables under RECS_DATA_ROOT (README, "Serving").
serve: setup
	$(BIN)/python -m recs.serving

# Back to the previous published version: PostgreSQL (when RECS_DATABASE_URL is set) and
# a local published/CURRENT. `python -m recs.postgres versions` lists them.
rollback: setup
	@$(BIN)/python -m recs.postgres rollback

# The Airflow UI with the DAG, on http://127.0.0.1:8080 (see README).
airflow-ui: setup
	PYTHONPATH=plugins $(BIN)/python -m recs_airflow.local_run --ui

clean:
	rm -rf .airflow dist data/runs data/published
