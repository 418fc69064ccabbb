"""Benchmark: the HTTP service (recs.serving) on PostgreSQL under 64 concurrent clients,
while a publish swaps versions.

    .venv/bin/python bench/serving.py [--version-dir PATH] [--users 100000] [--seconds 30] [--clients 64]

What it does:
1. Two versions go into a throw-away PostgreSQL schema through the publish step's own
   code (recs.postgres: Spark's JDBC writer into staging tables, counted, indexed, then
   the one-transaction swap). Without --version-dir they are generated: `--users`
   customers x 10 recommendations over `--products` products, each version with other
   lists and titles that name the version, so that any answer mixing two versions is
   caught by the client. With --version-dir (a published Parquet version, e.g. the scale
   benchmark's M shop) its tables are loaded twice under two version names; then only
   the server's own check (every row of an answer carries its `version`) can catch a mix.
2. `python -m recs.serving --workers N` on 127.0.0.1, the first version current.
3. `--clients` keep-alive HTTP/1.1 clients (asyncio, one process) ask for random known
   users (80%), unknown users (10%) and similar products (10%), in three phases:
   - saturated, `--seconds`: each client asks again as soon as it is answered, so the rate
     is the most the machine serves; at a third of it the second version is swapped in
     (its tables were staged before);
   - paced, `--seconds`: the clients together offer `--rate` requests/s on a fixed
     schedule, and a latency counts from when the request was due, not sent (no
     coordinated omission): the latency a storefront sees at that rate;
   - ceiling, a third of `--seconds`: the same clients, saturated, against a FastAPI app
     on the same uvicorn settings that answers a constant list without any database: what
     this machine can do at all with the client on the same cores.
4. Every answer is checked: HTTP 200, and (generated versions) the lists and titles are
   exactly those of the version the answer names.

The last line is one JSON object: "rps" (saturated), "p50_ms"/"p99_ms" (paced, at "rate"),
"errors", "mixed_versions" (all phases), then each phase's figures, "rps_vs_ceiling", the
CPU time per request of the server, PostgreSQL and the clients, and the machine's load
average before and after, since on a shared machine the figures say as much about the
neighbours as about us.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "jobs"))

from recs import postgres  # noqa: E402

TOP_N = 10
TAGS = ("alpha", "beta")


def generated_version(tag_index: int, users: int, products: int) -> dict[str, pd.DataFrame]:
    """The published tables of one version; its lists and titles are functions of the version."""
    tag = TAGS[tag_index]
    user_ids = np.repeat(np.arange(users), TOP_N)
    ranks = np.tile(np.arange(1, TOP_N + 1), users)
    product_index = expected_products(user_ids, ranks, tag_index, products)
    product_ids = np.char.add("P", np.char.zfill(product_index.astype(str), 6))
    catalog = np.char.add("P", np.char.zfill(np.arange(products).astype(str), 6))
    similar_of = np.repeat(np.arange(products), TOP_N)
    similar_ranks = np.tile(np.arange(1, TOP_N + 1), products)
    return {
        "user_recommendations": pd.DataFrame({
            "user_id": np.char.add("U", np.char.zfill(user_ids.astype(str), 7)), "rank": ranks,
            "product_id": product_ids, "score": 1.0 / ranks, "reason": f"because you bought something ({tag})",
            "reason_product_id": product_ids}),
        "similar_products": pd.DataFrame({
            "product_id": catalog[similar_of], "rank": similar_ranks,
            "similar_product_id": catalog[(similar_of + similar_ranks * (tag_index + 1)) % products],
            "score": 1.0 / similar_ranks}),
        "product_clusters": pd.DataFrame({
            "product_id": catalog, "cluster": np.arange(products) % 20, "pca": [[0.0, 0.0]] * products,
            "title": [f"{tag} product {i}" for i in range(products)], "category": "bench"}),
        "popular_products": pd.DataFrame({
            "rank": np.arange(1, 51), "product_id": catalog[(np.arange(50) * 7 + tag_index) % products],
            "score": 1.0 / np.arange(1, 51)}),
        "run_summary": pd.DataFrame([{"run_id": f"bench_{tag}", "ndcg_at_10": 0.1, "catalog_coverage": 1.0,
                                      "gate_passed": True, "gate_overridden": False, "gate_message": "bench"}]),
    }


def expected_products(user_index, ranks, tag_index: int, products: int):
    """Distinct products per user (ranks 1..10 step through the catalog), different per version."""
    return (np.asarray(user_index) * 37 + np.asarray(ranks) * (101 + tag_index * 6) + tag_index * 11) % products


def version_from_dir(path: str) -> dict[str, pd.DataFrame]:
    tables = {}
    for name in postgres.TABLES + postgres.EXTRA_RUN_TABLES:
        if os.path.isdir(os.path.join(path, name)):
            tables[name] = pd.read_parquet(os.path.join(path, name))
    return tables


def stage(spark, database, schema: str, version: str, tables: dict[str, pd.DataFrame], connection) -> dict:
    frames = {name: spark.createDataFrame(table) for name, table in tables.items()}
    return postgres.load_staging(spark, database, schema, frames, version, connection,
                                 {name: len(table) for name, table in tables.items()})


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU time (user + system) of the server and its workers, of PostgreSQL's processes
    (those whose command is `postgres`) and of this process, the clients (Linux /proc)."""
    totals, tick = {"server": 0.0, "database": 0.0, "clients": time.process_time()}, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                command, rest = handle.read().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, IndexError):
            continue
        fields = rest.split()
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(entry) == server_pid or int(fields[1]) == server_pid:  # the server or a worker it forked
            totals["server"] += used
        elif command == "postgres":
            totals["database"] += used
    return totals


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Client:
    """One keep-alive HTTP/1.1 connection; a request is a GET, the answer JSON."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None

    async def get(self, path: str) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length)
        return status, (json.loads(body) if status == 200 else body[:200])


def check(kind: str, ident: int, answer: dict, tags: dict[str, int], products: int, generated: bool) -> bool:
    """True when the answer is wholly the version it names (generated versions only)."""
    if not generated:
        return True
    tag_index = tags.get(answer["version"])
    if tag_index is None:
        return False
    tag = TAGS[tag_index]
    titles_ok = all(item["title"].startswith(tag + " ") for item in answer["items"])
    if kind == "user":
        wanted = expected_products(ident, np.arange(1, TOP_N + 1), tag_index, products)
        got = [int(item["product_id"][1:]) for item in answer["items"]]
        return titles_ok and got == wanted.tolist() and all(tag in item["reason"] for item in answer["items"])
    if kind == "unknown":
        wanted = ((np.arange(TOP_N) * 7 + tag_index) % products).tolist()
        return titles_ok and answer["fallback"] == "popular" and [int(i["product_id"][1:]) for i in
                                                                  answer["items"]] == wanted
    wanted = ((ident + np.arange(1, TOP_N + 1) * (tag_index + 1)) % products).tolist()
    return titles_ok and [int(item["product_id"][1:]) for item in answer["items"]] == wanted


async def load(port: int, seconds: float, clients: int, users: list[str], product_ids: list[str], tags: dict,
               products: int, generated: bool, on_third=None, rate: float | None = None) -> dict:
    """Saturated (`rate` None: ask again when answered) or paced (`rate` requests/s in all,
    each client on its own fixed schedule; latency counted from when the request was due)."""
    latencies, errors, mixed, versions_seen = [], [], 0, {}
    began = time.perf_counter()
    deadline, third = began + seconds, began + seconds / 3
    fired = on_third is None
    interval = clients / rate if rate else 0.0

    async def worker(seed: int):
        nonlocal mixed, fired
        rng = random.Random(seed)
        client = Client(port)
        due = began + interval * seed / clients
        while True:
            if rate:
                due += interval
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            started = due if rate else time.perf_counter()
            if started >= deadline:
                break
            roll = rng.random()
            if roll < 0.8:
                index = rng.randrange(len(users))
                kind, path = "user", f"/v1/users/{users[index]}/recommendations?limit={TOP_N}"
            elif roll < 0.9:
                index, kind = 0, "unknown"
                path = f"/v1/users/NEW{rng.randrange(10**9)}/recommendations?limit={TOP_N}"
            else:
                index = rng.randrange(len(product_ids))
                kind, path = "similar", f"/v1/products/{product_ids[index]}/similar?limit={TOP_N}"
            try:
                status, answer = await client.get(path)
            except (OSError, asyncio.IncompleteReadError, ValueError) as err:
                errors.append(f"{kind}: {type(err).__name__}: {err}")
                client = Client(port)
                continue
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(f"{kind}: HTTP {status}: {str(answer)[:200]}")
                continue
            versions_seen[answer["version"]] = versions_seen.get(answer["version"], 0) + 1
            if not check(kind, index, answer, tags, products, generated):
                mixed += 1
            if not fired and time.perf_counter() > third:
                fired = True
                threading.Thread(target=on_third, daemon=True).start()

    await asyncio.gather(*(worker(seed) for seed in range(clients)))
    elapsed = time.perf_counter() - began
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": round(elapsed, 1), "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "errors": len(errors), "error_samples": errors[:5], "mixed_versions": mixed,
            "answers_by_version": versions_seen}


CEILING_APP = """
from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()
ITEMS = [{"product_id": f"P{i:06d}", "title": f"product {i}", "rank": i, "score": 1.0 / i, "reason": "constant"}
         for i in range(1, 11)]


