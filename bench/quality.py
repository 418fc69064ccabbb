"""Recommendation quality on the real data sets: the evaluate step's protocol, every
baseline and ablation, printed as a method x metric table per data set.

    .venv/bin/python bench/quality.py
    .venv/bin/python bench/quality.py --online-retail CSV --amazon ITEMS_JSON INTERACTIONS_JSON

It runs the pipeline's own steps (preprocess, embed, PCA, clustering, the content
neighbours of the recommend step, evaluate) in one local Spark session on a scratch
data root. The last line is one JSON object:
{"<dataset>": {"published": M, "baselines": {...}, "ablations": {...}}}, each M being
{"hit@10", "ndcg@10", "recall@10", "coverage"}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from scipy import sparse

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path[:0] = [str(REPO / "jobs"), str(REPO / "plugins")]

from recs import cluster, embed, evaluate, io, pca, preprocess  # noqa: E402
from recs.config import RecsConfig  # noqa: E402
from recs.io import RunPaths  # noqa: E402
from recs.model import catalog_index, content_edges  # noqa: E402
from recs.recommend import content_neighbours  # noqa: E402
from recs.runtime import build_spark  # noqa: E402
from recs.scoring import ItemIndex  # noqa: E402
from recs_airflow.spark_tasks import local_driver_memory  # noqa: E402

ABLATIONS = ("without_time", "without_text")


@dataclass
class Prepared:
    """A data set after the steps before evaluation, ready to evaluate with any settings."""

    name: str
    paths: RunPaths
    settings: dict  # the overrides that read it
    index: ItemIndex  # the catalog
    content: sparse.csr_matrix  # the content edges (`recs.model.content_edges`)
    clusters: pd.DataFrame


def prepare_dataset(spark, name: str, input_path: str, input_format: str, data_root: str) -> Prepared:
    """Run preprocess, embed, PCA, clustering and the content neighbours on a data set."""
    settings = {"input_path": input_path, "input_format": input_format, "data_root": data_root}
    config = RecsConfig.load(settings)
    paths = RunPaths(config.input.data_root, f"bench_{name}")
    for step in (preprocess, embed, pca, cluster):
        started = time.monotonic()
        stats = step.run(spark, config, paths)
        io.write_json(spark, paths.stats(step.__name__.split(".")[-1]), stats)
        print(f"[{name}] {step.__name__.split('.')[-1]}: {time.monotonic() - started:.0f}s", flush=True)
    embeddings = io.read_table(spark, paths.table("embeddings"))
    neighbours = content_neighbours(spark, embeddings, config.recommender.neighbours_per_product,
                                    exact_max=config.recommender.exact_neighbours_max, seed=config.runtime.seed)
    index = catalog_index(io.read_table(spark, paths.table("products")))
    clusters = io.read_table(spark, paths.table("product_clusters")).select("product_id", "cluster").toPandas()
    return Prepared(name, paths, settings, index, content_edges(neighbours, index), clusters)


def evaluate_prepared(spark, prepared: Prepared, **overrides) -> tuple[pd.DataFrame, dict]:
    """The evaluate step's protocol on a prepared data set: (run_metrics rows, tuning)."""
    config = RecsConfig.load({**prepared.settings, **overrides})
    paths = prepared.paths
    events = io.read_table(spark, paths.table("events")).cache()
    started = time.monotonic()
    with io.work_folder(spark, paths, "evaluate") as work:
        metrics, tuning = evaluate.evaluate_methods(events, prepared.index, prepared.content,
                                                    prepared.clusters, config, evaluate.protocol_for(spark, paths),
                                                    work)
    print(f"[{prepared.name}] evaluate {overrides or ''}: {time.monotonic() - started:.0f}s; "
          f"tuned: {json.dumps(tuning, default=str)}", flush=True)
    return metrics, tuning


def evaluate_dataset(spark, name: str, input_path: str, input_format: str, data_root: str) -> pd.DataFrame:
    return evaluate_prepared(spark, prepare_dataset(spark, name, input_path, input_format, data_root))[0]


