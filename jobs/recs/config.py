"""The one place that holds the pipeline's settings.

Settings come in sections, one frozen dataclass each, that validate their own values
(`InputSettings`, `EmbeddingSettings`, `ClusteringSettings`, `RecommenderSettings`,
`EvaluationSettings`, `PublishSettings`, `RuntimeSettings`, `ServingSettings`);
`RecsConfig` holds one of each (`config.recommender.top_n`), and a step hands a part
of the pipeline only the section it needs (the recommender takes `RecommenderSettings`).

Precedence, lowest first: the defaults below, the environment (and a `.env` file
found from the working directory up, via python-dotenv), then the overrides a DAG
run passes to each job (`--params-json`). Overrides and DAG params use each setting's
flat name (`top_n`, `k`, `input_path`: `SETTING_NAMES`), which maps to one field of
one section. Every environment variable starts with `RECS_` and is listed in
`.env.example`; the few that did not (EMBEDDING_BACKEND, OPENAI_CONCURRENCY, ...) are
still read under their old name, with a deprecation warning naming the new one, when
the new one is not set. Secrets (OPENAI_API_KEY, RECS_DATABASE_URL, ...) are no settings:
they are read from the environment where they are used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INPUT_FORMATS = ("contract", "online_retail", "amazon_reviews")
EMBEDDING_BACKENDS = ("auto", "openai", "local", "hashing")
EVENT_TYPES = ("view", "add_to_cart", "purchase")


def _setting(default: Any, env: str, *, name: str = "", old_env: str = "", param: dict | None = None) -> Any:
    """A section field: its environment variable, and where they differ from the field's
    own name, its flat setting name (overrides, DAG params), the deprecated variable still
    read, and the DAG param schema of the trigger form."""
    metadata: dict[str, Any] = {"env": env}
    if name:
        metadata["setting"] = name
    if old_env:
        metadata["old_env"] = old_env
    if param is not None:
        metadata["param"] = param
    return field(default=default, metadata=metadata)


def _env_bool(value: str) -> bool:
    text = value.strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


def _check_positive(section: object, *names: str) -> None:
    for name in names:
        if getattr(section, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(section, name)}")


@dataclass(frozen=True)
class InputSettings:
    """What a run reads, and where everything is written."""

    # Where everything is read and written: a local folder or any Hadoop URI.
    # Not a DAG param: a run's conf must not write into another root.
    data_root: str = _setting("data", "RECS_DATA_ROOT")
    # The raw input: a folder with products.* and events.* (contract), or a raw file. It
    # must resolve under one of the input roots (symlinks and `..` resolved first).
    path: str = _setting("data/demo_shop", "RECS_INPUT", name="input_path", param={
        "title": "Input", "minLength": 1,
        "description": "Folder with products.* and events.* (contract), or the raw file to import; "
                       "under RECS_INPUT_ROOTS.",
    })
    format: str = _setting("contract", "RECS_INPUT_FORMAT", name="input_format", param={
        "title": "Input format", "enum": list(INPUT_FORMATS),
        "description": "contract: the documented products/events tables; online_retail: the UCI CSV.",
    })
    # Where inputs may be read from, separated by commas: local folders or URI prefixes.
    # Empty: the data root, the repository's data/ and ../shared/data beside the repository.
    roots: str = _setting("", "RECS_INPUT_ROOTS", name="input_roots")
    # More than this share of the events quarantined fails preprocess: the input is broken.
    max_quarantine_share: float = _setting(0.2, "RECS_MAX_QUARANTINE_SHARE")

    def __post_init__(self) -> None:
        if self.format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {self.format!r}")
        if not 0 <= self.max_quarantine_share <= 1:
            raise ValueError(f"max_quarantine_share must be in [0, 1], got {self.max_quarantine_share}")


@dataclass(frozen=True)
class EmbeddingSettings:
    """How product texts become vectors: everything an embedding backend is built from."""

    backend: str = _setting("auto", "RECS_EMBEDDING_BACKEND", name="embedding_backend",
                            old_env="EMBEDDING_BACKEND", param={
        "title": "Embedding backend", "enum": list(EMBEDDING_BACKENDS),
        "description": "auto: OpenAI when OPENAI_API_KEY is set, else the offline model. hashing is for tests.",
    })
    # Empty means the backend's own default model.
    model: str = _setting("", "RECS_EMBEDDING_MODEL", name="embedding_model", old_env="EMBEDDING_MODEL")
    batch_size: int = _setting(64, "RECS_EMBEDDING_BATCH_SIZE", name="embedding_batch_size",
                               old_env="EMBEDDING_BATCH_SIZE")
    # The local model's runtime: auto (ONNX int8, else sentence-transformers), onnx-int8, torch.
    local_runtime: str = _setting("auto", "RECS_EMBEDDING_LOCAL_RUNTIME", name="embedding_local_runtime",
                                  old_env="EMBEDDING_LOCAL_RUNTIME")
    # Where the local model's ONNX export is kept (a local folder); empty: ~/.cache/recs/models.
    model_cache_dir: str = _setting("", "RECS_MODEL_CACHE")
    hashing_dimensions: int = _setting(256, "RECS_HASHING_DIMENSIONS", old_env="HASHING_DIMENSIONS")
    # OpenAI's `dimensions` parameter; 0 means the model's native size.
    dimensions: int = _setting(0, "RECS_EMBEDDING_DIMENSIONS", name="embedding_dimensions",
                               old_env="EMBEDDING_DIMENSIONS")
    # Texts embedded between two commits to the cache: a killed job loses at most this.
    chunk_size: int = _setting(2000, "RECS_EMBEDDING_CHUNK_SIZE", name="embedding_chunk_size",
                               old_env="EMBEDDING_CHUNK_SIZE")
    # Concurrent API requests per Python worker; workers x this bounds the request rate.
    openai_concurrency: int = _setting(4, "RECS_OPENAI_CONCURRENCY", old_env="OPENAI_CONCURRENCY")
    openai_timeout_seconds: float = _setting(60.0, "RECS_OPENAI_TIMEOUT_SECONDS", old_env="OPENAI_TIMEOUT_SECONDS")
    openai_max_retries: int = _setting(6, "RECS_OPENAI_MAX_RETRIES", old_env="OPENAI_MAX_RETRIES")
    price_per_million_tokens: float = _setting(0.02, "RECS_EMBEDDING_PRICE_PER_1M_TOKENS",
                                               name="embedding_price_per_million_tokens",
                                               old_env="EMBEDDING_PRICE_PER_1M_TOKENS")

    def __post_init__(self) -> None:
        if self.backend not in EMBEDDING_BACKENDS:
            raise ValueError(f"embedding_backend must be one of {EMBEDDING_BACKENDS}, got {self.backend!r}")
        _check_positive(self, "batch_size", "hashing_dimensions", "chunk_size", "openai_concurrency",
                        "openai_timeout_seconds")
        if self.dimensions < 0 or self.openai_max_retries < 0 or self.price_per_million_tokens < 0:
            raise ValueError(
                f"embedding_dimensions, openai_max_retries and embedding_price_per_million_tokens must be 0 or "
                f"more, got {self.dimensions}, {self.openai_max_retries}, {self.price_per_million_tokens}"
            )


@dataclass(frozen=True)
class ClusteringSettings:
    """PCA of the embeddings, then K-means on them."""

    pca_dimensions: int = _setting(32, "RECS_PCA_DIMENSIONS", param={
        "title": "PCA dimensions", "minimum": 2, "maximum": 1024,
    })
    # 0 means: choose k by silhouette between k_min and k_max.
    k: int = _setting(0, "RECS_K", param={
        "title": "Clusters (k)", "minimum": 0, "maximum": 1000,
        "description": "0 chooses k by silhouette between k_min and k_max.",
    })
    k_min: int = _setting(4, "RECS_K_MIN", param={"title": "Smallest k to try", "minimum": 2, "maximum": 1000})
    k_max: int = _setting(24, "RECS_K_MAX", param={"title": "Largest k to try", "minimum": 2, "maximum": 1000})

    def __post_init__(self) -> None:
        if self.pca_dimensions < 2:
            raise ValueError(f"pca_dimensions must be at least 2, got {self.pca_dimensions}")
        if self.k and self.k < 2:
            raise ValueError(f"k must be 0 (choose from the data) or at least 2, got {self.k}")
        if not 2 <= self.k_min <= self.k_max:
            raise ValueError(f"need 2 <= k_min <= k_max, got {self.k_min}..{self.k_max}")


@dataclass(frozen=True)
class RecommenderSettings:
    """The recommender's own parameters (recs/model.py, recs/scoring.py): its signals, their blend and
    the lists it writes. Tuning replaces some of them (recs/tuning.py)."""

    top_n: int = _setting(10, "RECS_TOP_N", param={
        "title": "Recommendations per user and product", "minimum": 1, "maximum": 500,
    })
    # Neighbours kept per product in each item-item signal.
    neighbours_per_product: int = _setting(50, "RECS_NEIGHBOURS")
    # Similar products (content neighbours) are exact up to this many products, from an
    # approximate index above: exact costs products^2 x dimensions (recs/neighbours.py).
    # At 100k products (bench/similar.py) exact took 27 s per 10,000 products, 4.5 min in
    # all, and the index 37 s, with a recall@20 of 0.97 (by ids) against exact.
    exact_neighbours_max: int = _setting(50_000, "RECS_EXACT_NEIGHBOURS_MAX")
    view_weight: float = _setting(1.0, "RECS_VIEW_WEIGHT")
    cart_weight: float = _setting(3.0, "RECS_CART_WEIGHT")
    purchase_weight: float = _setting(5.0, "RECS_PURCHASE_WEIGHT")
    recency_half_life_days: float = _setting(30.0, "RECS_HALF_LIFE_DAYS")
    # Users whose history is longer only contribute their most recent products to
    # co-occurrence counts: keeps the self-join linear in practice (wholesalers).
    max_history_for_pairs: int = _setting(100, "RECS_MAX_HISTORY_PAIRS")
    # Blend weights of the signals (see recs/scoring.py); tuned on validation when
    # tune_weights is on, these are the starting point.
    weight_covisit: float = _setting(1.0, "RECS_WEIGHT_COVISIT")
    weight_ease: float = _setting(1.0, "RECS_WEIGHT_EASE")
    weight_next: float = _setting(0.5, "RECS_WEIGHT_NEXT")
    weight_content: float = _setting(0.2, "RECS_WEIGHT_CONTENT")
    weight_neighbours: float = _setting(1.0, "RECS_WEIGHT_NEIGHBOURS")
    weight_cluster: float = _setting(0.0, "RECS_WEIGHT_CLUSTER")
    weight_trend: float = _setting(0.3, "RECS_WEIGHT_TREND")
    tune_weights: bool = _setting(True, "RECS_TUNE_WEIGHTS")
    trend_half_life_days: float = _setting(7.0, "RECS_TREND_HALF_LIFE_DAYS")
    ease_lambda: float = _setting(200.0, "RECS_EASE_LAMBDA")
    # EASE inverts a dense products x products matrix: only the most popular take part.
    ease_max_items: int = _setting(8000, "RECS_EASE_MAX_ITEMS")
    # "Bought next": b counts as next after a within this many later products ...
    next_window: int = _setting(3, "RECS_NEXT_WINDOW")
    # ... walked from the user's most recent products only.
    recent_items_for_next: int = _setting(5, "RECS_RECENT_ITEMS_FOR_NEXT")
    # "Neighbours": what a user's most similar customers bought, halved every this many days.
    neighbour_users: int = _setting(400, "RECS_NEIGHBOUR_USERS")
    neighbour_half_life_days: float = _setting(7.0, "RECS_NEIGHBOUR_HALF_LIFE_DAYS")
    # ... of whose products each user keeps this many best, as the other signals keep
    # their top neighbours per product: at a million products, 800 similar customers
    # brought about 8,000 candidates per user, most of them to be ranked and never shown.
    neighbour_products: int = _setting(500, "RECS_NEIGHBOUR_PRODUCTS")
    # Share of each list (the last slots) kept for products related to the user's own
    # history that the blend did not already pick: time signals favour what everybody
    # buys now; these slots keep lists personal and the catalog covered.
    discovery_share: float = _setting(0.3, "RECS_DISCOVERY_SHARE")

    def __post_init__(self) -> None:
        if self.top_n < 1:
            raise ValueError(f"top_n must be at least 1, got {self.top_n}")
        if not 0 <= self.discovery_share < 1:
            raise ValueError(f"discovery_share must be in [0, 1), got {self.discovery_share}")
        if self.exact_neighbours_max < 0:
            raise ValueError(f"exact_neighbours_max must be 0 (always approximate) or more, "
                             f"got {self.exact_neighbours_max}")
        _check_positive(self, "neighbours_per_product", "recency_half_life_days", "max_history_for_pairs",
                        "trend_half_life_days", "ease_max_items", "next_window", "recent_items_for_next",
                        "neighbour_users", "neighbour_half_life_days", "neighbour_products")

    @property
    def event_weights(self) -> dict[str, float]:
        return {"view": self.view_weight, "add_to_cart": self.cart_weight, "purchase": self.purchase_weight}


@dataclass(frozen=True)
class EvaluationSettings:
    """The offline evaluation, and the publish gate it feeds."""

    # The last eval_days of the data are the test window (and, inside the train part,
    # the validation window); metrics at eval_k.
    eval_days: int = _setting(30, "RECS_EVAL_DAYS")
    eval_k: int = _setting(10, "RECS_EVAL_K")
    # Tuning and evaluation score at most this many users of a window, a seeded sample
    # (the whole catalog is still ranked for each): their cost stays bounded on a shop of
    # millions of customers; run_metrics holds NDCG's 95% interval to read it with.
    eval_users: int = _setting(10_000, "RECS_EVAL_USERS")
    # Publish gate: refuse a run whose NDCG@eval_k is below the most-popular baseline,
    # or more than this share below the last published run's ...
    gate_tolerance: float = _setting(0.1, "RECS_GATE_TOLERANCE")
    # ... unless an operator overrides it for one run (a DAG param; the reason is kept).
    gate_override: bool = _setting(False, "RECS_GATE_OVERRIDE", param={
        "title": "Publish even if the quality gate fails",
        "description": "For this run only; the reason below is recorded in run_summary and the report.",
    })
    gate_override_reason: str = _setting("", "RECS_GATE_OVERRIDE_REASON",
                                         param={"title": "Why the gate is overridden"})

    def __post_init__(self) -> None:
        _check_positive(self, "eval_days", "eval_k")
        if self.eval_users < 100:
            raise ValueError(f"eval_users must be at least 100, got {self.eval_users}")
        if not 0 <= self.gate_tolerance <= 1:
            raise ValueError(f"gate_tolerance must be in [0, 1], got {self.gate_tolerance}")


@dataclass(frozen=True)
class PublishSettings:
    """What a publish writes, where, and how long it may wait."""

    # A run that only publishes an earlier run's tables (e.g. one the gate refused, with the
    # gate override): every other task skips. Not a pipeline setting but a run's choice.
    publish_run_id: str = _setting("", "RECS_PUBLISH_RUN_ID", param={
        "title": "Publish an earlier run", "pattern": r"^[A-Za-z0-9_.:+-]*$", "maxLength": 250,
        "description": "The run id of an earlier run (e.g. one the gate refused) whose tables this DAG run "
                       "publishes, with the gate override above; every other task is skipped. Empty: a normal run.",
    })
    # Published versions kept besides the current one.
    keep_versions: int = _setting(5, "RECS_KEEP_VERSIONS")
    # PostgreSQL schema the publish step writes to when RECS_DATABASE_URL is set (recs/postgres.py;
    # the URL itself is a secret, read from the environment, never a setting).
    database_schema: str = _setting("recs", "RECS_DATABASE_SCHEMA")
    # Bounds on the database waits of a publish: a lock held by a long reader, a stalled
    # statement (the swap, an index build) fail the try instead of hanging the run.
    database_lock_timeout_seconds: float = _setting(15.0, "RECS_DATABASE_LOCK_TIMEOUT")
    database_statement_timeout_seconds: float = _setting(600.0, "RECS_DATABASE_STATEMENT_TIMEOUT")
    # The data root's lock (recs/lock.py), held by publish and by the embedding-cache
    # writer: how long a second run waits for it before failing with the holder's name,
    # and how long a lease file (no database) stays valid without its owner renewing it.
    lock_wait_seconds: float = _setting(900.0, "RECS_LOCK_WAIT_SECONDS")
    lock_lease_seconds: float = _setting(120.0, "RECS_LOCK_LEASE_SECONDS")

    def __post_init__(self) -> None:
        _check_positive(self, "database_lock_timeout_seconds", "database_statement_timeout_seconds",
                        "lock_lease_seconds")
        if self.lock_wait_seconds < 0:
            raise ValueError(f"lock_wait_seconds must be 0 or more, got {self.lock_wait_seconds}")
        if self.keep_versions < 0:
            raise ValueError(f"keep_versions must be 0 or more, got {self.keep_versions}")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.database_schema):
            raise ValueError(f"database_schema must be a lower-case SQL identifier, got {self.database_schema!r}")


@dataclass(frozen=True)
class RuntimeSettings:
    """How Spark and Airflow run the steps: parallelism, memory, seed, timeouts."""

    shuffle_partitions: int = _setting(8, "RECS_SHUFFLE_PARTITIONS")
    # The ALS baseline's user and item blocks: its parallelism. A fixed number keeps its
    # factors (and so the evaluation) the same on any machine; on local[*] one block per
    # core fits half the time of Spark's default 10 (Online Retail: 15 s against 29 s a
    # fit). Raise it to the cluster's cores on a cluster.
    als_blocks: int = _setting(2, "RECS_ALS_BLOCKS")
    # Local runs (`local[*]`) only, where the driver JVM is the whole of Spark: its heap
    # (spark-submit --driver-memory, e.g. 8g; empty = two fifths of this machine's RAM,
    # 1g to 16g) and the most a job may collect to it (empty = half the heap). On a
    # cluster the connection's extras or spark-defaults.conf decide.
    driver_memory: str = _setting("", "RECS_DRIVER_MEMORY")
    driver_max_result_size: str = _setting("", "RECS_DRIVER_MAX_RESULT_SIZE")
    # Every seeded fit (K-means, its silhouette sample, ALS) uses this seed, on rows put in
    # a fixed order and partitioning first: the same input gives the same tables anywhere.
    seed: int = _setting(42, "RECS_SEED")
    # Airflow: a task running longer is failed (its spark-submit killed), and so is a DAG run,
    # so that a stall cannot hold back the runs queued behind it.
    task_timeout_minutes: int = _setting(180, "RECS_TASK_TIMEOUT_MINUTES")
    dag_run_timeout_minutes: int = _setting(720, "RECS_DAG_RUN_TIMEOUT_MINUTES")

    def __post_init__(self) -> None:
        _check_positive(self, "shuffle_partitions")
        if self.als_blocks < 1:
            raise ValueError(f"als_blocks must be at least 1, got {self.als_blocks}")
        for name in ("driver_memory", "driver_max_result_size"):
            if getattr(self, name) and not re.fullmatch(r"\d+[kmgt]?", getattr(self, name).lower()):
                raise ValueError(f"{name} must be a JVM size like 512m or 6g, got {getattr(self, name)!r}")
        if self.task_timeout_minutes < 1 or self.dag_run_timeout_minutes < 1:
            raise ValueError(
                f"timeouts must be at least 1 minute, got task {self.task_timeout_minutes}, "
                f"DAG run {self.dag_run_timeout_minutes}"
            )


@dataclass(frozen=True)
class ServingSettings:
    """The HTTP service (recs.serving, `make serve`) and the alerts of the Airflow plugin."""

    # Where the service listens, and its PostgreSQL connection pool (one connection per
    # request in flight).
    host: str = _setting("127.0.0.1", "RECS_SERVING_HOST", name="serving_host")
    port: int = _setting(8000, "RECS_SERVING_PORT", name="serving_port")
    pool_size: int = _setting(16, "RECS_SERVING_POOL_SIZE", name="serving_pool_size")
    # Alerts of failed tasks and refused publishes (plugins/recs_airflow/alerts.py), off
    # when neither is set: e-mail to these comma-separated addresses through the SMTP
    # connection named here (a webhook is RECS_ALERT_WEBHOOK_URL, a secret: environment only).
    alert_email_to: str = _setting("", "RECS_ALERT_EMAIL_TO")
    alert_email_from: str = _setting("", "RECS_ALERT_EMAIL_FROM")
    alert_smtp_conn_id: str = _setting("smtp_default", "RECS_ALERT_SMTP_CONN_ID")

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"serving_port must be a TCP port (0 to 65535), got {self.port}")
        _check_positive(self, "pool_size")


# The sections, by their attribute on RecsConfig, in the order .env.example lists them.
SECTIONS: dict[str, type] = {
    "input": InputSettings,
    "embedding": EmbeddingSettings,
    "clustering": ClusteringSettings,
    "recommender": RecommenderSettings,
    "evaluation": EvaluationSettings,
    "publish": PublishSettings,
    "runtime": RuntimeSettings,
    "serving": ServingSettings,
}


@dataclass(frozen=True)
class RecsConfig:
    """All the settings: one instance of each section."""

    input: InputSettings = field(default_factory=InputSettings)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    clustering: ClusteringSettings = field(default_factory=ClusteringSettings)
    recommender: RecommenderSettings = field(default_factory=RecommenderSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> RecsConfig:
        """Defaults, then the environment (with `.env`), then `overrides` (flat setting names, DAG params)."""
        if environ is None:
            _load_dotenv()
            environ = dict(os.environ)
        values: dict[str, Any] = {}
        for name, (_, f) in _SETTINGS.items():
            raw = _from_environment(f, environ)
            if raw is not None:
                values[name] = _coerce(name, f, raw)
        for name, value in (overrides or {}).items():
            if name not in _SETTINGS:
                raise ValueError(f"unknown setting {name!r}; known: {sorted(_SETTINGS)}")
            if value is not None:
                values[name] = _coerce(name, _SETTINGS[name][1], value)
        for name in ("data_root", "input_path"):
            values[name] = absolute_location(values.get(name, _SETTINGS[name][1].default))
        return cls.from_settings(values)

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> RecsConfig:
        """A configuration from flat setting names (`top_n`, `embedding_backend`); the rest defaults."""
        unknown = sorted(set(values) - set(_SETTINGS))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {sorted(_SETTINGS)}")
        by_section: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for name, value in values.items():
            section, f = _SETTINGS[name]
            by_section[section][f.name] = value
        return cls(**{section: kind(**by_section[section]) for section, kind in SECTIONS.items()})

    def value(self, name: str) -> Any:
        """A setting by its flat name (`top_n`: `self.recommender.top_n`)."""
        section, f = _SETTINGS[name]
        return getattr(getattr(self, section), f.name)

    def to_json(self) -> str:
        """The sections as nested JSON objects: what jobs and workers are handed, and what
        run_summary.config_json keeps."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RecsConfig:
        """The inverse of `to_json`."""
        data = json.loads(text)
        return cls(**{section: kind(**data.get(section, {})) for section, kind in SECTIONS.items()})


