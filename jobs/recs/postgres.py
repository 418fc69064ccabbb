"""Serve the published tables from PostgreSQL too, atomically and versioned.

On when `RECS_DATABASE_URL` (postgresql://user:password@host:port/db) is set in the
environment or `.env` (the Airflow task may also export it from the connection
`recs_db`). The URL is read here, from the environment, and never becomes a setting:
settings are serialised into run_summary and logs. Only the URL without its password
is ever logged; user and password reach the JDBC writer as options and psycopg2 as
arguments, never a command line.

A publish, for version V of the tables (the same name as the Parquet version):

1. loads every table into a staging table `<schema>.<table>__v_<key of V>` with Spark's
   JDBC writer, each row tagged with `version`, checks the row counts, builds the
   indexes a storefront needs and ANALYZEs;
2. in ONE transaction: locks the live tables, renames each to its version's name
   (`<table>__v_<key of the current version>`) and each staging table to the live
   name, and marks V current in `<schema>.published_versions`. PostgreSQL DDL is
   transactional: a reader sees every old table or every new one, never a missing,
   empty or half-loaded table (queries arriving during the swap wait for its ACCESS
   EXCLUSIVE locks, a few milliseconds, then read the new tables);
3. drops the tables of versions beyond `RECS_KEEP_VERSIONS` besides the current one.

So the current version's tables always have the live names and every other kept
version's tables are `<table>__v_<key>`: a rollback is the same swap the other way.

    python -m recs.postgres versions     # what is published, which one is current
    python -m recs.postgres rollback     # back to the previous version (also published/CURRENT)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from recs.config import RecsConfig
    from recs.io import RunPaths

log = logging.getLogger(__name__)

URL_VARIABLE = "RECS_DATABASE_URL"
# What a publish puts in the database: the Parquet version's tables, then any of the
# extra run tables that the run folder holds (written by optional steps).
TABLES = ("user_recommendations", "similar_products", "product_clusters", "popular_products", "run_summary")
EXTRA_RUN_TABLES = ("run_metrics",)
VERSIONS_TABLE = "published_versions"
# The lookups a storefront makes; a (user_id, rank) index also serves `user_id = ?`.
INDEXES: dict[str, list[tuple[tuple[str, ...], bool]]] = {
    "user_recommendations": [(("user_id", "rank"), False)],
    "similar_products": [(("product_id", "rank"), False)],
    "product_clusters": [(("product_id",), True), (("cluster",), False)],
    "popular_products": [(("rank",), False)],
}
JDBC_OPTIONS = {"driver": "org.postgresql.Driver", "batchsize": "10000", "numPartitions": "4"}
# URL parameters printed as they are; every other one (sslpassword, ...) may be a secret.
SAFE_PARAMS = frozenset({"sslmode", "connect_timeout", "application_name", "target_session_attrs", "gssencmode",
                         "channel_binding", "sslrootcert", "keepalives", "keepalives_idle"})
MAX_IDENTIFIER = 63
SWAP_ATTEMPTS = 3
STAGING = re.compile(r"(?P<table>[a-z_]+)__v_(?P<key>[a-z0-9_]+)")


class DatabaseError(RuntimeError):
    """A problem worth one line to the person at the terminal."""


# --- the connection ---------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """Where the database is; `password` never shows in repr, str or logs."""

    host: str
    port: int
    dbname: str
    user: str = ""
    password: str = field(default="", repr=False)
    params: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def from_url(cls, url: str) -> Database:
        """Parse leniently: a password with an unencoded `/`, `#`, `?` or `@` still splits at
        the last `@`, and no error message ever quotes a piece of the URL."""
        userinfo, hostport, query = split_url(url)
        user, _, password = userinfo.partition(":")
        host, port = hostport, ""
        if hostport.startswith("["):
            host, _, port = hostport[1:].partition("]")
            port = port.removeprefix(":")
        elif hostport.count(":") == 1:
            host, _, port = hostport.partition(":")
        if port and not port.isdigit():
            raise DatabaseError(f"{URL_VARIABLE}: the port is not a number (percent-encode / # ? @ in a password)")
        params = dict(query)
        return cls(
            host=host or "localhost",
            port=int(port) if port else 5432,
            dbname=unquote(_path_of(url)) or "postgres",
            user=unquote(user) or params.get("user", ""),
            password=unquote(password) or params.get("password", ""),
            params=tuple((k, v) for k, v in query if k not in ("user", "password")),
        )

    @staticmethod
    def shows_param(name: str) -> bool:
        """Query parameters safe to print; any other (sslpassword, passfile, ...) shows as ***."""
        return name in SAFE_PARAMS

    @property
    def redacted_url(self) -> str:
        auth = f"{self.user}:***@" if self.password else (f"{self.user}@" if self.user else "")
        shown = [(k, v if self.shows_param(k) else "***") for k, v in self.params]
        query = f"?{urlencode(shown, safe='*')}" if shown else ""
        return f"postgresql://{auth}{self._host}:{self.port}/{self.dbname}{query}"

    @property
    def jdbc_url(self) -> str:
        """No credentials in it: they go to the writer as the `user` and `password` options."""
        shown = [(k, v) for k, v in self.params if self.shows_param(k)]
        query = urlencode((*shown, ("reWriteBatchedInserts", "true"), ("ApplicationName", "recs-publish")))
        return f"jdbc:postgresql://{self._host}:{self.port}/{self.dbname}?{query}"

    @property
    def _host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def jdbc_options(self) -> dict[str, str]:
        # Other parameters (possibly secret) reach the driver as connection properties.
        options = {"url": self.jdbc_url, **JDBC_OPTIONS, **{k: v for k, v in self.params if not self.shows_param(k)}}
        if self.user:
            options["user"] = self.user
        if self.password:
            options["password"] = self.password
        return options

    def connect(self, application_name: str = "recs"):
        import psycopg2

        try:
            return psycopg2.connect(
                host=self.host, port=self.port, dbname=self.dbname, user=self.user or None,
                password=self.password or None, application_name=application_name, connect_timeout=10,
                **dict(self.params),
            )
        except psycopg2.OperationalError as err:
            # libpq's messages name host and user, never the password.
            raise DatabaseError(f"cannot connect to {self.redacted_url}: {str(err).strip()}") from err


def split_url(url: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(userinfo, host[:port], query pairs) of a postgresql:// URL, splitting at the LAST `@`
    before the path, so that a password holding unencoded `/`, `#`, `?` stays whole."""
    scheme, separator, rest = url.strip().partition("://")
    if not separator or scheme not in ("postgresql", "postgres"):
        raise DatabaseError(f"{URL_VARIABLE} must start with postgresql://")
    match = re.fullmatch(r"(?:(?P<userinfo>.*)@)?(?P<hostport>[^@/?#]*)(?P<rest>[/?#].*)?", rest, re.DOTALL)
    if match is None:
        raise DatabaseError(f"{URL_VARIABLE} is not a postgresql://user:password@host:port/db URL")
    query = urlsplit("x://h" + (match["rest"] or "")).query
    return match["userinfo"] or "", match["hostport"], parse_qsl(query)


