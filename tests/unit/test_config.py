"""RecsConfig.load precedence and validation, and safe_run_id."""

from __future__ import annotations

import pytest

from recs.config import RecsConfig, env_names, safe_run_id


def test_defaults_without_environment():
    config = RecsConfig.load(environ={})
    assert (config.top_n, config.k, config.k_min, config.k_max) == (10, 0, 4, 24)
    assert config.event_weights == {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


def test_environment_is_read_and_coerced():
    config = RecsConfig.load(
        environ={
            "RECS_TOP_N": "7",
            "RECS_HALF_LIFE_DAYS": "2.5",
            "EMBEDDING_BACKEND": "hashing",
            "RECS_DATA_ROOT": "hdfs://namenode/recs",
            "RECS_K_MIN": "",  # empty means unset
            "UNRELATED": "x",
        }
    )
    assert config.top_n == 7
    assert config.recency_half_life_days == 2.5
    assert config.embedding_backend == "hashing"
    assert config.data_root == "hdfs://namenode/recs"
    assert config.k_min == 4


def test_overrides_beat_environment():
    environ = {"RECS_TOP_N": "7", "RECS_K": "5", "RECS_SEED": "1"}
    config = RecsConfig.load(overrides={"top_n": 3, "k": "6", "seed": None}, environ=environ)
    assert config.top_n == 3
    assert config.k == 6  # DAG params may arrive as strings
    assert config.seed == 1  # None means: not overridden


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match="unknown setting 'top_m'"):
        RecsConfig.load(overrides={"top_m": 3}, environ={})


def test_bad_int_names_the_variable():
    with pytest.raises(ValueError, match=r"top_n \(RECS_TOP_N\): cannot read 'ten' as int"):
        RecsConfig.load(environ={"RECS_TOP_N": "ten"})


def test_bad_float_names_the_variable():
    with pytest.raises(ValueError, match="RECS_HALF_LIFE_DAYS"):
        RecsConfig.load(environ={"RECS_HALF_LIFE_DAYS": "a month"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"input_format": "xml"}, "input_format must be one of"),
        ({"embedding_backend": "magic"}, "embedding_backend must be one of"),
        ({"pca_dimensions": 1}, "pca_dimensions must be at least 2"),
        ({"k": 1}, "k must be 0"),
        ({"k_min": 10, "k_max": 5}, "need 2 <= k_min <= k_max"),
        ({"top_n": 0}, "top_n must be at least 1"),
    ],
)
def test_invalid_values_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        RecsConfig.load(overrides=overrides, environ={})


def test_every_setting_has_its_own_variable():
    names = env_names()
    assert len(set(names.values())) == len(names)
    assert names["top_n"] == "RECS_TOP_N"


def test_safe_run_id():
    assert safe_run_id("manual__2026-11-27T12:36:51.310969+00:00") == "manual__2026-11-27T12_36_51.310969_00_00"
    assert safe_run_id("scheduled__2026-01-01") == "scheduled__2026-01-01"
    assert safe_run_id("a/b c") == "a_b_c"
    with pytest.raises(ValueError, match="no usable characters"):
        safe_run_id(":+:")


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("true", True), ("Yes", True), (" on ", True), ("0", False), ("no", False)]
)
def test_bool_settings_from_environment(raw, expected):
    assert RecsConfig.load(environ={"RECS_TUNE_WEIGHTS": raw}).tune_weights is expected


def test_bool_override_keeps_its_value():
    assert RecsConfig.load(overrides={"tune_weights": False}, environ={"RECS_TUNE_WEIGHTS": "1"}).tune_weights is False
    assert RecsConfig.load(overrides={"tune_weights": "false"}, environ={}).tune_weights is False
