"""One error boundary (issue 13, 9): every bad input gives exit code 2 and one line
``sgc <command> error: <problem>. <fix>`` on stderr, never a traceback; finished work survives."""
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sgc import runs
from sgc.cli import main
from sgc.errors import DataError, SolverError
from sgc.pipeline import train_on_dataset

MODEL = ["--arch", "mlp", "--model", "hidden=16", "blocks=1", "emb_dim=8"]
TRAIN = ["--train", "steps=2", "batch_size=8", "warmup=1", "checkpoint_every=2"]
ELBO = ["--estimator", "elbo", "--options", "n_draws=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained digits run folder; cases copy it before changing anything."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    torch.set_num_threads(1)
    assert main(["train", "--run-dir", str(folder), *MODEL, *TRAIN]) == 0
    return folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".sgc.lock", "parts"))
    return dst


def _scaled_weights(src, dst, factor):
    """A copy of the run whose EMA weights are multiplied by ``factor`` (nan: every weight NaN)."""
    config, ckpt = runs.load_checkpoint(src)
    state = {k: v for k, v in ckpt.items() if k not in ("config_json", "format")}
    state["ema"] = {k: v * factor if v.is_floating_point() else v for k, v in ckpt["ema"].items()}
    runs.save_checkpoint(dst, state, config)
    return dst


def _fake_breastmnist(folder: Path, labels) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    rng = np.random.default_rng(0)
    np.savez(folder / "breastmnist.npz",
             **{f"{s}_images": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s in ("train", "val", "test")},
             **{f"{s}_labels": np.asarray(labels, np.uint8)[:, None] for s in ("train", "val", "test")})
    return folder


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made read-only for real: chmod for a normal user; as root (who ignores the mode
    bits) the immutable attribute. Where neither works, the folder's writes are refused by a
    fault-injected mkstemp (the first write sgc attempts there)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        return
    import tempfile
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "mkstemp", refuse)
        yield


def _full_disk(kind):
    def save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 100_000)  # part of a large file, then the device is full
        if kind == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 100000 vs 99000")
    return save