def _path_of(url: str) -> str:
    rest = url.strip().partition("://")[2]
    match = re.fullmatch(r"(?:.*@)?[^@/?#]*(?P<rest>[/?#].*)?", rest, re.DOTALL)
    return urlsplit("x://h" + ((match and match["rest"]) or "")).path.lstrip("/")


def database_url(environ: dict[str, str] | None = None) -> str | None:
    """The configured URL, or None: call after RecsConfig.load(), which reads `.env`."""
    url = (os.environ if environ is None else environ).get(URL_VARIABLE, "").strip()
    return url or None


def configured_database(environ: dict[str, str] | None = None) -> Database | None:
    url = database_url(environ)
    return Database.from_url(url) if url else None


# --- names ------------------------------------------------------------------------


def version_key(version: str) -> str:
    """A short identifier-safe name for a version: readable prefix plus a hash."""
    slug = re.sub(r"[^a-z0-9]+", "_", version.lower()).strip("_")[:20].rstrip("_")
    digest = hashlib.sha1(version.encode("utf-8")).hexdigest()[:8]
    return f"{slug}_{digest}" if slug else f"v_{digest}"


def versioned_name(table: str, key: str) -> str:
    name = f"{table}__v_{key}"
    if len(name) > MAX_IDENTIFIER:
        raise DatabaseError(f"table name {name!r} is longer than PostgreSQL's {MAX_IDENTIFIER} characters")
    return name


def _ident(*parts: str):
    from psycopg2 import sql

    return sql.Identifier(*parts)


# --- publish ----------------------------------------------------------------------


