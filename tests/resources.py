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