def summarise(metrics, k: int) -> dict:
    overall = metrics[metrics["segment"] == "all"].pivot_table(index="method", columns="metric", values="value")

    def figures(method: str) -> dict:
        row = overall.loc[method]
        return {f"hit@{k}": row["hit"], f"ndcg@{k}": row["ndcg"], f"recall@{k}": row["recall"],
                "coverage": row["coverage"]}

    baselines = [m for m in overall.index if m != "published" and m not in ABLATIONS]
    return {
        "published": figures("published"),
        "baselines": {m: figures(m) for m in baselines},
        "ablations": {m: figures(m) for m in ABLATIONS if m in overall.index},
    }


def print_table(name: str, metrics, k: int) -> None:
    overall = metrics[metrics["segment"] == "all"].pivot_table(index="method", columns="metric", values="value")
    columns = ["ndcg", "hit", "recall", "map", "coverage", "diversity", "novelty"]
    overall = overall[columns].sort_values("ndcg", ascending=False)
    print(f"\n== {name} (@{k}, {int(metrics[metrics['metric'] == 'users']['value'].max())} test users) ==")
    print(overall.to_string(float_format=lambda v: f"{v:.4f}"))
    best = overall.drop(index=["published", *ABLATIONS], errors="ignore")["ndcg"]
    print(f"published / best baseline ({best.idxmax()}): {overall.loc['published', 'ndcg'] / best.max():.2f}x")
    segments = metrics[metrics["metric"] == "ndcg"].pivot_table(index="method", columns="segment", values="value")
    print(f"\nNDCG@{k} by segment:\n" + segments.to_string(float_format=lambda v: f"{v:.4f}"))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--online-retail", default=str(SHARED / "online_retail" / "online_retail.csv.gz"))
    parser.add_argument("--amazon", nargs=2, metavar=("ITEMS_JSON", "INTERACTIONS_JSON"),
                        default=[str(SHARED / "amazon_office" / "office.item.json.gz"),
                                 str(SHARED / "amazon_office" / "office.inter.json.gz")])
    parser.add_argument("--only", choices=["online_retail", "amazon_office"], help="run one data set")


@contextlib.contextmanager
def bench_datasets(args: argparse.Namespace, app_name: str) -> Iterator[tuple]:
    """(spark, {name: (input path, input format)}, data root) on a scratch folder,
    removed after; the data sets are read where they are (never copied)."""
    scratch = tempfile.mkdtemp(prefix="recs-bench-")
    # The Amazon importer reads a folder with *item.json* and *inter.json*.
    amazon = os.path.join(scratch, "amazon_input")
    os.makedirs(amazon)
    for source, name in zip(args.amazon, ("bench.item.json", "bench.inter.json"), strict=True):
        os.symlink(os.path.abspath(source), os.path.join(amazon, name + (".gz" if source.endswith(".gz") else "")))
    datasets = {
        "online_retail": (args.online_retail, "online_retail"),
        "amazon_office": (amazon, "amazon_reviews"),
    }
    datasets = {name: dataset for name, dataset in datasets.items() if args.only in (None, name)}
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the workers need this venv's packages
    # The driver memory the DAG's tasks get on `local[*]`: the JVM starts here, so spark-submit's arguments.
    config = RecsConfig.load()
    heap, max_result = local_driver_memory(config)
    os.environ["PYSPARK_SUBMIT_ARGS"] = (
        f"--driver-memory {heap} --conf spark.driver.maxResultSize={max_result} pyspark-shell")
    spark = build_spark(app_name, config)
    spark.sparkContext.setLogLevel("WARN")
    try:
        yield spark, datasets, os.path.join(scratch, "data")
    finally:
        spark.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    k = RecsConfig.load().evaluation.eval_k
    results = {}
    with bench_datasets(args, "recs-bench-quality") as (spark, datasets, data_root):
        for name, (path, input_format) in datasets.items():
            metrics = evaluate_dataset(spark, name, path, input_format, data_root)
            print_table(name, metrics, k)
            results[name] = summarise(metrics, k)
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
