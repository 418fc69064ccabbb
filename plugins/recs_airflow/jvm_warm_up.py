"""A short Spark application that touches what the pipeline's steps use (Parquet and
JSON, joins, windows, aggregates, Arrow to and from pandas, a pandas UDF, the MLlib
estimators), for `class_archive.py` to record the classes its driver JVM loads."""

from __future__ import annotations

import sys
import tempfile

import pandas as pd
from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import PCA, StandardScaler, VectorAssembler
from pyspark.ml.recommendation import ALS
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType


@F.pandas_udf(DoubleType())
def halved(values: pd.Series) -> pd.Series:
    return values / 2


def main() -> None:
    spark = SparkSession.builder.appName("recs-jvm-warm-up").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    with tempfile.TemporaryDirectory() as folder:
        events = spark.createDataFrame(pd.DataFrame({
            "user": [u % 40 for u in range(400)], "item": [(u * 7) % 30 for u in range(400)],
            "ts": pd.date_range("2024-01-01", periods=400, freq="h").astype(str),
        })).withColumn("ts", F.col("ts").cast("timestamp"))
        events.write.parquet(f"{folder}/events")
        events = spark.read.parquet(f"{folder}/events").cache()
        order = Window.partitionBy("user").orderBy(F.col("ts").desc())
        recent = events.withColumn("rank", F.row_number().over(order)).where("rank <= 5")
        pairs = recent.alias("a").join(recent.alias("b"), "user").groupBy("a.item", "b.item").count()
        pairs.withColumn("half", halved(F.col("count").cast("double"))).toPandas()
        hashes = F.sum(F.xxhash64("user").cast("decimal(38,0)"))
        recent.groupBy("item").agg(F.count("*"), F.max("ts"), hashes).write.json(f"{folder}/json")
        ratings = events.groupBy("user", "item").agg(F.count("*").cast("float").alias("rating"))
        ALS(rank=4, maxIter=2, implicitPrefs=True, userCol="user", itemCol="item", ratingCol="rating",
            seed=1).fit(ratings).itemFactors.toPandas()
        points = VectorAssembler(inputCols=["user", "item"], outputCol="raw").transform(ratings)
        points = StandardScaler(inputCol="raw", outputCol="centred", withMean=True, withStd=False).fit(points) \
            .transform(points)
        points = PCA(k=2, inputCol="centred", outputCol="features").fit(points).transform(points)
        model = KMeans(k=3, seed=1, maxIter=3).fit(points)
        model.write().overwrite().save(f"{folder}/kmeans")
        ClusteringEvaluator().evaluate(model.transform(points))
    spark.stop()


if __name__ == "__main__":
    main()
    sys.exit(0)
