"""spark-submit entry point of the evaluate step; the work is in recs/evaluate.py."""

from recs import evaluate
from recs.runtime import run_step

if __name__ == "__main__":
    run_step("evaluate", evaluate.run)
