"""Read the published tables without Spark (pandas + pyarrow), as a storefront or a
person at a terminal would. Local data roots only; a cluster reads them with Spark.
With RECS_DATABASE_URL set, `user`, `similar` and `summary` read PostgreSQL instead
(the schema RECS_DATABASE_SCHEMA, through recs.postgres).

`ParquetVersion` holds one published version in memory, indexed for lookups by id:
the CLI and the HTTP service (recs.serving, through `ParquetStore`, which follows
`published/CURRENT`) answer from the same object, so they give the same answers.

    python -m recs.reader user U00042
    python -m recs.reader similar P00017
    python -m recs.reader summary
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recs import postgres
from recs.config import RecsConfig
from recs.io import resolve_pointer
from recs.metrics import best_baseline

log = logging.getLogger(__name__)
MANIFEST = "_MANIFEST.json"


class UnknownId(KeyError):
    """An id the published version does not hold; its message is one line for a person."""


def unknown_customer(user_id: str) -> UnknownId:
    return UnknownId(f"unknown customer {user_id!r}: no recommendations for this id in the published version "
                     "(a new customer gets the popular products)")


def unknown_product(product_id: str) -> UnknownId:
    return UnknownId(f"unknown product {product_id!r}: it is not in the published catalog")


def _read_or_none(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def current_version_name(data_root: str) -> str | None:
    """The version readers should use, found as the Spark jobs find it (recs.io.resolve_pointer)."""
    published = os.path.join(data_root.removeprefix("file://"), "published")
    return resolve_pointer(lambda folder: os.listdir(folder) if os.path.isdir(folder) else [], _read_or_none, published)


def current_version_dir(data_root: str) -> str:
    version = current_version_name(data_root)
    published = os.path.join(data_root.removeprefix("file://"), "published")
    if version is None:
        raise FileNotFoundError(f"nothing published yet under {published}: run the DAG first")
    return os.path.join(published, "versions", version)


def published_table(data_root: str, table: str) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(current_version_dir(data_root), table))


def _ranked(table: pd.DataFrame, key: str) -> tuple[dict[str, tuple[int, int]], pd.DataFrame]:
    """Rows sorted by (key, rank) and key -> (start, end) of its rows: a lookup is a slice."""
    table = table.sort_values([key, "rank"], kind="stable").reset_index(drop=True)
    keys = table[key].to_numpy()
    if len(keys) == 0:
        return {}, table
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    return dict(zip(keys[starts].tolist(), zip(starts.tolist(), ends.tolist(), strict=True), strict=True)), table


class ParquetVersion:
    """One published version, read once and kept in memory, indexed by user and product.

    Every answer comes from this one object, so an answer never mixes two versions."""

    def __init__(self, version_dir: str):
        self.path = version_dir.rstrip("/")
        self.name = os.path.basename(self.path)
        manifest = _read_json(os.path.join(self.path, MANIFEST)) or {}
        self.run_id = manifest.get("run_id", self.name)
        self.published_at = manifest.get("published_at")
        clusters = pd.read_parquet(os.path.join(self.path, "product_clusters"))
        self.products = {row["product_id"]: row for row in clusters.drop(columns=["pca"], errors="ignore")
                         .to_dict("records")}
        self.titles = {pid: row.get("title") for pid, row in self.products.items()}
        self._users, recommendations = _ranked(pd.read_parquet(os.path.join(self.path, "user_recommendations")),
                                               "user_id")
        self._recommendations = self._items(recommendations, "product_id", reason=True)
        self._similar_index, similar = _ranked(pd.read_parquet(os.path.join(self.path, "similar_products")),
                                               "product_id")
        self._similar = self._items(similar, "similar_product_id")
        popular = pd.read_parquet(os.path.join(self.path, "popular_products")).sort_values("rank")
        self._popular = [{**item, "reason": postgres.POPULAR_REASON} for item in self._items(popular, "product_id")]
        summary = pd.read_parquet(os.path.join(self.path, "run_summary"))
        self.summary = summary.iloc[0].to_dict() if len(summary) else {}
        metrics_dir = os.path.join(self.path, "run_metrics")
        self.metrics = pd.read_parquet(metrics_dir) if os.path.isdir(metrics_dir) else None

    def _items(self, table: pd.DataFrame, product_column: str, reason: bool = False) -> list[dict]:
        products = table[product_column].tolist()
        columns = {
            "rank": table["rank"].astype(int).tolist(),
            "product_id": products,
            "title": [self.titles.get(p) for p in products],
            "score": table["score"].astype(float).tolist(),
        }
        if reason:
            columns["reason"] = table["reason"].tolist()
        names = list(columns)
        return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._users

    def recommendations(self, user_id: str, limit: int | None = None) -> tuple[list[dict], bool]:
        """(items, personal): an unknown user gets the popular products, personal False."""
        rows = self._users.get(user_id)
        if rows is None:
            return self.popular(limit), False
        start, end = rows
        return self._recommendations[start:end][:limit], True

    def similar(self, product_id: str, limit: int | None = None) -> list[dict]:
        rows = self._similar_index.get(product_id)
        if rows is None:
            raise unknown_product(product_id)
        start, end = rows
        return self._similar[start:end][:limit]

    def popular(self, limit: int | None = None) -> list[dict]:
        return self._popular[:limit]

    def product(self, product_id: str) -> dict:
        if product_id not in self.products:
            raise unknown_product(product_id)
        return self.products[product_id]

    def info(self, current: bool) -> dict:
        return version_info(self.name, self.run_id, self.published_at, self.summary, self.metrics, current)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def override_reason(config: dict) -> str | None:
    """The gate override's reason in a run's config_json: in the evaluation section since
    the settings have sections, at the top level in the runs published before."""
    reason = config.get("evaluation", {}).get("gate_override_reason") or config.get("gate_override_reason")
    return reason or None


def version_info(version: str, run_id: str, published_at, summary: dict | None, metrics: pd.DataFrame | None,
                 current: bool) -> dict:
    """What the versions list says of one version, from its run_summary row and run_metrics.

    Read defensively: older versions lack columns that newer ones have."""
    summary = summary or {}
    ndcg_column = next((c for c in sorted(summary) if c.startswith("ndcg_at_")), None)
    ndcg = summary.get(ndcg_column) if ndcg_column else None
    baseline, baseline_ndcg = best_baseline(metrics) if metrics is not None and len(metrics) else (None, None)
    overridden = bool(summary.get("gate_overridden")) if summary.get("gate_overridden") is not None else None
    reason = None
    if overridden:
        try:
            reason = override_reason(json.loads(summary.get("config_json") or "{}"))
        except ValueError:
            reason = None
    return {
        "version": version,
        "run_id": summary.get("run_id") or run_id,
        "published_at": published_at if published_at is None else str(published_at),
        "metric": f"ndcg@{ndcg_column.removeprefix('ndcg_at_')}" if ndcg_column else None,
        "ndcg": _number(ndcg),
        "best_baseline": baseline,
        "best_baseline_ndcg": baseline_ndcg,
        "catalog_coverage": _number(summary.get("catalog_coverage")),
        "gate_passed": None if summary.get("gate_passed") is None else bool(summary.get("gate_passed")),
        "gate_overridden": overridden,
        "gate_message": summary.get("gate_message"),
        "override_reason": reason,
        "current": current,
    }


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def load_version(data_root: str) -> ParquetVersion:
    return ParquetVersion(current_version_dir(data_root))


@dataclass
class ParquetStore:
    """The current Parquet version for a long-running reader (the HTTP service).

    A version is loaded once. CURRENT is looked at no more than every `recheck_seconds`;
    when it names another version, that one is loaded in a background thread while the
    old one keeps answering, then swapped in by one reference assignment: a request
    takes `version()` once and answers from that object only."""

    data_root: str
    recheck_seconds: float = 1.0
    _version: ParquetVersion | None = field(default=None, init=False)
    _checked: float = field(default=0.0, init=False)
    _loading: str | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def version(self) -> ParquetVersion:
        now = time.monotonic()
        loaded = self._version
        if loaded is not None and now - self._checked < self.recheck_seconds:
            return loaded
        self._checked = now
        wanted = current_version_name(self.data_root)
        if wanted is None:
            raise FileNotFoundError(f"nothing published yet under {self.data_root}/published: run the DAG first")
        if loaded is None:
            with self._lock:
                if self._version is None:
                    self._version = self._load(wanted)
                return self._version
        if wanted != loaded.name and self._loading is None:
            with self._lock:
                if self._loading is None:
                    self._loading = wanted
                    threading.Thread(target=self._load_in_background, args=(wanted,), daemon=True).start()
        return loaded

    def _load(self, name: str) -> ParquetVersion:
        started = time.monotonic()
        version = ParquetVersion(os.path.join(self.data_root, "published", "versions", name))
        log.info("serving version %s (loaded in %.1fs)", name, time.monotonic() - started)
        return version

    def _load_in_background(self, name: str) -> None:
        try:
            self._version = self._load(name)
        except Exception:  # noqa: BLE001 - keep serving the loaded version; retried at the next check
            log.exception("could not load published version %s; still serving %s", name,
                          self._version.name if self._version else None)
        finally:
            self._loading = None

    def versions(self) -> list[dict]:
        """Every kept version, newest first, with its figures and the current flag."""
        folder = os.path.join(self.data_root, "published", "versions")
        current = current_version_name(self.data_root)
        infos = []
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            path = os.path.join(folder, name)
            manifest = _read_json(os.path.join(path, MANIFEST))
            if manifest is None:
                continue  # being written, or not a version
            summary = _read_optional(os.path.join(path, "run_summary"))
            metrics = _read_optional(os.path.join(path, "run_metrics"))
            infos.append(version_info(name, manifest.get("run_id", name), manifest.get("published_at"),
                                      summary.iloc[0].to_dict() if summary is not None and len(summary) else None,
                                      metrics, name == current))
        return sorted(infos, key=lambda info: info["published_at"] or "", reverse=True)

    def report_path(self, version: str | None = None) -> str:
        return os.path.join(self.data_root, "published", "versions", version or self.version().name, "report.html")


def _read_optional(path: str) -> pd.DataFrame | None:
    return pd.read_parquet(path) if os.path.isdir(path) else None


def purchase_history(data_root: str, run_id: str, user_id: str, limit: int = 50) -> list[dict] | None:
    """What a customer bought, newest first, with titles, from the run's cleaned events
    (the run folder the version was published from); None when that folder is gone."""
    import pyarrow.dataset as ds

    run_dir = os.path.join(data_root, "runs", run_id)
    if not os.path.isdir(os.path.join(run_dir, "events")):
        return None
    events = ds.dataset(os.path.join(run_dir, "events"), format="parquet")
    bought = events.to_table(
        filter=(ds.field("user_id") == user_id) & (ds.field("event_type") == "purchase")
    ).to_pandas()
    if bought.empty:
        return []
    if "ts" in bought:
        bought = bought.sort_values("ts", ascending=False)
    bought = bought.head(limit)
    products = ds.dataset(os.path.join(run_dir, "products"), format="parquet").to_table(
        columns=["product_id", "title"], filter=ds.field("product_id").isin(bought["product_id"].unique().tolist())
    ).to_pandas().set_index("product_id")["title"]
    return [{"product_id": row["product_id"], "title": products.get(row["product_id"]),
             "ts": None if pd.isna(row.get("ts")) else pd.Timestamp(row["ts"]).isoformat(),
             "quantity": None if pd.isna(row.get("quantity")) else int(row["quantity"])}
            for row in bought.to_dict("records")]


COLUMNS = ["rank", "product_id", "title", "score", "reason"]


def recommendations_for(data_root: str, user_id: str) -> pd.DataFrame:
    """A user's recommendations with titles; an unknown user is an error (UnknownId)."""
    version = load_version(data_root)
    if not version.knows_user(user_id):
        raise unknown_customer(user_id)
    return pd.DataFrame(version.recommendations(user_id)[0], columns=COLUMNS)


