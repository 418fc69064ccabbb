"""Tests that need ../shared/data or PostgreSQL skip with their reason, except in CI."""

from __future__ import annotations

import pytest

from resources import require


def test_missing_resource_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    require(True, "never shown")
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL"):
        require(False, "no PostgreSQL")


def test_missing_resource_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no PostgreSQL, and CI is set"):
        require(False, "no PostgreSQL")


def test_every_test_needing_outside_resources_goes_through_require():
    """No bare skips left for shared data or PostgreSQL (the silent kind CI must not have)."""
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    needs = ("PostgreSQL", "shared", "psycopg2", "exists()")
    for path in tests.rglob("test_*.py"):
        if path.name == "test_resources.py":
            continue
        for line in path.read_text().splitlines():
            if any(bare in line for bare in ("pytest.skip(", "skipif(", "importorskip(")):
                assert not any(need in line for need in needs), f"{path.name}: {line.strip()}"
