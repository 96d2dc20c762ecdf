"""Run folders you can trust (issue 13): results keyed by what produced them, one writer at a time,
no silent retraining, the model's real status, hand edits named, partial results kept apart."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import one_thread
from sgc import runs
from sgc.classify import read_scores_csv
from sgc.errors import RunExists, RunFolderBusy, RunFolderError
from sgc.fileio import atomic_path
from sgc.pipeline import evaluate_run, train_on_dataset

MODEL = {"arch": "mlp", "hidden": 16, "blocks": 1, "emb_dim": 8}
TRAIN = {"steps": 4, "batch_size": 8, "warmup": 1, "checkpoint_every": 2, "log_every": 2}
ELBO = dict(estimator="elbo", estimator_options={"n_draws": 4}, batch_size=64, progress=False)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits run folder (4 steps); tests copy it with ``copy_run``."""
    run = tmp_path_factory.mktemp("runs") / "digits"
    with one_thread():
        train_on_dataset("digits", run, model=MODEL, train=TRAIN, progress=False)
    return run


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in ("config.json", "checkpoint.pt", "checkpoint.pt.sha256", "status.json"):
        if (src / f).exists():
            shutil.copy(src / f, dst / f)
    return dst


def classify_cmd(run, *options):
    return [sys.executable, "-m", "sgc", "classify", "--run-dir", str(run), "--estimator", "elbo",
            "--batch-size", "64", "--options", *options]


# --- 1. two processes on one run folder -------------------------------------------------

def _summary_numbers(line: str) -> tuple[str, str]:
    """(accuracy, bits/dim) as printed by ``sgc classify``."""
    return line.split("accuracy ")[1].split(",")[0], line.split(" bits/dim")[0].rsplit(" ", 1)[1]


def test_two_classify_processes_with_other_options_never_mix(trained, tmp_path):
    """The second writer is refused while the first works; each result equals its own option
    set computed alone (the old code merged the chunks of both and reported one result)."""
    run = copy_run(trained, tmp_path / "shared")
    first = subprocess.Popen(classify_cmd(run, "n_draws=400"), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while str(first.pid) not in ((run / ".sgc.lock").read_text() if (run / ".sgc.lock").exists() else ""):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    second = subprocess.run(classify_cmd(run, "n_draws=8"), env=ENV, capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    if second.returncode != 0:  # refused while the first held the folder: one clear line, no traceback
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert f"is in use by PID {first.pid}" in second.stderr and "sgc classify" in second.stderr
        second = subprocess.run(classify_cmd(run, "n_draws=8"), env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
    assert len(list((run / "parts").iterdir())) == 2  # one parts folder per option set
    for draws, printed in ((400, out), (8, second.stdout)):
        alone = copy_run(trained, tmp_path / f"alone{draws}")
        with one_thread():
            ref = evaluate_run(alone, **{**ELBO, "estimator_options": {"n_draws": draws}})
        assert _summary_numbers(printed) == (f"{ref['accuracy']:.3f}", f"{ref['mean_bpd_true_class']:.3f}")
    # the files on disk are the last evaluation's, and say which options produced them
    _, _, ll = read_scores_csv(run / "scores_test_elbo.csv")
    _, _, ll_alone = read_scores_csv(tmp_path / "alone8" / "scores_test_elbo.csv")
    np.testing.assert_allclose(ll, ll_alone, rtol=1e-5)
    assert json.loads((run / "metrics.json").read_text())["produced_by"]["options"] == {"n_draws": 8}


def test_identical_processes_do_not_race_on_temporary_names(trained, tmp_path):
    """Two identical classifies at once: each succeeds or is refused by the lock, never a crash
    on a shared '.tmp' name; and two writers of one path get two temporary names."""
    run = copy_run(trained, tmp_path / "run")
    procs = [subprocess.Popen(classify_cmd(run, "n_draws=16"), env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.communicate(timeout=300)[1], p.returncode)[::-1] for p in procs]
    assert any(rc == 0 for rc, _ in results), results
    for rc, err in results:
        assert rc == 0 or (rc == 2 and "in use by PID" in err and "Traceback" not in err), err
    assert not list(run.glob(".*.tmp")) and not list(run.glob("*.tmp"))
    with atomic_path(tmp_path / "x.json") as a, atomic_path(tmp_path / "x.json") as b:
        assert a != b and a.parent == b.parent == tmp_path
        a.write_text("a")
        b.write_text("b")
    assert (tmp_path / "x.json").read_text() == "a"  # the outer block finished last


def test_writer_lock_names_the_holder_and_is_reentrant(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from sgc import runs\n"
        f"with runs.writer_lock({str(run)!r}, command='sgc train --run-dir x'):\n"
        "    print('locked', flush=True); time.sleep(60)")], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=rf"in use by PID {holder.pid} \(sgc train --run-dir x, since"):
            evaluate_run(run, **ELBO)
    finally:
        holder.kill()
        holder.wait()
    with runs.writer_lock(run), runs.writer_lock(run):  # re-entrant in one process
        evaluate_run(run, **ELBO)


# --- 2. chunks keyed by the data -------------------------------------------------------

def _fake_breastmnist(folder: Path, seed: int, n: int = 24) -> Path:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.uint8)[:, None]
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "breastmnist.npz",
             **{f"{s}_images": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s in ("train", "val", "test")},
             **{f"{s}_labels": labels for s in ("train", "val", "test")})
    return folder