def _flat_settings() -> dict[str, tuple[str, dataclasses.Field]]:
    settings: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, kind in SECTIONS.items():
        for f in dataclasses.fields(kind):
            name = f.metadata.get("setting", f.name)
            if name in settings:
                raise AssertionError(f"setting {name} is in both {settings[name][0]} and {section}")
            settings[name] = (section, f)
    return settings


# Flat setting name -> (section attribute, field): the names overrides, DAG params,
# env_names() and error messages use.
_SETTINGS = _flat_settings()
SETTING_NAMES = frozenset(_SETTINGS)
# What a DAG run may set (the trigger form, plugins/recs_airflow/params.py): the fields
# marked "param". Everything else comes from the operator's environment only.
DAG_PARAMS = {name: f.metadata["param"] for name, (_, f) in _SETTINGS.items() if "param" in f.metadata}


def setting_type(name: str) -> str:
    """The Python type of a setting, by flat name: "str", "int", "float" or "bool"."""
    f = _SETTINGS[name][1]
    return f.type if isinstance(f.type, str) else f.type.__name__


def _from_environment(f: dataclasses.Field, environ: Mapping[str, str]) -> str | None:
    """The raw value of a setting's variable (empty means unset), or of its deprecated
    name when only that one is set: then one warning, naming the variable to use."""
    new, old = f.metadata["env"], f.metadata.get("old_env")
    raw = environ.get(new)
    if raw not in (None, ""):
        if old and environ.get(old) not in (None, ""):
            _warn_deprecated(f"{old} is deprecated and ignored: {new} is set and wins; remove {old}")
        return raw
    if old and environ.get(old) not in (None, ""):
        _warn_deprecated(f"{old} is deprecated: rename it to {new} (the old name will stop working)")
        return environ[old]
    return None


