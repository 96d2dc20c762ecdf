"""Papermill runs of the numbered notebooks for one dataset, sharing one run folder.

``run_batch("breastmnist")`` executes the numbered notebooks ``01_*.ipynb`` ... ``05_*.ipynb``
(``sgc.resources.notebooks_dir()``: the clone's ``notebooks/`` or, after ``pip install .``, the
copy installed with sgc) in order into ``runs/breastmnist/`` (``runs_dir`` = "runs", a folder git
ignores) with the parameters of ``params/breastmnist.yaml`` merged with ``params`` overrides.
Every notebook gets the same ``run_dir`` (that folder), so notebook 03 classifies with the
checkpoint notebook 02 trained, and so on. Notebook 05 collects the run folders of
``runs_dir`` and writes its figures and tables to ``reports_dir`` (default
``<runs_dir>/summary``). The committed results under ``reports/`` change only when asked:
``sgc batch --runs-dir reports/runs --reports-dir reports`` (``make reports``).

- Parameter files are read with ``yaml.safe_load``; string values may name environment
  variables as ``${VAR}`` or ``${VAR:-default}``. ``data_root: null`` lets the loaders find
  the data by the one rule (``--data-root``, else ``$SGC_DATA/<folder>``, else a default:
  :mod:`sgc.data.roots`).
- Overrides are nested and merge (:mod:`sgc.config`): ``-p train.steps=2000`` changes one key
  of the ``train`` dict and keeps the others (from the parameter file, else from the
  notebook's own default); ``-p "train={steps: 20}"`` merges the same way.
- Keys are checked against what the notebooks declare (``train`` against ``TrainConfig``'s
  fields) before anything runs, with suggestions from the right place (``train_steps`` ->
  ``train.steps``); papermill itself only warns. Each notebook receives the keys its
  ``parameters`` cell declares.
- The notebooks run in the folder ``sgc batch`` is run from, so relative paths (``run_dir``,
  ``data_root``, ...) mean the same as on the command line and are written into the executed
  notebooks and ``batch.json`` as given: a batch run from the repository records paths
  relative to it, never this machine's absolute paths.
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

import json
import os
import re
import time
from pathlib import Path

from .errors import BatchError, ConfigError, RunExists, RunFolderError

__all__ = ["list_notebooks", "select_notebooks", "load_params", "expand_env", "notebook_parameters",
           "notebook_defaults", "parameter_schema", "check_parameters", "merge_parameters", "run_batch",
           "ensure_trained", "ensure_run", "default_run_dir", "environment_summary"]

_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def __getattr__(name):  # NOTEBOOKS_DIR (before 0.2): the folder is looked up when asked, not at import
    if name == "NOTEBOOKS_DIR":
        from .resources import notebooks_dir
        return notebooks_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _notebooks_dir(folder=None) -> Path:
    from .resources import notebooks_dir
    return Path(folder) if folder is not None else notebooks_dir()


def list_notebooks(notebooks_dir=None) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` of ``notebooks_dir`` (default: sgc's own), in order."""
    folder = _notebooks_dir(notebooks_dir)
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


def load_params(dataset: str, params_dir=None, profile: str = "cpu") -> dict:
    """Parameters of ``params/<dataset>.yaml`` (``<dataset>.<profile>.yaml`` for another profile) with
    environment variables expanded ({} without a CPU file); :func:`sgc.profiles.load_profile`.

    ``params_dir`` defaults to the parameter files that come with sgc (``sgc.resources.params_dir()``).
    """
    from .profiles import load_profile
    return load_profile(dataset, profile, params_dir)[0]


def notebook_parameters(path) -> dict:
    """{name: default as source text} of the notebook's ``parameters`` cell (papermill's view)."""
    import papermill
    return {name: info["default"] for name, info in papermill.inspect_notebook(str(path)).items()}


