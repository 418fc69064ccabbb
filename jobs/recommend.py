"""spark-submit entry point of the recommend step; the work is in recs/recommend.py."""

from recs import recommend
from recs.runtime import run_step

if __name__ == "__main__":
    run_step("recommend", recommend.run)
