"""The hashing embedding backend used by tests and the pipeline's offline checks."""

from __future__ import annotations

import numpy as np

from recs.embeddings.hashing import HashingBackend


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_deterministic_across_instances():
    texts = ["Red ceramic mug", "Garden hose, 20 m"]
    first, second = HashingBackend(128).embed(texts), HashingBackend(128).embed(texts)
    assert first.dtype == np.float32
    assert first.shape == (2, 128)
    assert np.array_equal(first, second)


def test_rows_have_unit_norm():
    vectors = HashingBackend(64).embed(["a", "a b c d e f g", "Blue mug. Kitchen. A mug in blue."])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_case_and_punctuation_do_not_matter():
    backend = HashingBackend(256)
    a, b = backend.embed(["Red MUG!", "red mug"])
    assert np.array_equal(a, b)


def test_one_word_is_one_signed_bucket():
    (vector,) = HashingBackend(256).embed(["teapot"])
    assert np.count_nonzero(vector) == 1
    assert np.abs(vector).max() == 1.0


def test_shared_words_score_higher():
    backend = HashingBackend(1024)
    mug, blue_mug, hose = backend.embed(["red ceramic mug", "blue ceramic mug", "garden hose reel"])
    assert cosine(mug, blue_mug) > 0.2
    assert cosine(mug, blue_mug) > cosine(mug, hose) + 0.2
    assert backend.space == "hashing:bow-hash-v1:1024"
