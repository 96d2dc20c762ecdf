"""Papermill runs of the numbered notebooks for one dataset, sharing one run folder.

``run_batch("breastmnist")`` executes ``notebooks/01_*.ipynb`` ... ``05_*.ipynb`` in order
into ``runs/breastmnist/`` (``out`` = "runs", a folder git ignores) with the parameters of
``notebooks/params/breastmnist.yaml`` (overridden by ``params``). Every notebook gets the
same ``run_dir`` (that folder), so notebook 03 classifies with the checkpoint notebook 02
trained, and so on. Notebook 05 collects the run folders of ``out`` (``runs_dir``) and writes
its figures and tables to ``reports_dir`` (default ``<out>/summary``). The committed results
under ``reports/`` change only when asked: ``sgc batch --out reports/runs --reports-dir reports``
(``make reports``).

- Parameter files are read with ``yaml.safe_load``; string values may name environment
  variables as ``${VAR}`` or ``${VAR:-default}``. Relative paths in keys ending in ``_dir``,
  ``_root`` or ``_path`` are taken relative to the directory ``sgc batch`` is run from.
- Keys no notebook declares (parameter file) or no selected notebook declares (``params``
  overrides) are rejected, naming them (papermill only warns). Each notebook receives the
  keys its ``parameters`` cell declares.
- Each notebook is written to ``<name>.running.ipynb`` and renamed to ``<name>.ipynb`` when
  it succeeds. A failure raises ``BatchError`` (a RuntimeError) naming the notebook, the cell and the
  error, and keeps the partial notebook as ``<name>.failed.ipynb``.
- ``batch.json`` in the run folder records the parameters and seconds of every finished
  notebook; ``resume=True`` skips the leading notebooks already done with the same parameters.

``ensure_trained`` decides, for a run folder and the settings asked for, whether its model is
reused, resumed, or (only when told to) retrained; ``ensure_run`` is what the notebooks call
(retraining allowed, the model returned); ``sgc demo`` calls ``ensure_trained`` without it.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import time
from pathlib import Path

from .errors import BatchError, ConfigError, RunExists, RunFolderError

__all__ = ["NOTEBOOKS_DIR", "list_notebooks", "select_notebooks", "load_params", "expand_env",
           "notebook_parameters", "check_parameters", "run_batch", "ensure_trained", "ensure_run", "default_run_dir",
           "environment_summary"]

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
_PATH_SUFFIXES = ("_dir", "_root", "_path")


def list_notebooks(notebooks_dir=None) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` of ``notebooks_dir``, in order."""
    folder = Path(notebooks_dir or NOTEBOOKS_DIR)
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (NN_*.ipynb) in {folder}")
    return found


def select_notebooks(selection, notebooks_dir=None) -> list[Path]:
    """Notebooks by number ("01"), stem ("01_data_exploration") or file name; None = all."""
    available = list_notebooks(notebooks_dir)
    if not selection:
        return available
    chosen = []
    for item in selection:
        key = Path(str(item)).stem
        match = [p for p in available if p.stem == key or p.stem.split("_", 1)[0] == key.zfill(2)]
        if not match:
            raise ConfigError(f"no notebook {item!r}; choose from {[p.stem for p in available]}")
        chosen += [m for m in match if m not in chosen]
    return sorted(chosen)


def expand_env(value):
    """Replace ``${VAR}`` / ``${VAR:-default}`` in strings (recursively in lists and dicts)."""
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"environment variable {name} is not set (used as ${{{name}}}); set it, "
                             f"or write ${{{name}:-default}} in the parameter file")
        return default

    return _ENV.sub(sub, value)


def load_params(dataset: str, params_dir=None) -> dict:
    """Parameters of ``params/<dataset>.yaml`` with environment variables expanded ({} if absent)."""
    import yaml
    path = Path(params_dir or NOTEBOOKS_DIR / "params") / f"{dataset}.yaml"
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}. Fix the file (plain values only: no !!tags)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of parameter names to values, not {type(data).__name__}")
    return expand_env(data)


