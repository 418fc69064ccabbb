"""Checks of the recommendation service (recs.serving) against a real published root,
used by tests/e2e/test_standalone_cluster.py on the versions its DAG run publishes (one
DAG run serves both: each costs minutes). Given two published versions of a run, in
Parquet and PostgreSQL:

- the API on a live uvicorn on loopback, once on PostgreSQL and once on Parquet: its
  answers equal the published tables, unknown ids, limits, the versions list, and both
  servers follow a rollback (Parquet: CURRENT moves; PostgreSQL: the swap);
- the pages in headless Chromium (Debian's `chromium`, `make browser`), checked from the
  DOM as a person would read them, with screenshots kept under TEST_ARTIFACTS;
- the Airflow plugin: the API server lists it and its routes answer through it;
- `make recs`'s reader: an unknown id says so in one line.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from recs import postgres
from recs.config import safe_run_id
from recs.reader import current_version_name
from recs_airflow.spark_tasks import build_package_zip, jdbc_jars

REPO = Path(__file__).resolve().parents[1]
# A title a browser would misread if the pages did not escape it (it survives the
# preprocess step's tag stripping: no closing '>').
TRICKY_TITLE = 'Tea cup <3 & "saucer" <b'
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or REPO / "test-artifacts")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, expect: int = 200, headers: dict | None = None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            status, body, kind = response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        status, body, kind = err.code, err.read(), err.headers.get("content-type", "")
    assert status == expect, (url, status, body[:500])
    return json.loads(body) if kind.startswith("application/json") else body.decode("utf-8")


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited {process.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds}s: {log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """The whole process group (spark-class execs java; uvicorn and the api-server fork workers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def title_to_escape(shop: Path) -> None:
    """Give one product of a shop a title that a page must escape to show as written."""
    products = pd.read_csv(shop / "products.csv", dtype=str, keep_default_na=False)
    products.loc[products.index[1], "title"] = TRICKY_TITLE
    products.to_csv(shop / "products.csv", index=False)


def republish(data_root: Path, run_id: str, conf: dict, env: dict, workdir: Path) -> list[str]:
    """The publish step submitted once more for a published run: a second version (a retry's
    name), swapped in. Returns [first, second]."""
    first = current_version_name(str(data_root))
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]",
               "--conf", "spark.ui.enabled=false", "--py-files", str(build_package_zip(target_dir=workdir / "dist"))]
    if jdbc_jars():
        command += ["--jars", jdbc_jars()]
    command += [str(REPO / "jobs" / "publish.py"), "--run-id", run_id, "--params-json", json.dumps(conf)]
    submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    second = current_version_name(str(data_root))
    assert second != first and second.startswith(safe_run_id(run_id))
    return [first, second]


def start_server(published, source: str, logs: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "jobs"), str(REPO / "plugins")]),
           "RECS_DATA_ROOT": str(published["data_root"]), "RECS_DATABASE_SCHEMA": published["schema"],
           "RECS_DATABASE_URL": published["database_url"] if source == "postgres" else ""}
    log = logs / f"serving-{source}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "recs.serving", "--port", str(port)], env=env,
                                   stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/healthz", process, log)
    return url, process


@contextmanager
def serving(published, logs: Path):
    """Two live servers of the published root: {"postgres": url, "parquet": url}."""
    started = {}
    try:
        for source in ("postgres", "parquet"):
            started[source] = start_server(published, source, logs)
        yield {source: url for source, (url, _) in started.items()}
    finally:
        for _, process in started.values():
            stop(process)


def version_tables(published, version: str) -> dict[str, pd.DataFrame]:
    folder = Path(published["data_root"]) / "published" / "versions" / version
    return {name: pd.read_parquet(folder / name) for name in
            ("user_recommendations", "similar_products", "popular_products", "product_clusters", "run_summary",
             "run_metrics")}


def expected_recommendations(tables, user_id: str) -> list[dict]:
    titles = tables["product_clusters"].set_index("product_id")["title"]
    mine = tables["user_recommendations"][tables["user_recommendations"]["user_id"] == user_id].sort_values("rank")
    return [{"rank": int(r["rank"]), "product_id": r["product_id"], "title": titles.get(r["product_id"]),
             "score": pytest.approx(float(r["score"]), rel=1e-6), "reason": r["reason"]}
            for r in mine.to_dict("records")]


def expected_popular(tables, limit: int) -> list[dict]:
    titles = tables["product_clusters"].set_index("product_id")["title"]
    popular = tables["popular_products"].sort_values("rank").head(limit)
    return [{"rank": int(r["rank"]), "product_id": r["product_id"], "title": titles.get(r["product_id"]),
             "score": pytest.approx(float(r["score"]), rel=1e-6), "reason": postgres.POPULAR_REASON}
            for r in popular.to_dict("records")]


