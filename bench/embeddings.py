"""Benchmark: the embed job's local backend against plain sentence-transformers.

    .venv/bin/python bench/embeddings.py [--data PATH] [--limit N] [--rounds R]

On the Amazon Office catalog (2,420 items; text built as the pipeline builds it: title.
categories. description, HTML unescaped, tags stripped, white space collapsed) it times
`SentenceTransformer(...).encode()` (batch 64, every core) and the job's `LocalBackend`
(what `RECS_EMBEDDING_BACKEND=local` runs, with the same threads) on the same texts in the same
process, alternating R rounds and keeping each one's best, and compares their vectors.
The ONNX export (once per machine) happens before the clock starts.

The last line is one JSON object:
{"texts": N, "baseline_texts_per_s": x, "job_texts_per_s": y, "speedup": y/x, "mean_cosine": c}
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "jobs"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from recs.embeddings.local import LocalBackend, _model_path, worker_threads  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "amazon_office" / "office.item.json.gz"
BATCH = 64
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def clean(value: str | None) -> str:
    """As the preprocess step: unescape HTML, strip tags, collapse white space."""
    return _SPACE.sub(" ", _TAG.sub(" ", html.unescape(value or ""))).strip()


def load_texts(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        items = json.load(stream)
    texts = []
    for item in items.values():
        parts = [clean(item.get(field)) for field in ("title", "categories", "description")]
        texts.append(". ".join(part for part in parts if part))
    return texts


def timed(encode, texts: list[str]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vectors = encode(texts)
    return len(texts) / (time.perf_counter() - started), np.asarray(vectors, dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="office.item.json.gz")
    parser.add_argument("--limit", type=int, default=0, help="only the first N texts (0: all)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds; the best of each counts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("recs").setLevel(logging.INFO)

    texts = load_texts(args.data)
    if args.limit:
        texts = texts[: args.limit]
    threads = worker_threads()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    baseline = SentenceTransformer(_model_path("all-MiniLM-L6-v2"), device="cpu")
    job = LocalBackend(batch_size=BATCH)  # exports the ONNX model here if this machine has none yet

    def encode_baseline(batch: list[str]) -> np.ndarray:
        return baseline.encode(batch, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)

    warm = texts[:BATCH]
    encode_baseline(warm)
    job.embed(warm)
    print(f"{len(texts)} texts, {threads} threads, job runtime {job.runtime} (space {job.space})", flush=True)

    best = {"baseline": 0.0, "job": 0.0}
    vectors = {}
    for round_number in range(1, args.rounds + 1):
        for name, encode in (("baseline", encode_baseline), ("job", job.embed)):
            rate, vectors[name] = timed(encode, texts)
            best[name] = max(best[name], rate)
            print(f"round {round_number}: {name:8s} {rate:6.1f} texts/s", flush=True)

    cosines = np.sum(vectors["baseline"] * vectors["job"], axis=1)
    print(f"cosine to plain encode(): mean {cosines.mean():.4f}, min {cosines.min():.4f}, "
          f"5th percentile {np.percentile(cosines, 5):.4f}", flush=True)
    result = {
        "texts": len(texts),
        "baseline_texts_per_s": round(best["baseline"], 1),
        "job_texts_per_s": round(best["job"], 1),
        "speedup": round(best["job"] / best["baseline"], 2),
        "mean_cosine": round(float(cosines.mean()), 4),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
