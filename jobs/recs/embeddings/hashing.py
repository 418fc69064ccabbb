"""A fast, deterministic bag-of-words embedding FOR TESTS ONLY: no semantics beyond
shared words. It lets unit tests exercise the pipeline without loading a model."""

from __future__ import annotations

import hashlib
import re

import numpy as np

from recs.embeddings.base import EmbeddingBackend, normalise_rows

_TOKEN = re.compile(r"[a-z0-9]+")


class HashingBackend(EmbeddingBackend):
    name = "hashing"
    model = "bow-hash-v1"

    def __init__(self, dimensions: int = 256) -> None:
        self.dimensions = dimensions

    def _bucket(self, token: str) -> tuple[int, float]:
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        return value % self.dimensions, 1.0 if (value >> 63) & 1 else -1.0

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            tokens = _TOKEN.findall(text.lower())
            for token in tokens + [f"{a}_{b}" for a, b in zip(tokens, tokens[1:], strict=False)]:
                index, sign = self._bucket(token)
                vectors[row, index] += sign
        return normalise_rows(vectors)