def test_other_images_are_scored_again_not_served_from_old_chunks(tmp_path):
    """--data-root pointing at other images gives their scores (issue 13, 2)."""
    a, b = _fake_breastmnist(tmp_path / "a", 0), _fake_breastmnist(tmp_path / "b", 1)
    run = tmp_path / "run"
    with one_thread():
        train_on_dataset("breastmnist", run, data_root=a, model=MODEL, train=TRAIN, progress=False)
        on_a = evaluate_run(run, **ELBO)
        _, _, ll_a = read_scores_csv(run / "scores_test_elbo.csv")
        on_b = evaluate_run(run, data_root=b, **ELBO)
        _, _, ll_b = read_scores_csv(run / "scores_test_elbo.csv")
        alone = copy_run(run, tmp_path / "alone")
        evaluate_run(alone, data_root=b, **ELBO)
    _, _, ll_b_alone = read_scores_csv(alone / "scores_test_elbo.csv")
    assert not np.allclose(ll_a, ll_b)
    np.testing.assert_allclose(ll_b, ll_b_alone, rtol=1e-5)
    assert on_a["produced_by"]["data_sha256"] != on_b["produced_by"]["data_sha256"]
    assert on_b["produced_by"]["data_root"] == "../b"   # relative to the run folder: no machine path
    # NaN images are refused by the loader, naming the file: never the old scores
    np.savez(tmp_path / "c.npz", **{f"{s}_images": np.full((24, 28, 28), np.nan, np.float32)
                                    for s in ("train", "val", "test")},
             **{f"{s}_labels": np.zeros((24, 1), np.uint8) for s in ("train", "val", "test")})
    (tmp_path / "c").mkdir()
    os.replace(tmp_path / "c.npz", tmp_path / "c" / "breastmnist.npz")
    with pytest.raises(ValueError, match="breastmnist.npz: train_images is floating point"):
        evaluate_run(run, data_root=tmp_path / "c", **ELBO)


# --- 4. no silent retraining -------------------------------------------------------------