def check_api(published, servers, source: str) -> None:
    url, current = servers[source], published["versions"][1]
    tables = version_tables(published, current)
    health = get(f"{url}/healthz")
    assert (health["status"], health["source"], health["version"]) == ("ok", source, current)
    assert 0 <= health["age_seconds"] < 3600

    # Every user's list, in full, with titles and reasons; and the limit.
    users = sorted(tables["user_recommendations"]["user_id"].unique())
    assert len(users) >= 100
    for user_id in users:
        answer = get(f"{url}/v1/users/{user_id}/recommendations?limit=100")
        assert (answer["version"], answer["user_id"], answer["fallback"]) == (current, user_id, None)
        assert answer["items"] == expected_recommendations(tables, user_id)
    limited = get(f"{url}/v1/users/{users[0]}/recommendations?limit=2")["items"]
    assert limited == expected_recommendations(tables, users[0])[:2]
    # An unknown customer: the popular list, said explicitly.
    unknown = get(f"{url}/v1/users/NOBODY-{uuid.uuid4().hex[:6]}/recommendations?limit=3")
    assert unknown["fallback"] == "popular" and unknown["version"] == current
    assert unknown["items"] == expected_popular(tables, 3)
    assert get(f"{url}/v1/popular")["items"] == expected_popular(tables, 10)
    for bad in ("0", "101", "x"):
        get(f"{url}/v1/popular?limit={bad}", expect=422)

    # Similar products of every product, with titles; an unknown product is a 404 with one line.
    titles = tables["product_clusters"].set_index("product_id")["title"]
    similar = tables["similar_products"].sort_values(["product_id", "rank"])
    for product_id, rows in similar.groupby("product_id"):
        answer = get(f"{url}/v1/products/{product_id}/similar?limit=100")
        assert answer["version"] == current and answer["title"] == titles[product_id]
        assert answer["items"] == [
            {"rank": int(r["rank"]), "product_id": r["similar_product_id"], "title": titles[r["similar_product_id"]],
             "score": pytest.approx(float(r["score"]), rel=1e-6)} for r in rows.to_dict("records")]
    missing = get(f"{url}/v1/products/NO-SUCH-PRODUCT/similar", expect=404)
    assert missing["detail"].startswith("unknown product 'NO-SUCH-PRODUCT'") and "\n" not in missing["detail"]

    # Every kept version, newest first, with the figures of its own tables.
    versions = get(f"{url}/v1/versions")["versions"]
    assert [v["version"] for v in versions] == published["versions"][::-1]
    assert [v["current"] for v in versions] == [True, False]
    for info in versions:
        own = version_tables(published, info["version"])
        summary, metrics = own["run_summary"].iloc[0], own["run_metrics"]
        overall = metrics[(metrics["segment"] == "all") & (metrics["metric"] == "ndcg")].set_index("method")["value"]
        baselines = overall.drop(labels=["published", "without_time", "without_text"])
        assert info["run_id"] == published["run_id"] and info["metric"] == "ndcg@10"
        assert info["ndcg"] == pytest.approx(summary["ndcg_at_10"])
        assert info["best_baseline"] == baselines.idxmax()
        assert info["best_baseline_ndcg"] == pytest.approx(baselines.max())
        assert info["catalog_coverage"] == pytest.approx(summary["catalog_coverage"])
        assert info["gate_passed"] is True and info["gate_message"].startswith("passed")

    # The OpenAPI docs.
    assert "swagger" in get(f"{url}/docs").lower()
    assert "/v1/users/{user_id}/recommendations" in get(f"{url}/openapi.json")["paths"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium: `make browser` (run by `make test`) installs Debian's package")
        pytest.skip("no chromium (make browser installs it)")
    return found


def browse(url: str, screenshot: Path) -> str:
    """The DOM after Chromium loaded the page, and a screenshot of it."""
    common = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--hide-scrollbars", f"--user-data-dir={screenshot.parent / '.chromium'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run([*common, "--window-size=1280,1400", f"--screenshot={screenshot}", url],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    return dom.stdout


def cells(dom: str, css_class: str) -> list[str]:
    """The text of every <td class="css_class"> (tags dropped, entities decoded), as a person reads it."""
    found = re.findall(rf'<td class="{css_class}">(.*?)</td>', dom, flags=re.S)
    return [html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cell))).strip() for cell in found]


