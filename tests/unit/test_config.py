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


# --- What a DAG run may set -------------------------------------------------------


def test_only_form_params_are_accepted_from_a_run():
    from recs.config import DAG_PARAMS, settings_from_params

    assert "data_root" not in DAG_PARAMS and "keep_versions" not in DAG_PARAMS
    assert {"input_path", "input_format", "top_n", "gate_override"} <= set(DAG_PARAMS)
    assert settings_from_params({"top_n": 3, "input_format": "contract"}) == {"top_n": 3, "input_format": "contract"}
    with pytest.raises(ValueError, match=r"not DAG params, refused: \['data_root', 'keep_versions'\]"):
        settings_from_params({"top_n": 3, "data_root": "/elsewhere", "keep_versions": 0})


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """An input root with a shop in it, and a folder beside it that is not a root."""
    root, outside = tmp_path / "inputs", tmp_path / "private"
    (root / "shop").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.csv").write_text("password\n")
    for name in ("RECS_DATA_ROOT", "RECS_INPUT", "RECS_INPUT_ROOTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECS_INPUT_ROOTS", f"{root},s3a://bucket/inputs")
    monkeypatch.chdir(tmp_path)
    return root, outside


def test_a_hostile_conf_fails_before_anything_runs(roots):
    from recs.runtime import load_config

    with pytest.raises(ValueError, match=r"refused: \['data_root', 'keep_versions'\]"):
        load_config({"data_root": "/tmp/other-root", "input_path": "/etc/hostname", "keep_versions": 0})
    with pytest.raises(ValueError, match=r"input_path '/etc/hostname' .* is outside the input roots"):
        load_config({"input_path": "/etc/hostname"})
    with pytest.raises(TypeError, match="JSON object"):
        load_config(["top_n"])


def test_input_path_is_resolved_before_it_is_checked(roots):
    from recs.runtime import load_config

    root, outside = roots
    assert load_config({"input_path": str(root / "shop"), "top_n": 4}).input_path == str(root / "shop")
    assert load_config({"input_path": "s3a://bucket/inputs/shop"}).input_path == "s3a://bucket/inputs/shop"
    (root / "link").symlink_to(outside)
    escapes = [
        str(root / ".." / "private" / "secret.csv"),  # `..`
        str(root / "link" / "secret.csv"),  # a symlink out of the root
        f"{root}-sibling",  # a prefix of the name is not the folder
        "s3a://bucket/inputs/../private",
        "s3a://bucket/inputs-other/x",
        "inputs/../private",  # relative: from the working directory
    ]
    for escape in escapes:
        with pytest.raises(ValueError, match="outside the input roots"):
            load_config({"input_path": escape})


def test_default_input_roots_are_the_data_root_and_the_repository_data_folders(tmp_path):
    from pathlib import Path

    from recs.config import input_roots

    repo = Path(__file__).resolve().parents[2]
    config = RecsConfig.load(environ={"RECS_DATA_ROOT": str(tmp_path)})
    assert input_roots(config) == [str(tmp_path), str(repo / "data"), str(repo.parent / "shared" / "data")]