def test_training_into_a_run_that_holds_a_model_is_refused(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    with one_thread():
        evaluate_run(run, **ELBO)
    digest = runs.sha256_file(run / "checkpoint.pt")
    with pytest.raises(RunExists, match=r"already holds a model \(4 steps \(complete\)\).*--resume.*--overwrite"):
        train_on_dataset("digits", run, model={**MODEL, "hidden": 8}, train=TRAIN, progress=False)
    assert runs.sha256_file(run / "checkpoint.pt") == digest and (run / "metrics.json").exists()
    with one_thread():  # --resume continues it; --overwrite replaces model AND its results
        train_on_dataset("digits", run, model=MODEL, train={**TRAIN, "steps": 6}, resume=True, progress=False)
        assert runs.run_status(run)["steps_done"] == 6 and (run / "metrics.json").exists()
        train_on_dataset("digits", run, model={**MODEL, "hidden": 8}, train=TRAIN, overwrite=True, progress=False)
    assert runs.load_checkpoint(run)[0]["model"]["hidden"] == 8
    assert not (run / "metrics.json").exists() and not list(run.glob("scores_*")) and not (run / "parts").exists()


def test_ensure_trained_reuses_resumes_and_refuses_other_settings_unless_told(trained, tmp_path):
    """What `sgc demo` and the notebooks' ensure_run decide, explicitly."""
    from sgc.batch import ensure_trained
    run = copy_run(trained, tmp_path / "run")
    with one_thread():
        assert ensure_trained(run, "digits", model=MODEL, train=TRAIN) == "reused"
        with pytest.raises(RunExists, match="other settings: model.*--overwrite"):
            ensure_trained(run, "digits", model={**MODEL, "hidden": 8}, train=TRAIN)
        assert runs.run_status(run)["steps_done"] == 4
        assert ensure_trained(run, "digits", model=MODEL, train={**TRAIN, "steps": 6}) == "resumed"
        assert ensure_trained(run, "digits", model={**MODEL, "hidden": 8}, train=TRAIN, retrain=True) == "retrained"
    assert runs.load_checkpoint(run)[0]["model"]["hidden"] == 8


# --- 5. the model's real status; config and checkpoint as one unit -----------------------

def test_an_interrupted_run_is_reported_as_interrupted(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sgc", "train", "--run-dir", str(run), "--arch", "mlp", "--model", "hidden=16",
           "blocks=1", "emb_dim=8", "--train", "steps=3000", "batch_size=8", "checkpoint_every=5"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "status.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    status = runs.run_status(run)
    done = status["steps_done"]
    assert 5 <= done < 3000 and status["steps_planned"] == 3000 and not status["complete"]
    assert json.loads((run / "status.json").read_text())["steps_done"] == done
    with one_thread():
        m = evaluate_run(run, **ELBO)
    assert m["train_steps"] == done and m["train_steps_planned"] == 3000 and m["model_complete"] is False
    assert m["partial"] and f"model{done}of3000" in m["partial_reasons"]
    assert m["metrics_file"].startswith("partial_metrics_test_elbo") and not (run / "metrics.json").exists()
    from sgc.cli import _status
    assert f"{done} of 3000 steps (interrupted" in _status(run)


def test_a_failed_save_leaves_config_and_checkpoint_agreeing(trained, tmp_path, monkeypatch):
    """config.json is written after the checkpoint: a save that fails does not leave a config
    of other settings beside the old weights (the old code wrote config.json first)."""
    run = copy_run(trained, tmp_path / "run")

    def full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.torch, "save", full_disk)
    with pytest.raises(OSError, match="no space left on the device"), one_thread():
        train_on_dataset("digits", run, model=MODEL, train={**TRAIN, "steps": 8}, resume=True, progress=False)
    monkeypatch.undo()
    config, ckpt = runs.load_checkpoint(run)
    assert config["train"]["steps"] == 4 and ckpt["step"] == 4 and runs.run_status(run)["complete"]
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("key, value", [("sde.name", "ve"), ("data.levels", 256), ("data.class_names", list("abcdefghij")),
                                        ("model.hidden", 32), ("train.steps", 3000)])
def test_hand_edits_to_config_json_are_named(trained, tmp_path, key, value):
    run = copy_run(trained, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    section, name = key.split(".")
    old = config[section][name]
    config[section][name] = value
    (run / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(RunFolderError, match=rf"config.json was edited after training: {key} \({value!r} in "
                                             rf"config.json, {old!r} in the checkpoint\)".replace("[", r"\[")):
        runs.load_run(run)
    (run / "config.json").unlink()  # the fix the message gives: restored from the checkpoint
    assert runs.load_run(run)[2][section][name] == old
    assert json.loads((run / "config.json").read_text())[section][name] == old


def test_a_config_left_by_an_interrupted_save_is_recognised_and_rewritten(trained, tmp_path, capfd):
    """Crash after the checkpoint and its sidecar, before config.json: the stale config.json
    is the previous checkpoint's (its digest is recorded), so it is replaced, not reported."""
    run = copy_run(trained, tmp_path / "run")
    shutil.copy(trained / "checkpoint.prev.pt", run / "checkpoint.prev.pt")
    shutil.copy(trained / "checkpoint.prev.pt.sha256", run / "checkpoint.prev.pt.sha256")
    stale = (run / "config.json").read_text()
    config, ckpt = runs.load_checkpoint(run)
    runs.save_checkpoint(run, {k: v for k, v in ckpt.items() if k not in ("config_json", "format")},
                         {**config, "note": "resumed by another process"})
    (run / "config.json").write_text(stale)  # as if the process died before writing config.json
    capfd.readouterr()
    assert runs.load_run(run)[2]["note"] == "resumed by another process"
    assert "rewritten from checkpoint.pt" in capfd.readouterr().err
    assert json.loads((run / "config.json").read_text())["note"] == "resumed by another process"


def test_run_folders_of_the_previous_format_still_load(trained, tmp_path):
    """config.json + checkpoint.pt (no embedded config) + a one-line sidecar: as users have them."""
    run = tmp_path / "legacy"
    run.mkdir()
    config, ckpt = runs.load_checkpoint(trained)
    legacy = {k: v for k, v in ckpt.items() if k not in ("config_json", "format")}
    torch.save(legacy, run / "checkpoint.pt")
    (run / "config.json").write_text(json.dumps(config, indent=2))
    digest = hashlib.sha256((run / "checkpoint.pt").read_bytes()).hexdigest()
    (run / "checkpoint.pt.sha256").write_text(f"{digest}  checkpoint.pt\n")
    model, _, loaded = runs.load_run(run)
    status = runs.run_status(run)
    assert loaded == config and status["format"] == 1 and (status["steps_done"], status["complete"]) == (4, True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["ema"][k])
    with one_thread():
        assert evaluate_run(run, **ELBO)["train_steps"] == 4
    (run / "checkpoint.pt").write_bytes(b"damaged")
    with pytest.raises(RunFolderError, match="no complete checkpoint"):
        runs.load_run(run)


# --- 6. partial results beside the full ones ---------------------------------------------

def test_partial_results_never_replace_the_full_ones_and_tables_leave_them_out(trained, tmp_path):
    run = copy_run(trained, tmp_path / "runs" / "digits")
    with one_thread():
        full = evaluate_run(run, **ELBO)
        canonical = {p.name: p.read_bytes() for p in (run / "metrics.json", run / "metrics_test_elbo.json",
                                                       run / "scores_test_elbo.csv")}
        part = evaluate_run(run, limit=7, **ELBO)
    assert not full["partial"] and full["metrics_file"] == "metrics_test_elbo.json" and full["n"] == 360
    assert part["partial"] and part["n"] == 7 and "limit7" in part["partial_reasons"]
    assert "missing-classes" in part["partial_reasons"] and part["auc_macro_ovr"] is None
    assert {p.name: p.read_bytes() for p in (run / n for n in canonical)} == canonical
    assert (run / part["metrics_file"]).exists() and (run / part["scores_file"]).exists()
    assert part["produced_by"]["limit"] == 7 and part["produced_by"]["sgc"]
    found, left_out = runs.collect_metrics(tmp_path / "runs")
    assert [m["n"] for m in found] == [360]
    assert left_out == [f"digits/{part['metrics_file']}"]


@pytest.mark.slow
def test_notebook_03_handles_a_limit_that_misses_a_class(tmp_path):
    import papermill
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "03_likelihood_classification.ipynb"
    run = tmp_path / "run"
    params = {"run_dir": str(run), "limit": 5, "baseline": None, "n_boot": 10, "min_accuracy": 0.0, "min_auc": None, "bpd_band": None,
              "train": {"steps": 20, "batch_size": 32, "lr": 0.002, "warmup": 5, "checkpoint_every": 20, "log_every": 5},
              "estimator_options": {"rtol": 0.01, "atol": 0.01, "method": "dopri5", "n_probes": 1}}
    papermill.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters=params, cwd=str(nb.parent),
                               progress_bar=False, kernel_name="python3")
    assert list(run.glob("partial_metrics_test_ode_limit5*.json")) and not (run / "metrics.json").exists()
    assert list(run.glob("partial_comparison_test_ode_limit5*.csv")) and not list(run.glob("comparison_*"))