def similar_to(data_root: str, product_id: str) -> pd.DataFrame:
    rows = pd.DataFrame(load_version(data_root).similar(product_id))
    return rows.rename(columns={"product_id": "similar_product_id"})[["rank", "similar_product_id", "title", "score"]]


def summary(data_root: str) -> pd.Series:
    return published_table(data_root, "run_summary").drop(columns=["config_json", "stats_json"]).iloc[0]


def print_samples(data_root: str, users: int = 3) -> None:
    """What `make run` shows at the end: where the tables are, and a few users' picks."""
    version = current_version_dir(data_root)
    print(f"\nPublished tables: {version}")
    for name in sorted(os.listdir(version)):
        if not name.startswith(("_", ".")):
            print(f"  {os.path.join(version, name)}")
    print("\nRun summary:\n" + summary(data_root).to_string())
    recommendations = published_table(data_root, "user_recommendations")
    loaded = ParquetVersion(version)
    # The users with the most personal recommendations show the model at work.
    personal = recommendations[recommendations["reason_product_id"].notna()]
    for user_id in personal["user_id"].value_counts().index[:users]:
        print(f"\nRecommendations for user {user_id}:")
        table = pd.DataFrame(loaded.recommendations(user_id)[0], columns=COLUMNS)
        print(table.to_string(index=False, max_colwidth=60))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Look at the published recommendations.")
    parser.add_argument("what", choices=["user", "similar", "summary", "samples"])
    parser.add_argument("id", nargs="?", help="user id (user) or product id (similar)")
    parser.add_argument("--data-root", default=None, help="defaults to RECS_DATA_ROOT")
    parser.add_argument("--source", choices=["auto", "parquet", "postgres"], default="auto",
                        help="auto (default): PostgreSQL when RECS_DATABASE_URL is set, else Parquet")
    args = parser.parse_args(argv)
    config = RecsConfig.load()  # also reads .env, where RECS_DATABASE_URL may be
    data_root = args.data_root or config.input.data_root
    database = None if args.source == "parquet" else postgres.configured_database()
    if args.source == "postgres" and database is None:
        parser.error(f"--source postgres needs {postgres.URL_VARIABLE}")
    schema = config.publish.database_schema
    pd.set_option("display.width", 200)
    try:
        if args.what in ("user", "similar") and not args.id:
            variable = "CUSTOMER" if args.what == "user" else "PRODUCT"
            parser.error(f"'{args.what}' needs an id: make {'recs' if args.what == 'user' else 'similar'} "
                         f"{variable}=<id>")
        if args.what == "user":
            mine = (postgres.recommendations_for(database, schema, args.id) if database
                    else recommendations_for(data_root, args.id))
            print(mine.to_string(index=False, max_colwidth=60))
        elif args.what == "similar":
            similar = postgres.similar_to(database, schema, args.id) if database else similar_to(data_root, args.id)
            print(similar.to_string(index=False, max_colwidth=60))
        elif args.what == "summary":
            print((postgres.summary(database, schema) if database else summary(data_root)).to_string())
        else:
            print_samples(data_root)
    except (FileNotFoundError, KeyError, postgres.DatabaseError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
