"""The data root's lock: one holder; a second run waits a bounded time, then fails naming the
holder; a lease whose owner died or stopped renewing is taken over; a PostgreSQL advisory
lock when a database is configured (freed by the server when its session ends)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from recs import lock
from recs.config import RecsConfig
from resources import require_postgres

URL = "postgresql://postgres@127.0.0.1:5432/test"


def config(tmp_path, **more) -> RecsConfig:
    return RecsConfig.from_settings(dict(data_root=str(tmp_path), lock_wait_seconds=1.5, **more))


def test_a_lease_file_has_one_holder_and_names_it(tmp_path, monkeypatch):
    monkeypatch.delenv("RECS_DATABASE_URL", raising=False)
    lease = tmp_path / "locks" / "publish.lease"
    with lock.data_root_lock(None, config(tmp_path), "publish", "publish of run A") as held:
        content = json.loads(lease.read_text())
        assert content["owner"] == "publish of run A" and content["pid"] == os.getpid()
        started = time.monotonic()
        with pytest.raises(lock.LockBusy) as busy, lock.data_root_lock(None, config(tmp_path), "publish", "B"):
            pass
        assert 1.5 <= time.monotonic() - started < 10
        assert f"the publish lock of data root {tmp_path} is held by publish of run A (host" in str(busy.value)
        assert f"pid {os.getpid()}" in str(busy.value)
        # Another name on the same root is another lock.
        with lock.data_root_lock(None, config(tmp_path), "embedding_cache", "embed of run B"):
            pass
        held.check()
        # Taken over (its owner stopped renewing): the holder learns it before acting.
        lease.write_text(json.dumps({**content, "token": "someone else"}))
        with pytest.raises(lock.LockLost):
            held.check()
    assert lease.exists()  # not ours any more: left to its new owner
    lease.unlink()
    with lock.data_root_lock(None, config(tmp_path), "publish", "publish of run C"):
        pass
    assert not lease.exists()


def test_a_stale_lease_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.delenv("RECS_DATABASE_URL", raising=False)
    lease = tmp_path / "locks" / "publish.lease"
    lease.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    # Its owner process on this host is gone.
    lease.write_text(json.dumps({"owner": "publish of run killed", "host": socket.gethostname(),
                                 "pid": int(dead.stdout), "token": "t", "expires_at": time.time() + 3600}))
    with lock.data_root_lock(None, config(tmp_path), "publish", "publish of run next"):
        assert json.loads(lease.read_text())["owner"] == "publish of run next"
    # Expired, on another host.
    lease.write_text(json.dumps({"owner": "publish elsewhere", "host": "other-host", "pid": 1, "token": "t",
                                 "expires_at": time.time() - 1}))
    with lock.data_root_lock(None, config(tmp_path), "publish", "publish of run later"):
        assert json.loads(lease.read_text())["owner"] == "publish of run later"
    # Alive on another host: waited for, then refused.
    lease.write_text(json.dumps({"owner": "publish elsewhere", "host": "other-host", "pid": 1, "token": "t",
                                 "expires_at": time.time() + 3600}))
    blocked = lock.data_root_lock(None, config(tmp_path), "publish", "publish of run blocked")
    with pytest.raises(lock.LockBusy, match="held by publish elsewhere"), blocked:
        pass


def test_the_lease_is_renewed_while_held(tmp_path, monkeypatch):
    monkeypatch.delenv("RECS_DATABASE_URL", raising=False)
    lease = tmp_path / "locks" / "publish.lease"
    with lock.data_root_lock(None, config(tmp_path, lock_lease_seconds=0.6), "publish", "long publish") as held:
        first = json.loads(lease.read_text())["expires_at"]
        time.sleep(1.0)
        assert json.loads(lease.read_text())["expires_at"] > first
        held.check()


def test_with_a_database_an_advisory_lock_names_its_holder(tmp_path, monkeypatch):
    require_postgres(URL)
    monkeypatch.setenv("RECS_DATABASE_URL", URL)
    with lock.data_root_lock(None, config(tmp_path), "publish", "publish of run A") as held:
        second = lock.data_root_lock(None, config(tmp_path), "publish", "publish of run B")
        with pytest.raises(lock.LockBusy, match=r"held by publish of run A \(PostgreSQL backend \d+"), second:
            pass
        held.check()
        assert not (tmp_path / "locks").exists()
        # Its session ends (the job was killed): the server frees the lock.
        held.connection.close()
        with pytest.raises(lock.LockLost):
            held.check()
        with lock.data_root_lock(None, config(tmp_path), "publish", "publish of run B"):
            pass
