"""The accuracy benchmarks of issue 16 run end to end on tiny inputs: benchmarks/elbo_variance.py
(--smoke) and benchmarks/weighting_report.py on a tiny two-class run folder (the report reads the
run's recorded data folder, writes its tables, curve and figure, and records no machine path)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_elbo_variance_smoke_compares_every_scheme_with_the_default(tmp_path):
    torch.set_num_threads(1)
    result = _script("elbo_variance").main(["--smoke", "--out", str(tmp_path / "v.json")])
    rows = result["rows"]
    assert [(r["t_sampling"], r["noise_sampling"]) for r in rows][0] == ("stratified", "iid")
    assert rows[0]["ratio_to_default"] == 1.0 and all(r["var_diff"] > 0 for r in rows)
    assert json.loads((tmp_path / "v.json").read_text())["rows"] == rows
    assert str(tmp_path) not in result["command"] and "--out v.json" in result["command"]


def _fake_breastmnist(folder: Path) -> None:
    """Two classes, class 1 brighter, 60/40/40 images of 28x28."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 60), ("val", 40), ("test", 40)):
        y = np.arange(n) % 2
        x = 0.25 + 0.2 * y[:, None, None] + 0.3 * rng.random((n, 28, 28))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = (x * 255).astype(np.uint8), y.astype(np.uint8)[:, None]
    folder.mkdir(parents=True)
    np.savez(folder / "breastmnist.npz", **arrays)


@pytest.mark.slow
def test_weighting_report_on_a_tiny_run_folder(tmp_path, monkeypatch):
    from sgc.pipeline import train_on_dataset
    torch.set_num_threads(1)
    monkeypatch.delenv("SGC_DATA", raising=False)
    _fake_breastmnist(tmp_path / "data")
    for seed in (0, 1):
        train_on_dataset("breastmnist", tmp_path / f"run-s{seed}", data_root=tmp_path / "data", progress=False,
                         model={"arch": "mlp", "hidden": 16, "blocks": 1, "emb_dim": 8},
                         train={"steps": 20, "batch_size": 16, "warmup": 1, "checkpoint_every": 20, "seed": seed})
    out = tmp_path / "tables"
    argv = ["--run-dir", str(tmp_path / "run-s{seed}"), "--seeds", "0", "1", "--elbo", "n_draws=16",
            "t_sampling=sobol", "noise_sampling=antithetic", "batch_size=40", "--weighted", "n_bins=2", "folds=2",
            "repeats=1", "--n-boot", "20", "--tag", "w", "--out-dir", str(out), "--figures-dir", str(tmp_path / "f")]
    _script("weighting_report").main(argv)
    table = pd.read_csv(out / "w.csv")
    assert set(table["seed"]) == {0, 1} and table.groupby("seed")["chosen"].sum().tolist() == [1, 1]
    assert {"likelihood", "uniform"} <= set(table["weighting"]) and table["auc"].between(0, 1).all()
    curve = pd.read_csv(out / "w_curve.csv")
    assert set(curve["draws"]) == {8, 16} and (curve["auc"].between(0, 1)).all()
    assert len(pd.read_csv(out / "w_bins.csv")) == 2 * 2                       # 2 seeds x 2 bins
    assert (tmp_path / "f" / "w_auc_vs_draws.png").exists()
    md = (out / "w.md").read_text()
    assert "Chosen on validation" in md and str(tmp_path) not in md           # no machine path in the report
    # the evidence is kept in the run folder: a second report reads it instead of drawing again
    kept = sorted(p.name for p in (tmp_path / "run-s0").glob("evidence_*.npz"))
    assert len(kept) == 2
    stamps = {p: p.stat().st_mtime for p in (tmp_path / "run-s0").glob("evidence_*.npz")}
    _script("weighting_report").main(argv[:-6] + ["--tag", "w2", "--out-dir", str(out), "--figures-dir",
                                                  str(tmp_path / "f")])
    assert {p: p.stat().st_mtime for p in (tmp_path / "run-s0").glob("evidence_*.npz")} == stamps
    assert pd.read_csv(out / "w2.csv")["auc"].tolist() == table["auc"].tolist()
    with pytest.raises(Exception, match="nbins"):                             # a misspelt choice option
        _script("weighting_report").main(argv[:9] + ["--weighted", "nbins=2", "--out-dir", str(out)])
