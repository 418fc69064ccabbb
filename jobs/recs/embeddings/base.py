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

from recs.config import EmbeddingSettings

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
        """EmbeddingSettings fields Spark's workers need to build this same backend (choices made on the driver)."""
        return {}


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def resolve_backend_name(settings: EmbeddingSettings, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The backend to use and why (`auto`: OpenAI when a key is set, else the local model)."""
    environ = os.environ if environ is None else environ
    if settings.backend != "auto":
        return settings.backend, f"RECS_EMBEDDING_BACKEND={settings.backend}"
    if environ.get("OPENAI_API_KEY"):
        return "openai", "auto: OPENAI_API_KEY is set"
    return "local", "auto: no OPENAI_API_KEY, using the offline model"


def create_backend(name: str, settings: EmbeddingSettings) -> EmbeddingBackend:
    if name == "hashing":
        from recs.embeddings.hashing import HashingBackend

        return HashingBackend(settings.hashing_dimensions)
    if name == "local":
        from recs.embeddings.local import LocalBackend

        return LocalBackend(
            settings.model or None,
            settings.batch_size,
            runtime=settings.local_runtime,
            cache_dir=settings.model_cache_dir,
        )
    if name == "openai":
        from recs.embeddings.openai_backend import OpenAIBackend

        return OpenAIBackend.from_settings(settings)
    raise ValueError(f"unknown embedding backend {name!r}")
