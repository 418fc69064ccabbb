"""publish.check_tables and the io helpers behind the published pointer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from recs import io, reader
from recs.publish import check_tables

RECS_SCHEMA = "user_id string, rank int, product_id string, score double"
SIMILAR_SCHEMA = "product_id string, rank int, similar_product_id string, score double"
EVENTS_SCHEMA = "user_id string, product_id string, event_type string"

GOOD_RECS = [("U1", 1, "P2", 0.9), ("U1", 2, "P3", 0.5), ("U2", 1, "P1", 0.7)]
GOOD_SIMILAR = [("P1", 1, "P2", 0.8), ("P2", 1, "P1", 0.8)]
EVENTS = [("U1", "P1", "purchase"), ("U1", "P2", "view"), ("U2", "P3", "add_to_cart")]


def tables(spark, recs=GOOD_RECS, similar=GOOD_SIMILAR, clusters=(("P1", 0),), popular=((1, "P1", 2.0),)):
    return {
        "user_recommendations": spark.createDataFrame(list(recs), RECS_SCHEMA),
        "similar_products": spark.createDataFrame(list(similar), SIMILAR_SCHEMA),
        "product_clusters": spark.createDataFrame(list(clusters), "product_id string, cluster int"),
        "popular_products": spark.createDataFrame(list(popular), "rank int, product_id string, score double"),
    }


@pytest.fixture(scope="module")
def events(spark):
    return spark.createDataFrame(EVENTS, EVENTS_SCHEMA)


def test_good_tables_pass(spark, events):
    # U1 viewed P2 and U2 carted P3: only purchases rule a product out.
    assert check_tables(tables(spark), events, top_n=2) == []


def test_every_broken_promise_is_reported(spark, events):
    broken = tables(
        spark,
        recs=[("U1", 1, "P1", 0.9), ("U2", 1, "P2", 0.5), ("U2", 2, "P2", 0.4), ("U2", 3, "P4", 0.1)],
        similar=[("P1", 1, "P1", 1.0)],
        popular=[],
    )
    assert check_tables(broken, events, top_n=2) == [
        "popular_products is empty",
        "similar_products lists a product as similar to itself",
        "user_recommendations recommends products the user already bought",
        "user_recommendations lists a product twice for one user",
        "user_recommendations has a rank outside 1..2",
    ]


def test_empty_tables_are_reported(spark, events):
    empty = tables(spark, recs=[], similar=[], clusters=[], popular=[])
    assert check_tables(empty, events, top_n=2) == [
        "user_recommendations is empty",
        "similar_products is empty",
        "product_clusters is empty",
        "popular_products is empty",
    ]


def test_write_text_round_trip_and_overwrite(spark, tmp_path):
    path = str(tmp_path / "published" / "CURRENT")
    io.write_text(spark, path, "run-1\n")
    assert io.read_text(spark, path) == "run-1\n"
    io.write_text(spark, path, "run-22\n")  # replaces, never appends
    assert io.read_text(spark, path) == "run-22\n"
    # No temporary file is left beside the target.
    assert [name for name in io.list_dir(spark, str(tmp_path / "published")) if name.endswith(".tmp")] == []


def test_current_published_run(spark, tmp_path):
    published = str(tmp_path / "published")
    assert io.current_published_run(spark, published) is None
    io.write_text(spark, f"{published}/{io.CURRENT_POINTER}", "manual__2026-11-27T12_00_00\n")
    assert io.current_published_run(spark, published) == "manual__2026-11-27T12_00_00"


def test_write_json_round_trip(spark, tmp_path):
    payload = {"rows": {"a": 1}, "name": "émoji ✓"}
    io.write_json(spark, str(tmp_path / "stats.json"), payload)
    assert io.read_json(spark, str(tmp_path / "stats.json")) == payload


def test_read_table_missing(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="did the step before this one run"):
        io.read_table(spark, str(tmp_path / "nothing"))


def test_the_local_pointer_is_never_missing_while_it_changes(spark, tmp_path):
    published = tmp_path / "published"
    io.switch_pointer(spark, str(published), "v0")
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                seen.append(Path(reader.current_version_dir(str(tmp_path))).name)
            except FileNotFoundError:
                seen.append(None)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    for i in range(1, 301):
        io.switch_pointer(spark, str(published), f"v{i}")
    stop.set()
    watcher.join()
    assert None not in seen and len(seen) > 100
    assert io.current_published_run(spark, str(published)) == "v300"
    assert sorted(p.name for p in published.iterdir()) == ["CURRENT"]  # no temporary file left


def test_without_an_atomic_rename_the_newest_pointer_object_wins(spark, tmp_path, monkeypatch):
    # As on s3a://: each switch writes a new pointer object; readers take the newest.
    monkeypatch.setattr(io, "is_local", lambda location: False)
    published = str(tmp_path / "published")
    (tmp_path / "published").mkdir()
    (tmp_path / "published" / "CURRENT").write_text("old\n")  # from before: the objects win
    for i in range(1, 15):
        io.switch_pointer(spark, published, f"v{i}")
    objects = sorted(p.name for p in (tmp_path / "published" / io.POINTER_OBJECTS).iterdir()
                     if not p.name.startswith("."))
    assert len(objects) == io.KEEP_POINTER_OBJECTS + 1 and objects[-1] == f"{14:020d}"  # the newest + kept
    assert io.current_published_run(spark, published) == "v14"
    assert reader.current_version_dir(str(tmp_path)).endswith("/versions/v14")


def test_pruning_and_cleaning_never_touch_a_served_version(spark, tmp_path, monkeypatch):
    from recs.io import RunPaths
    from recs.publish import MANIFEST, clean_leftovers, prune_versions

    monkeypatch.delenv("RECS_DATABASE_URL", raising=False)
    paths = RunPaths(str(tmp_path), "r9")
    versions = tmp_path / "published" / "versions"
    for i, name in enumerate(["v1", "v2", "v3", "v4"]):
        (versions / name).mkdir(parents=True)
        (versions / name / MANIFEST).write_text(f'{{"published_at": "2026-12-01T10:0{i}:00+00:00"}}')
    (versions / "half-written").mkdir()  # killed before its manifest
    (versions / "served-elsewhere").mkdir()  # no manifest, but named by a pointer: kept
    (tmp_path / "published" / ".CURRENT.abc.tmp").write_text("v4\n")
    from recs.config import RecsConfig

    config = RecsConfig.from_settings({"data_root": str(tmp_path)})
    removed = clean_leftovers(spark, config, paths, {"served-elsewhere"})
    assert sorted(removed) == [".CURRENT.abc.tmp", "half-written"]
    # keep=1: the newest besides the served ones stays; v1, the oldest, is served (a rollback).
    assert prune_versions(spark, paths, 1, {"v1", "v4"}) == ["v2"]
    assert sorted(p.name for p in versions.iterdir()) == ["served-elsewhere", "v1", "v3", "v4"]
