"""sgc export: safetensors + JSON + model card; export -> load -> predict equals the run folder's predictions."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from sgc.classify import ScoreClassifier
from sgc.cli import main
from sgc.data import load_dataset
from sgc.export import load_export
from sgc.predict import calibrate_run
from tiny_runs import copy_run, digits_run, one_thread  # noqa: F401 (one_thread: autouse fixture)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = copy_run(digits_run(), root / "run")
    assert main(["classify", "--run-dir", str(run), "--estimator", "elbo", "--options", "n_draws=8"]) == 0
    calibrate_run(run, estimator="elbo", estimator_options={"n_draws": 8}, progress=False)
    assert main(["export", "--run-dir", str(run), "--out", str(root / "model"), "--n-boot", "100"]) == 0
    test = load_dataset("digits", val_size=0.2)["test"]
    files = root / "files"
    files.mkdir()
    for i in range(20):
        np.save(files / f"t{i:02d}.npy", test.images[i, 0])
    np.save(files / "noise.npy", np.random.default_rng(0).random((8, 8)).astype(np.float32))
    return run, root / "model", files


def test_export_load_predict_equals_the_run_folder(exported, tmp_path):
    run, model_dir, files = exported
    kw = dict(estimator_options={"n_draws": 8}, progress=False)
    from_run = ScoreClassifier.from_run(run, progress=False).predict_files(files, **kw)
    loaded = ScoreClassifier.load(model_dir, progress=False).predict_files(files, **kw)
    assert (from_run["estimator"] == "elbo").all() and from_run["ood_flag"].notna().all()
    pd.testing.assert_frame_equal(from_run.drop(columns=["seconds"]), loaded.drop(columns=["seconds"]))
    assert main(["predict", "--export", str(model_dir), str(files), "--out", str(tmp_path / "p.csv"),
                 "--options", "n_draws=8"]) == 0
    cli = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(cli[[f"p_{k}" for k in range(10)]].to_numpy(),
                               from_run[[f"p_{k}" for k in range(10)]].to_numpy(), rtol=1e-9, atol=1e-12)
    assert bool(cli.loc[cli["image_id"] == "noise", "ood_flag"].iloc[0])


def test_export_folder_contents_and_model_card(exported):
    run, model_dir, _ = exported
    names = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "preprocessing.json", "ood_calibration.json", "MODEL_CARD.md",
            "SHA256SUMS", "metrics/intervals.json", "metrics/metrics_test_elbo.json"} <= names
    config = json.loads((model_dir / "config.json").read_text())
    assert config["data"]["preprocessing"] == json.loads((model_dir / "preprocessing.json").read_text())
    assert config["data"]["root"] is None and str(run) not in (model_dir / "config.json").read_text()
    card = (model_dir / "MODEL_CARD.md").read_text()
    for heading in ("## Model", "## Data", "## Metrics", "## Out-of-distribution flag", "## Intended use",
                    "## Limitations"):
        assert heading in card
    intervals = json.loads((model_dir / "metrics" / "intervals.json").read_text())
    row = [m for m in intervals if m["split"] == "test"][0]
    assert row["accuracy"]["lo"] <= row["accuracy"]["value"] <= row["accuracy"]["hi"]
    assert f"{row['accuracy']['value']:.3f} [{row['accuracy']['lo']:.3f}, {row['accuracy']['hi']:.3f}]" in card


def test_loading_never_unpickles_and_checks_the_files(exported, tmp_path, monkeypatch):
    _, model_dir, _ = exported

    def no_unpickling(*args, **kwargs):
        raise AssertionError("load_export must not call torch.load / pickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr("pickle.load", no_unpickling)
    model, sde, config = load_export(model_dir)
    assert model.num_classes == 10 and not model.training
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    weights = bytearray((bad / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ValueError, match="model.safetensors is missing or does not match SHA256SUMS"):
        load_export(bad)
    with pytest.raises(FileNotFoundError, match="is not an sgc export"):
        load_export(tmp_path)
    with pytest.raises(FileExistsError, match="not empty"):
        from sgc.export import export_run
        export_run(exported[0], model_dir)
