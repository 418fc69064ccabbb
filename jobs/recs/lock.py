"""One writer at a time per data root: a lock held by publish and by the embedding-cache
writer, so that two runs on one root (a backfill, `make run` beside the compose stack)
neither leave `published/CURRENT` and PostgreSQL on different versions nor pay twice for
one text.

With RECS_DATABASE_URL set, a PostgreSQL session advisory lock: the server frees it when
the holder's connection ends, so a killed job never leaves it behind, and the holder is
named by its connection's application_name. Otherwise a lease file
`<data root>/locks/<name>.lease` (owner, host, pid, expiry), created exclusively and
renewed by its owner every third of RECS_LOCK_LEASE_SECONDS; a lease that has expired, or
whose owner process on this host is gone, is taken over.

A second run waits up to RECS_LOCK_WAIT_SECONDS, then fails with the holder's name.
Before an irreversible step (the swap, the pointer) the holder calls `check()`: a lock
lost meanwhile (a lease expired, the connection dropped) fails the step instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from recs import io
from recs.config import RecsConfig

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


class LockBusy(RuntimeError):
    """Another run holds the data root's lock (a retry later may get it)."""


class LockLost(RuntimeError):
    """This run's lock was lost before it finished."""


def advisory_key(data_root: str, name: str) -> int:
    digest = hashlib.sha256(f"recs:{data_root}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _DatabaseLock:
    def __init__(self, database, data_root: str, name: str, owner: str) -> None:
        self.key = advisory_key(data_root, name)
        self.connection = database.connect(f"recs-lock {owner}"[:63])
        self.connection.autocommit = True

    def try_acquire(self) -> bool:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            return bool(cursor.fetchone()[0])

    def holder(self) -> str:
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT a.application_name, a.pid, a.backend_start FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
                "AND l.objsubid = 1",
                ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF),
            )
            row = cursor.fetchone()
        if row is None:
            return "another run (just released)"
        name, pid, since = row
        return f"{name.removeprefix('recs-lock ')} (PostgreSQL backend {pid}, connected {since:%Y-%m-%d %H:%M:%S})"

    def check(self) -> None:
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' "
                               "AND granted AND classid = %s AND objid = %s",
                               ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF))
                held = cursor.fetchone()[0] == 1
        except Exception as err:  # noqa: BLE001 - a dropped connection has dropped the lock
            raise LockLost(f"the lock's database connection was lost ({type(err).__name__})") from err
        if not held:
            raise LockLost("the advisory lock is no longer held")

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()  # ends the session: the server frees the lock


class _LeaseLock:
    def __init__(self, spark, data_root: str, name: str, owner: str, lease_seconds: float) -> None:
        self.spark, self.path, self.lease_seconds = spark, f"{data_root}/locks/{name}.lease", lease_seconds
        self.local = io.is_local(data_root)
        self.lease = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _payload(self) -> str:
        now = time.time()
        return json.dumps({**self.lease, "acquired_at": self.lease.setdefault("acquired_at", _iso(now)),
                           "expires_at": now + self.lease_seconds, "expires": _iso(now + self.lease_seconds)})

    def _read(self) -> dict | None:
        try:
            if self.local:
                with open(self.path.removeprefix("file://"), encoding="utf-8") as handle:
                    return json.load(handle)
            return io.read_json(self.spark, self.path) if io.exists(self.spark, self.path) else None
        except (FileNotFoundError, ValueError):
            return None
        except Exception:  # noqa: BLE001 - gone between the check and the read
            return None

    def _create(self) -> bool:
        if self.local:
            path = self.path.removeprefix("file://")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(self._payload())
            return True
        fs, hadoop_path = io._fs_and_path(self.spark, self.path)
        try:
            stream = fs.create(hadoop_path, False)  # exclusive on HDFS; see README for object stores
        except Exception:  # noqa: BLE001 - FileAlreadyExistsException through py4j
            return False
        try:
            stream.write(bytearray(self._payload().encode("utf-8")))
        finally:
            stream.close()
        return True

    def _stale(self, lease: dict) -> bool:
        if lease.get("expires_at", 0) < time.time():
            return True
        if lease.get("host") == socket.gethostname():
            try:
                os.kill(int(lease["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, KeyError, ValueError):
                return False
        return False

    def try_acquire(self) -> bool:
        if self._create():
            self._renewer = threading.Thread(target=self._renew, daemon=True)
            self._renewer.start()
            return True
        lease = self._read()
        if lease is not None and self._stale(lease):
            # Renamed away first: of two runs taking over one stale lease, one rename wins.
            aside = f"{self.path}.stale.{uuid.uuid4().hex}"
            try:
                if self.local:
                    os.rename(self.path.removeprefix("file://"), aside.removeprefix("file://"))
                    os.remove(aside.removeprefix("file://"))
                else:
                    fs, source = io._fs_and_path(self.spark, self.path)
                    if fs.rename(source, io._fs_and_path(self.spark, aside)[1]):
                        io.delete(self.spark, aside)
                log.warning("took over a stale lease of %s (expired %s)", lease.get("owner"), lease.get("expires"))
            except OSError:
                pass
        return False

    def holder(self) -> str:
        lease = self._read()
        if lease is None:
            return "another run (just released)"
        return (f"{lease.get('owner')} (host {lease.get('host')}, pid {lease.get('pid')}, since "
                f"{lease.get('acquired_at')}, lease until {lease.get('expires')}; lease file {self.path})")

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            lease = self._read()
            if lease is None or lease.get("token") != self.lease["token"]:
                self.lost = f"the lease {self.path} was taken over by {lease and lease.get('owner')}"
                return
            try:
                if self.local:
                    io.write_local_file(self.path.removeprefix("file://"), self._payload())
                else:
                    io.write_text(self.spark, self.path, self._payload())
            except Exception as err:  # noqa: BLE001 - retried at the next beat; expiry says the rest
                log.warning("could not renew the lease %s: %s", self.path, err)

    def check(self) -> None:
        lease = self._read()
        if self.lost or lease is None or lease.get("token") != self.lease["token"]:
            raise LockLost(self.lost or f"the lease {self.path} is no longer this run's")

    def release(self) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join(timeout=5)
        lease = self._read()
        if lease is not None and lease.get("token") == self.lease["token"]:
            if self.local:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path.removeprefix("file://"))
            else:
                io.delete(self.spark, self.path)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def data_root_lock(spark, config: RecsConfig, name: str, owner: str) -> Iterator:
    """Hold the data root's lock `name` ("publish", "embedding_cache") for the block."""
    from recs import postgres

    database = postgres.configured_database()
    lock = (_DatabaseLock(database, config.input.data_root, name, owner) if database
            else _LeaseLock(spark, config.input.data_root, name, owner, config.publish.lock_lease_seconds))
    started = time.monotonic()
    announced = False
    try:
        while not lock.try_acquire():
            waited = time.monotonic() - started
            if waited >= config.publish.lock_wait_seconds:
                raise LockBusy(f"the {name} lock of data root {config.input.data_root} is held by {lock.holder()}; "
                               f"waited {waited:.0f}s (RECS_LOCK_WAIT_SECONDS)")
            if not announced:
                log.warning("waiting for the %s lock of %s, held by %s", name, config.input.data_root, lock.holder())
                announced = True
            time.sleep(POLL_SECONDS)
        log.info("holding the %s lock of %s (%s)", name, config.input.data_root, "PostgreSQL advisory lock" if database
                 else "lease file")
    except BaseException:
        lock.release()
        raise
    try:
        yield lock
    finally:
        lock.release()