def ensure_versions_table(connection, schema: str) -> None:
    from psycopg2 import sql

    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recs-publish:{schema}",))
        cursor.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_ident(schema)))
        cursor.execute(
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {} (
                    version text PRIMARY KEY,
                    run_id text NOT NULL,
                    published_at timestamptz NOT NULL,
                    tables text[] NOT NULL,
                    row_counts jsonb NOT NULL,
                    table_key text NOT NULL UNIQUE,
                    is_current boolean NOT NULL DEFAULT false,
                    rolled_back_at timestamptz,
                    dropped_at timestamptz
                )"""
            ).format(_ident(schema, VERSIONS_TABLE))
        )
        cursor.execute(
            sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (is_current) WHERE is_current").format(
                _ident(f"{VERSIONS_TABLE}_one_current"), _ident(schema, VERSIONS_TABLE)
            )
        )


def load_staging(spark: SparkSession, database: Database, schema: str, tables: dict[str, DataFrame],
                 version: str, connection, expected: dict[str, int] | None = None) -> dict[str, int]:
    """Each table into `<table>__v_<key>`, tagged with `version`, counted and indexed.

    The rows loaded must be the rows expected (`expected`, e.g. the Parquet manifest's
    counts, else counted here): a retried JDBC task must not have doubled a partition."""
    from psycopg2 import sql
    from pyspark.sql import functions as F

    from recs.faults import fault_point

    key = version_key(version)
    counts = {}
    for name, table in tables.items():
        staged = versioned_name(name, key)
        tagged = table.select(F.lit(version).alias("version"), *[c for c in table.columns if c != "version"])
        wanted = (expected or {}).get(name)
        wanted = tagged.count() if wanted is None else wanted
        tagged.write.format("jdbc").options(**database.jdbc_options(), dbtable=f'"{schema}"."{staged}"').mode(
            "overwrite"
        ).save()
        with connection, connection.cursor() as cursor:
            cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(_ident(schema, staged)))
            loaded = cursor.fetchone()[0]
            if loaded != wanted:
                raise DatabaseError(f"{schema}.{staged}: loaded {loaded} rows, expected {wanted}")
            for columns, unique in INDEXES.get(name, []):
                cursor.execute(
                    sql.SQL("CREATE {} INDEX ON {} ({})").format(
                        sql.SQL("UNIQUE" if unique else ""), _ident(schema, staged),
                        sql.SQL(", ").join(_ident(c) for c in columns),
                    )
                )
            cursor.execute(sql.SQL("ANALYZE {}").format(_ident(schema, staged)))
        counts[name] = loaded
        log.info("postgres: staged %s.%s (%d rows)", schema, staged, loaded)
        fault_point("staging")
    return counts


def _current(cursor, schema: str) -> tuple | None:
    from psycopg2 import sql

    cursor.execute(
        sql.SQL("SELECT version, table_key, tables, published_at, run_id FROM {} WHERE is_current").format(
            _ident(schema, VERSIONS_TABLE)
        )
    )
    return cursor.fetchone()


def _existing(cursor, schema: str, names: list[str]) -> set[str]:
    cursor.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_name = ANY(%s)",
        (schema, names),
    )
    return {row[0] for row in cursor.fetchall()}


def _swap(cursor, schema: str, out_tables: list[str], out_key: str | None, in_tables: list[str], in_key: str) -> None:
    """Live tables of the outgoing version to their versioned names, the incoming ones to the live names.

    The live tables are locked first, all at once and in name order, so a reader
    holding one of them cannot deadlock with the swap; readers arriving later wait.
    """
    from psycopg2 import sql

    live = sorted(_existing(cursor, schema, sorted(set(out_tables) | set(in_tables))))
    untracked = [name for name in live if name not in out_tables]
    if untracked or (live and out_key is None):
        raise DatabaseError(f"{schema}: tables {untracked or live} exist but no published version owns them")
    if live:
        cursor.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(_ident(schema, name) for name in live)
            )
        )
    for name in live:
        cursor.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(_ident(schema, name), _ident(versioned_name(name, out_key)))
        )
    for name in in_tables:
        cursor.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(_ident(schema, versioned_name(name, in_key)), _ident(name))
        )


def _in_swap_transaction(connection, schema: str, work: Callable) -> object:
    """Run `work(cursor)` in one transaction holding the schema's publish lock; retry lock timeouts."""
    import psycopg2

    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recs-publish:{schema}",))
                return work(cursor)
        except psycopg2.errors.LockNotAvailable:
            if attempt == SWAP_ATTEMPTS:
                raise
            log.warning("postgres: readers held the tables past lock_timeout; retrying the swap")
            time.sleep(1)
    return None


def swap_in(connection, schema: str, version: str, run_id: str, counts: dict[str, int]) -> str | None:
    """The one transaction that makes `version` current; returns the version it replaced."""
    from psycopg2 import sql

    def work(cursor):
        current = _current(cursor, schema)
        out_version, out_key, out_tables = (current[0], current[1], list(current[2])) if current else (None, None, [])
        _swap(cursor, schema, out_tables, out_key, list(counts), version_key(version))
        versions = _ident(schema, VERSIONS_TABLE)
        cursor.execute(sql.SQL("UPDATE {} SET is_current = false WHERE is_current").format(versions))
        cursor.execute(
            sql.SQL(
                "INSERT INTO {} (version, run_id, published_at, tables, row_counts, table_key, is_current) "
                "VALUES (%s, %s, %s, %s, %s, %s, true)"
            ).format(versions),
            (version, run_id, datetime.now(UTC), list(counts), json.dumps(counts), version_key(version)),
        )
        return out_version

    return _in_swap_transaction(connection, schema, work)


def prune(connection, schema: str, keep: int) -> list[str]:
    """Drop the tables of the versions beyond the `keep` newest besides the current one."""
    from psycopg2 import sql

    versions = _ident(schema, VERSIONS_TABLE)
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recs-publish:{schema}",))
        cursor.execute(
            sql.SQL(
                "SELECT version, table_key, tables FROM {} WHERE NOT is_current AND dropped_at IS NULL "
                "ORDER BY published_at DESC OFFSET %s"
            ).format(versions),
            (max(keep, 0),),
        )
        dropped = []
        for version, key, tables in cursor.fetchall():
            for name in tables:
                cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_ident(schema, versioned_name(name, key))))
            cursor.execute(sql.SQL("UPDATE {} SET dropped_at = now() WHERE version = %s").format(versions), (version,))
            dropped.append(version)
    return dropped