def notebook_parameters(path) -> dict:
    """{name: default as source text} of the notebook's ``parameters`` cell (papermill's view)."""
    import papermill
    return {name: info["default"] for name, info in papermill.inspect_notebook(str(path)).items()}


def check_parameters(params: dict, notebooks) -> dict[Path, dict]:
    """Split ``params`` per notebook; ValueError naming keys that no notebook declares."""
    declared = {Path(nb): notebook_parameters(nb) for nb in notebooks}
    known = set().union(*[set(d) for d in declared.values()]) if declared else set()
    unknown = sorted(set(params) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        names = ", ".join(p.stem for p in declared)
        raise ConfigError(f"unknown notebook parameter(s) {', '.join(hints)}: not declared by any of "
                         f"{names}. Known parameters: {sorted(known)}")
    return {nb: {k: v for k, v in params.items() if k in decl} for nb, decl in declared.items()}


def _absolute_paths(params: dict) -> dict:
    out = dict(params)
    for key, value in params.items():
        if key.endswith(_PATH_SUFFIXES) and isinstance(value, str) and value and not os.path.isabs(value):
            out[key] = str(Path(value).resolve())
    return out


def _first_line(path: Path, index: int) -> str:
    """", starting `<first code line>`" of the failed cell (the one with an error output), or ""."""
    try:
        import nbformat
        cells = nbformat.read(path, 4).cells
        bad = [c for c in cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
        cell = bad[0] if bad else cells[index]
        lines = [ln for ln in cell.source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return f", starting `{lines[0].strip()[:80]}`" if lines else ""
    except Exception:  # the message must not fail because of the hint
        return ""


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"notebooks": {}}


def _write_state(path: Path, state: dict) -> None:
    from .fileio import atomic_write_text
    atomic_write_text(path, json.dumps(state, indent=1, sort_keys=True))


def run_batch(dataset: str = "digits", notebooks=None, params: dict | None = None, out="runs",
              resume: bool = False, *,
              reports_dir=None,            # notebook 05's figures/ and tables/ (default: <out>/summary)
              notebooks_dir=None,          # folder of the numbered notebooks (default: the repo's)
              params_dir=None,             # folder of <dataset>.yaml (default: notebooks/params)
              kernel_name: str = "python3",
              log=print) -> list[Path]:
    """Execute the notebooks for ``dataset`` into ``out/<dataset>/``; returns the executed paths.

    Raises ValueError for unknown parameter names, BatchError when a notebook fails (naming
    notebook, cell and error; the partial notebook is kept as ``<name>.failed.ipynb``).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    chosen = select_notebooks(notebooks, notebooks_dir)
    file_params = load_params(dataset, params_dir)
    check_parameters(file_params, list_notebooks(notebooks_dir))  # the file serves every notebook
    check_parameters(params or {}, chosen)                         # overrides must reach a selected one
    merged = {**file_params, **(params or {})}
    run_folder = Path(out, dataset).resolve()
    declared = {nb: notebook_parameters(nb) for nb in chosen}
    reports = Path(reports_dir) if reports_dir is not None else Path(out) / "summary"
    for key, value in (("dataset", dataset), ("run_dir", str(run_folder)), ("runs_dir", str(Path(out).resolve())),
                       ("reports_dir", str(reports.resolve()))):
        if any(key in d for d in declared.values()):
            merged.setdefault(key, value)
    per_notebook = {nb: {k: v for k, v in merged.items() if k in d} for nb, d in declared.items()}
    per_notebook = {nb: _absolute_paths(p) for nb, p in per_notebook.items()}
    run_folder.mkdir(parents=True, exist_ok=True)
    state_path = run_folder / "batch.json"
    state = _read_state(state_path)

    todo = list(chosen)
    if resume:
        while todo:
            nb = todo[0]
            rec = state["notebooks"].get(nb.stem)
            done = (run_folder / nb.name).exists() and rec is not None and rec.get("parameters") == per_notebook[nb]
            if not done:
                break
            log(f"[batch] {nb.stem}: done before with the same parameters, skipped")
            todo.pop(0)
        if not todo:
            log(f"[batch] {dataset}: every selected notebook is done; nothing to run")
            return []
    executed = []
    for nb in todo:
        final = run_folder / nb.name
        tmp = run_folder / f"{nb.stem}.running.ipynb"
        failed = run_folder / f"{nb.stem}.failed.ipynb"
        log(f"[batch] {nb.stem}: running with {json.dumps(per_notebook[nb], sort_keys=True)}")
        start = time.perf_counter()
        try:
            papermill.execute_notebook(str(nb), str(tmp), parameters=per_notebook[nb], kernel_name=kernel_name,
                                       cwd=str(nb.parent), progress_bar=False, log_output=False)
        except PapermillExecutionError as err:
            os.replace(tmp, failed)
            raise BatchError(f"notebook {nb.stem} failed in cell {err.cell_index} of the executed notebook "
                               f"(execution count {err.exec_count}{_first_line(failed, err.cell_index)}): "
                               f"{err.ename}: {err.evalue}. The partial notebook is kept "
                               f"at {failed}; after fixing, rerun with --resume to continue from {nb.stem}") from None
        except Exception as err:  # kernel died, notebook unreadable, ...
            if tmp.exists():
                os.replace(tmp, failed)
            raise BatchError(f"notebook {nb.stem} could not be executed: {type(err).__name__}: {err}"
                               + (f"; partial notebook at {failed}" if failed.exists() else "")) from None
        os.replace(tmp, final)
        if failed.exists():
            failed.unlink()
        seconds = time.perf_counter() - start
        state["notebooks"][nb.stem] = {"parameters": per_notebook[nb], "seconds": round(seconds, 1)}
        _write_state(state_path, state)
        log(f"[batch] {nb.stem}: done in {seconds:.0f} s -> {final}")
        executed.append(final)
    return executed


def ensure_trained(run_dir, dataset: str = "digits", *,
                   data_root=None,                # folder with the dataset's files
                   data_options: dict | None = None,  # loader keywords, e.g. {"size": 32}
                   model: dict | None = None,     # network config (arch + keywords)
                   sde: dict | None = None,       # e.g. {"name": "vp"}
                   train: dict | None = None,     # TrainConfig fields
                   retrain: bool = False,         # replace a model of other settings (False: RunExists)
                   device=None, progress: bool = False) -> str:
    """Make ``run_dir`` hold the model these settings describe; returns what was done:
    "reused" (same settings, as many steps), "resumed" (same settings, fewer steps so far),
    "trained" (no model yet) or "retrained" (other settings or a damaged run, with ``retrain``).
    """
    from dataclasses import asdict
    from . import runs
    from .data import load_dataset
    from .nets import build_model
    from .pipeline import check_data_options, check_model_options, check_train_options, train_on_dataset
    from .sde import make_sde
    from .train import TrainConfig
    run_dir = Path(run_dir)
    check_data_options(dataset, data_options)
    check_model_options(model)
    check_train_options(train)
    model = {"arch": "unet", **(model or {})}
    sde = sde or {"name": "vp"}
    with runs.writer_lock(run_dir):
        tr = load_dataset(dataset, root=data_root, **(data_options or {}))["train"]
        c, h, _ = tr.shape
        want_model = build_model({**model, "num_classes": len(tr.class_names), "in_channels": c,
                                  "image_size": h}).config
        want = {"model": json.loads(json.dumps(want_model)), "sde": make_sde(**sde).config(),
                "train": asdict(TrainConfig.from_dict({"levels": tr.levels, **(train or {})})),
                "data": {"dataset": dataset, "options": data_options or {}}}
        action, why = "trained", ""
        if runs.has_model(run_dir):
            try:
                saved, ckpt = runs.load_checkpoint(run_dir)
                why = _mismatch(saved, int(ckpt["step"]), want)
            except (RunFolderError, FileNotFoundError) as err:
                why = f"it cannot be used ({err})"
            if not why:
                if int(ckpt["step"]) == want["train"]["steps"]:
                    return "reused"
                action = "resumed"
            elif not retrain:
                raise RunExists(f"run folder {run_dir} holds a model trained with other settings: {why}. Pass "
                                f"--overwrite to replace it and its results, or choose another --run-dir")
            else:
                action = "retrained"
                runs._say(f"retraining {run_dir}: the model there differs: {why}")
        train_on_dataset(dataset, run_dir, data_root=data_root, data_options=data_options, model=model, sde=sde,
                         train=train, resume=action == "resumed", overwrite=action == "retrained",
                         device=device, progress=progress)
    return action


def _mismatch(saved: dict, step: int, want: dict) -> str:
    """'' when the saved run can be reused or resumed to ``want``, else what differs."""
    rest = lambda d: {k: v for k, v in d.items() if k not in ("steps", "checkpoint_every", "log_every")}  # noqa: E731
    diffs = [k for k in ("model", "sde") if saved.get(k) != want[k]]
    diffs += [f"data.{k}" for k in want["data"] if saved.get("data", {}).get(k) != want["data"][k]]
    diffs += [f"train.{k}" for k in sorted(set(rest(want["train"])) | set(rest(saved.get("train", {}))))
              if saved.get("train", {}).get(k) != want["train"].get(k)]
    steps = want["train"]["steps"]
    schedule_fixed = want["train"]["lr_schedule"] == "constant"  # else the schedule depends on the planned steps
    if step > steps or (not schedule_fixed and saved.get("train", {}).get("steps") != steps):
        diffs.append(f"train.steps ({step} trained, {steps} wanted)")
    return ", ".join(diffs)


def ensure_run(run_dir, dataset: str = "digits", *,
               data_root=None,                # folder with the dataset's files
               data_options: dict | None = None,  # loader keywords, e.g. {"size": 32}
               model: dict | None = None,     # network config (arch + keywords)
               sde: dict | None = None,       # e.g. {"name": "vp"}
               train: dict | None = None,     # TrainConfig fields
               device=None, progress: bool = False):
    """(ema_model, sde, config, trained) for ``run_dir``, training only when needed.

    The run folder's model is reused when it was trained with the same dataset, data
    options, network, SDE and training configuration; a run of the same configuration with
    fewer steps is resumed; anything else is retrained, replacing the folder's model and its
    results (``sgc.pipeline.ensure_trained`` with ``retrain=True``: the notebooks decide
    this explicitly). ``trained`` says whether training ran.
    """
    from .runs import load_run
    action = ensure_trained(run_dir, dataset, data_root=data_root, data_options=data_options, model=model, sde=sde,
                            train=train, retrain=True, device=device, progress=progress)
    net, sde_obj, config = load_run(run_dir, device or "cpu")
    return net, sde_obj, config, action != "reused"


def default_run_dir(dataset: str) -> Path:
    """A notebook's run folder when its ``run_dir`` parameter is None:
    ``$SGC_RUN_DIR/<dataset>``, else ``<system temp>/sgc-notebooks/<dataset>`` (shared by the
    notebooks of one session, outside the repository)."""
    import tempfile
    base = os.environ.get("SGC_RUN_DIR") or Path(tempfile.gettempdir()) / "sgc-notebooks"
    return Path(base) / dataset


def environment_summary(device=None) -> dict:
    """Versions and hardware a notebook ran with (printed in every notebook's first cells)."""
    import platform
    import numpy
    import torch
    from importlib.metadata import PackageNotFoundError, version
    try:
        sgc_version = version("sgc")
    except PackageNotFoundError:
        sgc_version = "not installed"
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return {"python": platform.python_version(), "platform": platform.platform(terse=True),
            "sgc": sgc_version, "torch": torch.__version__, "numpy": numpy.__version__,
            "device": str(dev), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_threads": torch.get_num_threads()}
