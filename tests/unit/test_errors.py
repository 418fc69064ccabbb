"""Secrets never reach a message: malformed database URLs, query-string secrets, the one-line
error records a failed step leaves, and the Airflow task that raises them."""

from __future__ import annotations

import json
import time

import pytest

from recs import errors, postgres

# A password as a user types it, unencoded: a URL parser cuts it at '/', '#' and '?'.
PASSWORD = "s3cr/etX#paZ?ssQ@w0rd9"
URL = f"postgresql://shop:{PASSWORD}@db.example:6543/recs?sslmode=require&sslpassword=keyphrase42"


def test_an_unencoded_password_stays_whole_and_out_of_every_printed_form():
    database = postgres.Database.from_url(URL)
    assert (database.user, database.password, database.host, database.port, database.dbname) == (
        "shop", PASSWORD, "db.example", 6543, "recs")
    for shown in (database.redacted_url, database.jdbc_url, repr(database), str(database)):
        for fragment in ("s3cr", "etX#paZ", "paZ?ssQ", "w0rd9", "keyphrase42"):
            assert fragment not in shown, (fragment, shown)
    assert database.redacted_url == "postgresql://shop:***@db.example:6543/recs?sslmode=require&sslpassword=***"
    # The secret query value reaches the JDBC driver as a property, not in the URL.
    assert database.jdbc_options()["sslpassword"] == "keyphrase42" and "sslmode=require" in database.jdbc_url


def test_a_url_that_cannot_be_read_is_refused_without_quoting_it():
    for bad in ("postgresql://shop:s3cret@db.example:s3cr/et/recs", "mysql://shop:s3cret@db/recs"):
        with pytest.raises(postgres.DatabaseError) as caught:
            postgres.Database.from_url(bad)
        assert "s3cr" not in str(caught.value)


def test_the_one_line_error_masks_every_fragment_of_the_secrets():
    environ = {"RECS_DATABASE_URL": URL, "OPENAI_API_KEY": "sk-test-0123456789"}
    # What a naive URL parser (or a driver) says about this URL, in a multi-line traceback.
    message = ("Port could not be cast to integer value as 's3cr'\nTraceback ...\n"
               f"connecting to etX#paZ?ssQ@w0rd9 with {URL} and sk-test-0123456789")
    line = errors.one_line(message, environ)
    assert line == "Port could not be cast to integer value as '***'"
    full = errors.redact(message.replace("\n", " "), environ)
    for fragment in ("s3cr", "etX", "paZ", "w0rd9", "keyphrase42", "sk-test-0123456789", PASSWORD):
        assert fragment not in full, fragment
    record = errors.error_record("publish", RuntimeError(f"failed on {URL}"), environ=environ)
    assert record == {"step": "publish", "error": f"failed on {errors.redact(URL, environ)}",
                      "final": False}
    assert "keyphrase42" not in record["error"] and "s3cr" not in record["error"]
    assert errors.error_record("publish", errors.FinalError("refusing to publish run r"), environ={})["final"]
    # A Java exception through py4j: its first line alone says nothing.
    java = "An error occurred while calling o187.parquet.\n: java.io.FileNotFoundException: File x does not exist\n\tat"
    assert errors.one_line(java, {}) == ("An error occurred while calling o187.parquet. "
                                         "java.io.FileNotFoundException: File x does not exist")


def test_the_airflow_side_masks_every_fragment_of_a_malformed_url(monkeypatch):
    from recs_airflow import spark_tasks

    masked = []
    monkeypatch.setenv("RECS_DATABASE_URL", URL)
    monkeypatch.setattr(spark_tasks, "mask_secret", masked.append)
    spark_tasks.export_database_url()
    assert {URL, PASSWORD, "s3cr", "etX#paZ", "paZ?ssQ@w0rd9", "keyphrase42"} <= set(masked)


@pytest.mark.parametrize("final", [True, False])
def test_a_failed_spark_submit_raises_the_jobs_own_line(tmp_path, monkeypatch, final):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from recs_airflow import spark_tasks

    monkeypatch.setenv("RECS_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("RECS_DATABASE_URL", URL)
    task = spark_tasks.spark_step("publish")
    task.application_args = ["--run-id", "manual__2026-12-01T10:00:00+00:00", "--params-json", "{}"]
    line = "refusing to publish run manual__2026-12-01T10_00_00_00_00: NDCG@10 = 0.1 is below ..."

    def fail(self, context):  # spark-submit exits non-zero after the job wrote its record
        folder = tmp_path / "runs" / "manual__2026-12-01T10_00_00_00_00" / "errors"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "publish.json").write_text(json.dumps({"step": "publish", "error": line + " s3cr", "final": final}))
        raise AirflowException("Cannot execute: spark-submit ... Error code is: 1.")

    monkeypatch.setattr(SparkSubmitOperator, "execute", fail)
    monkeypatch.setattr(spark_tasks, "build_package_zip", lambda: tmp_path / "recs.zip")
    with pytest.raises(AirflowException) as caught:
        task.execute({"params": {}})
    assert isinstance(caught.value, AirflowFailException) == final
    assert str(caught.value) == line + " ***"
    # A record older than this try is not this try's cause.
    monkeypatch.setattr(spark_tasks.time, "time", lambda: time.monotonic() + 10**10)
    with pytest.raises(AirflowException) as caught:
        task.execute({"params": {}})
    assert "Cannot execute" in str(caught.value)
