"""The prepared GPU recipe sweep, in its CPU smoke mode: choice on validation, JSON + Markdown,
and a rerun that resumes instead of retraining."""
import importlib.util
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _sweep():
    spec = importlib.util.spec_from_file_location("recipe_sweep", REPO / "benchmarks" / "recipe_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recipe_sweep_smoke_chooses_on_validation_and_resumes(tmp_path):
    sweep = _sweep()
    argv = ["--smoke", "--confirm-seeds", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "sweep")]
    result = sweep.main(argv)
    rows = result["rows"]
    assert {(r["recipe"], r["seed"]) for r in rows} == {("base", 0), ("cosine", 0), (result["winner"], 1)}
    phase1 = {r["recipe"]: r["val_cv_auc_weighted"] for r in rows if r["seed"] == 0}
    assert phase1[result["winner"]] == max(phase1.values())          # chosen on validation only
    for r in rows:
        assert 0 <= r["test_auc_weighted"] <= 1 and r["steps"] == 20
        assert (tmp_path / "runs" / f"{r['recipe']}_s{r['seed']}" / "predictions_weighted.csv").exists()
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["winner"] == result["winner"] and "winner" in (tmp_path / "sweep.md").read_text()
    stamps = {p: p.stat().st_mtime for p in (tmp_path / "runs").glob("*/result.json")}
    again = sweep.main(argv)                                          # finished tasks are skipped
    assert {p: p.stat().st_mtime for p in (tmp_path / "runs").glob("*/result.json")} == stamps
    assert np.isclose(again["winner_summary"]["test_auc_weighted"][0], result["winner_summary"]["test_auc_weighted"][0])
