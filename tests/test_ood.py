"""OOD scores: the mixture density, the compressor's bits/dim, calibration at a stated false-alarm rate."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from sgc import ood
from sgc.classify import ScoreClassifier
from sgc.predict import calibrate_run, load_calibration
from tiny_runs import copy_run, digits_run, one_thread  # noqa: F401 (one_thread: autouse fixture)


def test_mixture_bpd_is_the_bits_per_dim_of_the_prior_weighted_sum():
    log_lik = np.array([[-100.0, -100.0], [-50.0, -math.inf]])
    got = ood.mixture_bpd(log_lik, np.log([0.25, 0.75]), dims=64, levels=256)
    # equal class densities: p(x) = p(x | y) whatever the prior; one impossible class: p(x) = 0.25 p(x | 0)
    want = [100 / (64 * math.log(2)) + 8, -(math.log(0.25) - 50) / (64 * math.log(2)) + 8]
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("compressor", ood.COMPRESSORS)
def test_complexity_ranks_constant_below_smooth_below_noise(compressor):
    rng = np.random.default_rng(0)
    ramp = np.broadcast_to(np.linspace(0, 1, 28), (28, 28))
    images = np.stack([np.full((1, 28, 28), 0.5), ramp[None], rng.random((1, 28, 28))]).astype(np.float32)
    c = ood.complexity_bpd(images, 256, compressor)
    assert c[0] < c[1] < c[2] and c[2] > 7  # noise is incompressible: about 8 bits/dim plus the header
    assert ood.complexity_bpd(images[:1], 256, compressor)[0] == c[0]      # per image, independent of the batch


def test_calibration_flags_the_stated_fraction_of_in_distribution_images():
    rng = np.random.default_rng(1)
    scores = {"bpd": rng.normal(4, 0.5, 1000), "complexity": rng.normal(-3, 0.2, 1000)}
    cal = ood.calibrate(scores, false_alarm=0.05)
    for name in ood.SCORES:
        assert cal["scores"][name]["achieved_false_alarm"] <= 0.05
        assert np.mean(ood.flag(scores, cal)[name]) == pytest.approx(0.05, abs=0.002)
    fresh = {"bpd": rng.normal(4, 0.5, 20000), "complexity": rng.normal(-3, 0.2, 20000)}
    assert np.mean(ood.flag(fresh, cal)["bpd"]) == pytest.approx(0.05, abs=0.01)  # holds on new in-distribution draws
    with pytest.raises(ValueError, match="at least 10"):
        ood.calibrate({"bpd": np.ones(3), "complexity": np.ones(3)})
    m = ood.detection_metrics(np.arange(10.0), np.arange(10.0) + 100, threshold=9.5)
    assert m["auroc"] == 1.0 and m["detection_rate"] == 1.0 and m["false_alarm_rate"] == 0.0
    m = ood.detection_metrics(np.arange(10.0) + 100, np.arange(10.0), threshold=9.5)
    assert m["auroc"] == 0.0 and m["detection_rate"] == 0.0


def test_calibrate_run_then_predict_flags_noise_not_digits(tmp_path):
    run = copy_run(digits_run(), tmp_path / "run")
    opts = {"n_draws": 8}
    cal = calibrate_run(run, split="val", estimator="elbo", estimator_options=opts, progress=False)
    assert load_calibration(run) == json.loads(json.dumps(cal))
    assert cal["scores"]["bpd"]["n"] == 288 and cal["scores"]["bpd"]["achieved_false_alarm"] <= 0.05
    assert (run / "scores_val_elbo.csv").exists()  # the calibration is a classify of the validation split
    from sgc.data import load_dataset
    test = load_dataset("digits", val_size=0.2)["test"]
    for i in range(30):
        np.save(tmp_path / f"digit{i:02d}.npy", test.images[i, 0])
    rng = np.random.default_rng(0)
    for i in range(5):
        np.save(tmp_path / f"noise{i}.npy", rng.random((8, 8)).astype(np.float32))
    frame = ScoreClassifier.from_run(run, progress=False).predict_files(sorted(tmp_path.glob("*.npy")), progress=False)
    assert (frame["estimator"] == "elbo").all()  # the calibration's estimator by default
    noise, digits = frame[frame["image_id"].str.startswith("noise")], frame[frame["image_id"].str.startswith("digit")]
    assert noise["ood_bpd_flag"].all() and noise["ood_flag"].all()
    assert digits["ood_bpd_flag"].mean() < 0.2
    other = ScoreClassifier.from_run(run, progress=False).predict_files(tmp_path / "noise0.npy", estimator="ode",
                                                                         estimator_options={"rtol": 1e-2, "atol": 1e-2},
                                                                         progress=False)
    assert other["ood_flag"].isna().all() and "calibration used elbo" in other["ood_note"].iloc[0]
    with pytest.raises(ValueError, match="no 'test2' split to calibrate on"):
        calibrate_run(run, split="test2", progress=False)


def test_ood_and_counterfactual_studies_write_tables_naming_their_run(tmp_path):
    from sgc.cli import main
    run = copy_run(digits_run(), tmp_path / "digits-run")
    out, figs = tmp_path / "tables", tmp_path / "figures"       # --reports-dir: tables/ and figures/
    assert main(["calibrate", "--run-dir", str(run), "--estimator", "elbo", "--set", "estimator_options.n_draws=4"]) == 0
    assert main(["ood-study", "--run-dir", str(run), "--n", "8", "--reports-dir", str(tmp_path),
                 "--tag", "ood_digits"]) == 0
    rows = json.loads((out / "ood_digits.json").read_text())["rows"]
    assert {r["run"] for r in rows} == {"digits-run"} and rows[0]["set"] == "test (in distribution)"
    noise = [r for r in rows if r["set"] == "uniform noise"][0]
    assert noise["bpd_auroc_lo"] <= noise["bpd_auroc"] <= noise["bpd_auroc_hi"] and noise["n"] == 8
    assert "| uniform noise | 8 |" in (out / "ood_digits.md").read_text() and (figs / "ood_digits.png").exists()
    assert main(["counterfactual-study", "--run-dir", str(run), "--n", "6", "--t-star", "0.3", "--sampler-steps", "50",
                 "--options", "n_draws=4", "--reports-dir", str(tmp_path), "--tag", "cf"]) == 0
    table = pd.read_csv(out / "cf.csv")
    assert len(table) == 2 and set(table["run"]) == {"digits-run"} and (figs / "cf.png").exists()
    assert main(["evidence-study", "--run-dir", str(run), "--n", "6", "--draws", "8", "--curve-points", "4",
                 "--set", "estimator_options.n_draws=4", "--reports-dir", str(tmp_path), "--tag", "ev"]) == 0
    ev = json.loads((out / "ev.json").read_text())
    assert ev["run"] == "digits-run" and len(ev["curves"]["evidence map"]["deletion"]) == 5


def test_png_complexity_of_16_bit_images_with_three_channels_is_per_channel():
    """Pillow writes no 16-bit colour PNG: each channel is one 16-bit grey PNG (VinDr-Mammo's 3-channel
    setting); a grey image repeated three times then has the grey image's bits/dim exactly."""
    rng = np.random.default_rng(0)
    grey = np.round(rng.random((2, 1, 16, 16)) * 4095) / 4095
    three = np.repeat(grey, 3, axis=1)
    np.testing.assert_array_equal(ood.complexity_bpd(three, 4096), ood.complexity_bpd(grey, 4096))
    assert (ood.complexity_bpd(three, 4096) > 0).all()