def _warn_deprecated(message: str) -> None:
    # Both: pytest and Python's default filters hide DeprecationWarning, and operators read logs.
    warnings.warn(message, DeprecationWarning, stacklevel=4)
    log.warning(message)


def settings_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """A DAG run's params as setting overrides, refusing any key the form does not have.

    Airflow merges every key of a run's conf into its params (core.dag_run_conf_overrides_params),
    so anyone allowed to trigger a run could otherwise set the data root, the schema or
    what is kept; such a run fails at its first task instead, naming the keys.
    """
    unknown = sorted(set(params) - set(DAG_PARAMS))
    if unknown:
        raise ValueError(f"not DAG params, refused: {unknown} (a run may set only {sorted(DAG_PARAMS)})")
    return dict(params)


def _repository() -> Path | None:
    """The checkout holding jobs/recs, also when this module is imported from the zip in
    <repo>/dist (py_files); None where the package travelled alone (a cluster-mode driver)."""
    return next((folder for folder in Path(__file__).resolve().parents if (folder / "jobs" / "recs").is_dir()), None)


def input_roots(config: RecsConfig) -> list[str]:
    """RECS_INPUT_ROOTS, or: the data root, the repository's data/ and ../shared/data."""
    if config.input.roots.strip():
        return [absolute_location(root.strip()) for root in config.input.roots.split(",") if root.strip()]
    repository = _repository()
    extra = [str(repository / "data"), str(repository.parent / "shared" / "data")] if repository else []
    return [config.input.data_root, *extra]


