"""spark-submit entry point of the pca step; the work is in recs/pca.py."""

from recs import pca
from recs.runtime import run_step

if __name__ == "__main__":
    run_step("pca", pca.run)
