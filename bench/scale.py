"""How the whole pipeline scales: the real DAG on a synthetic shop of a given size, with
per-step wall time and the peak memory of each Spark process.

    .venv/bin/python bench/scale.py --size S      # 10k products, 10k customers, ~100k events
    .venv/bin/python bench/scale.py --size M      # 100k / 100k / ~1M
    .venv/bin/python bench/scale.py --size L      # 1M / 1M / ~10M

It writes a shop of a real store's shape (`recs.synthetic --scale`: Zipf popularity,
sessions, repeat purchases, heavy customers) as Parquet, then runs the DAG through
`recs_airflow.local_run` (`airflow dags test`, a real `spark-submit` per step on
`local[*]`) on its own data root and Airflow home, with the hashing embedding backend so
the figure is the pipeline's own (embedding throughput is `bench/embeddings.py`'s).
While it runs, the process tree is sampled every `--interval` seconds with psutil: the
driver JVM (SparkSubmit), the Python driver (jobs/<step>.py) and the Python workers
(pyspark.daemon and its forks), each attributed to the step whose spark-submit owns it.

A failed step (an exception, the OOM killer, the `--timeout`) is reported, with the
step and the cause, not raised. The last line is one JSON object:
{"size": "M", "products": .., "customers": .., "events": .., "wall_s": .., "peak_rss_mb": ..,
 "steps": {"preprocess": s, ...}, "state": "success" | "failed" | "timeout", ...}
where `steps` holds each step's wall time (its spark-submit processes' lifetime, retries
included) and `peak_rss_mb` the largest resident set of any one process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "jobs"), str(REPO / "plugins")]

from recs.config import safe_run_id  # noqa: E402
from recs.synthetic import ScaleShop, write_scale_shop  # noqa: E402
from recs_airflow import local_run  # noqa: E402

SIZES = {
    "S": ScaleShop(products=10_000, customers=10_000),
    "M": ScaleShop(products=100_000, customers=100_000),
    "L": ScaleShop(products=1_000_000, customers=1_000_000),
}
STEPS = ("preprocess", "embed", "pca", "cluster", "recommend", "evaluate", "publish")
KINDS = ("driver_jvm", "driver_python", "python_worker")
_STEP_FILE = re.compile(r"/jobs/(?P<step>[a-z]+)\.py$")
# What names the cause of a failed step in the Airflow log, most telling first.
_CAUSES = (
    re.compile(r"recs: (?P<step>[a-z]+) failed: (?P<why>.*)"),
    re.compile(r"(?P<why>.*(?:OutOfMemoryError|exited unexpectedly|Container killed|exceeds the limit|"
               r"bigger than spark.driver.maxResultSize).*)"),
)
# spark-submit's exit code when a process was killed (SIGKILL): on one machine, the OOM killer.
_KILLED = "Error code is: 137"


@dataclass
class StepUsage:
    first: float = float("inf")
    last: float = 0.0
    submits: set[int] = field(default_factory=set)  # spark-submit pids: more than one = a retry
    peak: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    workers_total: float = 0.0  # the largest sum over simultaneous Python workers


class TreeSampler(threading.Thread):
    """Samples this process's descendants: RSS per Spark process kind, per step."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval, self.steps = interval, {}
        self.stop_event = threading.Event()
        self.peak_any = 0.0

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop_event.is_set():
            self.sample(me)
            self.stop_event.wait(self.interval)

    def sample(self, root: psutil.Process) -> None:
        now = time.monotonic()
        try:
            processes = root.children(recursive=True)
        except psutil.Error:
            return
        owner: dict[int, str] = {}  # pid of a SparkSubmit JVM -> step
        rows = []
        for process in processes:
            try:
                command = process.cmdline()
                rss = process.memory_info().rss / 2**20
                parents = [p.pid for p in process.parents()]
            except psutil.Error:
                continue
            step = next((m["step"] for arg in command if (m := _STEP_FILE.search(arg))), None)
            joined = " ".join(command)
            java = os.path.basename(command[0]) == "java" if command else False
            if "org.apache.spark.deploy.SparkSubmit" in joined and step and not java:
                continue  # the spark-submit / spark-class shell wrappers of the JVM
            if "org.apache.spark.launcher.Main" in joined:
                continue  # the short JVM spark-class runs first to build the real command: not a try
            if "org.apache.spark.deploy.SparkSubmit" in joined and step:
                owner[process.pid] = step
                rows.append(("driver_jvm", step, process.pid, rss, parents))
            elif "pyspark.daemon" in joined or "pyspark.worker" in joined or "pyspark/daemon" in joined:
                rows.append(("python_worker", None, process.pid, rss, parents))
            elif step and "python" in os.path.basename(command[0]):
                rows.append(("driver_python", step, process.pid, rss, parents))
        workers: dict[str, float] = {}
        for kind, step, pid, rss, parents in rows:
            step = step or next((owner[p] for p in parents if p in owner), None)
            if step is None:
                continue
            usage = self.steps.setdefault(step, StepUsage())
            usage.first, usage.last = min(usage.first, now), max(usage.last, now)
            if kind == "driver_jvm":
                usage.submits.add(pid)
            usage.peak[kind] = max(usage.peak[kind], rss)
            self.peak_any = max(self.peak_any, rss)
            if kind == "python_worker":
                workers[step] = workers.get(step, 0.0) + rss
        for step, total in workers.items():
            self.steps[step].workers_total = max(self.steps[step].workers_total, total)


