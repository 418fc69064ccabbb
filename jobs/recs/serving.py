"""The published recommendations over HTTP: a JSON API for a storefront and the pages a
team looks at (recs.pages), one FastAPI app.

    python -m recs.serving                 # uvicorn on RECS_SERVING_HOST:RECS_SERVING_PORT (127.0.0.1:8000)
    make serve                             # the same

Where the answers come from: PostgreSQL when RECS_DATABASE_URL is set (a pool of
connections, one statement per answer, the indexes the publish step builds), else the
current Parquet version under RECS_DATA_ROOT (loaded once into memory and switched
when `published/CURRENT` moves). Either way one answer comes from one version, and
says which (`version`). The Airflow plugin (plugins/recs_airflow/plugin.py) mounts the
same app into the Airflow API server.

    GET /v1/users/{user_id}/recommendations?limit=10   unknown users: the popular list, "fallback": "popular"
    GET /v1/products/{product_id}/similar?limit=10     unknown products: 404
    GET /v1/popular?limit=10
    GET /v1/versions                                   every kept version, its figures, the current one
    GET /healthz                                       the current version and its age
    GET /docs                                          OpenAPI
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from recs import postgres
from recs.config import RecsConfig
from recs.reader import ParquetStore, UnknownId, unknown_product

log = logging.getLogger(__name__)
DEFAULT_LIMIT = 10
MAX_LIMIT = 100


# --- what the API answers ------------------------------------------------------------


class Recommendation(BaseModel):
    rank: int
    product_id: str
    title: str | None
    score: float
    reason: str | None


class RecommendationsResponse(BaseModel):
    version: str = Field(description="the published version every item comes from")
    user_id: str
    fallback: Literal["popular"] | None = Field(
        description='"popular" when the user is unknown to this version: the items are the popular list')
    items: list[Recommendation]


class SimilarProduct(BaseModel):
    rank: int
    product_id: str
    title: str | None
    score: float


class SimilarResponse(BaseModel):
    version: str
    product_id: str
    title: str | None
    cluster: int | None
    items: list[SimilarProduct]


class PopularResponse(BaseModel):
    version: str
    items: list[Recommendation]


class VersionInfo(BaseModel):
    version: str
    run_id: str
    published_at: str | None
    metric: str | None = Field(description="the gate's metric, e.g. ndcg@10")
    ndcg: float | None
    best_baseline: str | None
    best_baseline_ndcg: float | None
    catalog_coverage: float | None
    gate_passed: bool | None
    gate_overridden: bool | None
    gate_message: str | None
    override_reason: str | None
    current: bool


class VersionsResponse(BaseModel):
    versions: list[VersionInfo]


class Health(BaseModel):
    status: Literal["ok"]
    source: Literal["postgres", "parquet"]
    version: str
    published_at: str | None
    age_seconds: float | None


# --- where the answers come from -----------------------------------------------------


class MixedVersions(RuntimeError):
    """An answer whose rows name two versions: must never happen; a 500, not a wrong list."""


@dataclass
class Answer:
    version: str
    items: list[dict]
    personal: bool = True
    product: dict | None = None


class Source(Protocol):
    name: str
    data_root: str

    def recommendations(self, user_id: str, limit: int | None) -> Answer: ...
    def similar(self, product_id: str, limit: int | None) -> Answer: ...
    def popular(self, limit: int | None) -> Answer: ...
    def product(self, product_id: str) -> Answer: ...
    def versions(self) -> list[dict]: ...
    def current(self) -> tuple[str, str | None, str]: ...


class ParquetSource:
    """The current Parquet version in memory: every answer reads one ParquetVersion."""

    name = "parquet"

    def __init__(self, data_root: str):
        self.data_root = data_root
        self.store = ParquetStore(data_root)

    def recommendations(self, user_id, limit):
        version = self.store.version()
        items, personal = version.recommendations(user_id, limit)
        return Answer(version.name, items, personal)

    def similar(self, product_id, limit):
        version = self.store.version()
        return Answer(version.name, version.similar(product_id, limit), product=version.product(product_id))

    def popular(self, limit):
        version = self.store.version()
        return Answer(version.name, version.popular(limit))

    def product(self, product_id):
        version = self.store.version()
        product = version.product(product_id)
        try:
            similar = version.similar(product_id)
        except UnknownId:
            similar = []
        return Answer(version.name, similar, product=product)

    def versions(self):
        return self.store.versions()

    def current(self):
        version = self.store.version()
        return version.name, version.published_at, version.run_id


def _one_version(rows: list[dict]) -> str | None:
    """The version all rows (and their titles) come from; MixedVersions if not one."""
    names = {row["version"] for row in rows} | {row["title_version"] for row in rows if row.get("title_version")}
    if len(names) > 1:
        raise MixedVersions(f"one answer read versions {sorted(names)}")
    return names.pop() if names else None


class PostgresSource:
    """PostgreSQL through a connection pool: one statement per answer (recs.postgres)."""

    name = "postgres"

    def __init__(self, database: postgres.Database, schema: str, data_root: str, pool_size: int):
        self.data_root = data_root
        self.reader = postgres.Reader(database, schema, pool_size)

    def _current_name(self) -> str:
        current = self.reader.current()
        if current is None:
            raise FileNotFoundError(f"nothing published yet in schema {self.reader.schema}")
        return current["version"]

    def recommendations(self, user_id, limit):
        rows = self.reader.recommendations(user_id, limit)
        version = _one_version(rows) or self._current_name()
        return Answer(version, rows, personal=bool(rows) and rows[0]["personal"])

    def similar(self, product_id, limit):
        rows = self.reader.similar(product_id, limit)
        if not rows:
            raise unknown_product(product_id)
        version = _one_version(rows)
        product = self.reader.product(product_id)
        if product is None or product["version"] != version:  # a swap between the two statements: ask again
            return self.similar(product_id, limit)
        return Answer(version, rows, product=product)

    def popular(self, limit):
        rows = self.reader.popular(limit)
        return Answer(_one_version(rows) or self._current_name(), rows)

    def product(self, product_id):
        product = self.reader.product(product_id)
        if product is None:
            raise unknown_product(product_id)
        rows = self.reader.similar(product_id, None)
        if rows and _one_version(rows) != product["version"]:
            return self.product(product_id)
        return Answer(product["version"], rows, product=product)

    def versions(self):
        return self.reader.versions()

    def current(self):
        current = self.reader.current()
        if current is None:
            raise FileNotFoundError(f"nothing published yet in schema {self.reader.schema}")
        return current["version"], current["published_at"].isoformat(), current["run_id"]


def open_source(config: RecsConfig | None = None) -> Source:
    """PostgreSQL when RECS_DATABASE_URL is set, else the Parquet tables under the data root."""
    config = config or RecsConfig.load()
    database = postgres.configured_database()
    if database is not None:
        log.info("serving from %s, schema %s", database.redacted_url, config.publish.database_schema)
        return PostgresSource(database, config.publish.database_schema, config.input.data_root,
                              config.serving.pool_size)
    log.info("serving the Parquet tables under %s/published", config.input.data_root)
    return ParquetSource(config.input.data_root)


class LazySource:
    """Opens the source at the first request: importing the app (the Airflow plugin does,
    in every Airflow process) must not connect to a database or read tables."""

    def __init__(self, factory=open_source):
        self._factory, self._source, self._lock = factory, None, threading.Lock()

    def get(self) -> Source:
        if self._source is None:
            with self._lock:
                if self._source is None:
                    self._source = self._factory()
        return self._source


# --- the app -------------------------------------------------------------------------


def create_app(source: Source | None = None) -> FastAPI:
    from recs import pages

    app = FastAPI(
        title="Product recommendations",
        description="The published recommendation tables of the product_recommendations DAG. Every answer names "
                    "the published version it comes from.",
        version="1",
    )
    holder = LazySource((lambda: source) if source is not None else open_source)
    app.state.source = holder

    @app.exception_handler(FileNotFoundError)
    def nothing_published(request: Request, err: FileNotFoundError):
        return JSONResponse(status_code=503, content={"detail": str(err.args[0] if err.args else err)})

    @app.exception_handler(postgres.DatabaseError)
    def database_down(request: Request, err: postgres.DatabaseError):
        return JSONResponse(status_code=503, content={"detail": str(err)})

    @app.exception_handler(UnknownId)
    def unknown(request: Request, err: UnknownId):
        return JSONResponse(status_code=404, content={"detail": err.args[0]})

    limit_query = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"how many items, 1..{MAX_LIMIT}")

    @app.get("/v1/users/{user_id}/recommendations", response_model=RecommendationsResponse, tags=["api"])
    def recommendations(user_id: str, limit: int = limit_query):
        """A customer's recommendations, best first, each with the reason; an unknown customer gets the
        popular products, with `"fallback": "popular"`."""
        answer = holder.get().recommendations(user_id, limit)
        return _json({"version": answer.version, "user_id": user_id,
                      "fallback": None if answer.personal else "popular", "items": _items(answer.items, True)})

    @app.get("/v1/products/{product_id}/similar", response_model=SimilarResponse, tags=["api"],
             responses={404: {"description": "the product is not in the published catalog"}})
    def similar(product_id: str, limit: int = limit_query):
        """Products similar to this one (cosine of their text embeddings), best first."""
        answer = holder.get().similar(product_id, limit)
        cluster = answer.product.get("cluster")
        return _json({"version": answer.version, "product_id": product_id, "title": answer.product.get("title"),
                      "cluster": None if cluster is None else int(cluster), "items": _items(answer.items, False)})

    @app.get("/v1/popular", response_model=PopularResponse, tags=["api"])
    def popular(limit: int = limit_query):
        """What a customer without history is shown."""
        answer = holder.get().popular(limit)
        return _json({"version": answer.version, "items": _items(answer.items, True)})

    @app.get("/v1/versions", response_model=VersionsResponse, tags=["api"])
    def versions():
        """Every kept version, newest first: NDCG against the best baseline, coverage, the gate's decision."""
        return {"versions": holder.get().versions()}

    @app.get("/healthz", response_model=Health, tags=["ops"])
    def healthz():
        """200 with the current version and its age; 503 when nothing is published or the store is down."""
        source = holder.get()
        version, published_at, _run_id = source.current()
        return {"status": "ok", "source": source.name, "version": version, "published_at": published_at,
                "age_seconds": _age(published_at)}

    pages.add_routes(app, holder)
    return app


