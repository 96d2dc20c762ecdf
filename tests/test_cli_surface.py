"""The command line a new user meets: help with defaults on every option, --version, one --set syntax
whose sections merge, the old spellings still working, honest end summaries, calibrated posteriors."""
import argparse
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from sgc import __version__
from sgc.cli import build_parser, main

TINY_MLP = ["--arch", "mlp", "--set", "model.hidden=16", "model.blocks=1", "model.emb_dim=8", "train.steps=4",
            "train.batch_size=16", "train.warmup=1", "train.checkpoint_every=4"]


def _subparsers(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_every_visible_option_has_help_and_shows_its_default():
    for name, sub in _subparsers(build_parser()).items():
        text = sub.format_help()
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"sgc {name} {action.option_strings}: no help text"
            shown = action.default not in (None, False, [], argparse.SUPPRESS) and not action.required
            if shown:
                assert f"(default: {action.default})" in " ".join(text.split()), f"sgc {name} {action.dest}"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"sgc {__version__}"


def test_the_same_names_for_the_same_things():
    subs = _subparsers(build_parser())
    flags = {name: {s for a in p._actions for s in a.option_strings if a.help != argparse.SUPPRESS}
             for name, p in subs.items()}
    for name in ("train", "classify", "demo", "batch", "experiment"):
        assert "--set" in flags[name], name                      # one settings syntax everywhere
    for name in ("train", "classify", "status", "demo"):
        assert "--run-dir" in flags[name], name
    assert "--runs-dir" in flags["batch"] and "--runs-dir" in flags["experiment"]
    assert "--reports-dir" in flags["batch"] and "--reports-dir" in flags["experiment"]
    hidden = {"--out", "--out-dir", "--work-dir", "--options", "--ode", "--elbo", "--train", "--model", "--data",
              "--steps", "--param", "--baseline", "--weighted"}
    core = ("train", "classify", "status", "demo", "batch", "experiment")   # the commands these spellings left
    assert not hidden & set().union(*(flags[n] for n in core)), "old spellings stay out of --help"
    # the newer commands reuse none of them for another meaning; --out names the one file or folder
    # that predict and export write
    newer = set(flags) - set(core)
    assert newer >= {"predict", "calibrate", "export", "ood-study", "counterfactual-study", "evidence-study"}
    assert not (hidden - {"--out"}) & set().union(*(flags[n] for n in newer)), "a section flag's name reused"


def test_old_spellings_map_to_the_new_ones(capsys):
    parser = build_parser()
    args = parser.parse_args(["experiment", "--ode", "rtol=1e-2", "--set", "train.steps=3", "--elbo", "n_draws=8",
                              "--work-dir", "w", "--out-dir", "t"])
    assert args.set == ["estimator_options.ode.rtol=1e-2", "train.steps=3", "estimator_options.elbo.n_draws=8"]
    assert args.runs_dir == "w" and args.tables_dir == "t"
    assert parser.parse_args(["batch", "--out", "o", "--param", "limit=3", "-p", "x=1"]).set == ["limit=3", "x=1"]
    assert parser.parse_args(["demo", "--steps", "7"]).steps == 7
    err = capsys.readouterr().err
    assert "sgc: note: --ode rtol=1e-2 is the old spelling of --set estimator_options.ode.rtol=1e-2" in err
    assert "--work-dir is the old name of --runs-dir" in err


def test_experiment_settings_merge_into_the_defaults(monkeypatch):
    import sgc.experiments as ex
    seen = {}
    monkeypatch.setattr(ex, "run_experiment", lambda *a, **k: seen.update(k) or pd.DataFrame())
    assert main(["experiment", "--ode", "rtol=1e-2", "--set", "train.steps=3", "model.channels=8",
                 "estimator_options.elbo.n_draws=8", "baseline_options.epochs=2", "--reports-dir", "r"]) == 0
    assert seen["score_eval"] == {"ode": {**ex.SCORE_EVAL["ode"], "rtol": 1e-2}, "elbo": {"n_draws": 8},
                                  "weighted": ex.SCORE_EVAL["weighted"]}
    assert seen["score_train"] == {**ex.SCORE_TRAIN, "steps": 3}                       # lr, hflip, ... kept
    assert seen["score_model"] == {**ex.SCORE_MODEL, "channels": 8}
    assert seen["baseline_options"]["resnet18"] == {"epochs": 2}
    assert seen["out_dir"] == "r/tables" and seen["figures_dir"] == "r/figures"
    assert main(["experiment", "--set", "model={arch: mlp, hidden: 8}"]) == 0          # another arch replaces
    assert seen["score_model"] == {"arch": "mlp", "hidden": 8}
    # score_weighted's choice: one key changed, the others kept; the old --weighted spelling; a typo refused
    assert main(["experiment", "--set", "estimator_options.weighted.n_bins=4", "--score-run-dir", "m/s{seed}"]) == 0
    assert seen["score_eval"]["weighted"] == {**ex.SCORE_EVAL["weighted"], "n_bins": 4}
    assert seen["score_run_dir"] == "m/s{seed}"
    assert main(["experiment", "--weighted", "repeats=2"]) == 0
    assert seen["score_eval"]["weighted"] == {**ex.SCORE_EVAL["weighted"], "repeats": 2}
    seen.clear()
    assert main(["experiment", "--set", "estimator_options.weighted.nbins=4"]) == 2 and not seen


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny BreastMNIST-format run folder (train/val/test) whose classes a few steps tell apart:
    class 1 is brighter, so the posteriors are informative and their temperature is not 1."""
    tmp = tmp_path_factory.mktemp("surface")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 64), ("val", 40), ("test", 40)):
        y = np.arange(n) % 2
        x = 0.25 + 0.2 * y[:, None, None] + 0.3 * rng.random((n, 28, 28))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = (x * 255).astype(np.uint8), y.astype(np.uint8)[:, None]
    (tmp / "data").mkdir()
    np.savez(tmp / "data" / "breastmnist.npz", **arrays)
    torch.set_num_threads(1)
    assert main(["train", "--dataset", "breastmnist", "--data-root", str(tmp / "data"), "--run-dir", str(tmp / "run"),
                 "--arch", "mlp", "--set", "model.hidden=32", "model.blocks=1", "model.emb_dim=8", "train.steps=30",
                 "train.batch_size=32", "train.warmup=1"]) == 0
    return tmp / "run"


def test_train_ends_with_steps_loss_time_and_size(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "r"), *TINY_MLP]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    parameters = json.loads((tmp_path / "r" / "config.json").read_text())["parameters"]
    assert out.startswith(f"trained {tmp_path / 'r'}: 4 of 4 steps, final loss {history[-1]['loss']:.4f}, ")
    assert f" s, {parameters:,} parameters (mlp)" in out


def test_classify_reports_its_own_seconds_not_the_training(run, capsys, monkeypatch):
    (run / "train_seconds.txt").write_text("999.0\n")                 # a long training must not show up
    assert main(["classify", "--run-dir", str(run), "--estimator", "elbo", "--set", "estimator_options.n_draws=2"]) == 0
    out = capsys.readouterr().out
    m = json.loads((run / "metrics_test_elbo.json").read_text())
    assert m["seconds"] == m["seconds_classify"] < 999 and m["seconds_train"] == 999.0
    assert f"test: {m['n']} images, elbo estimator" in out and f"classification {m['seconds_classify']:.1f} s" in out


def test_calibrate_fits_the_temperature_on_validation_and_writes_calibrated_posteriors(run, capsys):
    from sgc.classify import read_scores_csv
    from sgc.decision import apply_prior, fit_temperature
    from sgc.metrics import expected_calibration_error
    from sgc.pipeline import evaluate_run
    opts = ["--estimator", "elbo", "--set", "estimator_options.n_draws=4"]
    assert main(["classify", "--run-dir", str(run), "--calibrate", *opts]) == 0
    assert "calibrated, T=" in capsys.readouterr().out
    m = json.loads((run / "metrics_test_elbo_calibrated.json").read_text())
    cal = m["calibration"]
    # the same scores of the validation split, from the same chunks: T is what fit_temperature gives them
    evaluate_run(run, split="val", estimator="elbo", estimator_options={"n_draws": 4}, progress=False)
    _, y_val, ll_val = read_scores_csv(run / "scores_val_elbo.csv")
    t = fit_temperature(ll_val, y_val, prior="uniform")
    assert cal["temperature"] == pytest.approx(t, rel=1e-6) and abs(np.log(t)) > 0.1   # T != 1: it matters
    assert cal["n_val"] == len(y_val) and cal["fitted_on"] == "val"
    assert cal["nll_val_after"] <= cal["nll_val_before"]                             # what the fit minimises
    # the posteriors written are softmax(log_lik / T), and the ECEs are those of the test posteriors
    scores = pd.read_csv(run / "scores_test_elbo_calibrated.csv", dtype={"image_id": str})
    _, y, ll = read_scores_csv(run / "scores_test_elbo_calibrated.csv")
    post = scores.pivot(index="image_id", columns="class", values="posterior").loc[list(dict.fromkeys(
        scores["image_id"]))].to_numpy()
    np.testing.assert_allclose(post, apply_prior(ll, "uniform", temperature=t), rtol=1e-4, atol=1e-6)
    assert cal["ece_after"] == pytest.approx(expected_calibration_error(y, apply_prior(ll, "uniform", t)), abs=1e-6)
    assert cal["ece_before"] == pytest.approx(expected_calibration_error(y, apply_prior(ll, "uniform")), abs=1e-6)
    assert cal["ece_before"] != cal["ece_after"]
    # the uncalibrated results of the same split are untouched by name
    assert json.loads((run / "metrics_test_elbo.json").read_text()).get("calibration") is None


def test_classify_progress_moves_within_one_solve():
    """One batched ODE solve of all images: the bar advances with the solver's time, not 0 -> 100 %."""
    from sgc.nets import build_model
    from sgc.progress import SolveProgress, tqdm
    from sgc.sde import make_sde
    from sgc.likelihood import class_log_likelihoods
    torch.manual_seed(0)
    net = build_model({"arch": "mlp", "num_classes": 2, "in_channels": 1, "image_size": 4, "hidden": 8, "blocks": 1})
    sde = make_sde("vp")
    seen = []
    with tqdm(total=6, file=io.StringIO(), mininterval=0) as bar:
        original = bar.update
        bar.update = lambda n=1: (seen.append(n), original(n))
        with SolveProgress(bar, net, 6, sde.T, every=0.0) as within:
            class_log_likelihoods(net, sde, torch.rand(6, 1, 4, 4), rtol=1e-3, atol=1e-3)
            assert 0 < within.done <= 6 and len(seen) >= 2, seen       # several steps during the solve
            within.finish()
        assert bar.n == 6 and within.handle is None and not net._forward_pre_hooks