def check_pages(published, servers) -> None:
    url, current = servers["parquet"], published["versions"][1]
    tables = version_tables(published, current)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    recommendations = tables["user_recommendations"]
    titles = tables["product_clusters"].set_index("product_id")["title"]
    tricky = titles[titles == TRICKY_TITLE].index[0]
    # A customer who bought the product with the tricky title, or else the first one.
    events = pd.read_parquet(Path(published["data_root"]) / "runs" / published["run_id"] / "events")
    bought = events[events["event_type"] == "purchase"]
    buyers = bought[bought["product_id"] == tricky]["user_id"]
    user_id = buyers.iloc[0] if len(buyers) else recommendations["user_id"].iloc[0]

    dom = browse(f"{url}/customers/{user_id}", ARTIFACTS / "customer.png")
    mine = recommendations[recommendations["user_id"] == user_id].sort_values("rank")
    shown = cells(dom, "title")
    assert [text.rsplit(" ", 1)[0] for text in shown] == [titles[p] for p in mine["product_id"]]
    assert cells(dom, "reason") == list(mine["reason"])
    history = set(bought[bought["user_id"] == user_id]["product_id"].map(titles))
    section = dom[dom.index('id="history"'):dom.index('id="recommendations"')]
    for title in history:
        assert html.escape(title, quote=False) in section or html.escape(title) in section
    if len(buyers):
        assert TRICKY_TITLE not in dom  # never raw in the markup ...
        assert html.escape(TRICKY_TITLE, quote=False) in dom  # ... but escaped, so it reads as written

    dom = browse(f"{url}/products/{tricky}", ARTIFACTS / "product.png")
    shown = dom.split('<p id="product">')[1].split("</p>")[0]
    assert shown.startswith(html.escape(TRICKY_TITLE, quote=False)) and "<b" not in shown  # text, not a tag
    cluster = tables["product_clusters"].set_index("product_id").loc[tricky, "cluster"]
    assert re.search(rf'id="cluster">{cluster}<', dom)
    similar = tables["similar_products"][tables["similar_products"]["product_id"] == tricky].sort_values("rank")
    assert [t.rsplit(" ", 1)[0] for t in cells(dom, "title")] == [titles[p] for p in similar["similar_product_id"]]

    dom = browse(f"{url}/runs", ARTIFACTS / "runs.png")
    chart = dom[dom.index('<svg id="ndcg-chart"'):dom.index("</svg>", dom.index('<svg id="ndcg-chart"'))]
    assert chart.count('<circle class="ours"') == 2 and chart.count('<circle class="baseline"') == 2
    assert all(version in dom for version in published["versions"]) and "(current)" in dom
    assert dom.count('class="run current"') == 1

    report = get(f"{url}/report")
    assert report == (Path(published["data_root"]) / "published" / "versions" / current / "report.html").read_text()


def check_unknown_ids(published) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "jobs"), str(REPO / "plugins")]),
           "RECS_DATA_ROOT": str(published["data_root"]), "RECS_DATABASE_URL": published["database_url"],
           "RECS_DATABASE_SCHEMA": published["schema"]}
    for source in ("postgres", "parquet"):
        for what, wanted in (("user", "unknown customer 'U-TYPO'"), ("similar", "unknown product 'U-TYPO'")):
            result = subprocess.run([sys.executable, "-m", "recs.reader", what, "U-TYPO", "--source", source],
                                    env=env, capture_output=True, text=True, timeout=120)
            assert result.returncode == 1 and result.stdout == ""
            assert result.stderr.startswith(f"error: {wanted}") and result.stderr.count("\n") == 1, result.stderr


def check_plugin(published, tmp_path: Path) -> None:
    port = free_port()
    env = {**published["env"], "RECS_DATABASE_URL": "",
           "AIRFLOW__API__PORT": str(port), "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
           "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False", "AIRFLOW__API__WORKERS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "jobs"), str(REPO / "plugins")])}
    log = tmp_path / "api-server.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(["airflow", "api-server", "--port", str(port), "--host", "127.0.0.1"], env=env,
                                   stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/api/v2/monitor/health", process, log, seconds=180)
        # Every user an admin: a token without credentials, for the REST API's listing.
        token = get(f"{base}/auth/token", expect=201)["access_token"]
        plugins = get(f"{base}/api/v2/plugins", headers={"Authorization": f"Bearer {token}"})["plugins"]
        [plugin] = [p for p in plugins if p["name"] == "recs_serving"]
        assert plugin["fastapi_apps"][0]["url_prefix"] == "/recs"
        assert plugin["external_views"][0]["href"] == "/recs/runs"
        assert plugin["external_views"][0]["destination"] == "nav"
        current = published["versions"][1]
        assert get(f"{base}/recs/healthz")["version"] == current
        users = get(f"{base}/recs/v1/users/NOBODY/recommendations")
        assert users["fallback"] == "popular" and users["version"] == current
        page = get(f"{base}/recs/runs")
        assert 'id="ndcg-chart"' in page and 'href="/recs/report"' in page
    finally:
        stop(process)


def check_rollback(published, servers) -> None:
    first, second = published["versions"]
    data_root = str(published["data_root"])
    database = postgres.Database.from_url(published["database_url"])
    assert postgres.rollback(database, published["schema"]) == (second, first)
    assert postgres.point_parquet_to(data_root, first)
    tables = version_tables(published, first)
    user_id = sorted(tables["user_recommendations"]["user_id"].unique())[3]
    for source, url in servers.items():
        deadline = time.monotonic() + 30
        while get(f"{url}/healthz")["version"] != first:
            assert time.monotonic() < deadline, f"{source} still serves {second}"
            time.sleep(0.5)
        answer = get(f"{url}/v1/users/{user_id}/recommendations")
        assert answer["version"] == first and answer["items"] == expected_recommendations(tables, user_id)
        versions = get(f"{url}/v1/versions")["versions"]
        assert {v["version"]: v["current"] for v in versions} == {first: True, second: False}