def drop_staging(connection, schema: str, version: str, tables: list[str]) -> None:
    from psycopg2 import sql

    connection.rollback()
    with connection, connection.cursor() as cursor:
        for name in tables:
            cursor.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(_ident(schema, versioned_name(name, version_key(version))))
            )


def set_timeouts(connection, lock_timeout: float, statement_timeout: float) -> None:
    """Bound every wait of this session: a stalled lock or statement fails the publish
    (and its retry starts over) instead of hanging the run and queueing the next ones."""
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                       (f"{int(lock_timeout * 1000)}ms", f"{int(statement_timeout * 1000)}ms"))


def drop_leftovers(connection, schema: str) -> list[str]:
    """Staging tables `<table>__v_<key>` of no published version: an interrupted load
    (a kill, a lost connection) left them. Called under the data root's publish lock."""
    from psycopg2 import sql

    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recs-publish:{schema}",))
        cursor.execute(sql.SQL("SELECT table_key FROM {} WHERE dropped_at IS NULL").format(
            _ident(schema, VERSIONS_TABLE)))
        kept = {row[0] for row in cursor.fetchall()}
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
        leftovers = sorted(name for (name,) in cursor.fetchall()
                           if (match := STAGING.fullmatch(name)) and match["key"] not in kept)
        for name in leftovers:
            cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_ident(schema, name)))
    if leftovers:
        log.info("postgres: dropped %d staging tables of interrupted loads: %s", len(leftovers), leftovers)
    return leftovers


def known_versions(database: Database, schema: str) -> tuple[set[str], datetime | None]:
    """Every version ever published to the schema, and when the first one was."""
    import psycopg2
    from psycopg2 import sql

    connection = database.connect("recs-publish-check")
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql.SQL("SELECT version, published_at FROM {}").format(_ident(schema, VERSIONS_TABLE)))
            rows = cursor.fetchall()
    except psycopg2.errors.UndefinedTable:
        rows = []
    finally:
        connection.close()
    return {row[0] for row in rows}, min((row[1] for row in rows), default=None)


def serving(database: Database, schema: str) -> tuple[str, str] | None:
    """(version, run id) the database serves now, or None when nothing is published."""
    import psycopg2

    connection = database.connect("recs-publish-check")
    try:
        with connection, connection.cursor() as cursor:
            current = _current(cursor, schema)
            if current is None:
                return None
            return current[0], current[4]
    except psycopg2.errors.UndefinedTable:
        return None
    finally:
        connection.close()