@app.get("/v1/users/{user_id}/recommendations")
def recommendations(user_id: str, limit: int = 10):
    return JSONResponse({"version": "ceiling", "user_id": user_id, "fallback": None, "items": ITEMS[:limit]})


@app.get("/v1/products/{product_id}/similar")
def similar(product_id: str, limit: int = 10):
    return JSONResponse({"version": "ceiling", "product_id": product_id, "items": ITEMS[:limit]})


@app.get("/healthz")
def healthz():
    return {"ok": True}
"""


def start_server(command: list[str], env: dict, cwd: str | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    server = subprocess.Popen([*command, "--port", str(port)], env=env, cwd=cwd, start_new_session=True)
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return server, port
        except OSError:
            time.sleep(0.5)
    stop(server)
    raise SystemExit(f"the server {command} did not answer /healthz in 2 minutes")


def stop(server: subprocess.Popen | None) -> None:
    if server is not None and server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@contextlib.contextmanager
def ceiling_server(workers: int):
    """A constant app on the same uvicorn settings: what the machine serves at all."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "ceiling_app.py").write_text(CEILING_APP)
        server, port = start_server([sys.executable, "-m", "uvicorn", "ceiling_app:app", "--workers", str(workers),
                                     "--log-level", "warning", "--no-access-log"], dict(os.environ), cwd=folder)
        try:
            yield port
        finally:
            stop(server)