# each case: (name, setup(run, tmp) -> argv, expected text in the error line)
CASES = {
    "misspelt --options key": (lambda r, t: ["classify", "--run-dir", str(r), "--options", "rtoll=1e-3"],
                               "unknown ode estimator option(s) 'rtoll' (did you mean 'rtol'?)"),
    "misspelt --data key": (lambda r, t: ["train", "--run-dir", str(t / "new"), *MODEL, "--data", "sise=32"],
                            "unknown data option(s) 'sise' (did you mean 'size'?) for dataset 'digits'"),
    "misspelt --model key": (lambda r, t: ["train", "--run-dir", str(t / "new"), "--arch", "mlp", "--model", "hiden=3"],
                             "unknown model option(s) 'hiden' (did you mean 'hidden'?) for --arch mlp"),
    "misspelt --train key": (lambda r, t: ["train", "--run-dir", str(t / "new"), "--train", "stepz=3"],
                             "unknown setting 'train.stepz' (did you mean 'train.steps'?)"),
    "flat key for a nested one": (lambda r, t: ["train", "--run-dir", str(t / "new"), "--set", "train_steps=3"],
                                  "unknown setting 'train_steps' (did you mean 'train.steps'?)"),
    "mistyped training value": (lambda r, t: ["train", "--run-dir", str(t / "new"), "--set", "train.steps=many"],
                                "train.steps must be an integer, got 'many'"),
    "misspelt --set estimator key": (lambda r, t: ["classify", "--run-dir", str(r), "--set", "estimator_options.rtoll=1"],
                                     "unknown ode estimator option(s) 'rtoll' (did you mean 'rtol'?)"),
    "calibration without a val split": (lambda r, t: ["classify", "--run-dir", str(r), "--calibrate", *ELBO],
                                        "has splits ['test', 'train']. Classify the test split, or train with a "
                                        "validation split"),
    "no key=value": (lambda r, t: ["classify", "--run-dir", str(r), "--options", "rtol"], "expected key=value"),
    "YAML tag (ConstructorError)": (lambda r, t: ["classify", "--run-dir", str(r), "--options",
                                                  "rtol=!!python/object/apply:os.system [echo]"],
                                    "is not a plain YAML value"),
    "config without a data section (KeyError)": (
        lambda r, t: ["classify", "--run-dir", str(_odd_config(r, t))], "lacks ['dataset', 'class_names'"),
    "labels beyond the model's classes (IndexError)": (
        lambda r, t: ["classify", "--run-dir", str(_breast_run(t)), *ELBO, "--data-root",
                      str(_fake_breastmnist(t / "other", [0, 1, 2, 0]))],
        "does not fit the model, trained on classes ['benign', 'malignant']"),
    "missing run folder": (lambda r, t: ["classify", "--run-dir", str(t / "nowhere")], "checkpoint.pt not found"),
    "missing data root": (lambda r, t: ["train", "--dataset", "breastmnist", "--data-root", str(t / "none"),
                                        "--run-dir", str(t / "new")], "breastmnist.npz not found"),
    "unknown split": (lambda r, t: ["classify", "--run-dir", str(r), "--split", "valid"], "has splits"),
    "empty selection (--limit 0)": (lambda r, t: ["classify", "--run-dir", str(r), "--limit", "0"],
                                    "nothing to classify"),
    "train into a run that holds a model": (lambda r, t: ["train", "--run-dir", str(_copy(r, t / "c")), *MODEL, *TRAIN],
                                            "already holds a model (2 steps (complete)). Pass --resume"),
    "hand-edited config.json": (lambda r, t: ["classify", "--run-dir", str(_edited(r, t))],
                                "edited after training: sde.name ('ve' in config.json, 'vp' in the checkpoint)"),
    "NaN weights, bound (FloatingPointError)": (
        lambda r, t: ["classify", "--run-dir", str(_scaled_weights(r, t / "nan", float("nan"))), *ELBO],
        "the denoising bound is not finite"),
    "NaN weights, default dopri5 (AssertionError)": (
        lambda r, t: ["classify", "--run-dir", str(_scaled_weights(r, t / "nan", float("nan"))), "--limit", "2"],
        "the probability-flow ODE solve failed (dopri5"),
    "eps=0": (lambda r, t: ["classify", "--run-dir", str(r), "--limit", "2", "--options", "eps=0"],
              "start time eps=0 is outside (0, T=1.0)"),
    "unknown notebook parameter": (lambda r, t: ["batch", "--out", str(t), "-p", "limt=3"],
                                   "'limt' (did you mean 'limit'?)"),
}


def _odd_config(run, tmp):
    """A run folder trained by the library without the data section sgc train records."""
    from sgc.nets import build_model
    from sgc.sde import make_sde
    from sgc.train import train_score_model
    folder = tmp / "odd"
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    net = build_model({"arch": "mlp", "num_classes": 2, "in_channels": 1, "image_size": 8, "hidden": 8, "blocks": 1})
    train_score_model(net, make_sde("vp"), x, np.arange(16) % 2, {"steps": 2, "batch_size": 4}, run_dir=folder,
                      progress=False)
    return folder


def _breast_run(tmp):
    folder = tmp / "breast"
    train_on_dataset("breastmnist", folder, data_root=_fake_breastmnist(tmp / "data", [0, 1] * 4),
                     model={"arch": "mlp", "hidden": 8, "blocks": 1}, train={"steps": 2, "batch_size": 4},
                     progress=False)
    return folder


def _edited(run, tmp):
    folder = _copy(run, tmp / "edited")
    config = json.loads((folder / "config.json").read_text())
    config["sde"]["name"] = "ve"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("sgc ") and " error: " in line]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_exit_code_2_and_one_line(case, run, tmp_path, capfd):
    setup, expected = CASES[case]
    argv = setup(run, tmp_path)
    capfd.readouterr()
    assert main(argv) == 2
    err = capfd.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"sgc {argv[0]} error: ") and expected in lines[0], lines[0]
    assert ". " in lines[0].split(" error: ", 1)[1], "the line names the problem and then the fix"