def failure(log_path: Path, stats_dir: Path) -> dict:
    """The first step without stats, and the most telling error line of the log."""
    step = next((s for s in STEPS if not (stats_dir / f"{s}.json").exists()), None)
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    lines = [line for line in lines if "Spark-Submit cmd" not in line]  # the command names its settings
    for pattern in _CAUSES:
        for line in lines:
            found = pattern.search(line)
            if found and found.groupdict().get("step", step) == step:
                return {"step": step, "why": found["why"].strip()[:500]}
    if any(_KILLED in line for line in lines):
        return {"step": step, "why": "spark-submit killed (exit 137, SIGKILL): the kernel's OOM killer when "
                                     "memory runs out (see `dmesg`)"}
    errors = [line for line in lines if "ERROR" in line]
    return {"step": step, "why": (errors[-1].strip()[:500] if errors else "no error in the log")}


def stop_tree() -> None:
    """End the DAG run this bench started: its own child processes, by pid."""
    children = psutil.Process().children(recursive=True)
    for process in children:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(children, timeout=20)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), required=True)
    parser.add_argument("--root", help="scratch folder (default /tmp/recs-scale-<size>); emptied first")
    parser.add_argument("--timeout", type=float, default=180.0, help="minutes before the run is stopped")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two memory samples")
    parser.add_argument("--conf", default="{}", help="more DAG params as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder afterwards")
    args = parser.parse_args(argv)

    shape = SIZES[args.size]
    root = Path(args.root or f"/tmp/recs-scale-{args.size}").resolve()
    shutil.rmtree(root, ignore_errors=True)
    started = time.monotonic()
    products, customers, events = write_scale_shop(str(root / "input"), shape)
    print(f"shop {args.size}: {products} products, {customers} customers, {events} events "
          f"written in {time.monotonic() - started:.0f}s", flush=True)

    home, data_root = root / "airflow", root / "data"
    home.mkdir(parents=True)
    # Parquet only, no paid embeddings: the figure is the pipeline's own. The shop is an
    # input the operator allows (RECS_INPUT_ROOTS), as a run's conf may not widen the roots.
    env = local_run.airflow_env(home, {"RECS_DATA_ROOT": str(data_root), "RECS_DATABASE_URL": "",
                                       "OPENAI_API_KEY": "", "RECS_INPUT_ROOTS": str(root / "input")})
    local_run.migrate(env)
    conf = {"input_path": str(root / "input"), "input_format": "contract", "embedding_backend": "hashing",
            **json.loads(args.conf)}
    log_path = home / "dag_run.log"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["run_id"], outcome["state"] = local_run.dags_test(conf, env, log_path)
        except Exception as err:  # noqa: BLE001 - reported below, never raised
            outcome["state"], outcome["error"] = "failed", str(err)

    sampler = TreeSampler(args.interval)
    sampler.start()
    started = time.monotonic()
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(args.timeout * 60)
    if runner.is_alive():
        outcome["state"] = "timeout"
        stop_tree()
        runner.join(60)
    wall = time.monotonic() - started
    sampler.stop_event.set()
    sampler.join()

    run_dirs = sorted((data_root / "runs").glob("*")) if (data_root / "runs").exists() else []
    run_dir = data_root / "runs" / safe_run_id(outcome["run_id"]) if "run_id" in outcome else (
        run_dirs[-1] if run_dirs else data_root / "runs" / "none")
    stats = {s: json.loads((run_dir / "stats" / f"{s}.json").read_text())
             for s in STEPS if (run_dir / "stats" / f"{s}.json").exists()}

    print(f"\n{'step':<11}{'wall s':>8}{'job s':>8}{'tries':>6}{'JVM MB':>9}{'py drv MB':>10}"
          f"{'worker MB':>10}{'workers MB':>11}")
    steps, memory = {}, {}
    for step in STEPS:
        usage = sampler.steps.get(step)
        if usage is None:
            continue
        steps[step] = round(usage.last - usage.first + args.interval, 1)
        memory[step] = {kind: round(value) for kind, value in usage.peak.items()}
        memory[step]["python_workers_total"] = round(usage.workers_total)
        print(f"{step:<11}{steps[step]:>8.0f}{stats.get(step, {}).get('seconds', float('nan')):>8.0f}"
              f"{len(usage.submits):>6}{usage.peak['driver_jvm']:>9.0f}{usage.peak['driver_python']:>10.0f}"
              f"{usage.peak['python_worker']:>10.0f}{usage.workers_total:>11.0f}")
    result = {
        "size": args.size, "products": products, "customers": customers, "events": events,
        "wall_s": round(wall, 1), "peak_rss_mb": round(sampler.peak_any),
        "steps": steps, "state": outcome.get("state", "failed"),
        "job_seconds": {s: v.get("seconds") for s, v in stats.items()},
        "rss_mb": memory,
    }
    if result["state"] != "success":
        result["failed"] = failure(log_path, run_dir / "stats")
        if result["state"] == "timeout":
            result["failed"]["why"] = f"stopped after the {args.timeout:g} min timeout; last: {result['failed']['why']}"
        if "error" in outcome:
            result["failed"]["why"] = f"{outcome['error']}; last: {result['failed']['why']}"
    print(f"full log: {log_path}", flush=True)
    if not args.keep:
        shutil.rmtree(root / "input", ignore_errors=True)
        shutil.rmtree(data_root, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
