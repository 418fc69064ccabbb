"""spark-submit entry point of the cluster step; the work is in recs/cluster.py."""

from recs import cluster
from recs.runtime import run_step

if __name__ == "__main__":
    run_step("cluster", cluster.run)
