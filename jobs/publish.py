"""spark-submit entry point of the publish step; the work is in recs/publish.py."""

from recs import publish
from recs.runtime import run_step

if __name__ == "__main__":
    run_step("publish", publish.run)
