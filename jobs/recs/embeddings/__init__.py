"""Text embedding backends behind one small interface (see `base.py`)."""

from recs.embeddings.base import EmbeddingBackend, create_backend, resolve_backend_name

__all__ = ["EmbeddingBackend", "create_backend", "resolve_backend_name"]
