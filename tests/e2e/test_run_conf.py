"""A DAG run's conf cannot reach past the trigger form: the first step's real spark-submit
refuses unknown keys and an input outside the input roots before it reads or writes anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def submit_preprocess(data_root: Path, params: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "RECS_DATA_ROOT": str(data_root)}
    env.pop("RECS_INPUT_ROOTS", None)
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]",
               "--conf", "spark.ui.enabled=false", str(REPO / "jobs" / "preprocess.py"),
               "--run-id", "hostile", "--params-json", json.dumps(params)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_preprocess_refuses_a_hostile_conf(tmp_path):
    data_root = tmp_path / "data"
    for params, message in (
        ({"data_root": str(tmp_path / "other"), "input_path": "/etc/hostname", "keep_versions": 0},
         "bad configuration: not DAG params, refused: ['data_root', 'keep_versions']"),
        ({"input_path": "/etc/hostname", "input_format": "online_retail"},
         "bad configuration: input_path '/etc/hostname' (resolves to /etc/hostname) is outside the input roots"),
    ):
        done = submit_preprocess(data_root, params)
        assert done.returncode == 2, (done.stdout + done.stderr)[-2000:]
        [line] = [line for line in (done.stdout + done.stderr).splitlines() if "bad configuration" in line]
        assert message in line
    # Nothing was read, and nothing written but the refusal itself, in the run's own folder of
    # the operator's data root (the task raises it as a final failure: recs/errors.py).
    written = sorted(str(path.relative_to(data_root)) for path in data_root.rglob("*") if path.is_file())
    assert written == ["runs/hostile/errors/preprocess.json"]
    record = json.loads((data_root / "runs" / "hostile" / "errors" / "preprocess.json").read_text())
    assert record["final"] and "outside the input roots" in record["error"]
    assert not (tmp_path / "other").exists()
