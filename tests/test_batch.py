"""sgc batch: parameter checks, parameter files, temporary names, failures, resume; ensure_run."""
import json
from pathlib import Path

import nbformat
import pytest
import yaml

from sgc import batch
from sgc.cli import main

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def test_misspelt_parameter_is_rejected_naming_it(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"'limt' \(did you mean 'limit'\?\)"):
        batch.run_batch("digits", params={"limt": 3}, out=tmp_path)
    assert not (tmp_path / "digits").exists() or not list((tmp_path / "digits").glob("*.ipynb"))
    assert main(["batch", "--dataset", "digits", "--out", str(tmp_path), "-p", "trian={}"]) == 2
    err = capsys.readouterr().err
    assert "unknown notebook parameter" in err and "'trian'" in err and "did you mean 'train'" in err


def test_parameter_file_keys_of_other_notebooks_are_fine_when_running_a_subset(tmp_path, monkeypatch):
    (tmp_path / "p.yaml").write_text("toy_steps: 3\nlimit: 5\n")
    calls = _fake_papermill(monkeypatch)   # 05 runs (no kernel) with its own key only; 03's limit is fine
    batch.run_batch("p", notebooks=["05"], out=tmp_path, params_dir=tmp_path, log=lambda *_: None)
    # 05 also gets the folders it collects from and writes to (set by run_batch, not the file)
    assert [(nb, {k: v for k, v in p.items() if k not in ("runs_dir", "reports_dir")}) for nb, p in calls] \
        == [("05_paper_figures", {"toy_steps": 3})]
    with pytest.raises(ValueError, match="'limit'"):  # an override for a notebook not selected
        batch.run_batch("p", notebooks=["05"], params={"limit": 5}, out=tmp_path, params_dir=tmp_path)
    (tmp_path / "q.yaml").write_text("limt: 5\n")
    with pytest.raises(ValueError, match="'limt'"):
        batch.run_batch("q", notebooks=["05"], out=tmp_path, params_dir=tmp_path)


def test_parameters_are_checked_against_the_selected_notebooks_only():
    nbs = batch.select_notebooks(["05"])
    with pytest.raises(ValueError, match="'limit'"):
        batch.check_parameters({"limit": 3}, nbs)  # notebook 03's parameter, not 05's
    split = batch.check_parameters({"toy_steps": 5}, nbs)
    assert split == {nbs[0]: {"toy_steps": 5}}