def notebook_defaults(path) -> dict:
    """{name: default value} of the notebook's ``parameters`` cell (literals only, as the notebooks hold)."""
    import ast
    out = {}
    for name, source in notebook_parameters(path).items():
        try:
            out[name] = ast.literal_eval(source)
        except (ValueError, SyntaxError):
            out[name] = None
    return out


def parameter_schema(notebooks) -> dict:
    """The :func:`sgc.config.validate` schema of the parameters ``notebooks`` declare: ``train`` is a
    ``TrainConfig``, other dict-valued parameters (model, sde, data_options, ...) take any keys
    (their loaders check them), the rest are values."""
    from .config import OPEN
    from .train import TrainConfig
    schema = {}
    for nb in notebooks:
        for name, default in notebook_defaults(nb).items():
            schema[name] = TrainConfig if name == "train" else OPEN if isinstance(default, dict) else default
    return schema


def check_parameters(params: dict, notebooks, *, all_notebooks=None) -> dict[Path, dict]:
    """Split ``params`` per notebook; ConfigError naming every key that none of ``notebooks`` declares
    (with a suggestion, e.g. ``train_steps`` -> ``train.steps``) or that has a wrong type.

    ``all_notebooks``: the whole set, to say which unselected notebook declares a key.
    """
    from .config import validate
    notebooks = [Path(nb) for nb in notebooks]
    try:
        validate(params, parameter_schema(notebooks), what="notebook parameter")
    except ConfigError as err:
        names = ", ".join(p.stem for p in notebooks)
        elsewhere = []
        for nb in all_notebooks or []:
            if Path(nb) not in notebooks:
                keys = sorted(set(params) & set(notebook_parameters(nb)))
                elsewhere += [f"{k!r} is a parameter of {Path(nb).stem}, which is not selected" for k in keys]
        raise ConfigError(f"{str(err).strip()} (the parameters of {names})"
                          + ("; " + "; ".join(elsewhere) if elsewhere else "")
                          + ". Fix the name (the notebooks' parameters cells list them), or select the notebook "
                            "with --notebooks") from None
    declared = {nb: notebook_parameters(nb) for nb in notebooks}
    return {nb: {k: v for k, v in params.items() if k in decl} for nb, decl in declared.items()}


def _merge_value(name: str, base, override):
    """A parameter's value: a dict override merges into the dict it overrides (other keys kept),
    except a ``model`` naming another ``arch`` (its keywords differ); anything else replaces."""
    from .config import merge
    if isinstance(base, dict) and isinstance(override, dict):
        if name == "model" and "arch" in override and override["arch"] != base.get("arch"):
            return dict(override)
        return merge(base, override)
    return override


def merge_parameters(defaults: dict, file_params: dict, overrides: dict) -> dict:
    """One notebook's parameters: the parameter file's values, then ``overrides`` merged into them
    (into the notebook's own ``defaults`` where the file has no such key). Only keys the file
    or the overrides name are returned (papermill keeps the notebook's default for the others)."""
    out = {k: v for k, v in file_params.items() if k in defaults}
    for key, value in overrides.items():
        if key in defaults:
            out[key] = _merge_value(key, out.get(key, defaults[key]), value)
    return out


