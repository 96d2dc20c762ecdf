"""Where a dataset's files are: one rule for the CLI, ``sgc batch``, the notebooks and the tests.

The data root of a dataset (the folder its loader reads) is, in this order:

1. ``--data-root DIR`` on the command line (``root=DIR`` / ``data_root=DIR`` from Python and in
   notebook parameters): the dataset's own folder, e.g. ``.../medmnist`` holding ``breastmnist.npz``;
2. else ``$SGC_DATA/<folder>`` when the environment variable ``SGC_DATA`` is set: ``SGC_DATA`` is
   a folder holding one folder per source, named as in :data:`FOLDERS` (``medmnist/``,
   ``mini-mias/``, ``cbis-ddsm/``, ``inbreast/``, ``vindr-mammo/``); the tests' ``SGC_TEST_DATA``
   has the same layout, so ``SGC_DATA=$SGC_TEST_DATA`` works;
3. else the default: ``~/.medmnist`` for MedMNIST (where the ``medmnist`` package downloads),
   ``~/sgc-data/<folder>`` for the others.

scikit-learn's digits are embedded and need no folder. Every loader's "not found" error
states this rule (:func:`describe`), naming which of the three gave the folder it looked in.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FOLDERS", "DEFAULTS", "ENV", "resolve_root", "root_origin", "describe", "not_found", "with_rule",
           "RELATIVE_TO_RUN", "record_root", "recorded_root", "describe_root"]

ENV = "SGC_DATA"

# dataset name -> its folder under $SGC_DATA (one folder per source; the MedMNIST sets share one)
FOLDERS = {
    "breastmnist": "medmnist",
    "medmnist": "medmnist",
    "mini_mias": "mini-mias",
    "cbis_ddsm": "cbis-ddsm",
    "inbreast": "inbreast",
    "vindr_mammo": "vindr-mammo",
}

# dataset name -> the folder used when neither a root nor $SGC_DATA is given ("~" = home)
DEFAULTS = {name: ("~/.medmnist" if folder == "medmnist" else f"~/sgc-data/{folder}")
            for name, folder in FOLDERS.items()}


def _folder(dataset: str) -> str:
    if dataset not in FOLDERS:
        raise ValueError(f"no data folder is defined for dataset {dataset!r}; known: {sorted(FOLDERS)} "
                         "(digits are embedded)")
    return FOLDERS[dataset]


def root_origin(dataset: str, root=None) -> str:
    """Which rule gives the folder: "--data-root", "$SGC_DATA" or "the default"."""
    _folder(dataset)
    if root is not None and str(root) != "":
        return "--data-root"
    return f"${ENV}" if os.environ.get(ENV) else "the default"


def resolve_root(dataset: str, root=None) -> Path | None:
    """The folder ``dataset``'s loader reads (see the module docstring); None for digits.

    root: an explicit folder (``--data-root``), str or Path, ``~`` expanded; None or "" = not given.
    The folder is not required to exist (the loader says what is missing).
    """
    if dataset == "digits":
        return None
    folder = _folder(dataset)
    origin = root_origin(dataset, root)
    if origin == "--data-root":
        return Path(root).expanduser()
    if origin == f"${ENV}":
        return Path(os.environ[ENV]).expanduser() / folder
    return Path(DEFAULTS[dataset]).expanduser()


def describe(dataset: str) -> str:
    """The rule in one sentence, for error messages and help text."""
    return (f"the data root of {dataset} is --data-root DIR (root= in Python) when given, else "
            f"${ENV}/{_folder(dataset)} when {ENV} is set, else {DEFAULTS[dataset]}")


def not_found(dataset: str, root, what: str | None = None) -> str:
    """Error text: ``what`` (None: the folder itself) is missing in the resolved folder, where that
    folder came from, and the rule."""
    path = resolve_root(dataset, root)
    origin = root_origin(dataset, root)
    env = os.environ.get(ENV)
    text = f"{what} not found in {path}" if what else f"data folder {path} not found"
    text += f" (from {origin}" + (f", {ENV}={env})" if origin == f"${ENV}" else ")")
    rule = describe(dataset)
    text += f". {rule[0].upper()}{rule[1:]}."
    if origin == f"${ENV}" and not path.exists() and Path(env).expanduser().is_dir():
        text += (f" Note: {ENV} names the folder that holds one folder per source "
                 f"({', '.join(sorted(set(FOLDERS.values())))}), not a dataset's own folder (that is --data-root).")
    return text


def with_rule(dataset: str, root, err: Exception) -> str:
    """A loader's own "file missing" message, followed by the folder it looked in and the rule."""
    rule = describe(dataset)
    return (f"{err} (data folder {resolve_root(dataset, root)}, from {root_origin(dataset, root)}; "
            f"{rule})")


# --------------------------------------------------------------------------- recording a root
# Files that travel (config.json, metrics, experiment tables) never hold this machine's folders.
RELATIVE_TO_RUN = "run folder"   # the value of data.root_base in config.json: data.root is relative to it


def record_root(root, run_dir) -> str | None:
    """How a run folder records an explicit data root: relative to the run folder (so a checkout
    moved together with its data keeps working), None when ``root`` is None (the rule finds it)."""
    if root is None or str(root) == "":
        return None
    target = Path(root).expanduser().absolute()
    try:
        return Path(os.path.relpath(target, Path(run_dir).expanduser().absolute())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return str(target)


def recorded_root(value, run_dir, base: str | None = None) -> Path | None:
    """The folder a run folder's recorded ``value`` names: relative to the run folder when
    ``base`` is :data:`RELATIVE_TO_RUN`, else (run folders of sgc before 0.2) as written."""
    if value is None or str(value) == "":
        return None
    path = Path(value).expanduser()
    return Path(run_dir) / path if base == RELATIVE_TO_RUN and not path.is_absolute() else path


def describe_root(root) -> str | None:
    """``root`` for a table or a log, without this machine's folders: ``$SGC_DATA/...`` when it lies
    under $SGC_DATA, ``~/...`` under the home folder, else relative to the working folder."""
    if root is None or str(root) == "":
        return None
    target = Path(root).expanduser().absolute()
    bases = [(Path(os.environ[ENV]).expanduser().absolute(), f"${ENV}")] if os.environ.get(ENV) else []
    bases.append((Path.home().absolute(), "~"))
    for base, name in bases:
        if target == base or base in target.parents:
            return name if target == base else f"{name}/{target.relative_to(base).as_posix()}"
    try:
        return Path(os.path.relpath(target)).as_posix()
    except ValueError:
        return str(target)
