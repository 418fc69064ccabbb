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


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a scratch folder, a free port on
    loopback, trust auth), which the test may stop and start: the shared server on 5432
    serves other tests at the same time. Run as the `postgres` user when the tests run as
    root (the server refuses root)."""

    def __init__(self) -> None:
        import glob
        import pwd
        import socket
        import tempfile

        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        require(bool(binaries), "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
        self.bin = os.path.dirname(binaries[-1])
        self.folder = tempfile.mkdtemp(prefix="recs-pg-", dir="/tmp")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", f"{self.folder}/data", "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        import subprocess

        subprocess.run([*self.as_user, f"{self.bin}/{program}", *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.folder}"
        self._run("pg_ctl", "-D", f"{self.folder}/data", "-o", options, "-l", f"{self.folder}/log", "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash as far as clients see: every connection cut, no goodbye."""
        self._run("pg_ctl", "-D", f"{self.folder}/data", "-m", mode, "-w", "stop")

    def close(self) -> None:
        import contextlib
        import shutil
        import subprocess

        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
