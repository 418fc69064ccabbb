"""The one place that holds the pipeline's settings.

Precedence, lowest first: the defaults below, the environment (and a `.env` file
found from the working directory up, via python-dotenv), then the overrides a DAG
run passes to each job (`--params-json`). Every environment variable is listed in
`.env.example`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INPUT_FORMATS = ("contract", "online_retail", "amazon_reviews")
EMBEDDING_BACKENDS = ("auto", "openai", "local", "hashing")
EVENT_TYPES = ("view", "add_to_cart", "purchase")


def _env_bool(value: str) -> bool:
    text = value.strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


@dataclass(frozen=True)
class RecsConfig:
    # Where everything is read and written: a local folder or any Hadoop URI.
    # Not a DAG param: a run's conf must not write into another root.
    data_root: str = field(default="data", metadata={"env": "RECS_DATA_ROOT"})
    # The raw input: a folder with products.* and events.* (contract), or a raw file. It
    # must resolve under one of input_roots (symlinks and `..` resolved first).
    input_path: str = field(
        default="data/demo_shop",
        metadata={"env": "RECS_INPUT", "param": {
            "title": "Input", "minLength": 1,
            "description": "Folder with products.* and events.* (contract), or the raw file to import; "
                           "under RECS_INPUT_ROOTS.",
        }},
    )
    input_format: str = field(
        default="contract",
        metadata={"env": "RECS_INPUT_FORMAT", "param": {
            "title": "Input format", "enum": list(INPUT_FORMATS),
            "description": "contract: the documented products/events tables; online_retail: the UCI CSV.",
        }},
    )
    # Where inputs may be read from, separated by commas: local folders or URI prefixes.
    # Empty: the data root, the repository's data/ and ../shared/data beside the repository.
    input_roots: str = field(default="", metadata={"env": "RECS_INPUT_ROOTS"})
    # More than this share of the events quarantined fails preprocess: the input is broken.
    max_quarantine_share: float = field(default=0.2, metadata={"env": "RECS_MAX_QUARANTINE_SHARE"})

    embedding_backend: str = field(
        default="auto",
        metadata={"env": "EMBEDDING_BACKEND", "param": {
            "title": "Embedding backend", "enum": list(EMBEDDING_BACKENDS),
            "description": "auto: OpenAI when OPENAI_API_KEY is set, else the offline model. hashing is for tests.",
        }},
    )
    # Empty means the backend's own default model.
    embedding_model: str = field(default="", metadata={"env": "EMBEDDING_MODEL"})
    embedding_batch_size: int = field(default=64, metadata={"env": "EMBEDDING_BATCH_SIZE"})
    # The local model's runtime: auto (ONNX int8, else sentence-transformers), onnx-int8, torch.
    embedding_local_runtime: str = field(default="auto", metadata={"env": "EMBEDDING_LOCAL_RUNTIME"})
    # Where the local model's ONNX export is kept (a local folder); empty: ~/.cache/recs/models.
    model_cache_dir: str = field(default="", metadata={"env": "RECS_MODEL_CACHE"})
    hashing_dimensions: int = field(default=256, metadata={"env": "HASHING_DIMENSIONS"})
    # OpenAI's `dimensions` parameter; 0 means the model's native size.
    embedding_dimensions: int = field(default=0, metadata={"env": "EMBEDDING_DIMENSIONS"})
    # Texts embedded between two commits to the cache: a killed job loses at most this.
    embedding_chunk_size: int = field(default=2000, metadata={"env": "EMBEDDING_CHUNK_SIZE"})
    # Concurrent API requests per Python worker; workers x this bounds the request rate.
    openai_concurrency: int = field(default=4, metadata={"env": "OPENAI_CONCURRENCY"})
    openai_timeout_seconds: float = field(default=60.0, metadata={"env": "OPENAI_TIMEOUT_SECONDS"})
    openai_max_retries: int = field(default=6, metadata={"env": "OPENAI_MAX_RETRIES"})
    embedding_price_per_million_tokens: float = field(
        default=0.02, metadata={"env": "EMBEDDING_PRICE_PER_1M_TOKENS"}
    )

    pca_dimensions: int = field(
        default=32,
        metadata={"env": "RECS_PCA_DIMENSIONS", "param": {"title": "PCA dimensions", "minimum": 2, "maximum": 1024}},
    )
    # 0 means: choose k by silhouette between k_min and k_max.
    k: int = field(
        default=0,
        metadata={"env": "RECS_K", "param": {
            "title": "Clusters (k)", "minimum": 0, "maximum": 1000,
            "description": "0 chooses k by silhouette between k_min and k_max.",
        }},
    )
    k_min: int = field(
        default=4,
        metadata={"env": "RECS_K_MIN", "param": {"title": "Smallest k to try", "minimum": 2, "maximum": 1000}},
    )
    k_max: int = field(
        default=24,
        metadata={"env": "RECS_K_MAX", "param": {"title": "Largest k to try", "minimum": 2, "maximum": 1000}},
    )

    top_n: int = field(
        default=10,
        metadata={"env": "RECS_TOP_N", "param": {
            "title": "Recommendations per user and product", "minimum": 1, "maximum": 500,
        }},
    )
    # Neighbours kept per product in each item-item signal.
    neighbours_per_product: int = field(default=50, metadata={"env": "RECS_NEIGHBOURS"})
    # Similar products (content neighbours) are exact up to this many products, from an
    # approximate index above: exact costs products^2 x dimensions (recs/neighbours.py).
    exact_neighbours_max: int = field(default=200_000, metadata={"env": "RECS_EXACT_NEIGHBOURS_MAX"})
    view_weight: float = field(default=1.0, metadata={"env": "RECS_VIEW_WEIGHT"})
    cart_weight: float = field(default=3.0, metadata={"env": "RECS_CART_WEIGHT"})
    purchase_weight: float = field(default=5.0, metadata={"env": "RECS_PURCHASE_WEIGHT"})
    recency_half_life_days: float = field(default=30.0, metadata={"env": "RECS_HALF_LIFE_DAYS"})
    # Users whose history is longer only contribute their most recent products to
    # co-occurrence counts: keeps the self-join linear in practice (wholesalers).
    max_history_for_pairs: int = field(default=100, metadata={"env": "RECS_MAX_HISTORY_PAIRS"})
    # Blend weights of the signals (see recs/model.py); tuned on validation when
    # tune_weights is on, these are the starting point.
    weight_covisit: float = field(default=1.0, metadata={"env": "RECS_WEIGHT_COVISIT"})
    weight_ease: float = field(default=1.0, metadata={"env": "RECS_WEIGHT_EASE"})
    weight_next: float = field(default=0.5, metadata={"env": "RECS_WEIGHT_NEXT"})
    weight_content: float = field(default=0.2, metadata={"env": "RECS_WEIGHT_CONTENT"})
    weight_neighbours: float = field(default=1.0, metadata={"env": "RECS_WEIGHT_NEIGHBOURS"})
    weight_cluster: float = field(default=0.0, metadata={"env": "RECS_WEIGHT_CLUSTER"})
    weight_trend: float = field(default=0.3, metadata={"env": "RECS_WEIGHT_TREND"})
    tune_weights: bool = field(default=True, metadata={"env": "RECS_TUNE_WEIGHTS"})
    trend_half_life_days: float = field(default=7.0, metadata={"env": "RECS_TREND_HALF_LIFE_DAYS"})
    ease_lambda: float = field(default=200.0, metadata={"env": "RECS_EASE_LAMBDA"})
    # EASE inverts a dense products x products matrix: only the most popular take part.
    ease_max_items: int = field(default=8000, metadata={"env": "RECS_EASE_MAX_ITEMS"})
    # "Bought next": b counts as next after a within this many later products ...
    next_window: int = field(default=3, metadata={"env": "RECS_NEXT_WINDOW"})
    # ... walked from the user's most recent products only.
    recent_items_for_next: int = field(default=5, metadata={"env": "RECS_RECENT_ITEMS_FOR_NEXT"})
    # "Neighbours": what a user's most similar customers bought, halved every this many days.
    neighbour_users: int = field(default=400, metadata={"env": "RECS_NEIGHBOUR_USERS"})
    neighbour_half_life_days: float = field(default=7.0, metadata={"env": "RECS_NEIGHBOUR_HALF_LIFE_DAYS"})
    # Share of each list (the last slots) kept for products related to the user's own
    # history that the blend did not already pick: time signals favour what everybody
    # buys now; these slots keep lists personal and the catalog covered.
    discovery_share: float = field(default=0.3, metadata={"env": "RECS_DISCOVERY_SHARE"})

    # Evaluation: the last eval_days of the data are the test window (and, inside the
    # train part, the validation window); metrics at eval_k.
    eval_days: int = field(default=30, metadata={"env": "RECS_EVAL_DAYS"})
    eval_k: int = field(default=10, metadata={"env": "RECS_EVAL_K"})
    # Tuning and evaluation score at most this many users of a window, a seeded sample
    # (the whole catalog is still ranked for each): their cost stays bounded on a shop of
    # millions of customers; run_metrics holds NDCG's 95% interval to read it with.
    eval_users: int = field(default=10_000, metadata={"env": "RECS_EVAL_USERS"})
    # Publish gate: refuse a run whose NDCG@eval_k is below the most-popular baseline,
    # or more than this share below the last published run's ...
    gate_tolerance: float = field(default=0.1, metadata={"env": "RECS_GATE_TOLERANCE"})
    # ... unless an operator overrides it for one run (a DAG param; the reason is kept).
    gate_override: bool = field(
        default=False,
        metadata={"env": "RECS_GATE_OVERRIDE", "param": {
            "title": "Publish even if the quality gate fails",
            "description": "For this run only; the reason below is recorded in run_summary and the report.",
        }},
    )
    gate_override_reason: str = field(
        default="",
        metadata={"env": "RECS_GATE_OVERRIDE_REASON", "param": {"title": "Why the gate is overridden"}},
    )
    # A run that only publishes an earlier run's tables (e.g. one the gate refused, with the
    # override above): every other task skips. Not a pipeline setting but a run's choice.
    publish_run_id: str = field(
        default="",
        metadata={"env": "RECS_PUBLISH_RUN_ID", "param": {
            "title": "Publish an earlier run", "pattern": r"^[A-Za-z0-9_.:+-]*$", "maxLength": 250,
            "description": "The run id of an earlier run (e.g. one the gate refused) whose tables this DAG run "
                           "publishes, with the gate override above; every other task is skipped. Empty: a normal run.",
        }},
    )

    shuffle_partitions: int = field(default=8, metadata={"env": "RECS_SHUFFLE_PARTITIONS"})
    # The ALS baseline's user and item blocks: its parallelism. A fixed number keeps its
    # factors (and so the evaluation) the same on any machine; on local[*] one block per
    # core fits half the time of Spark's default 10 (Online Retail: 15 s against 29 s a
    # fit). Raise it to the cluster's cores on a cluster.
    als_blocks: int = field(default=2, metadata={"env": "RECS_ALS_BLOCKS"})
    # Local runs (`local[*]`) only, where the driver JVM is the whole of Spark: its heap
    # (spark-submit --driver-memory, e.g. 6g; empty = a quarter of this machine's RAM,
    # 1g to 16g) and the most a job may collect to it (empty = half the heap). On a
    # cluster the connection's extras or spark-defaults.conf decide.
    driver_memory: str = field(default="", metadata={"env": "RECS_DRIVER_MEMORY"})
    driver_max_result_size: str = field(default="", metadata={"env": "RECS_DRIVER_MAX_RESULT_SIZE"})
    # Published versions kept besides the current one.
    keep_versions: int = field(default=5, metadata={"env": "RECS_KEEP_VERSIONS"})
    # PostgreSQL schema the publish step writes to when RECS_DATABASE_URL is set (recs/postgres.py;
    # the URL itself is a secret, read from the environment, never a setting).
    database_schema: str = field(default="recs", metadata={"env": "RECS_DATABASE_SCHEMA"})
    # Bounds on the database waits of a publish: a lock held by a long reader, a stalled
    # statement (the swap, an index build) fail the try instead of hanging the run.
    database_lock_timeout_seconds: float = field(default=15.0, metadata={"env": "RECS_DATABASE_LOCK_TIMEOUT"})
    database_statement_timeout_seconds: float = field(
        default=600.0, metadata={"env": "RECS_DATABASE_STATEMENT_TIMEOUT"}
    )
    # The data root's lock (recs/lock.py), held by publish and by the embedding-cache
    # writer: how long a second run waits for it before failing with the holder's name,
    # and how long a lease file (no database) stays valid without its owner renewing it.
    lock_wait_seconds: float = field(default=900.0, metadata={"env": "RECS_LOCK_WAIT_SECONDS"})
    lock_lease_seconds: float = field(default=120.0, metadata={"env": "RECS_LOCK_LEASE_SECONDS"})
    # Every seeded fit (K-means, its silhouette sample, ALS) uses this seed, on rows put in
    # a fixed order and partitioning first: the same input gives the same tables anywhere.
    seed: int = field(default=42, metadata={"env": "RECS_SEED"})
    # Airflow: a task running longer is failed (its spark-submit killed), and so is a DAG run,
    # so that a stall cannot hold back the runs queued behind it.
    task_timeout_minutes: int = field(default=180, metadata={"env": "RECS_TASK_TIMEOUT_MINUTES"})
    dag_run_timeout_minutes: int = field(default=720, metadata={"env": "RECS_DAG_RUN_TIMEOUT_MINUTES"})

    # The HTTP service (recs.serving, `make serve`): where it listens, and its PostgreSQL
    # connection pool (one connection per request in flight).
    serving_host: str = field(default="127.0.0.1", metadata={"env": "RECS_SERVING_HOST"})
    serving_port: int = field(default=8000, metadata={"env": "RECS_SERVING_PORT"})
    serving_pool_size: int = field(default=16, metadata={"env": "RECS_SERVING_POOL_SIZE"})

    # Alerts of failed tasks and refused publishes (plugins/recs_airflow/alerts.py), off
    # when neither is set: e-mail to these comma-separated addresses through the SMTP
    # connection named here (a webhook is RECS_ALERT_WEBHOOK_URL, a secret: environment only).
    alert_email_to: str = field(default="", metadata={"env": "RECS_ALERT_EMAIL_TO"})
    alert_email_from: str = field(default="", metadata={"env": "RECS_ALERT_EMAIL_FROM"})
    alert_smtp_conn_id: str = field(default="smtp_default", metadata={"env": "RECS_ALERT_SMTP_CONN_ID"})

    def __post_init__(self) -> None:
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {self.input_format!r}")
        if self.embedding_backend not in EMBEDDING_BACKENDS:
            raise ValueError(
                f"embedding_backend must be one of {EMBEDDING_BACKENDS}, got {self.embedding_backend!r}"
            )
        if self.pca_dimensions < 2:
            raise ValueError(f"pca_dimensions must be at least 2, got {self.pca_dimensions}")
        if self.k and self.k < 2:
            raise ValueError(f"k must be 0 (choose from the data) or at least 2, got {self.k}")
        if not 2 <= self.k_min <= self.k_max:
            raise ValueError(f"need 2 <= k_min <= k_max, got {self.k_min}..{self.k_max}")
        if not 0 <= self.discovery_share < 1:
            raise ValueError(f"discovery_share must be in [0, 1), got {self.discovery_share}")
        if self.top_n < 1:
            raise ValueError(f"top_n must be at least 1, got {self.top_n}")
        for name in ("driver_memory", "driver_max_result_size"):
            if getattr(self, name) and not re.fullmatch(r"\d+[kmgt]?", getattr(self, name).lower()):
                raise ValueError(f"{name} must be a JVM size like 512m or 6g, got {getattr(self, name)!r}")
        if self.eval_users < 100:
            raise ValueError(f"eval_users must be at least 100, got {self.eval_users}")
        if self.als_blocks < 1:
            raise ValueError(f"als_blocks must be at least 1, got {self.als_blocks}")
        for name in ("database_lock_timeout_seconds", "database_statement_timeout_seconds", "lock_lease_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lock_wait_seconds < 0:
            raise ValueError(f"lock_wait_seconds must be 0 or more, got {self.lock_wait_seconds}")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.database_schema):
            raise ValueError(f"database_schema must be a lower-case SQL identifier, got {self.database_schema!r}")
        if not 0 <= self.max_quarantine_share <= 1:
            raise ValueError(f"max_quarantine_share must be in [0, 1], got {self.max_quarantine_share}")
        if self.task_timeout_minutes < 1 or self.dag_run_timeout_minutes < 1:
            raise ValueError(
                f"timeouts must be at least 1 minute, got task {self.task_timeout_minutes}, "
                f"DAG run {self.dag_run_timeout_minutes}"
            )

    @property
    def event_weights(self) -> dict[str, float]:
        return {"view": self.view_weight, "add_to_cart": self.cart_weight, "purchase": self.purchase_weight}

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> RecsConfig:
        """Defaults, then the environment (with `.env`), then `overrides` (DAG params)."""
        if environ is None:
            _load_dotenv()
            environ = dict(os.environ)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw not in (None, ""):
                values[f.name] = _coerce(f, raw)
        for name, value in (overrides or {}).items():
            if name not in _FIELDS:
                raise ValueError(f"unknown setting {name!r}; known: {sorted(_FIELDS)}")
            if value is not None:
                values[name] = _coerce(_FIELDS[name], value)
        for name in ("data_root", "input_path"):
            values[name] = absolute_location(values.get(name, _FIELDS[name].default))
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


_FIELDS = {f.name: f for f in dataclasses.fields(RecsConfig)}
SETTING_NAMES = frozenset(_FIELDS)
# What a DAG run may set (the trigger form, plugins/recs_airflow/params.py): the fields
# marked "param". Everything else comes from the operator's environment only.
DAG_PARAMS = {name: f.metadata["param"] for name, f in _FIELDS.items() if "param" in f.metadata}


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
    if config.input_roots.strip():
        return [absolute_location(root.strip()) for root in config.input_roots.split(",") if root.strip()]
    repository = _repository()
    extra = [str(repository / "data"), str(repository.parent / "shared" / "data")] if repository else []
    return [config.data_root, *extra]


def check_input_path(config: RecsConfig) -> None:
    """Refuse an input_path outside the input roots, after resolving symlinks and `..`,
    so that a run's params cannot make a job read (and quote) any file it can reach."""
    roots = input_roots(config)
    location = config.input_path
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
            f"input_path {config.input_path!r} (resolves to {resolved}) is outside the input roots {roots}; "
            "set RECS_INPUT_ROOTS to allow another folder"
        )


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return value if isinstance(value, bool) else _env_bool(str(value))
        return str(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"setting {f.name} ({f.metadata['env']}): cannot read {value!r} as {kind}") from err


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
    """Setting name -> environment variable, for docs and checks."""
    return {f.name: f.metadata["env"] for f in dataclasses.fields(RecsConfig)}
