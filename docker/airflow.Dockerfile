# The image of every Airflow service in docker-compose.yaml: Airflow 3.3.2 plus what the DAG's tasks
# need to be Spark drivers (spark-submit in client mode runs the driver inside the task): Java 17,
# pyspark and the rest of requirements.txt. The project's code (dags/, plugins/, jobs/) is mounted,
# not copied: edits show up without a rebuild.
#
# Built by `docker compose build` with the repository root as context (see docker-compose.yaml);
# airflow.Dockerfile.dockerignore beside this file keeps everything but the copied files out of it.

# Java 17 is copied from the Spark image the cluster runs (docker/spark.Dockerfile starts from the
# same tag): driver and executors run the same JDK build, and the build does not depend on which
# openjdk packages the Debian release under the Airflow image still carries.
FROM apache/spark:4.2.0-scala2.13-java17-python3-ubuntu AS spark

# Python 3.11: the version requirements.txt was resolved and tested with (numpy 2.4 needs >= 3.11),
# and the minor version docker/spark.Dockerfile installs for the executors; PySpark refuses a driver
# and executors of different minor versions. The official apache/spark image has Python 3.10 only,
# which cannot run this project, so the Spark side is brought to 3.11 rather than this side to 3.10.
# "slim": core Airflow without the bundled providers, whose pins could clash with requirements.txt,
# which adds everything this project uses (the Spark provider, psycopg2 for PostgreSQL, ...).
FROM apache/airflow:slim-3.3.2-python3.11

USER root
COPY --from=spark /opt/java/openjdk /opt/java/openjdk
ENV JAVA_HOME=/opt/java/openjdk
ENV PATH="${JAVA_HOME}/bin:${PATH}"

# The airflow-init service's setup script, and the folder of the airflow-secrets volume (a new named
# volume takes the owner and mode of the image's folder).
COPY docker/airflow-init.sh /opt/recs-docker/airflow-init.sh
RUN mkdir -p /opt/airflow/secrets \
    && chown airflow:0 /opt/airflow/secrets \
    && chmod 0770 /opt/airflow/secrets

USER airflow
COPY requirements.txt /tmp/recs-requirements.txt
# torch is the CPU build, as in the project's own environment (2.13.0+cpu satisfies torch==2.13.0).
# Naming apache-airflow==${AIRFLOW_VERSION} (set by the base image) makes pip fail rather than
# silently change Airflow if requirements.txt ever pins another version than this image's.
RUN set -eux; \
    torch_pin="$(grep -i '^torch==' /tmp/recs-requirements.txt)"; \
    pip install --no-cache-dir --no-deps --index-url https://download.pytorch.org/whl/cpu "${torch_pin}"; \
    pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/recs-requirements.txt; \
    java -version; \
    spark-submit --version
