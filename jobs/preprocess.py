"""spark-submit entry point of the preprocess step; the work is in recs/preprocess.py."""

from recs import preprocess
from recs.runtime import run_step

if __name__ == "__main__":
    run_step("preprocess", preprocess.run)