def _portable_text(text: str, notebooks_dir: Path) -> str:
    """``text`` with this machine's folders (the working folder, sgc's notebooks, Python's prefix and
    site-packages, the home folder) written as relative or symbolic names, so that executed notebooks
    travel: ``<cwd>/reports/runs`` -> ``reports/runs``, ``<venv>/lib/...`` -> ``<python>/lib/...``."""
    import sys
    subs = [(str(Path.cwd()), ""), (str(notebooks_dir), "notebooks"), (sys.prefix, "<python>"),
            (sys.base_prefix, "<python>"), (str(Path.home()), "~")]
    subs += [(p, "<site-packages>") for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    for prefix, name in sorted(subs, key=lambda s: -len(s[0])):
        if len(prefix.strip("/\\")) < 2:   # never "/" or "C:" alone
            continue
        for raw in dict.fromkeys([prefix, json.dumps(prefix)[1:-1]]):  # as is, and escaped inside JSON
            sep = "/" if "/" in raw else r"\\+"  # POSIX, else Windows (single or JSON-escaped)
            text = re.sub(re.escape(raw) + rf"(?:({sep})|(?=[\"'\s:,\]\\]|$))",
                          lambda m: (name + "/" if name else "") if m.group(1) else (name or "."), text)
    return text


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
              notebooks_dir=None,          # folder of the numbered notebooks (default: sgc's own)
              params_dir=None,             # folder of <dataset>.yaml (default: the one beside the notebooks)
              kernel_name: str = "python3",
              progress: bool = False,      # a bar per notebook, counting its cells (stderr)
              profile: str = "cpu",        # parameter file: <dataset>.yaml, else <dataset>.<profile>.yaml
              log=print) -> list[Path]:
    """Execute the notebooks for ``dataset`` into ``out/<dataset>/`` (``out/<dataset>-<profile>/`` for a
    profile other than "cpu", :mod:`sgc.profiles`); returns the executed paths.

    ``out`` is the parent folder of the run folders (the CLI's ``--runs-dir``); ``params`` a
    nested dict of overrides (``sgc.config.parse_overrides`` of ``-p`` items), merged into the
    parameter file's values. Raises ConfigError (a ValueError) for unknown or mistyped
    parameters, BatchError when a notebook fails (naming notebook, cell and error; the partial
    notebook is kept as ``<name>.failed.ipynb``).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    nb_dir = _notebooks_dir(notebooks_dir)
    if params_dir is None and notebooks_dir is not None:
        params_dir = nb_dir / "params"
    every = list_notebooks(nb_dir)
    chosen = select_notebooks(notebooks, nb_dir)
    from . import profiles
    file_params, about = profiles.load_profile(dataset, profile, params_dir)
    check_parameters(file_params, every)                                  # the file serves every notebook
    check_parameters(params or {}, chosen, all_notebooks=every)          # overrides must reach a selected one
    profiles.announce(dataset, profile, about, log)
    run_folder = Path(out, profiles.run_name(dataset, profile))
    reports = Path(reports_dir) if reports_dir is not None else Path(out) / "summary"
    given = {"dataset": dataset, "run_dir": str(run_folder), "runs_dir": str(Path(out)), "reports_dir": str(reports)}
    per_notebook = {}
    for nb in chosen:
        defaults = notebook_defaults(nb)
        values = merge_parameters(defaults, file_params, params or {})
        for key, value in given.items():
            if key in defaults:
                values.setdefault(key, value)
        per_notebook[nb] = values
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
    for i, nb in enumerate(todo, 1):
        final = run_folder / nb.name
        tmp = run_folder / f"{nb.stem}.running.ipynb"
        failed = run_folder / f"{nb.stem}.failed.ipynb"
        log(f"[batch] {nb.stem} ({i} of {len(todo)}): running with {json.dumps(per_notebook[nb], sort_keys=True)}")
        bar = {"desc": f"{nb.stem}", "unit": "cell", "mininterval": 0, "leave": True} if progress else False
        start = time.perf_counter()
        try:
            papermill.execute_notebook(str(nb), str(tmp), parameters=per_notebook[nb], kernel_name=kernel_name,
                                       cwd=os.getcwd(), progress_bar=bar, log_output=False)
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
        from .fileio import atomic_write_text
        atomic_write_text(tmp, _portable_text(tmp.read_text(), nb_dir))
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
    # steps are compared below; the others do not change the weights (compile: the step engine, eager or
    # CUDA graph; run folders from before it existed have no such key and must not be retrained for it)
    rest = lambda d: {k: v for k, v in d.items() if k not in ("steps", "checkpoint_every", "log_every", "compile")}  # noqa: E731
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
