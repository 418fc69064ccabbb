"""spark-submit entry point of the embed step; the work is in recs/embed.py."""

from recs import embed
from recs.runtime import run_step

if __name__ == "__main__":
    run_step("embed", embed.run)