def check_input_path(config: RecsConfig) -> None:
    """Refuse an input_path outside the input roots, after resolving symlinks and `..`,
    so that a run's params cannot make a job read (and quote) any file it can reach."""
    roots = input_roots(config)
    location = config.input.path
    if location.startswith("file:///"):
        location = location.removeprefix("file://")
    if "://" in location:
        # A URI cannot be resolved from here: it must name no parent segment and start with a root.
        inside = ".." not in location.split("/") and any(
            location.rstrip("/") == root.rstrip("/") or location.startswith(root.rstrip("/") + "/")
            for root in roots if "://" in root
        )
        resolved = location
    else:
        resolved = os.path.realpath(location)
        inside = any(
            os.path.commonpath([resolved, os.path.realpath(root)]) == os.path.realpath(root)
            for root in roots if "://" not in root
        )
    if not inside:
        raise ValueError(
            f"input_path {config.input.path!r} (resolves to {resolved}) is outside the input roots {roots}; "
            "set RECS_INPUT_ROOTS to allow another folder"
        )


def _coerce(name: str, f: dataclasses.Field, value: Any) -> Any:
    kind = setting_type(name)
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return value if isinstance(value, bool) else _env_bool(str(value))
        return str(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"setting {name} ({f.metadata['env']}): cannot read {value!r} as {kind}") from err


def _load_dotenv() -> None:
    try:
        from dotenv import find_dotenv, load_dotenv
    except ImportError:  # executors without python-dotenv get their env from the cluster
        return
    # The existing environment wins over the file, as in every twelve-factor tool.
    # Look from the working directory up, then in the repository beside this package.
    load_dotenv(find_dotenv(usecwd=True), override=False)
    load_dotenv(Path(__file__).resolve().parents[2] / ".env", override=False)


def absolute_location(location: str) -> str:
    """A URI stays as it is; a relative local path is taken from the working directory,
    since Spark would otherwise resolve it wherever spark-submit happens to run."""
    return location if "://" in location else os.path.abspath(location)


def safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+', which Hadoop paths refuse."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_.")
    if not cleaned:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    return cleaned


def env_names() -> dict[str, str]:
    """Flat setting name -> environment variable, for docs and checks."""
    return {name: f.metadata["env"] for name, (_, f) in _SETTINGS.items()}


def deprecated_env_names() -> dict[str, str]:
    """Old environment variable -> the RECS_ one that replaces it (still read, with a warning)."""
    return {f.metadata["old_env"]: f.metadata["env"] for _, f in _SETTINGS.values() if "old_env" in f.metadata}
