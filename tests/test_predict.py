"""sgc predict: files are read and preprocessed as the run's loader did, and scored as sgc classify scores.

The must-show: on PNGs written from BreastMNIST test images and on the two real CBIS-DDSM
DICOMs, ``sgc predict`` gives the posteriors ``sgc classify`` gives on the same images. Files
given in the split's order with the same ``--batch-size`` and ``--seed`` are chunked and seeded
as classify chunks the split, so the scores are identical; the only tolerance is the 6 decimals
of classify's scores CSV.
"""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sgc.classify import ScoreClassifier, posterior, read_scores_csv
from sgc.cli import main
from sgc.data import load_dataset
from sgc.data.files import expand_inputs, read_image_file
from sgc.data.recipes import prepare_file, recipe_for, recipe_from_config
from sgc.pipeline import evaluate_run, train_on_dataset
from tiny_runs import TINY_MLP, copy_run, digits_run, one_thread  # noqa: F401 (one_thread: autouse fixture)

CSV_TOL = 1e-6  # classify's CSV stores log-likelihoods with 6 decimals and posteriors with 6 digits


def _digit_png(path, image):
    """An 8-bit PNG of a digits image (17 levels k/16 stored as round(k * 255 / 16))."""
    k = np.round(image[0] * 16)
    Image.fromarray(np.round(k * 255 / 16).astype(np.uint8)).save(path)


def _classify_csv(path):
    ids, labels, log_lik = read_scores_csv(path)
    post = pd.read_csv(path, dtype={"image_id": str}).pivot(index="image_id", columns="class", values="posterior")
    return log_lik, post.loc[ids].to_numpy()


