"""RecsConfig: its sections, RecsConfig.load precedence and validation, the RECS_ variables
and their deprecated old names, and safe_run_id."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from recs.config import (
    SECTIONS,
    ClusteringSettings,
    EmbeddingSettings,
    EvaluationSettings,
    InputSettings,
    PublishSettings,
    RecommenderSettings,
    RecsConfig,
    RuntimeSettings,
    ServingSettings,
    deprecated_env_names,
    env_names,
    safe_run_id,
)


def test_defaults_without_environment():
    config = RecsConfig.load(environ={})
    clustering = config.clustering
    assert (config.recommender.top_n, clustering.k, clustering.k_min, clustering.k_max) == (10, 0, 4, 24)
    assert config.recommender.event_weights == {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


def test_environment_is_read_and_coerced():
    config = RecsConfig.load(
        environ={
            "RECS_TOP_N": "7",
            "RECS_HALF_LIFE_DAYS": "2.5",
            "RECS_EMBEDDING_BACKEND": "hashing",
            "RECS_DATA_ROOT": "hdfs://namenode/recs",
            "RECS_K_MIN": "",  # empty means unset
            "UNRELATED": "x",
        }
    )
    assert config.recommender.top_n == 7
    assert config.recommender.recency_half_life_days == 2.5
    assert config.embedding.backend == "hashing"
    assert config.input.data_root == "hdfs://namenode/recs"
    assert config.clustering.k_min == 4


def test_overrides_beat_environment():
    environ = {"RECS_TOP_N": "7", "RECS_K": "5", "RECS_SEED": "1"}
    config = RecsConfig.load(overrides={"top_n": 3, "k": "6", "seed": None}, environ=environ)
    assert config.recommender.top_n == 3
    assert config.clustering.k == 6  # DAG params may arrive as strings
    assert config.runtime.seed == 1  # None means: not overridden


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


# Each section refuses a bad value of its own, built alone: its checks live with it.
@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        (InputSettings, {"max_quarantine_share": 1.5}, r"max_quarantine_share must be in \[0, 1\]"),
        (EmbeddingSettings, {"backend": "magic"}, "embedding_backend must be one of"),
        (EmbeddingSettings, {"chunk_size": 0}, "chunk_size must be positive"),
        (ClusteringSettings, {"k_min": 10, "k_max": 5}, "need 2 <= k_min <= k_max"),
        (RecommenderSettings, {"discovery_share": 1.0}, r"discovery_share must be in \[0, 1\)"),
        (EvaluationSettings, {"eval_users": 10}, "eval_users must be at least 100"),
        (PublishSettings, {"database_schema": "Drop Table"}, "database_schema must be a lower-case SQL identifier"),
        (RuntimeSettings, {"als_blocks": 0}, "als_blocks must be at least 1"),
        (ServingSettings, {"port": 70000}, "serving_port must be a TCP port"),
    ],
)
def test_each_section_validates_its_own_values(section, values, message):
    section()  # its defaults are valid
    with pytest.raises(ValueError, match=message):
        section(**values)


def test_the_config_holds_one_instance_of_each_section():
    config = RecsConfig()
    assert {f.name for f in dataclasses.fields(config)} == set(SECTIONS)
    for name, kind in SECTIONS.items():
        assert isinstance(getattr(config, name), kind)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(getattr(config, name), dataclasses.fields(kind)[0].name, None)


def test_every_setting_has_its_own_variable():
    names = env_names()
    assert len(set(names.values())) == len(names)
    assert names["top_n"] == "RECS_TOP_N"


def test_every_setting_variable_starts_with_recs():
    names = env_names()
    assert len(names) >= 70
    assert [variable for variable in names.values() if not variable.startswith("RECS_")] == []
    assert names["embedding_backend"] == "RECS_EMBEDDING_BACKEND"
    assert names["openai_concurrency"] == "RECS_OPENAI_CONCURRENCY"
    assert names["hashing_dimensions"] == "RECS_HASHING_DIMENSIONS"


OLD_NAMES = {
    "EMBEDDING_BACKEND": ("RECS_EMBEDDING_BACKEND", "hashing", lambda c: c.embedding.backend),
    "EMBEDDING_MODEL": ("RECS_EMBEDDING_MODEL", "some-model", lambda c: c.embedding.model),
    "EMBEDDING_BATCH_SIZE": ("RECS_EMBEDDING_BATCH_SIZE", "7", lambda c: c.embedding.batch_size),
    "EMBEDDING_LOCAL_RUNTIME": ("RECS_EMBEDDING_LOCAL_RUNTIME", "torch", lambda c: c.embedding.local_runtime),
    "HASHING_DIMENSIONS": ("RECS_HASHING_DIMENSIONS", "16", lambda c: c.embedding.hashing_dimensions),
    "EMBEDDING_DIMENSIONS": ("RECS_EMBEDDING_DIMENSIONS", "8", lambda c: c.embedding.dimensions),
    "EMBEDDING_CHUNK_SIZE": ("RECS_EMBEDDING_CHUNK_SIZE", "10", lambda c: c.embedding.chunk_size),
    "OPENAI_CONCURRENCY": ("RECS_OPENAI_CONCURRENCY", "2", lambda c: c.embedding.openai_concurrency),
    "OPENAI_TIMEOUT_SECONDS": ("RECS_OPENAI_TIMEOUT_SECONDS", "3", lambda c: c.embedding.openai_timeout_seconds),
    "OPENAI_MAX_RETRIES": ("RECS_OPENAI_MAX_RETRIES", "1", lambda c: c.embedding.openai_max_retries),
    "EMBEDDING_PRICE_PER_1M_TOKENS": ("RECS_EMBEDDING_PRICE_PER_1M_TOKENS", "0.5",
                                      lambda c: c.embedding.price_per_million_tokens),
}


def test_the_deprecated_names_are_the_old_embedding_variables():
    assert deprecated_env_names() == {old: new for old, (new, _, _) in OLD_NAMES.items()}


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_an_old_variable_still_works_and_warns_naming_the_new_one(old, caplog):
    new, raw, read = OLD_NAMES[old]
    with caplog.at_level(logging.WARNING, logger="recs.config"), pytest.warns(DeprecationWarning) as caught:
        config = RecsConfig.load(environ={old: raw})
    assert str(read(config)) == str(type(read(RecsConfig()))(raw))
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(messages) == 1 and old in messages[0] and new in messages[0]
    logged = [r.getMessage() for r in caplog.records if r.name == "recs.config"]
    assert len(logged) == 1 and old in logged[0] and new in logged[0]


def test_the_new_name_wins_over_the_old_one():
    with pytest.warns(DeprecationWarning, match="EMBEDDING_BACKEND .*RECS_EMBEDDING_BACKEND"):
        config = RecsConfig.load(environ={"EMBEDDING_BACKEND": "openai", "RECS_EMBEDDING_BACKEND": "hashing",
                                          "OPENAI_MAX_RETRIES": "1", "RECS_OPENAI_MAX_RETRIES": "2"})
    assert config.embedding.backend == "hashing"
    assert config.embedding.openai_max_retries == 2


def test_new_names_alone_do_not_warn(recwarn):
    RecsConfig.load(environ={new: raw for new, raw, _ in OLD_NAMES.values()})
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


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
    assert RecsConfig.load(environ={"RECS_TUNE_WEIGHTS": raw}).recommender.tune_weights is expected


def test_bool_override_keeps_its_value():
    config = RecsConfig.load(overrides={"tune_weights": False}, environ={"RECS_TUNE_WEIGHTS": "1"})
    assert config.recommender.tune_weights is False
    assert RecsConfig.load(overrides={"tune_weights": "false"}, environ={}).recommender.tune_weights is False


def test_to_json_round_trips():
    config = RecsConfig.load(environ={"RECS_TOP_N": "4", "RECS_EMBEDDING_BACKEND": "hashing", "RECS_K": "5",
                                      "RECS_GATE_OVERRIDE": "yes", "RECS_DRIVER_MEMORY": "2g"})
    assert RecsConfig.from_json(config.to_json()) == config
    assert RecsConfig.from_json(RecsConfig().to_json()) == RecsConfig()


# --- Flat names: overrides, DAG params ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "read"),
    [
        ("input_path", "s3a://bucket/shop", lambda c: c.input.path),
        ("input_format", "online_retail", lambda c: c.input.format),
        ("embedding_backend", "hashing", lambda c: c.embedding.backend),
        ("pca_dimensions", 8, lambda c: c.clustering.pca_dimensions),
        ("k", 6, lambda c: c.clustering.k),
        ("k_min", 3, lambda c: c.clustering.k_min),
        ("k_max", 9, lambda c: c.clustering.k_max),
        ("top_n", 4, lambda c: c.recommender.top_n),
        ("gate_override", True, lambda c: c.evaluation.gate_override),
        ("gate_override_reason", "holiday", lambda c: c.evaluation.gate_override_reason),
        ("publish_run_id", "manual__1", lambda c: c.publish.publish_run_id),
        ("serving_port", 8123, lambda c: c.serving.port),
        ("embedding_chunk_size", 11, lambda c: c.embedding.chunk_size),
        ("seed", 7, lambda c: c.runtime.seed),
    ],
)
def test_a_flat_name_sets_its_section_field(name, value, read):
    config = RecsConfig.load(overrides={name: value}, environ={})
    assert read(config) == value
    assert config.value(name) == value


def test_dag_params_are_the_form_and_map_to_their_section_fields():
    from recs.config import DAG_PARAMS, settings_from_params

    assert set(DAG_PARAMS) == {"input_path", "input_format", "embedding_backend", "pca_dimensions", "k", "k_min",
                               "k_max", "top_n", "gate_override", "gate_override_reason", "publish_run_id"}
    params = {"top_n": 3, "embedding_backend": "hashing", "gate_override": True}
    config = RecsConfig.load(overrides=settings_from_params(params), environ={})
    assert (config.recommender.top_n, config.embedding.backend, config.evaluation.gate_override) == (3, "hashing", True)


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
    assert load_config({"input_path": str(root / "shop"), "top_n": 4}).input.path == str(root / "shop")
    assert load_config({"input_path": "s3a://bucket/inputs/shop"}).input.path == "s3a://bucket/inputs/shop"
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
