"""One procedure, one place: no step module imports another step module (the
recommend step once imported the evaluate step for its split and tuning)."""

from __future__ import annotations

import ast
from pathlib import Path

RECS = Path(__file__).resolve().parents[2] / "jobs" / "recs"
STEPS = ("preprocess", "embed", "pca", "cluster", "recommend", "evaluate", "publish")


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_no_step_module_imports_another():
    for step in STEPS:
        others = {f"recs.{other}" for other in STEPS if other != step}
        assert not imported_modules(RECS / f"{step}.py") & others, step


def test_splits_and_tuning_live_in_one_place_each():
    for name in ("time_split", "leave_last_out", "eval_set", "tuned_model", "tune_neighbours"):
        defined = [p.name for p in RECS.glob("*.py") if f"\ndef {name}(" in p.read_text()]
        assert defined == ["splits.py" if name in {"time_split", "leave_last_out", "eval_set"} else "tuning.py"]
