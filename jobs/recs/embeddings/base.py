"""The interface every embedding backend implements, and how one is chosen.

A backend turns a list of texts into L2-normalised float32 vectors. Its `space`
names everything that changes the vectors (backend, model, dimensions), so the
embedding cache never mixes vectors from two spaces.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from recs.config import RecsConfig

log = logging.getLogger(__name__)


class EmbeddingBackend(ABC):
    name: str
    model: str
    dimensions: int

    @property
    def space(self) -> str:
        return f"{self.name}:{self.model}:{self.dimensions}"

    @abstractmethod
    def embed(self, texts: list[str]) -> np.ndarray:
        """Vectors for `texts`, shape (len(texts), dimensions), rows of unit length."""

    # True when a call costs money or needs a credential: the embed step then makes its
    # first call on the driver, so that a bad key fails once, not once per task attempt.
    probe_on_driver: bool = False

    def stats(self) -> dict[str, float]:
        """What this backend spent so far in this process (requests, tokens, retries)."""
        return {}

    def worker_settings(self) -> dict:
        """Settings Spark's workers need to build this same backend (choices made on the driver)."""
        return {}


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def resolve_backend_name(config: RecsConfig, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The backend to use and why (`auto`: OpenAI when a key is set, else the local model)."""
    environ = os.environ if environ is None else environ
    if config.embedding_backend != "auto":
        return config.embedding_backend, f"EMBEDDING_BACKEND={config.embedding_backend}"
    if environ.get("OPENAI_API_KEY"):
        return "openai", "auto: OPENAI_API_KEY is set"
    return "local", "auto: no OPENAI_API_KEY, using the offline model"


def create_backend(name: str, config: RecsConfig) -> EmbeddingBackend:
    if name == "hashing":
        from recs.embeddings.hashing import HashingBackend

        return HashingBackend(config.hashing_dimensions)
    if name == "local":
        from recs.embeddings.local import LocalBackend

        return LocalBackend(
            config.embedding_model or None,
            config.embedding_batch_size,
            runtime=config.embedding_local_runtime,
            cache_dir=config.model_cache_dir,
        )
    if name == "openai":
        from recs.embeddings.openai_backend import OpenAIBackend

        return OpenAIBackend.from_config(config)
    raise ValueError(f"unknown embedding backend {name!r}")
