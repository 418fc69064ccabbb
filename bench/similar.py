"""Similar products from the approximate index: its recall against exact, and its time.

    .venv/bin/python bench/similar.py --size M      # 100k products
    .venv/bin/python bench/similar.py --size L      # 1M products

It makes the catalog of `bench/scale.py`'s shop of that size (`recs.synthetic`'s
generator, same seed; only the products), embeds each product's text as the pipeline
builds it with the hashing backend (HASHING_DIMENSIONS), and writes the embeddings as
Parquet. Then, in Spark `local[*]`, the recommend step's `content_neighbours` with the
approximate path forced: `build_s` is the driver's part (reading the catalog, training
and filling the index, writing its file), `query_s` the tasks querying every product and
writing the table. Exact top-20 comes from a blocked numpy product of a seeded sample
of `--queries` products against the whole catalog.

Two recalls, both over the sample's 20 best: `recall_at_20` counts a neighbour found as
right when its exact cosine is at least the exact 20th best (a tie with it is as good
an answer); `id_recall_at_20` asks for the very ids exact returned. They differ when
many products tie at the 20th place: the synthetic texts come from a few thousand
templates (colour, material, noun, size) that differ only by a model number, so at 1M
products dozens of products score the same against a query, and which of them exact
keeps is arbitrary. `tied_queries` is the share of queries with more than 20 products
at or above the 20th best score.

The last line is one JSON object:
{"size": "M", "products": .., "queries": .., "recall_at_20": .., "id_recall_at_20": ..,
 "build_s": .., "query_s": .., "total_s": .., "exact_s": .., "peak_rss_mb": .., ...}
where `peak_rss_mb` is the largest resident set of one process (this one, the driver
JVM or a Python worker) and `peak_total_rss_mb` the largest sum over them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "jobs"))
# The Python workers run this interpreter and import recs from here, not from wherever the venv points.
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "jobs"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

from recs import neighbours  # noqa: E402
from recs.config import RecsConfig  # noqa: E402
from recs.embeddings.base import normalise_rows  # noqa: E402
from recs.embeddings.hashing import HashingBackend  # noqa: E402
from recs.preprocess import TEXT_SEPARATOR  # noqa: E402
from recs.synthetic import scale_products  # noqa: E402

SIZES = {"S": 10_000, "M": 100_000, "L": 1_000_000}
SHOP_SEED = 7  # recs.synthetic.write_scale_shop's: the same catalog as bench/scale.py's shop
TOP = 20
QUERIES_PER_BLOCK = 250  # exact: 250 x 1M float32 scores = 1 GB at a time


class RssSampler(threading.Thread):
    """The largest RSS of one process of this tree, and of their sum."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_one, self.peak_total = interval, 0.0, 0.0
        self.stop_event = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop_event.is_set():
            sizes = []
            for process in [me, *me.children(recursive=True)]:
                try:
                    sizes.append(process.memory_info().rss / 2**20)
                except psutil.Error:
                    continue
            self.peak_one, self.peak_total = max(self.peak_one, *sizes), max(self.peak_total, sum(sizes))
            self.stop_event.wait(self.interval)


def catalog_embeddings(products: int, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, unit vectors) of the synthetic catalog, texts built as preprocess builds them."""
    columns = scale_products(np.random.default_rng(SHOP_SEED), products)
    texts = [TEXT_SEPARATOR.join(parts) for parts in zip(columns["title"], columns["category"],
                                                         columns["description"], strict=True)]
    return columns["product_id"], HashingBackend(dimensions).embed(texts)


def write_embeddings(folder: Path, ids: np.ndarray, vectors: np.ndarray, files: int = 8) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    bounds = np.linspace(0, len(ids), files + 1).astype(np.int64)
    for part, (low, high) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        values = pa.array(vectors[low:high].ravel(), pa.float32())
        offsets = pa.array(np.arange(0, (high - low + 1) * vectors.shape[1], vectors.shape[1], dtype=np.int32))
        table = pa.table({"product_id": pa.array(ids[low:high], pa.string()),
                          "embedding": pa.ListArray.from_arrays(offsets, values)})
        pq.write_table(table, folder / f"part-{part:05d}.parquet")


def exact_top(unit: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, 20th best score, more than 20 at or above it) of each query, itself excluded."""
    rows, kth, tied = [], [], []
    for start in range(0, len(queries), QUERIES_PER_BLOCK):
        block = queries[start:start + QUERIES_PER_BLOCK]
        scores = unit[block] @ unit.T
        scores[np.arange(len(block)), block] = -np.inf
        best = np.argpartition(scores, -TOP, axis=1)[:, -TOP:].copy()  # a copy: the view would keep it all
        bound = np.take_along_axis(scores, best, axis=1).min(axis=1)
        rows.append(best)
        kth.append(bound)
        tied.append((scores >= bound[:, None] - 1e-6).sum(axis=1) > TOP)
        del scores
    return np.concatenate(rows), np.concatenate(kth), np.concatenate(tied)


