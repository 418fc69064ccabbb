"""embed: cache keys, what is missing from the cache, and joining vectors back."""

from __future__ import annotations

import hashlib

from recs.embed import CACHE_SCHEMA, attach_vectors, missing_texts, with_text_keys

SPACE = "hashing:bow-hash-v1:8"


def key_of(text: str, space: str = SPACE) -> str:
    return hashlib.sha256(f"{space}\u241f{text}".encode()).hexdigest()


def test_keys_missing_texts_and_vectors(spark):
    products = spark.createDataFrame(
        [("P1", "Red mug"), ("P2", "Blue mug"), ("P3", "Red mug")],  # P3 shares P1's text
        "product_id string, text string",
    )
    keyed = with_text_keys(products, SPACE).cache()
    keys = {r["product_id"]: r["key"] for r in keyed.collect()}
    assert keys == {"P1": key_of("Red mug"), "P2": key_of("Blue mug"), "P3": key_of("Red mug")}
    # Another space gives other keys for the same text.
    assert key_of("Red mug", "openai:text-embedding-3-small:1536") != keys["P1"]

    cache = spark.createDataFrame([(key_of("Red mug"), [1.0, 0.0])], CACHE_SCHEMA)
    # Each distinct text is embedded once, and only when the cache lacks it.
    assert [tuple(r) for r in missing_texts(keyed, cache).collect()] == [(key_of("Blue mug"), "Blue mug")]

    vectors = {r["product_id"]: r["embedding"] for r in attach_vectors(keyed, cache).collect()}
    assert vectors == {"P1": [1.0, 0.0], "P3": [1.0, 0.0]}  # P2 waits for its vector
    keyed.unpersist()
