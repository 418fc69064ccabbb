"""What a test needs from outside the repository (../shared/data, PostgreSQL on
127.0.0.1:5432): without it the test is skipped with the reason, except in CI."""

from __future__ import annotations

import os

import pytest


def require(available: bool, what: str) -> None:
    """Skip (reason shown by `pytest -rs`) when `available` is false; with `CI` set, fail
    instead: a CI run must never pass by skipping what it was meant to check."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what}, and CI is set: the run needs it", pytrace=False)
    pytest.skip(what)


TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def require_postgres(url: str = TEST_DATABASE_URL) -> None:
    """`require` the test server (127.0.0.1:5432, database `test`) to answer at `url`."""
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=5).close()
        up = True
    except psycopg2.OperationalError:
        up = False
    require(up, "no PostgreSQL on 127.0.0.1:5432 (database test)")