def found_top(table_folder: Path, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The approximate path's 20 best rows of each query product, from the written table."""
    import pandas as pd
    import pyarrow.dataset as ds

    wanted = ids[queries]
    table = ds.dataset(str(table_folder), format="parquet").to_table(
        filter=ds.field("product_id").isin(wanted.tolist()))
    frame = table.to_pandas().sort_values(["product_id", "score", "neighbour_id"], ascending=[True, False, True])
    position = pd.Index(ids)
    best = frame.groupby("product_id", sort=False).head(TOP)
    by_product = best.groupby("product_id")["neighbour_id"].apply(lambda s: position.get_indexer(s).tolist())
    return np.array([by_product[pid] for pid in wanted])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), required=True)
    parser.add_argument("--queries", type=int, default=10_000, help="products whose recall is measured")
    parser.add_argument("--root", help="scratch folder (default /tmp/recs-similar-<size>); emptied first")
    parser.add_argument("--lists-per-sqrt", type=float, help=f"index cells per sqrt(products) "
                        f"(default {neighbours.LISTS_PER_SQRT_PRODUCT})")
    parser.add_argument("--probes", type=int, help=f"cells scanned per query (default {neighbours.PROBES})")
    parser.add_argument("--driver-memory", default="8g")
    args = parser.parse_args(argv)
    if args.lists_per_sqrt:
        neighbours.LISTS_PER_SQRT_PRODUCT = args.lists_per_sqrt
    if args.probes:
        neighbours.PROBES = args.probes
    config = RecsConfig()

    root = Path(args.root or f"/tmp/recs-similar-{args.size}").resolve()
    shutil.rmtree(root, ignore_errors=True)
    sampler = RssSampler(1.0)
    sampler.start()
    started = time.monotonic()
    ids, vectors = catalog_embeddings(SIZES[args.size], config.embedding.hashing_dimensions)
    write_embeddings(root / "embeddings", ids, vectors)
    lists, probes = neighbours.index_shape(len(ids))
    print(f"catalog {args.size}: {len(ids)} products x {vectors.shape[1]} dimensions embedded and written in "
          f"{time.monotonic() - started:.0f}s; index: {lists} lists, {probes} probed", flush=True)

    from pyspark.sql import SparkSession

    from recs.recommend import content_neighbours

    spark = (SparkSession.builder.master("local[*]").appName("bench-similar")
             .config("spark.driver.memory", args.driver_memory)
             .config("spark.driver.maxResultSize", "4g")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    embeddings = spark.read.parquet(str(root / "embeddings"))
    started = time.monotonic()
    content = content_neighbours(spark, embeddings, config.recommender.neighbours_per_product, exact_max=0,
                                 seed=config.runtime.seed)
    build = time.monotonic() - started
    print(f"index built in {build:.1f}s", flush=True)
    started = time.monotonic()
    content.write.mode("overwrite").parquet(str(root / "content_neighbours"))
    query = time.monotonic() - started
    print(f"every product queried, table written in {query:.1f}s", flush=True)
    spark.stop()

    unit = normalise_rows(vectors)
    sample = np.random.default_rng(config.runtime.seed).choice(len(ids), min(args.queries, len(ids)), replace=False)
    queries = np.sort(sample)
    started = time.monotonic()
    exact_rows, kth, tied = exact_top(unit, queries)
    exact = time.monotonic() - started
    found = found_top(root / "content_neighbours", ids, queries)
    found_scores = np.einsum("qd,qkd->qk", unit[queries], unit[found])
    recall = float(np.mean(found_scores >= kth[:, None] - 1e-5))
    id_recall = float(np.mean([len(set(a) & set(b)) / TOP for a, b in zip(found, exact_rows, strict=True)]))
    sampler.stop_event.set()
    sampler.join()
    print(f"exact top-{TOP} of {len(queries)} products in {exact:.1f}s; recall@{TOP} {recall:.4f} "
          f"(ids: {id_recall:.4f}; {tied.mean():.1%} of queries tie at the {TOP}th place)", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "size": args.size, "products": len(ids), "queries": len(queries),
        "recall_at_20": round(recall, 4), "id_recall_at_20": round(id_recall, 4),
        "tied_queries": round(float(tied.mean()), 4),
        "lists": lists, "probes": probes,
        "build_s": round(build, 1), "query_s": round(query, 1), "total_s": round(build + query, 1),
        "exact_s": round(exact, 1),
        "peak_rss_mb": round(sampler.peak_one), "peak_total_rss_mb": round(sampler.peak_total),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
