"""The prepared GPU recipe sweep, in its CPU smoke mode: choice on validation, JSON + Markdown,
a rerun that resumes instead of retraining (and refuses results made otherwise), caps, and the
seed-by-seed paired tests against baseline predictions."""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _sweep():
    spec = importlib.util.spec_from_file_location("recipe_sweep", REPO / "benchmarks" / "recipe_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _report(name="recipe_report"):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recorded_command_names_no_machine_folder():
    report = _report("_command")
    argv = ["--device", "cpu", "--data-root", "../data/medmnist", "--runs-dir", str(REPO / "runs" / "x"),
            "--out", "/elsewhere/deep/sweep", "--base-model", '{"channels": 16}']
    cmd = report.public_command(argv, "benchmarks/recipe_sweep.py")
    assert "../data" not in cmd and "elsewhere" not in cmd and str(REPO) not in cmd
    assert "--data-root '<folder with breastmnist.npz>'" in cmd and "--runs-dir runs/x" in cmd
    assert "--out sweep" in cmd and """--base-model '{"channels": 16}'""" in cmd
    assert "<folder with digits.npz>" in report.public_command(["--data-root=/d"], "x.py", dataset="digits")


def test_recipe_sweep_smoke_chooses_on_validation_pairs_by_seed_and_resumes(tmp_path):
    sweep = _sweep()
    argv = ["--smoke", "--confirm-seeds", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "sweep")]
    result = sweep.main(argv)
    rows, winner = result["rows"], result["winner"]
    want = {("base", 0), ("cosine", 0), (winner, 1)} | ({("base", 1)} if winner != "base" else set())
    assert {(r["recipe"], r["seed"]) for r in rows} == want and not result["missing"]
    phase1 = {r["recipe"]: r["val_cv_auc_weighted"] for r in rows if r["seed"] == 0}
    assert phase1[winner] == max(phase1.values())                     # chosen on validation only
    for r in rows:
        assert 0 <= r["test_auc_weighted"] <= 1 and r["steps"] == 20
        assert (tmp_path / "runs" / f"{r['recipe']}_s{r['seed']}" / "predictions_weighted.csv").exists()
    assert result["verdict"]["status"] == "pending"                   # 2 of 3 seeds
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["winner"] == winner and "Winner on validation" in (tmp_path / "sweep.md").read_text()
    assert _report().render_markdown(saved) == (tmp_path / "sweep.md").read_text()   # the MD is the JSON's
    assert str(tmp_path) not in saved["command"] and "--runs-dir runs " in saved["command"]

    # baselines: the winner's own seed-0 probabilities, and its seed-1 probabilities turned around
    base = tmp_path / "baselines"
    base.mkdir()
    shutil.copy(tmp_path / "runs" / f"{winner}_s0" / "predictions_weighted.csv", base / "mirror_s0.csv")
    f = pd.read_csv(tmp_path / "runs" / f"{winner}_s1" / "predictions_weighted.csv", dtype={"image_id": str})
    f["p_0"], f["p_1"] = f["p_1"], f["p_0"]
    f.to_csv(base / "mirror_s1.csv", index=False)
    stamps = {p: p.stat().st_mtime for p in (tmp_path / "runs").glob("*/result.json")}
    sweep.TARGET["seeds"] = 2
    try:
        again = sweep.main(argv + ["--baseline-predictions", str(base / "mirror_s*.csv")])
    finally:
        sweep.TARGET["seeds"] = 3
    assert {p: p.stat().st_mtime for p in (tmp_path / "runs").glob("*/result.json")} == stamps   # nothing retrained
    assert np.isclose(again["summary"][winner]["test_auc_weighted"][0], result["summary"][winner]["test_auc_weighted"][0])
    mirror = next(p for p in again["paired"] if p["b"] == "mirror")
    s0, s1 = mirror["per_seed"]
    assert (s0["seed"], s1["seed"]) == (0, 1)
    assert s0["auc_a"] == s0["auc_b"] and s0["p_delong"] == 1.0       # seed 0 against itself
    assert np.isclose(s1["auc_b"], 1 - s1["auc_a"])                    # seed 1 against its mirror image
    assert again["verdict"]["status"] == "not met"                    # not above a baseline equal on seed 0
    assert sorted(again["finished_before_this_call"]) == sorted(f"{n} s{s}" for n, s in want)

    with pytest.raises(ValueError, match="other settings"):           # a finished task made with other steps
        sweep.main(argv + ["--steps", "21"])


def test_recipe_sweep_stops_at_its_cap_and_says_what_is_missing(tmp_path):
    sweep = _sweep()
    result = sweep.main(["--smoke", "--budget-s", "0", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "s")])
    assert result["winner"] is None and result["rows"] == []
    assert result["missing"] == ["base s0", "cosine s0"] and result["verdict"]["status"] == "pending"
    assert "rerun the same command to resume" in (tmp_path / "s.md").read_text()
    assert not list((tmp_path / "runs").glob("*_s0*"))               # no task started without time left
