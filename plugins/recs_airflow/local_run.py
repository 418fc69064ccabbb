"""Run the DAG on this machine with `airflow dags test`, as `make run` and the
end-to-end tests do: an Airflow home inside the repo (SQLite metadata DB), the venv's
`spark-submit` on the PATH, the `spark_default` connection on `local[*]`.

    python -m recs_airflow.local_run --input data/demo_shop --format contract
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from recs.config import INPUT_FORMATS

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "product_recommendations"
LOCAL_SPARK = json.dumps({"conn_type": "spark", "host": "local[*]"})
_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+)")
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(?P<task>\S+)")
_FINISHED = re.compile(r"DagRun Finished: dag_id=(?P<dag>[^,]+), .*?run_id=(?P<run_id>[^,]+), .*?state=(?P<state>\w+)")


def airflow_env(airflow_home: Path | None = None, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every Airflow command of a local run gets."""
    venv_bin = Path(sys.executable).parent
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home or REPO / ".airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            # SparkSubmitOperator runs `spark-submit` by name: the venv's must come first.
            "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
            "PYSPARK_PYTHON": sys.executable,
            "HF_HUB_OFFLINE": "1",
        }
    )
    env.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", LOCAL_SPARK)
    env.setdefault("RECS_DATA_ROOT", str(REPO / "data"))
    env.setdefault("RECS_INPUT", str(REPO / "data" / "demo_shop"))
    env.update(overrides or {})
    return env


def migrate(env: dict[str, str]) -> None:
    """Create or upgrade the metadata DB (idempotent, a few seconds)."""
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)


def dags_test(conf: dict, env: dict[str, str], log_path: Path | None = None) -> tuple[str, str]:
    """Run the whole DAG once; return (run_id, final state).

    `airflow dags test` exits 0 even when a task fails, so the state is read from
    the run's own closing log line.
    """
    command = ["airflow", "dags", "test", DAG_ID, "-c", json.dumps(conf)]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        log = open(log_path, "w", encoding="utf-8") if log_path else None  # noqa: SIM115 - closed below
        finished = None
        clock = StepClock()
        for line in process.stdout:
            if log:
                log.write(line)
            if _is_progress(line):
                print(line.rstrip()[:300], flush=True)
            timing = clock.see(line)
            if timing:
                print(timing, flush=True)
            finished = _FINISHED.search(line) or finished
        if log:
            log.close()
    if finished is None:
        raise RuntimeError(f"`airflow dags test` ended with exit code {process.returncode} and no finished run")
    return finished["run_id"], finished["state"]


class StepClock:
    """Each step's elapsed time, from the `[DAG TEST] starting` / `end task` lines of its task."""

    def __init__(self, clock=time.monotonic):
        self.clock, self.began, self.started = clock, clock(), {}

    def see(self, line: str) -> str | None:
        if start := _TASK_START.search(line):
            self.started[start["task"]] = self.clock()
        elif (end := _TASK_END.search(line)) and end["task"] in self.started:
            now = self.clock()
            return (f"==> {end['task']} finished after {_duration(now - self.started.pop(end['task']))} "
                    f"({_duration(now - self.began)} since the run started)")
        return None


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _is_progress(line: str) -> bool:
    """The lines worth showing live: task starts and ends, the steps' own summaries, errors."""
    return any(
        marker in line
        for marker in ("[DAG TEST] running task", "new_state=", "INFO recs", "ERROR", "Error:", "DagRun Finished")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="input folder or file (default: RECS_INPUT)")
    parser.add_argument("--format", choices=INPUT_FORMATS, help="input format")
    parser.add_argument("--conf", default="{}", help="more DAG params as JSON, e.g. '{\"top_n\": 5}'")
    parser.add_argument("--ui", action="store_true", help="start `airflow standalone` instead (UI on port 8080)")
    args = parser.parse_args(argv)
    if args.ui:
        env = airflow_env()
        # The standalone's API server must be where task runners look for it.
        env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://127.0.0.1:8080/execution/")
        os.execvpe("airflow", ["airflow", "standalone"], env)

    conf = json.loads(args.conf)
    if args.input:
        conf["input_path"] = str(Path(args.input).resolve()) if "://" not in args.input else args.input
    if args.format:
        conf["input_format"] = args.format
    env = airflow_env()
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    migrate(env)
    log_path = Path(env["AIRFLOW_HOME"]) / "last_run.log"
    run_id, state = dags_test(conf, env, log_path)
    print(f"\nDAG run {run_id}: {state} (full log: {log_path})")
    if state != "success":
        return 1
    from recs.reader import print_samples

    print_samples(env["RECS_DATA_ROOT"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