@pytest.mark.parametrize("path", sorted((NOTEBOOKS / "params").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_parameter_file_only_has_keys_the_notebooks_declare(path, monkeypatch):
    monkeypatch.delenv("SGC_DATA", raising=False)
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict) and raw, f"{path.name} must be a non-empty mapping"
    known = set()
    for nb in batch.list_notebooks():
        known |= set(batch.notebook_parameters(nb))
    raw.pop("profile", None)  # a profile's description (sgc.profiles), which no notebook receives
    assert set(raw) <= known, f"{path.name}: keys no notebook declares: {sorted(set(raw) - known)}"
    batch.load_params(path.stem)  # environment variables expand (defaults present)


def test_parameter_files_leave_the_data_root_to_the_one_rule(monkeypatch):
    # data_root null: the notebook's load_dataset(root=None) follows sgc.data.roots ($SGC_DATA/<folder>, ...)
    monkeypatch.setenv("SGC_DATA", "/data")
    for path in sorted((NOTEBOOKS / "params").glob("*.yaml")):
        assert batch.load_params(path.stem)["data_root"] is None, path.name


def test_overrides_merge_into_the_parameter_file_and_the_notebook_defaults():
    nb = batch.select_notebooks(["02"])[0]
    defaults = batch.notebook_defaults(nb)
    file_params = batch.load_params("breastmnist")
    over = {"train": {"steps": 20}, "model": {"hidden": 64}, "samples_per_class": 2}
    got = batch.merge_parameters(defaults, file_params, over)
    assert got["train"] == {**file_params["train"], "steps": 20}          # lr, weighting, hflip, ... kept
    assert got["model"] == {**file_params["model"], "hidden": 64}
    assert got["samples_per_class"] == 2 and got["sde"] == file_params["sde"]
    # no parameter file: the override merges into the notebook's own default
    assert batch.merge_parameters(defaults, {}, {"train": {"steps": 20}})["train"] == {**defaults["train"], "steps": 20}
    # another architecture replaces the model section (the mlp's keywords mean nothing to a unet)
    unet = batch.merge_parameters(defaults, file_params, {"model": {"arch": "unet", "channels": 16}})["model"]
    assert unet == {"arch": "unet", "channels": 16}


def test_unknown_nested_parameters_get_suggestions_from_the_right_place():
    nbs = batch.list_notebooks()
    with pytest.raises(ValueError, match=r"unknown notebook parameter 'train_steps' \(did you mean 'train.steps'\?\)"):
        batch.check_parameters({"train_steps": 2000}, nbs)
    with pytest.raises(ValueError, match=r"'train.stpes' \(did you mean 'train.steps'\?\)"):
        batch.check_parameters({"train": {"stpes": 2000}}, nbs)
    with pytest.raises(ValueError, match="train.steps must be an integer"):
        batch.check_parameters({"train": {"steps": "many"}}, nbs)
    batch.check_parameters({"train": {"steps": 20}, "model": {"anything": 1}}, nbs)  # model: the network checks it
    with pytest.raises(ValueError, match="'limit' is a parameter of 03_likelihood_classification, which is not"):
        batch.check_parameters({"limit": 3}, batch.select_notebooks(["05"]), all_notebooks=nbs)


def test_cli_overrides_are_dot_lists_that_merge(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(batch, "run_batch", lambda *a, **k: seen.update(k) or [])
    assert main(["batch", "--dataset", "breastmnist", "--runs-dir", str(tmp_path), "-p", "train.steps=2000",
                 "limit=5", "--set", "train={lr: 1e-4}"]) == 0
    assert seen["params"] == {"train": {"steps": 2000, "lr": 1e-4}, "limit": 5}
    assert seen["out"] == str(tmp_path)


def test_portable_text_writes_machine_folders_relative(tmp_path, monkeypatch):
    import sys
    monkeypatch.chdir(tmp_path)
    text = json.dumps({"run": f"{tmp_path}/reports/runs/digits", "cwd": str(tmp_path),
                       "warning": f"{sys.prefix}/lib/x.py:21: UserWarning", "other": f"{tmp_path}-b/c",
                       "printed": f"run folder: {tmp_path}/runs\n"})
    out = json.loads(batch._portable_text(text, tmp_path / "nbs"))
    assert out == {"run": "reports/runs/digits", "cwd": ".", "warning": "<python>/lib/x.py:21: UserWarning",
                   "other": f"{tmp_path}-b/c", "printed": "run folder: runs\n"}


def test_expand_env(monkeypatch):
    monkeypatch.setenv("SGC_X", "a")
    monkeypatch.delenv("SGC_MISSING", raising=False)
    assert batch.expand_env({"k": ["${SGC_X}/b", "${SGC_MISSING:-d}"], "n": 3}) == {"k": ["a/b", "d"], "n": 3}
    with pytest.raises(ValueError, match="SGC_MISSING"):
        batch.expand_env("${SGC_MISSING}")


def test_select_notebooks():
    assert [p.stem[:2] for p in batch.select_notebooks(["03", "01"])] == ["01", "03"]
    assert batch.select_notebooks(["02_score_model_training"])[0].stem == "02_score_model_training"
    with pytest.raises(ValueError, match="no notebook '09'"):
        batch.select_notebooks(["09"])


def _notebook(path, params_src, body):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params_src)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_failure_names_notebook_and_cell_keeps_it_and_resume_continues(tmp_path, capfd):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "01_first.ipynb", "run_dir = None\nvalue = 1",
              "from pathlib import Path\nPath(run_dir, 'first.txt').write_text(str(value))")
    _notebook(nbdir / "02_second.ipynb", "run_dir = None\nfail = True",
              "from pathlib import Path\nassert not fail, 'told to fail'\nPath(run_dir, 'second.txt').write_text('ok')")
    out = tmp_path / "runs"
    with pytest.raises(RuntimeError) as info:
        batch.run_batch("toy", out=out, notebooks_dir=nbdir, params_dir=tmp_path, log=lambda *_: None)
    msg = str(info.value)
    assert "02_second" in msg and "cell 3" in msg and "told to fail" in msg
    assert "starting `from pathlib import Path`" in msg
    run = out / "toy"
    assert (run / "01_first.ipynb").exists() and (run / "first.txt").read_text() == "1"
    assert (run / "02_second.failed.ipynb").exists() and not (run / "02_second.ipynb").exists()
    assert not list(run.glob("*.running.ipynb"))
    (run / "first.txt").unlink()
    logs = []
    capfd.readouterr()
    done = batch.run_batch("toy", params={"fail": False}, out=out, notebooks_dir=nbdir, params_dir=tmp_path,
                           resume=True, log=logs.append, progress=True)
    assert [p.name for p in done] == ["02_second.ipynb"]
    err = capfd.readouterr().err
    assert "02_second: 100%" in err and "4/4 [" in err and "cell/s" in err, err      # a bar counting cells (+ injected)

    assert not (run / "first.txt").exists(), "notebook 01 was done and must not rerun"
    assert (run / "second.txt").read_text() == "ok" and not (run / "02_second.failed.ipynb").exists()
    state = json.loads((run / "batch.json").read_text())
    assert state["notebooks"]["02_second"]["parameters"]["fail"] is False
    assert batch.run_batch("toy", params={"fail": False}, out=out, notebooks_dir=nbdir, params_dir=tmp_path,
                           resume=True, log=logs.append) == []
    executed = nbformat.read(run / "02_second.ipynb", 4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_ensure_run_reuses_resumes_and_retrains(tmp_path, monkeypatch):
    import torch

    from sgc import pipeline
    torch.set_num_threads(1)
    resumed = []
    real = pipeline.train_on_dataset

    def recording(*args, resume=False, **kwargs):
        resumed.append(resume)
        return real(*args, resume=resume, **kwargs)

    monkeypatch.setattr(pipeline, "train_on_dataset", recording)
    model = {"arch": "mlp", "hidden": 16, "blocks": 1, "emb_dim": 16}
    train = {"steps": 4, "batch_size": 16, "warmup": 1, "checkpoint_every": 4, "log_every": 2}
    run = tmp_path / "run"
    _, _, cfg, trained = batch.ensure_run(run, "digits", model=model, train=train)
    assert trained and cfg["train"]["steps"] == 4 and resumed == [False]
    _, _, _, trained = batch.ensure_run(run, "digits", model=model, train=train)
    assert not trained and resumed == [False]                  # reused: no training at all
    _, _, cfg, trained = batch.ensure_run(run, "digits", model=model, train={**train, "steps": 6})
    assert trained and cfg["train"]["steps"] == 6 and resumed == [False, True]   # more steps: resumed
    assert json.loads((run / "history.json").read_text())[-1]["step"] == 6
    _, _, cfg, trained = batch.ensure_run(run, "digits", model=model, train={**train, "steps": 6, "lr": 1e-3})
    assert trained and resumed == [False, True, False]         # another training config: from scratch
    _, _, cfg, trained = batch.ensure_run(run, "digits", model={**model, "hidden": 8}, train=train)
    assert trained and cfg["model"]["hidden"] == 8 and resumed[-1] is False
    _, _, cfg, trained = batch.ensure_run(run, "digits", model={**model, "hidden": 8}, train={**train, "steps": 2})
    assert trained and resumed[-1] is False and cfg["train"]["steps"] == 2   # fewer steps: retrained


def _fake_papermill(monkeypatch):
    """papermill.execute_notebook without a kernel: records (notebook, parameters), writes the output."""
    import papermill
    calls = []

    def execute(src, dst, parameters=None, **kwargs):
        calls.append((Path(src).stem, dict(parameters or {})))
        Path(dst).write_text(Path(src).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return calls


def _two_notebooks(folder):
    folder.mkdir()
    _notebook(folder / "01_first.ipynb", "run_dir = None\ndataset = 'x'\nalpha = 1\ndata_root = None", "pass")
    _notebook(folder / "02_second.ipynb", "run_dir = None\nbeta = 2", "pass")
    return folder


def test_resume_skips_done_notebooks_and_reruns_from_the_first_changed_one(tmp_path, monkeypatch):
    calls = _fake_papermill(monkeypatch)
    nbs, out = _two_notebooks(tmp_path / "nbs"), tmp_path / "runs"
    (tmp_path / "toy.yaml").write_text("alpha: 1\nbeta: 2\n")
    kw = dict(out=out, notebooks_dir=nbs, params_dir=tmp_path, log=lambda *_: None)
    assert [p.name for p in batch.run_batch("toy", **kw)] == ["01_first.ipynb", "02_second.ipynb"]
    assert [c[0] for c in calls] == ["01_first", "02_second"]
    assert batch.run_batch("toy", resume=True, **kw) == [] and len(calls) == 2        # same parameters: nothing
    batch.run_batch("toy", params={"beta": 3}, resume=True, **kw)                    # 02 changed: 02 only
    assert [c[0] for c in calls[2:]] == ["02_second"] and calls[-1][1]["beta"] == 3
    batch.run_batch("toy", params={"alpha": 5, "beta": 3}, resume=True, **kw)        # 01 changed: 01 and 02
    assert [c[0] for c in calls[3:]] == ["01_first", "02_second"]
    (out / "toy" / "01_first.ipynb").unlink()                                         # output gone: rerun
    batch.run_batch("toy", params={"alpha": 5, "beta": 3}, resume=True, **kw)
    assert [c[0] for c in calls[5:]] == ["01_first", "02_second"]
    batch.run_batch("toy", params={"alpha": 5, "beta": 3}, **kw)                      # no resume: everything
    assert [c[0] for c in calls[7:]] == ["01_first", "02_second"]
    state = json.loads((out / "toy" / "batch.json").read_text())
    assert state["notebooks"]["01_first"]["parameters"]["alpha"] == 5


def test_parameter_file_keys_are_checked_against_every_notebook_and_overrides_against_the_selected(
        tmp_path, monkeypatch):
    calls = _fake_papermill(monkeypatch)
    nbs, out = _two_notebooks(tmp_path / "nbs"), tmp_path / "runs"
    (tmp_path / "toy.yaml").write_text("alpha: 1\nbeta: 2\ndata_root: some/where\n")
    kw = dict(out=out, notebooks_dir=nbs, params_dir=tmp_path, log=lambda *_: None)
    # running 02 alone with a file that also holds 01's keys is fine, and 02 gets only its own keys
    batch.run_batch("toy", notebooks=["02"], **kw)
    assert calls == [("02_second", {"beta": 2, "run_dir": str((out / "toy").resolve())})]
    # 01 gets its keys, the dataset name, the run folder, and *_root paths as given (the notebooks run
    # in the folder sgc batch runs from, so a relative path means the same there; none of this machine's paths recorded)
    batch.run_batch("toy", notebooks=["01"], **kw)
    assert calls[-1] == ("01_first", {"alpha": 1, "dataset": "toy", "run_dir": str((out / "toy").resolve()),
                                      "data_root": "some/where"})
    # an override for a notebook that is not selected is an error, naming the key
    with pytest.raises(ValueError, match="'alpha'"):
        batch.run_batch("toy", notebooks=["02"], params={"alpha": 3}, **kw)
    # a file key that no notebook of the folder declares is an error, even when running all
    (tmp_path / "bad.yaml").write_text("alpha: 1\ngamma: 2\n")
    with pytest.raises(ValueError, match="'gamma'"):
        batch.run_batch("bad", **kw)
    assert len(calls) == 2


def test_a_run_folder_is_reused_whatever_step_engine_trained_it_but_not_with_other_training_settings():
    """train.compile (eager or CUDA graph) does not change the model: a run folder saved before the
    field existed, or trained by the other engine, is reused, never retrained; a real change is named."""
    from dataclasses import asdict
    from sgc.train import TrainConfig
    want_train = asdict(TrainConfig.from_dict({"steps": 10, "compile": "auto"}))
    want = {"model": {"arch": "mlp"}, "sde": {"name": "vp"}, "train": want_train,
            "data": {"dataset": "digits", "options": {}}}
    older = {**want, "train": {k: v for k, v in want_train.items() if k != "compile"}}
    assert batch._mismatch(older, 10, want) == ""
    assert batch._mismatch({**want, "train": {**want_train, "compile": "graph"}}, 10, want) == ""
    assert batch._mismatch({**want, "train": {**want_train, "lr": want_train["lr"] * 2}}, 10, want) == "train.lr"