# --- reading files -----------------------------------------------------------------------
def test_expand_inputs_folders_globs_order_and_errors(tmp_path):
    for name in ("b.png", "a.png", "sub/c.npy", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    got = expand_inputs([tmp_path / "b.png", tmp_path, str(tmp_path / "*.png")])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["b.png", "a.png", "sub/c.npy"]
    with pytest.raises(FileNotFoundError, match="nope.png: no such file"):
        expand_inputs([tmp_path / "nope.png"])
    with pytest.raises(FileNotFoundError, match="matches no readable image"):
        expand_inputs([str(tmp_path / "*.tif")])
    with pytest.raises(ValueError, match="notes.txt: unknown image type"):
        expand_inputs([tmp_path / "notes.txt"])


def test_read_image_file_formats_and_value_ranges(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    u16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    Image.fromarray(u8).save(tmp_path / "a.png")
    Image.fromarray(u16).save(tmp_path / "b.png")
    Image.fromarray(np.stack([u8] * 3, -1)).save(tmp_path / "c.tif")
    np.save(tmp_path / "d.npy", u8.astype(np.float32) / 255)
    np.save(tmp_path / "e.npy", np.stack([u8] * 3, -1))   # (H, W, 3) uint8
    for name, bits, scale, raw in (("a.png", 8, 255, u8), ("b.png", 16, 65535, u16), ("d.npy", 32, 255, u8)):
        x, facts = read_image_file(tmp_path / name)
        assert x.shape == (1, 5, 7) and x.dtype == np.float32 and facts["bits"] == bits
        np.testing.assert_array_equal(x[0], raw.astype(np.float32) / np.float32(scale))
    for name in ("c.tif", "e.npy"):
        x, _ = read_image_file(tmp_path / name)
        assert x.shape == (3, 5, 7) and np.array_equal(x[1], u8 / np.float32(255))
    np.save(tmp_path / "bad.npy", np.full((4, 4), 3.0))
    with pytest.raises(ValueError, match=r"bad.npy: float pixels in \[3, 3\], outside \[0, 1\]"):
        read_image_file(tmp_path / "bad.npy")
    (tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:20])
    with pytest.raises(ValueError, match="cut.png: not a readable image"):
        read_image_file(tmp_path / "cut.png")


# --- recipes -----------------------------------------------------------------------------
def test_recipes_reproduce_the_breastmnist_and_digits_loaders_bit_for_bit(tmp_path, shared_data_dir):
    root = shared_data_dir / "medmnist"
    raw = np.load(root / "breastmnist.npz")["test_images"][:4]
    for i, img in enumerate(raw):
        Image.fromarray(img).save(tmp_path / f"b{i}.png")
    for options in ({}, {"size": 32}, {"size": 20}):   # native, zero-padded, area-resized
        test = load_dataset("breastmnist", root=str(root), **options)["test"]
        recipe = recipe_for("breastmnist", options, test.shape, test.levels)
        for i in range(4):
            x, facts = prepare_file(recipe, tmp_path / f"b{i}.png")
            assert not facts["resized"]
            np.testing.assert_array_equal(x, test.images[i])
    big = np.kron(raw[0], np.ones((3, 3), np.uint8))      # a foreign size is resized to 28 first, and says so
    Image.fromarray(big).save(tmp_path / "big.png")
    x, facts = prepare_file(recipe_for("breastmnist", {}, (1, 28, 28), 256), tmp_path / "big.png")
    assert facts["resized"] and x.shape == (1, 28, 28) and np.abs(x[0] - raw[0] / 255).mean() < 0.05
    test = load_dataset("digits", size=12)["test"]
    recipe = recipe_for("digits", {"size": 12}, test.shape, test.levels)
    for i in range(4):
        _digit_png(tmp_path / f"d{i}.png", test.images[i][:, 2:10, 2:10])
        np.testing.assert_array_equal(prepare_file(recipe, tmp_path / f"d{i}.png")[0], test.images[i])


def test_recipe_recorded_at_training_equals_the_one_derived_for_old_runs():
    config = json.loads((digits_run() / "config.json").read_text())
    recorded = config["data"]["preprocessing"]
    assert recorded == recipe_from_config(config) and recorded["kind"] == "array" and recorded["size"] == 8
    old = {**config, "data": {k: v for k, v in config["data"].items() if k != "preprocessing"}}
    derived = recipe_from_config(old)
    assert derived.pop("derived") is True and derived == recorded
    with pytest.raises(ValueError, match="no 'data' section"):
        recipe_from_config({"model": {}})
    with pytest.raises(ValueError, match="no preprocessing recipe is known for dataset 'mystery'"):
        recipe_from_config({"data": {"dataset": "mystery", "shape": [1, 8, 8], "levels": 2}})


# --- predict == classify -----------------------------------------------------------------
def test_predict_equals_classify_on_digits_files_and_other_seeds_differ(tmp_path):
    run = digits_run()
    test = load_dataset("digits", val_size=0.2)["test"]
    opts = {"rtol": 1e-3, "atol": 1e-3}
    # classify the first 20 test images (the shared run is read-only here: scores go to a copy)
    run = copy_run(run, tmp_path / "run")
    m = evaluate_run(run, split="test", estimator="ode", estimator_options=opts, batch_size=8, limit=20, progress=False)
    log_lik, post = _classify_csv(run / m["scores_file"])
    for i in range(20):
        if i % 2:
            _digit_png(tmp_path / f"t{i:02d}.png", test.images[i])
        else:
            np.save(tmp_path / f"t{i:02d}.npy", test.images[i][0])   # floats in [0, 1]
    clf = ScoreClassifier.from_run(run, progress=False)
    frame = clf.predict_files(sorted(tmp_path.glob("t*.*")), estimator="ode", estimator_options=opts,
                              batch_size=8, progress=False)
    got = frame[[f"p_{k}" for k in range(10)]].to_numpy()
    np.testing.assert_allclose(got, post, atol=CSV_TOL)
    np.testing.assert_allclose(posterior(log_lik), got, atol=CSV_TOL)
    assert (frame["chunk"].to_numpy() == np.arange(20) // 8).all() and (frame["nfe"] > 0).all()
    other = clf.predict_files(sorted(tmp_path.glob("t*.*")), estimator="ode", estimator_options=opts,
                              batch_size=8, seed=1, progress=False)
    assert np.abs(other[[f"bpd_{k}" for k in range(10)]].to_numpy()
                  - frame[[f"bpd_{k}" for k in range(10)]].to_numpy()).max() > 1e-3  # the seed matters


def test_predict_equals_classify_on_breastmnist_pngs(tmp_path, shared_data_dir, capsys):
    root = shared_data_dir / "medmnist"
    run = tmp_path / "run"
    train_on_dataset("breastmnist", run, data_root=str(root), model=TINY_MLP,
                     train={"steps": 40, "batch_size": 64, "lr": 2e-3, "warmup": 10}, progress=False)
    args = ["--estimator", "elbo", "--options", "n_draws=8", "--batch-size", "8"]
    assert main(["classify", "--run-dir", str(run), "--limit", "20", *args]) == 0
    log_lik, post = _classify_csv(next(run.glob("partial_scores_test_elbo_limit20*.csv")))
    raw = np.load(root / "breastmnist.npz")["test_images"][:20]
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, img in enumerate(raw):
        Image.fromarray(img).save(pngs / f"test_{i:05d}.png")
    assert main(["predict", "--run-dir", str(run), str(pngs), "--out", str(tmp_path / "p.json"), *args]) == 0
    frame = pd.read_json(tmp_path / "p.json")
    np.testing.assert_allclose(frame[["p_benign", "p_malignant"]].to_numpy(), post, atol=CSV_TOL)
    np.testing.assert_allclose(posterior(log_lik), frame[["p_benign", "p_malignant"]].to_numpy(), atol=CSV_TOL)
    assert (frame["draws"] == 8).all() and (frame["estimator"] == "elbo").all() and (frame["error"] == "").all()
    assert "20 of 20 images predicted" in capsys.readouterr().err


def test_predict_equals_classify_on_the_real_cbis_ddsm_dicoms(tmp_path, shared_data_dir):
    """A run folder of the old kind (no recorded preprocessing): the recipe is derived from its loader options."""
    from sgc.nets import build_model
    from sgc.sde import make_sde
    from sgc.train import train_score_model
    root = shared_data_dir / "cbis-ddsm"
    options = {"missing": "drop", "size": 32, "workers": 1, "progress": False, "cache_dir": str(tmp_path / "cache")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = load_dataset("cbis_ddsm", root=str(root), **options)["test"]
    assert test.ids == ["Mass-Test_P_00173_LEFT_CC", "Mass-Test_P_00820_LEFT_CC"]
    model = build_model({**TINY_MLP, "num_classes": 2, "in_channels": 1, "image_size": 32})
    data = {"dataset": "cbis_ddsm", "root": str(root), "options": options, "class_names": list(test.class_names),
            "levels": test.levels, "shape": list(test.shape), "n_train": 2, "train_counts": [1, 1]}
    run = tmp_path / "run"
    train_score_model(model, make_sde("vp"), test.images, np.array(test.labels), {"steps": 20, "batch_size": 2,
                      "levels": test.levels}, run_dir=run, progress=False, extra_meta={"data": data})
    opts = {"rtol": 1e-3, "atol": 1e-3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = evaluate_run(run, split="test", estimator="ode", estimator_options=opts, batch_size=2, progress=False)
    log_lik, post = _classify_csv(run / m["scores_file"])
    frame = ScoreClassifier.from_run(run, progress=False).predict_files(
        root / "dicom", estimator="ode", estimator_options=opts, batch_size=2, progress=False)
    assert [p.split("/")[-2] for p in frame["file"]] == ["sfm-benign-0", "sfm-malign-0"]
    np.testing.assert_allclose(frame[["p_benign", "p_malignant"]].to_numpy(), post, atol=CSV_TOL)
    np.testing.assert_allclose(posterior(log_lik), frame[["p_benign", "p_malignant"]].to_numpy(), atol=CSV_TOL)
    assert list(frame["prep_format"]) == ["dicom", "dicom"] and list(frame["prep_quantised_bits"]) == [16, 16]
    recipe = recipe_from_config(json.loads((run / "config.json").read_text()))
    assert recipe["derived"] and recipe["settings"]["size"] == 32
    for i, path in enumerate(frame["file"]):   # the model inputs themselves are the cached training images
        np.testing.assert_array_equal(prepare_file(recipe, path)[0], test.images[i])


# --- errors ------------------------------------------------------------------------------
def test_bad_files_get_error_rows_and_the_cli_names_them(tmp_path, capsys):
    run = digits_run()
    np.save(tmp_path / "good.npy", np.zeros((8, 8), np.float32))
    np.save(tmp_path / "bad.npy", np.full((8, 8), 2.0, np.float32))
    opts = ["--estimator", "elbo", "--options", "n_draws=4"]
    argv = ["predict", "--run-dir", str(run)]
    assert main([*argv, str(tmp_path / "good.npy"), str(tmp_path / "bad.npy"), "--out", str(tmp_path / "p.csv"),
                 "--panels", str(tmp_path / "panels"), *opts]) == 0
    assert sorted(p.name for p in (tmp_path / "panels").iterdir()) == ["good.png"]   # one panel per predicted image
    frame = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert frame["error"].iloc[0] == "" and "outside [0, 1]" in frame["error"].iloc[1]
    assert frame["predicted"].iloc[1] == ""
    assert "bad.npy: ValueError" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "bad.npy"), *opts]) == 2               # nothing could be predicted
    assert main([*argv, str(tmp_path / "missing.png"), *opts]) == 2
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    assert main(["predict", "--run-dir", str(tmp_path / "norun"), str(tmp_path / "good.npy")]) == 2
    assert "not found" in capsys.readouterr().err
