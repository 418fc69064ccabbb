"""Read the published tables without Spark (pandas + pyarrow), as a storefront or a
person at a terminal would. Local data roots only; a cluster reads them with Spark.
With RECS_DATABASE_URL set, `user`, `similar` and `summary` read PostgreSQL instead
(the schema RECS_DATABASE_SCHEMA, through recs.postgres).

    python -m recs.reader user U00042
    python -m recs.reader similar P00017
    python -m recs.reader summary
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

from recs import postgres
from recs.config import RecsConfig
from recs.io import resolve_pointer


def _read_or_none(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def current_version_dir(data_root: str) -> str:
    """The folder of the version readers should use, found as the Spark jobs find it."""
    published = os.path.join(data_root.removeprefix("file://"), "published")
    version = resolve_pointer(
        lambda folder: os.listdir(folder) if os.path.isdir(folder) else [], _read_or_none, published
    )
    if version is None:
        raise FileNotFoundError(f"nothing published yet under {published}: run the DAG first")
    return os.path.join(published, "versions", version)


def published_table(data_root: str, table: str) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(current_version_dir(data_root), table))


def titles(data_root: str) -> pd.Series:
    clusters = published_table(data_root, "product_clusters")
    return clusters.set_index("product_id")["title"]


def recommendations_for(data_root: str, user_id: str) -> pd.DataFrame:
    """A user's recommendations with titles; unknown users get the popular products."""
    recommendations = published_table(data_root, "user_recommendations")
    mine = recommendations[recommendations["user_id"] == user_id].sort_values("rank")
    if mine.empty:
        mine = published_table(data_root, "popular_products").assign(
            user_id=user_id, reason="no history yet: popular right now"
        )
    columns = ["rank", "product_id", "title", "score", "reason"]
    return mine.assign(title=mine["product_id"].map(titles(data_root)))[columns]


def similar_to(data_root: str, product_id: str) -> pd.DataFrame:
    similar = published_table(data_root, "similar_products")
    rows = similar[similar["product_id"] == product_id].sort_values("rank")
    if rows.empty:
        raise KeyError(f"unknown product {product_id!r}: it is not in the published catalog")
    return rows.assign(title=rows["similar_product_id"].map(titles(data_root)))[
        ["rank", "similar_product_id", "title", "score"]
    ]


def summary(data_root: str) -> pd.Series:
    return published_table(data_root, "run_summary").drop(columns=["config_json", "stats_json"]).iloc[0]


def print_samples(data_root: str, users: int = 3) -> None:
    """What `make run` shows at the end: where the tables are, and a few users' picks."""
    version = current_version_dir(data_root)
    print(f"\nPublished tables: {version}")
    for name in sorted(os.listdir(version)):
        if not name.startswith("_"):
            print(f"  {os.path.join(version, name)}")
    print("\nRun summary:\n" + summary(data_root).to_string())
    recommendations = published_table(data_root, "user_recommendations")
    # The users with the most personal recommendations show the model at work.
    personal = recommendations[recommendations["reason_product_id"].notna()]
    for user_id in personal["user_id"].value_counts().index[:users]:
        print(f"\nRecommendations for user {user_id}:")
        print(recommendations_for(data_root, user_id).to_string(index=False, max_colwidth=60))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Look at the published recommendations.")
    parser.add_argument("what", choices=["user", "similar", "summary", "samples"])
    parser.add_argument("id", nargs="?", help="user id (user) or product id (similar)")
    parser.add_argument("--data-root", default=None, help="defaults to RECS_DATA_ROOT")
    parser.add_argument("--source", choices=["auto", "parquet", "postgres"], default="auto",
                        help="auto (default): PostgreSQL when RECS_DATABASE_URL is set, else Parquet")
    args = parser.parse_args(argv)
    config = RecsConfig.load()  # also reads .env, where RECS_DATABASE_URL may be
    data_root = args.data_root or config.data_root
    database = None if args.source == "parquet" else postgres.configured_database()
    if args.source == "postgres" and database is None:
        parser.error(f"--source postgres needs {postgres.URL_VARIABLE}")
    schema = config.database_schema
    pd.set_option("display.width", 200)
    try:
        if args.what in ("user", "similar") and not args.id:
            parser.error(f"'{args.what}' needs an id")
        if args.what == "user":
            mine = (postgres.recommendations_for(database, schema, args.id) if database
                    else recommendations_for(data_root, args.id))
            print(mine.to_string(index=False, max_colwidth=60))
        elif args.what == "similar":
            similar = postgres.similar_to(database, schema, args.id) if database else similar_to(data_root, args.id)
            print(similar.to_string(index=False, max_colwidth=60))
        elif args.what == "summary":
            print((postgres.summary(database, schema) if database else summary(data_root)).to_string())
        else:
            print_samples(data_root)
    except (FileNotFoundError, KeyError, postgres.DatabaseError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