ITEM_FIELDS = ("rank", "product_id", "title", "score")


def _items(rows: list[dict], with_reason: bool) -> list[dict]:
    fields = (*ITEM_FIELDS, "reason") if with_reason else ITEM_FIELDS
    return [{name: row.get(name) for name in fields} for row in rows]


def _json(content: dict) -> JSONResponse:
    """The hot routes answer JSON directly: the response models above document them (/docs),
    and validating every answer against them again would cost more than the lookup itself."""
    return JSONResponse(content)


def _age(published_at: str | None) -> float | None:
    if not published_at:
        return None
    moment = datetime.fromisoformat(published_at)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round((datetime.now(UTC) - moment).total_seconds(), 1)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    config = RecsConfig.load()
    parser = argparse.ArgumentParser(description="Serve the published recommendations over HTTP.")
    parser.add_argument("--host", default=config.serving.host)
    parser.add_argument("--port", type=int, default=config.serving.port)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = {"host": args.host, "port": args.port, "access_log": args.access_log, "log_level": "info"}
    if args.workers > 1:
        uvicorn.run("recs.serving:app_factory", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(create_app(), **options)
    return 0


def app_factory() -> FastAPI:
    """For `uvicorn --factory recs.serving:app_factory` (each worker process builds its own)."""
    return create_app()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