def publish_tables(spark: SparkSession, database: Database, schema: str, tables: dict[str, DataFrame],
                   version: str, run_id: str, keep: int, expected: dict[str, int] | None = None,
                   lock_timeout: float = 15, statement_timeout: float = 600) -> dict:
    """Stage, swap in one transaction, prune. A failure before the swap leaves the live
    tables as they were and drops this version's staging tables (or, when the connection
    is gone, the next publish does). Pruning is housekeeping: its failure is logged, it
    never fails a publish whose swap committed."""
    from psycopg2 import sql

    from recs.faults import fault_point

    # Named by schema: an operator (or a fault drill) can tell this load's session apart.
    connection = database.connect(f"recs-publish {schema}"[:63])
    try:
        set_timeouts(connection, lock_timeout, statement_timeout)
        ensure_versions_table(connection, schema)
        leftovers = drop_leftovers(connection, schema)
        with connection, connection.cursor() as cursor:
            cursor.execute(
                sql.SQL("SELECT 1 FROM {} WHERE version = %s").format(_ident(schema, VERSIONS_TABLE)), (version,)
            )
            if cursor.fetchone():
                raise DatabaseError(f"version {version} was published to {schema} before: versions are never reused")
        try:
            counts = load_staging(spark, database, schema, tables, version, connection, expected)
            previous = swap_in(connection, schema, version, run_id, counts)
        except BaseException:
            try:
                drop_staging(connection, schema, version, list(tables))
            except Exception as cleanup:  # noqa: BLE001 - keep the original error
                log.warning("postgres: could not drop the staging tables of %s: %s", version,
                            str(cleanup).strip().splitlines()[0] if str(cleanup).strip() else type(cleanup).__name__)
            raise
        fault_point("after_swap")
        try:
            pruned = prune(connection, schema, keep)
        except Exception as err:  # noqa: BLE001 - the next publish prunes again
            log.warning("postgres: pruning old versions failed (the next publish retries): %s",
                        str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
            pruned = []
    finally:
        connection.close()
    log.info("postgres: %s is current in %s on %s (previous: %s; dropped: %s)",
             version, schema, database.redacted_url, previous, pruned)
    return {"database": database.redacted_url, "schema": schema, "rows": counts, "previous_version": previous,
            "pruned": pruned, "leftovers_dropped": leftovers}


def publish_if_configured(spark: SparkSession, config: RecsConfig, paths: RunPaths, version: str,
                          version_dir: str) -> dict | None:
    """The publish step's hook: the version's Parquet tables, plus the extra run tables the
    run folder holds, into PostgreSQL when RECS_DATABASE_URL is set; else None."""
    from recs import io

    database = configured_database()
    if database is None:
        return None
    manifest = f"{version_dir}/_MANIFEST.json"
    expected = io.read_json(spark, manifest).get("rows", {}) if io.exists(spark, manifest) else {}
    tables = {}
    for name in TABLES + EXTRA_RUN_TABLES:
        for location in (f"{version_dir}/{name}", paths.table(name) if name in EXTRA_RUN_TABLES else None):
            if location and io.exists(spark, location):
                tables[name] = spark.read.parquet(location)
                break
    return publish_tables(spark, database, config.publish.database_schema, tables, version, paths.run_id,
                          config.publish.keep_versions, expected, config.publish.database_lock_timeout_seconds,
                          config.publish.database_statement_timeout_seconds)


# --- rollback ---------------------------------------------------------------------


def rollback(database: Database, schema: str, to_version: str | None = None, lock_timeout: float = 15,
             statement_timeout: float = 600) -> tuple[str, str]:
    """Make the previous version (or `to_version`) current again, in one transaction.

    The previous version is the newest kept one published before the current one that
    was not itself rolled back: publish A, B, roll back (A), publish C, roll back: A.
    Returns (from_version, to_version)."""
    from psycopg2 import sql

    def work(cursor):
        current = _current(cursor, schema)
        if current is None:
            raise DatabaseError(f"nothing published in schema {schema}")
        versions = _ident(schema, VERSIONS_TABLE)
        if to_version:
            cursor.execute(
                sql.SQL("SELECT version, table_key, tables FROM {} WHERE version = %s AND dropped_at IS NULL").format(
                    versions
                ),
                (to_version,),
            )
        else:
            cursor.execute(
                sql.SQL(
                    "SELECT version, table_key, tables FROM {} WHERE published_at < %s AND dropped_at IS NULL "
                    "AND rolled_back_at IS NULL AND NOT is_current ORDER BY published_at DESC LIMIT 1"
                ).format(versions),
                (current[3],),
            )
        target = cursor.fetchone()
        if target is None or target[0] == current[0]:
            wanted = f"version {to_version!r}" if to_version else f"a version older than {current[0]}"
            raise DatabaseError(f"cannot roll back: {wanted} is not kept in schema {schema}")
        _swap(cursor, schema, list(current[2]), current[1], list(target[2]), target[1])
        cursor.execute(
            sql.SQL("UPDATE {} SET is_current = false, rolled_back_at = now() WHERE version = %s").format(versions),
            (current[0],),
        )
        cursor.execute(
            sql.SQL("UPDATE {} SET is_current = true, rolled_back_at = NULL WHERE version = %s").format(versions),
            (target[0],),
        )
        return current[0], target[0]

    connection = database.connect("recs-rollback")
    try:
        set_timeouts(connection, lock_timeout, statement_timeout)
        return _in_swap_transaction(connection, schema, work)
    finally:
        connection.close()


def point_parquet_to(data_root: str, version: str) -> bool:
    """Switch a local data root's `published/CURRENT` to `version` (atomic rename), if it
    holds that version. Other file systems (s3a://, hdfs://) are left alone: False."""
    if "://" in data_root and not data_root.startswith("file://"):
        return False
    from recs.io import write_local_pointer

    published = os.path.join(data_root.removeprefix("file://"), "published")
    if not os.path.isdir(os.path.join(published, "versions", version)):
        return False
    write_local_pointer(published, version)
    return True


def previous_parquet_version(data_root: str) -> str | None:
    """The newest local Parquet version older than the one CURRENT names (by manifest time)."""
    published = os.path.join(data_root, "published")
    try:
        with open(os.path.join(published, "CURRENT"), encoding="utf-8") as handle:
            current = handle.read().strip()
    except FileNotFoundError:
        return None
    dated = {}
    for name in os.listdir(os.path.join(published, "versions")):
        manifest = os.path.join(published, "versions", name, "_MANIFEST.json")
        if os.path.exists(manifest):
            with open(manifest, encoding="utf-8") as handle:
                dated[name] = json.load(handle)["published_at"]
    if current not in dated:
        return None
    older = [name for name in dated if dated[name] < dated[current]]
    return max(older, key=dated.get) if older else None


# --- reading, as a storefront would (`make recs`, `make similar`, recs.serving) -------

POPULAR_REASON = "no history yet: popular right now"

# Each lookup is ONE statement: PostgreSQL locks every table a statement names before
# reading any, and the publish swap renames them all in one transaction, so one
# statement reads one version (each row carries its `version`). Two statements could
# straddle a swap. An unknown user gets the popular products in the same statement.
RECOMMENDATIONS_SQL = """
WITH mine AS (
    SELECT version, rank, product_id, score, reason FROM {schema}.user_recommendations
    WHERE user_id = %(id)s ORDER BY rank LIMIT %(limit)s
), popular AS (
    SELECT version, rank, product_id, score, %(popular_reason)s AS reason FROM {schema}.popular_products
    WHERE NOT EXISTS (SELECT 1 FROM mine) ORDER BY rank LIMIT %(limit)s
), picked AS (
    SELECT *, true AS personal FROM mine UNION ALL SELECT *, false AS personal FROM popular
)
SELECT p.version, p.rank, p.product_id, c.title, p.score, p.reason, p.personal, c.version AS title_version
FROM picked p LEFT JOIN {schema}.product_clusters c USING (product_id) ORDER BY p.rank
"""
SIMILAR_SQL = """
SELECT s.version, s.rank, s.similar_product_id AS product_id, c.title, s.score, c.version AS title_version
FROM {schema}.similar_products s LEFT JOIN {schema}.product_clusters c ON c.product_id = s.similar_product_id
WHERE s.product_id = %(id)s ORDER BY s.rank LIMIT %(limit)s
"""
POPULAR_SQL = """
SELECT p.version, p.rank, p.product_id, c.title, p.score, %(popular_reason)s AS reason, c.version AS title_version
FROM {schema}.popular_products p LEFT JOIN {schema}.product_clusters c USING (product_id)
ORDER BY p.rank LIMIT %(limit)s
"""
PRODUCT_SQL = """
SELECT version, product_id, cluster, title, category FROM {schema}.product_clusters WHERE product_id = %(id)s
"""
CURRENT_SQL = "SELECT version, run_id, published_at FROM {schema}.published_versions WHERE is_current"


def _statement(text: str, schema: str):
    from psycopg2 import sql

    return sql.SQL(text).format(schema=_ident(schema))


def _rows(cursor, statement, params: dict) -> list[dict]:
    cursor.execute(statement, params)
    columns = [column.name for column in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


# The types of the serving statements' parameters, for PREPARE.
PARAMETER_TYPES = {"id": "text", "limit": "bigint", "popular_reason": "text"}


def _prepared(name: str, text: str) -> tuple[str, str]:
    """(PREPARE statement, EXECUTE statement) for `text` with %(name)s parameters."""
    order: list[str] = []

    def positional(match: re.Match) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    body = re.sub(r"%\((\w+)\)s", positional, text)
    types = f" ({', '.join(PARAMETER_TYPES[param] for param in order)})" if order else ""
    arguments = f" ({', '.join(f'%({param})s' for param in order)})" if order else ""
    return f"PREPARE recs_{name}{types} AS {body}", f"EXECUTE recs_{name}{arguments}"


def _nothing_published(database: Database, schema: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"nothing published yet in schema {schema} of {database.redacted_url}: run the DAG with {URL_VARIABLE} set"
    )


def query(database: Database, schema: str, statement: str, params: tuple | dict = ()):
    """Run one SELECT (`{schema}` in it is replaced by the quoted schema) into a DataFrame."""
    import pandas as pd
    import psycopg2

    connection = database.connect("recs-reader")
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(_statement(statement, schema), params)
            columns = [column.name for column in cursor.description]
            return pd.DataFrame(cursor.fetchall(), columns=columns)
    except psycopg2.errors.UndefinedTable as err:
        raise _nothing_published(database, schema) from err
    finally:
        connection.close()


ITEM_COLUMNS = ["rank", "product_id", "title", "score", "reason"]


def recommendations_for(database: Database, schema: str, user_id: str):
    """A user's recommendations with titles; an unknown user is an error (reader.UnknownId)."""
    from recs.reader import unknown_customer

    mine = query(database, schema, RECOMMENDATIONS_SQL,
                 {"id": user_id, "limit": None, "popular_reason": POPULAR_REASON})
    if mine.empty or not mine["personal"].iloc[0]:
        raise unknown_customer(user_id)
    return mine[ITEM_COLUMNS]


def similar_to(database: Database, schema: str, product_id: str):
    from recs.reader import unknown_product

    rows = query(database, schema, SIMILAR_SQL, {"id": product_id, "limit": None})
    if rows.empty:
        raise unknown_product(product_id)
    return rows.rename(columns={"product_id": "similar_product_id"})[["rank", "similar_product_id", "title", "score"]]


def summary(database: Database, schema: str):
    table = query(database, schema, "SELECT * FROM {schema}.run_summary")
    return table.drop(columns=["config_json", "stats_json"], errors="ignore").iloc[0]


class Reader:
    """What the HTTP service reads from PostgreSQL: a thread-safe connection pool, one
    statement per answer (so one version per answer, named in every row)."""

    # How long a request waits for a free connection before it is answered 503.
    WAIT_SECONDS = 10.0

    def __init__(self, database: Database, schema: str, max_connections: int = 16):
        import threading

        from psycopg2 import pool

        self.database, self.schema = database, schema
        # psycopg2's pool raises when all its connections are out; requests queue here instead.
        self._free = threading.BoundedSemaphore(max_connections)
        try:
            # minconn = maxconn: psycopg2's pool closes every returned connection beyond
            # minconn, which under load means a new PostgreSQL backend (a fork) per request.
            self._pool = pool.ThreadedConnectionPool(
                max_connections, max_connections, host=database.host, port=database.port, dbname=database.dbname,
                user=database.user or None, password=database.password or None, application_name="recs-serving",
                connect_timeout=10, **dict(database.params),
            )
        except Exception as err:  # psycopg2.OperationalError: one line, without the password
            raise DatabaseError(f"cannot connect to {database.redacted_url}: {str(err).strip()}") from err
        # Composed once into plain text, and prepared once per connection (PREPARE ... AS):
        # planning these statements costs PostgreSQL twice what running them does. A swap
        # of versions invalidates the plans; PostgreSQL re-plans them by the tables' names.
        connection = self._pool.getconn()
        try:
            self._statements = {
                name: _prepared(name, _statement(text, schema).as_string(connection)) for name, text in (
                    ("recommendations", RECOMMENDATIONS_SQL), ("similar", SIMILAR_SQL), ("popular", POPULAR_SQL),
                    ("product", PRODUCT_SQL), ("current", CURRENT_SQL))}
        finally:
            self._pool.putconn(connection)
        self._prepared_on: dict[int, set[str]] = {}  # backend pid -> statements prepared on that connection

    def close(self) -> None:
        self._pool.closeall()

    def _getconn(self):
        if not self._free.acquire(timeout=self.WAIT_SECONDS):
            raise DatabaseError(f"no free connection to {self.database.redacted_url} in {self.WAIT_SECONDS:.0f}s")
        try:
            return self._pool.getconn()
        except BaseException:
            self._free.release()
            raise

    def _putconn(self, connection, close: bool = False) -> None:
        try:
            self._pool.putconn(connection, close=close)
        finally:
            self._free.release()

    def run(self, name: str, **params) -> list[dict]:
        import psycopg2

        prepare, execute = self._statements[name]
        connection = self._getconn()
        broken = False
        try:
            connection.autocommit = True
            prepared = self._prepared_on.setdefault(connection.info.backend_pid, set())
            with connection.cursor() as cursor:
                if name not in prepared:
                    cursor.execute(prepare)
                    prepared.add(name)
                return _rows(cursor, execute, params)
        except psycopg2.errors.UndefinedTable as err:
            raise _nothing_published(self.database, self.schema) from err
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = True  # a restarted server: the next request gets a fresh connection
            raise
        finally:
            if broken or connection.closed:
                self._prepared_on.pop(connection.info.backend_pid, None)
            self._putconn(connection, close=broken or bool(connection.closed))

    def recommendations(self, user_id: str, limit: int | None) -> list[dict]:
        return self.run("recommendations", id=user_id, limit=limit, popular_reason=POPULAR_REASON)

    def similar(self, product_id: str, limit: int | None) -> list[dict]:
        return self.run("similar", id=product_id, limit=limit)

    def popular(self, limit: int | None) -> list[dict]:
        return self.run("popular", limit=limit, popular_reason=POPULAR_REASON)

    def product(self, product_id: str) -> dict | None:
        rows = self.run("product", id=product_id)
        return rows[0] if rows else None

    def current(self) -> dict | None:
        rows = self.run("current")
        return rows[0] if rows else None

    def versions(self) -> list[dict]:
        """Every kept version (not dropped), newest first, with its run_summary and run_metrics."""
        import pandas as pd
        from psycopg2 import sql

        from recs.reader import version_info

        connection = self._getconn()
        try:
            connection.autocommit = False
            with connection, connection.cursor() as cursor:
                kept = _rows(cursor, sql.SQL(
                    "SELECT version, run_id, published_at, table_key, tables, is_current FROM {} "
                    "WHERE dropped_at IS NULL ORDER BY published_at DESC").format(
                        _ident(self.schema, VERSIONS_TABLE)), {})
                infos = []
                for row in kept:
                    def table(name: str, row=row):
                        if name not in row["tables"]:
                            return None
                        live = name if row["is_current"] else versioned_name(name, row["table_key"])
                        found = _rows(cursor, sql.SQL("SELECT * FROM {}").format(_ident(self.schema, live)), {})
                        return pd.DataFrame(found) if found else None

                    summary, metrics = table("run_summary"), table("run_metrics")
                    infos.append(version_info(
                        row["version"], row["run_id"], row["published_at"].isoformat(),
                        summary.iloc[0].to_dict() if summary is not None else None, metrics, row["is_current"]))
                return infos
        finally:
            self._putconn(connection)


def list_versions(database: Database, schema: str) -> list[tuple]:
    from psycopg2 import sql

    connection = database.connect("recs-reader")
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                sql.SQL(
                    "SELECT version, run_id, published_at, is_current, rolled_back_at, dropped_at, row_counts "
                    "FROM {} ORDER BY published_at DESC"
                ).format(_ident(schema, VERSIONS_TABLE))
            )
            return cursor.fetchall()
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    from recs.config import RecsConfig

    parser = argparse.ArgumentParser(description="Published versions in PostgreSQL: list them, roll back.")
    parser.add_argument("command", choices=["rollback", "versions"])
    parser.add_argument("--to", help="rollback: this version instead of the previous one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = RecsConfig.load()  # reads .env, where RECS_DATABASE_URL may be
    database = configured_database()
    try:
        if database is None:
            if args.command == "versions":
                raise DatabaseError(
                    f"{URL_VARIABLE} is not set: versions live under {config.input.data_root}/published")
            # Parquet only: move the local CURRENT pointer back.
            target = args.to or previous_parquet_version(config.input.data_root)
            if not target or not point_parquet_to(config.input.data_root, target):
                raise DatabaseError(
                    f"no earlier local version to roll back to under {config.input.data_root}/published")
            print(f"published/CURRENT now points to {target} ({URL_VARIABLE} is not set: no database)")
            return 0
        schema = config.publish.database_schema
        if args.command == "versions":
            for version, _run_id, at, current, rolled_back, dropped, rows in list_versions(database, schema):
                state = "current" if current else "dropped" if dropped else "rolled back" if rolled_back else "kept"
                print(f"{'*' if current else ' '} {version:45} {at:%Y-%m-%d %H:%M:%S} {state:11} {rows}")
            return 0
        before, after = rollback(database, schema, args.to, config.publish.database_lock_timeout_seconds,
                                 config.publish.database_statement_timeout_seconds)
        print(f"{database.redacted_url} schema {schema}: rolled back from {before} to {after}")
        if point_parquet_to(config.input.data_root, after):
            print(f"{config.input.data_root}/published/CURRENT now points to {after}")
        else:
            print(f"{config.input.data_root}/published/CURRENT left alone (no local version {after})")
    except DatabaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - psycopg2 errors: one line, no traceback
        if not type(err).__module__.startswith("psycopg2"):
            raise
        if getattr(err, "pgcode", None) == "42P01":  # undefined_table: published_versions
            print(f"error: nothing published yet in schema {config.publish.database_schema}", file=sys.stderr)
        else:
            print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
