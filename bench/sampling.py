"""Does a sampled evaluation agree with the full one? Each data set evaluated with every
test user, then again with at most N of them (`RECS_EVAL_USERS`, which also samples the
validation users that tuning ranks), every method's NDCG@10 compared.

    .venv/bin/python bench/sampling.py                       # samples of 300 and 1000 users
    .venv/bin/python bench/sampling.py --sizes 500 --only online_retail

The evaluate step ranks at most `RECS_EVAL_USERS` (10,000) customers of a window, a
seeded sample, and reports NDCG's 95% interval over them (`ndcg_ci95`). Both shared data
sets have fewer test users than that, so their normal evaluation is full; this runs the
same evaluation (`bench/quality.py`'s, after the same steps) with smaller samples. A
sample agrees when the full NDCG lies within its interval; at 95%, about one method in
twenty may fall outside by chance. The last line is one JSON object:
{"<dataset>": {"test_users": N, "samples": [{"users": n, "methods": {"<method>":
 {"full": x, "sampled": y, "ci95": c, "agrees": bool}}}]}}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import add_data_arguments, bench_datasets, evaluate_prepared, prepare_dataset  # noqa: E402


def overall(metrics, metric: str) -> dict[str, float]:
    rows = metrics[(metrics["segment"] == "all") & (metrics["metric"] == metric)]
    return dict(zip(rows["method"], rows["value"].astype(float), strict=True))


def compare(full, sampled) -> dict:
    full_ndcg, ndcg, ci95 = overall(full, "ndcg"), overall(sampled, "ndcg"), overall(sampled, "ndcg_ci95")
    return {method: {"full": full_ndcg[method], "sampled": ndcg[method], "ci95": ci95[method],
                     "agrees": abs(ndcg[method] - full_ndcg[method]) <= ci95[method]}
            for method in full_ndcg}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000], help="test users per sample")
    args = parser.parse_args(argv)
    results = {}
    with bench_datasets(args, "recs-bench-sampling") as (spark, datasets, data_root):
        for name, (path, input_format) in datasets.items():
            prepared = prepare_dataset(spark, name, path, input_format, data_root)
            full, tuning = evaluate_prepared(spark, prepared)
            samples = []
            for size in args.sizes:
                if size >= tuning["test_users"]:
                    continue
                sampled, sampled_tuning = evaluate_prepared(spark, prepared, eval_users=size)
                methods = compare(full, sampled)
                samples.append({"users": sampled_tuning["test_users"], "methods": methods})
                print(f"\n== {name}: {sampled_tuning['test_users']} of {tuning['test_users']} test users ==")
                for method, row in sorted(methods.items()):
                    print(f"{method:>14}  full {row['full']:.4f}  sampled {row['sampled']:.4f} "
                          f"± {row['ci95']:.4f}  {'agrees' if row['agrees'] else 'OUTSIDE'}")
            agreeing = sum(row["agrees"] for sample in samples for row in sample["methods"].values())
            total = sum(len(sample["methods"]) for sample in samples)
            print(f"[{name}] {agreeing} of {total} sampled NDCGs hold the full one within their interval", flush=True)
            results[name] = {"test_users": tuning["test_users"], "samples": samples}
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
