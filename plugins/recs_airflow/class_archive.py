"""A class-data-sharing archive of what a Spark step's driver JVM loads, built once per
machine, so that each spark-submit maps those classes instead of reading and verifying
them from some two hundred jars.

Why: every step is a JVM of its own (one spark-submit per task), and on a small shop a
step spends more time starting Spark than computing. Measured on 2 cores: a trivial
spark-submit took 12.7 s, 8.1 s with an archive; the PCA step of Online Retail 23.0 s,
19.2 s.

`make setup` builds it (`python -m recs_airflow.class_archive`): a short warm-up
application (`jvm_warm_up.py`, beside this file) runs under `-XX:ArchiveClassesAtExit`,
a second run must load classes from the result, and only then is it moved into place:
a JVM given a truncated archive crashes, so no task may find a half-written one. The
file name carries the JVM's and pyspark's versions: after an upgrade no archive is
found, and the steps start as they did before, until setup builds a new one. A JVM whose
class path differs from the warm-up's (`--driver-class-path`) ignores the archive.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_DIR = Path.home() / ".cache" / "recs" / "jvm"
WARM_UP = Path(__file__).with_name("jvm_warm_up.py")
FROM_ARCHIVE = "source: shared objects file (top)"  # -Xlog:class+load, a class mapped from the archive


def java() -> str:
    """The `java` spark-submit starts: $JAVA_HOME's, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else (shutil.which("java") or "java")


@functools.cache
def _versions_digest(java_binary: str) -> str:
    import pyspark

    version = subprocess.run([java_binary, "-version"], capture_output=True, text=True, check=False).stderr
    return hashlib.sha256(f"{version}\n{pyspark.__version__}\n{sys.prefix}".encode()).hexdigest()[:16]


def archive_path(folder: str | None = None) -> Path:
    """Where the archive of this JVM build and this pyspark lives (RECS_CLASS_ARCHIVE_DIR
    or ~/.cache/recs/jvm)."""
    base = Path(folder or os.environ.get("RECS_CLASS_ARCHIVE_DIR") or DEFAULT_DIR)
    return base / f"spark-driver-{_versions_digest(java())}.jsa"


def java_options(folder: str | None = None) -> list[str]:
    """The driver JVM option that maps the archive, when built."""
    try:
        path = archive_path(folder)
    except OSError:  # no java: spark-submit will say so
        return []
    return [f"-XX:SharedArchiveFile={path}"] if path.is_file() else []


def _submit(warm_up: Path, java_option: str, log_file: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]",
               "--conf", f"spark.driver.extraJavaOptions={java_option}", str(warm_up)]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    with open(log_file, "w") as output:
        return subprocess.run(command, env=env, stdout=output, stderr=subprocess.STDOUT, timeout=900, check=False)


def build(folder: str | None = None, warm_up: Path = WARM_UP) -> Path | None:
    """Build the archive unless there is one; its path, or None (with the reason logged)
    when this JVM cannot make one that loads."""
    target = archive_path(folder)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        candidate, classes = Path(scratch) / "candidate.jsa", Path(scratch) / "classes.log"
        dumped = _submit(warm_up, f"-XX:ArchiveClassesAtExit={candidate}", Path(scratch) / "dump.log")
        if dumped.returncode != 0 or not candidate.is_file():
            log.warning("no class archive: the warm-up run failed (%s)", _tail(Path(scratch) / "dump.log"))
            return None
        checked = _submit(warm_up, f"-XX:SharedArchiveFile={candidate} -Xlog:class+load=info:file={classes}",
                          Path(scratch) / "check.log")
        if checked.returncode != 0 or FROM_ARCHIVE not in classes.read_text(errors="replace"):
            log.warning("no class archive: a JVM did not load from it (%s)", _tail(Path(scratch) / "check.log"))
            return None
        os.replace(candidate, target)
    return target


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return lines[-1] if lines else "no output"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build()
    if path is not None:
        log.info("class archive for the Spark driver: %s (%d MB)", path, path.stat().st_size // 2**20)
    return 0  # without one the steps only start slower


if __name__ == "__main__":
    sys.exit(main())