def median_of(runs: list[dict]) -> dict:
    figures = {key: float(np.median([run[key] for run in runs])) for key in ("rps", "p50_ms", "p99_ms")}
    return {**figures, "requests": sum(run["requests"] for run in runs), "errors": sum(run["errors"] for run in runs),
            "runs": [[run["rps"], run["p50_ms"], run["p99_ms"]] for run in runs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", help="a published Parquet version to load (e.g. the M shop's)")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=30, help="length of the saturated and paced phases")
    parser.add_argument("--rate", type=float, default=1000, help="requests/s offered in the paced phase")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three phases; medians are reported")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--database-url", default=os.environ.get(postgres.URL_VARIABLE)
                        or "postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    database = postgres.Database.from_url(args.database_url)
    schema = f"recs_bench_{uuid.uuid4().hex[:8]}"
    generated = args.version_dir is None
    names = [f"bench_{TAGS[0]}_{uuid.uuid4().hex[:6]}", f"bench_{TAGS[1]}_{uuid.uuid4().hex[:6]}"]
    tags = {name: index for index, name in enumerate(names)}
    jars = os.environ.get("RECS_JDBC_JARS") or "/usr/share/java/postgresql.jar"
    spark = (SparkSession.builder.master("local[2]").appName("bench-serving").config("spark.ui.enabled", "false")
             .config("spark.jars", jars).config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
    connection = database.connect("recs-bench")
    server = None
    try:
        started = time.perf_counter()
        postgres.ensure_versions_table(connection, schema)
        counts = []
        for index, name in enumerate(names):
            tables = generated_version(index, args.users, args.products) if generated else version_from_dir(
                args.version_dir)
            counts.append(stage(spark, database, schema, name, tables, connection))
            if index == 0:
                postgres.swap_in(connection, schema, name, name, counts[0])
                known = tables["user_recommendations"]["user_id"].drop_duplicates().tolist()
                product_ids = tables["similar_products"]["product_id"].drop_duplicates().tolist()
        print(f"loaded {counts[0]} x 2 versions into {schema} in {time.perf_counter() - started:.0f}s", flush=True)

        env = {**os.environ, "PYTHONPATH": str(REPO / "jobs"), postgres.URL_VARIABLE: args.database_url,
               "RECS_DATABASE_SCHEMA": schema, "RECS_SERVING_POOL_SIZE": "16"}
        server, port = start_server([sys.executable, "-m", "recs.serving", "--workers", str(args.workers)], env)
        swap = {}

        def swap_in():
            began = time.perf_counter()
            swap_connection = database.connect("recs-bench-swap")
            try:
                postgres.swap_in(swap_connection, schema, names[1], names[1], counts[1])
            finally:
                swap_connection.close()
            swap["seconds"] = round(time.perf_counter() - began, 3)

        # Generated ids are in number order, so a sampled index is the user's (product's) number.
        def phase(target_port, rate=None, on_third=None, seconds=args.seconds, check_versions=generated):
            return asyncio.run(load(target_port, seconds, args.clients, known, product_ids, tags, args.products,
                                    check_versions, on_third=on_third, rate=rate))

        runs = {"saturated": [], "paced": [], "ceiling": []}
        load_before = os.getloadavg()[0]
        with ceiling_server(args.workers) as ceiling_port:
            for repeat in range(args.repeat):  # the phases alternate, so that a noisy minute hits all three
                cpu_before = cpu_seconds(server.pid)
                runs["saturated"].append(phase(port, on_third=swap_in if repeat == 0 else None))
                cpu_after = cpu_seconds(server.pid)
                runs["paced"].append(phase(port, rate=args.rate))
                runs["ceiling"].append(phase(ceiling_port, seconds=args.seconds / 3, check_versions=False))
        phases = {name: median_of(found) for name, found in runs.items()}
        every = [run for found in runs.values() for run in found]
        saturated, paced = phases["saturated"], phases["paced"]
        result = {"rps": saturated["rps"], "p50_ms": paced["p50_ms"], "p99_ms": paced["p99_ms"], "rate": args.rate,
                  "errors": sum(run["errors"] for run in every),
                  "mixed_versions": sum(run["mixed_versions"] for run in runs["saturated"] + runs["paced"]),
                  **phases, "rps_vs_ceiling": round(saturated["rps"] / phases["ceiling"]["rps"], 2),
                  "error_samples": [sample for run in every for sample in run["error_samples"]][:5],
                  "answers_by_version": runs["saturated"][0]["answers_by_version"]}
        last = runs["saturated"][-1]
        for part in ("server", "database", "clients"):  # of the last saturated phase
            result[f"{part}_cpu_ms_per_request"] = round(
                (cpu_after[part] - cpu_before[part]) * 1000 / max(last["requests"], 1), 2)
        # What the machine was doing besides: on a shared machine the figures above depend on it.
        result["load_average_1m"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        result["cores"] = os.cpu_count()
        result.update({"clients": args.clients, "workers": args.workers, "users": len(known),
                       "swap_seconds": swap.get("seconds"), "swapped_to": names[1] if swap else None,
                       "generated": generated})
        print(json.dumps(result))
    finally:
        stop(server)
        with connection, connection.cursor() as cursor:
            cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        connection.close()
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