def test_misspelt_option_leaves_finished_chunks_alone(run, tmp_path, capfd):
    folder = _copy(run, tmp_path / "run")
    assert main(["classify", "--run-dir", str(folder), *ELBO]) == 0
    chunks = {p: p.stat().st_mtime_ns for p in (folder / "parts").rglob("chunk_*.npz")}
    assert chunks
    assert main(["classify", "--run-dir", str(folder), "--estimator", "elbo", "--options", "n_drawz=2"]) == 2
    assert {p: p.stat().st_mtime_ns for p in (folder / "parts").rglob("chunk_*.npz")} == chunks


def test_read_only_run_folder_is_refused_before_training(tmp_path, capfd):
    parent = tmp_path / "ro"
    with read_only(parent):
        assert main(["train", "--run-dir", str(parent / "run"), *MODEL, *TRAIN]) == 2
    lines = _error_lines(capfd.readouterr().err)
    assert len(lines) == 1 and "permission denied" in lines[0] and str(parent) in lines[0], lines


@pytest.mark.parametrize("kind", ["oserror", "torch_enforce_fail"])
def test_full_disk_at_a_checkpoint_is_one_line_and_leaves_no_temporary_file(kind, tmp_path, capfd, monkeypatch):
    import sgc.fileio
    monkeypatch.setattr(runs.torch, "save", _full_disk(kind))
    monkeypatch.setattr(sgc.fileio, "free_bytes", lambda folder: 5 * 2**20)  # the check passed, then it filled up
    folder = tmp_path / "run"
    assert main(["train", "--run-dir", str(folder), *MODEL, *TRAIN]) == 2
    lines = _error_lines(capfd.readouterr().err)
    assert len(lines) == 1 and "checkpoint.pt" in lines[0] and "--resume" in lines[0], lines
    assert ("no space left on the device" if kind == "oserror" else "failed with 5 MiB free") in lines[0]
    assert not list(folder.glob(".*.tmp")) and not (folder / "checkpoint.pt").exists()


def test_too_little_free_space_is_refused_before_training(tmp_path, capfd, monkeypatch):
    import sgc.fileio
    monkeypatch.setattr(sgc.fileio, "free_bytes", lambda folder: 1000)
    assert main(["train", "--run-dir", str(tmp_path / "run"), *MODEL, *TRAIN]) == 2
    lines = _error_lines(capfd.readouterr().err)
    assert len(lines) == 1 and "MiB free but about 1 MiB are needed for a checkpoint" in lines[0], lines


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sgc", "classify", "--run-dir", str(tmp_path / "none")],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("sgc classify error: "), r.stderr


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch):
    import sgc.pipeline
    monkeypatch.setattr(sgc.pipeline, "evaluate_run", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["classify", "--run-dir", "x"])


def test_implausible_bits_per_dim_warn(run, tmp_path, capfd):
    folder = _scaled_weights(run, tmp_path / "big", 1e3)
    capfd.readouterr()
    assert main(["classify", "--run-dir", str(folder), *ELBO]) == 0
    err = capfd.readouterr().err
    assert "warning: mean bits/dim of the true class is" in err and "implausible" in err
    assert json.loads((folder / "metrics.json").read_text())["warnings"]


@pytest.mark.parametrize("method", ["dopri5", "rk4", "euler", "dpm2"])
def test_every_solver_path_raises_solver_error(method):
    from sgc.likelihood import log_likelihood
    from sgc.nets import build_model
    from sgc.sde import make_sde
    net = build_model({"arch": "mlp", "num_classes": 2, "in_channels": 1, "image_size": 4, "hidden": 8, "blocks": 1})
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(SolverError):
        log_likelihood(net, make_sde("vp"), x, y, method=method, steps=4)
    with pytest.raises(SolverError, match="eps=0"):
        log_likelihood(net, make_sde("vp"), x, y, method=method, steps=4, eps=0.0)


def test_empty_image_arrays_are_named():
    from sgc.classify import score_images
    from sgc.likelihood import validate_images
    with pytest.raises(DataError, match="empty"):
        validate_images(torch.zeros(0, 1, 8, 8))
    from sgc.nets import build_model
    from sgc.sde import make_sde
    net = build_model({"arch": "mlp", "num_classes": 2, "in_channels": 1, "image_size": 8, "hidden": 8, "blocks": 1})
    with warnings.catch_warnings(), pytest.raises(ValueError, match="empty"):
        score_images(net, make_sde("vp"), np.zeros((0, 1, 8, 8), np.float32), progress=False)
