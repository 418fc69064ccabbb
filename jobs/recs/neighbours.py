"""Approximate nearest neighbours of the product embeddings: the catalogs too big to
compare every product with every other (a million products are 10^12 dot products).

The index is faiss's inverted file with flat lists (`IndexIVFFlat`, inner product on
unit rows, so cosine): k-means splits the catalog into `lists` cells, and a query scans
the `probes` cells whose centroids are nearest to it. The lists keep the full vectors,
so every score returned is the exact cosine; only which products get compared is
approximate. Why an inverted file rather than a graph (HNSW): on the hashing embeddings
of the synthetic shop (1M products, 256 dimensions, 2,000 queries, 2 cores) faiss's
HNSW (M 16, efConstruction 64, efSearch 64) took 224 s to build for a recall@20 of
0.98, IVF-Flat (4096 lists, 16 probed) 294 s for 1.00 (ties at the 20th place counted
as found, see `bench/similar.py`). The products fall into tight groups of
near-identical texts, which k-means cells follow well; the build is a k-means on a
sample plus one assignment pass (no graph insertion order, so no dependence on how
threads interleave); and an answer is an exhaustive scan of the probed cells, the same
whatever the number of threads or the other queries of its block.

What is deterministic: given the index file, every answer (the scan is exhaustive and
single-threaded per Spark task; equal scores keep faiss's heap order, the same for the
same lists), so neither the partitioning nor the number of executors changes a row.
The index itself comes from a seeded sample of the catalog (in id order) and faiss's
seeded k-means with a fixed number of threads; its sums run in BLAS, whose
rounding can differ between CPUs (their SIMD kernels), so on another machine a centroid
may move in its last bits and a product on a cell's border join the other cell: a few
products may then be compared with slightly different candidates.

The library is faiss-cpu (manylinux wheels): hnswlib 0.8.0 has no wheel and compiles
from source, and usearch's HNSW built the 100k catalog in twice faiss HNSW's time for
the same recall. This module needs numpy, pyarrow and faiss only (no Spark), so it is
tested on its own and imported by the Spark tasks of `recs/recommend.py`.
"""

from __future__ import annotations

import math
import os

import numpy as np

# Vectors per cell k-means is trained on: faiss warns below 39, and more barely moves
# the centroids while the training time grows with it.
TRAINING_POINTS_PER_LIST = 40
KMEANS_ITERATIONS = 10
# Threads of the build on the driver (faiss's OpenMP): a fixed number, at most the cores.
BUILD_THREADS = 4
# Cells per catalog: about 2 sqrt(products), a power of two; a query scans PROBES of them.
LISTS_PER_SQRT_PRODUCT = 2
PROBES = 8

_loaded: dict[str, object] = {}


def index_shape(products: int) -> tuple[int, int]:
    """(lists, probes) for a catalog of `products`: cells of a few hundred products
    (2 sqrt(P) lists), at least 39 training vectors each, and PROBES of them scanned."""
    if products < 2:
        return 1, 1
    lists = 2 ** round(math.log2(max(1.0, LISTS_PER_SQRT_PRODUCT * math.sqrt(products))))
    lists = max(1, min(lists, products // 39))
    return lists, min(PROBES, lists)


def arrow_matrix(column) -> np.ndarray:
    """A pyarrow column of equal-length float lists as a (rows x dimensions) float32
    matrix, straight from the Arrow buffer (no Python object per product)."""
    import pyarrow as pa

    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(lists) == 0:
        return np.zeros((0, 1), dtype=np.float32)
    lengths = lists.value_lengths().to_numpy(zero_copy_only=False)
    if lists.null_count or (lengths != lengths[0]).any():
        raise ValueError("embeddings must all be present and of one length")
    return lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(lists), -1)


def training_rows(products: int, lists: int, seed: int) -> np.ndarray:
    """A seeded sample of row positions, sorted, enough for `lists` centroids."""
    size = min(products, lists * TRAINING_POINTS_PER_LIST)
    return np.sort(np.random.default_rng(seed).choice(products, size, replace=False))


def build_index(matrix: np.ndarray, lists: int, seed: int, threads: int = BUILD_THREADS):
    """An IVF-Flat inner-product index over the unit rows of `matrix`, ids = row positions."""
    import faiss

    faiss.omp_set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    vectors = np.ascontiguousarray(matrix, dtype=np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], lists,
                               faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.max_points_per_centroid = TRAINING_POINTS_PER_LIST  # the sample is all faiss trains on
    index.train(vectors[training_rows(len(vectors), lists, seed)])
    index.add(vectors)
    return index


def write_index(index, path: str) -> None:
    import faiss

    faiss.write_index(index, path)


def read_index(path: str):
    """The index at `path`, read once per process: a reused Python worker runs many
    tasks, and the file of a million products is a gigabyte. Only the last is kept."""
    import faiss

    if path not in _loaded:
        _loaded.clear()
        faiss.omp_set_num_threads(1)  # Spark runs one task per core already
        _loaded[path] = faiss.read_index(path)
    return _loaded[path]


def search(index, vectors: np.ndarray, own_rows: np.ndarray, keep: int, probes: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores), each (queries x keep): the best `keep` catalog rows of each unit
    query vector, best first, never the query's own row (`own_rows`).

    One more is asked for, then the product itself is dropped (or, when an identical
    vector pushed it out, the last). A query whose probed cells held too few products
    is asked again over every cell, so every product gets exactly `keep` neighbours.
    """
    queries = np.ascontiguousarray(vectors, dtype=np.float32)
    index.nprobe = probes
    scores, rows = index.search(queries, keep + 1)
    others = (rows >= 0).sum(axis=1) - (rows == own_rows[:, None]).any(axis=1)
    short = np.flatnonzero(others < keep)
    if len(short):
        index.nprobe = index.nlist
        scores[short], rows[short] = index.search(queries[short], keep + 1)
        index.nprobe = probes
    dropped = rows == own_rows[:, None]
    dropped[~dropped.any(axis=1), keep] = True
    return rows[~dropped].reshape(len(rows), keep), scores[~dropped].reshape(len(rows), keep)
