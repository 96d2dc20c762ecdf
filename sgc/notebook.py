"""The set-up every numbered notebook starts with, in one call.

The notebooks' ``parameters`` cells hold literals only (papermill replaces them); the cell after
them calls :func:`setup`, which

1. checks the shared parameters with sgc's own checks (an unknown dataset, loader option,
   network keyword or ``TrainConfig`` field fails here, naming it and what is known, before any
   work: the same messages as ``sgc train``);
2. resolves the run folder (``run_dir`` None: ``$SGC_RUN_DIR/<dataset>``, else a folder under
   the system's temp folder, shared by the notebooks of one session) and the figures folder;
3. picks the device (cuda when available) and the number of CPU threads;
4. sets the figure theme and prints the folders, where the data come from (the data-root rule
   of :mod:`sgc.data.roots`, never this machine's absolute paths when the rule found them) and
   the environment (versions, device, threads).

Each notebook still reads on its own: what the set-up did is printed, and its results are
named (``nb.run_dir``, ``nb.figures_dir``, ``nb.device``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Setup", "setup", "data_source", "default_runs_dir", "example_image"]


@dataclass(frozen=True)
class Setup:
    run_dir: Path       # the shared run folder (created)
    figures_dir: Path   # where this notebook saves figures
    device: str         # "cpu" or "cuda"


def data_source(dataset: str, data_root=None) -> str:
    """Where ``dataset``'s files are read from, for a printout: the folder and the rule that gave it,
    with $SGC_DATA and the home folder written symbolically."""
    if dataset == "digits":
        return "scikit-learn's embedded digits (no data folder)"
    from .data.roots import FOLDERS, describe_root, resolve_root, root_origin
    if dataset not in FOLDERS:
        return f"{dataset} (the loader's own rule)"
    return f"{describe_root(resolve_root(dataset, data_root))} (from {root_origin(dataset, data_root)})"


def default_runs_dir() -> Path:
    """Notebook 05's folder of run folders when none is given: the repository's committed
    ``reports/runs`` in a clone, else ``runs`` (where ``sgc batch`` writes by default)."""
    from .resources import notebooks_dir
    try:
        committed = notebooks_dir().parent / "reports" / "runs"
    except FileNotFoundError:
        return Path("runs")
    return committed if committed.is_dir() else Path("runs")


def setup(dataset: str | None = None, *,
          run_dir=None,                     # the shared run folder (None: $SGC_RUN_DIR/<dataset> or a temp folder)
          figures_dir=None,                 # None: <run_dir>/figures
          device: str | None = None,        # "cpu", "cuda" or None (cuda when available)
          cpu_threads: int | None = None,   # torch threads on a CPU (None: torch's default)
          data_root=None,                   # the dataset's folder (None: the data-root rule)
          data_options: dict | None = None,  # loader keywords, checked against the loader
          model: dict | None = None,        # network config, checked against the architecture
          sde: dict | None = None,          # forward SDE config, built once to check it
          train: dict | None = None,        # TrainConfig fields, checked
          folder_name: str = "run folder",  # what run_dir is called in the printout
          show: bool = True) -> Setup:
    """Check the shared parameters, make the run folder, set device, threads and theme; print
    what was chosen and the environment. Returns the resolved folders and device."""
    import torch
    from . import plots
    from .batch import default_run_dir, environment_summary
    from .errors import ConfigError
    from .pipeline import check_data_options, check_model_options, check_train_options
    for name, value in {"data_options": data_options, "model": model, "sde": sde, "train": train}.items():
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{name} must be a dict, got {value!r}. Write it as {{'key': value, ...}}")
    if dataset is not None:
        check_data_options(dataset, data_options)
    if model is not None:
        check_model_options(model)
    if train is not None:
        from .train import TrainConfig
        check_train_options(train)
        TrainConfig.from_dict(train)
        if int(train.get("steps", 1)) <= 0:
            raise ConfigError(f"train['steps'] must be positive, got {train['steps']}")
    if sde is not None:
        from .sde import make_sde
        make_sde(**sde)
    run_dir = Path(run_dir) if run_dir else default_run_dir(dataset or "reports")
    figures_dir = Path(figures_dir) if figures_dir else run_dir / "figures"
    run_dir.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and cpu_threads:
        torch.set_num_threads(int(cpu_threads))
    plots.set_theme()
    if show:
        print(f"{folder_name:12s} {run_dir}\n{'figures':12s} {figures_dir}")
        if dataset is not None:
            print(f"data         {data_source(dataset, data_root)}")
        for key, value in environment_summary(device).items():
            print(f"{key:12s} {value}")
    return Setup(run_dir, figures_dir, device)


def example_image(choice="auto") -> tuple[Path | None, str]:
    """(path, where it comes from) of the image notebook 01 preprocesses step by step.

    choice: a DICOM or PGM path; None (skip: (None, reason)); or "auto": the last CBIS-DDSM DICOM,
    else the last mini-MIAS PGM, found by the data-root rule (``$SGC_DATA/cbis-ddsm``, ...), else
    pydicom's bundled test CT (``CT_small.dcm``: not a mammogram, but a real 16-bit DICOM that
    every installation has, so the section always shows the steps).
    """
    if choice is None:
        return None, "skipped (preprocess_example is None)"
    if choice != "auto":
        return Path(choice), "given as preprocess_example"
    from .data.roots import describe_root, resolve_root, root_origin
    for dataset, pattern in (("cbis_ddsm", "dicom/**/*.dcm"), ("mini_mias", "**/*.pgm")):
        root = resolve_root(dataset)
        found = sorted(root.glob(pattern)) if root.is_dir() else []
        if found:
            return found[-1], f"{dataset}: {describe_root(found[-1])} (data folder from {root_origin(dataset)})"
    from pydicom.data import get_testdata_file
    path = get_testdata_file("CT_small.dcm", download=False)  # bundled with pydicom: never downloads
    if path is None:
        return None, "no mammogram found by the data-root rule and pydicom's test files are missing"
    return Path(path), ("pydicom's bundled test CT slice CT_small.dcm: no CBIS-DDSM or mini-MIAS image was found by "
                        "the data-root rule, so the steps run on a CT (set SGC_DATA, or preprocess_example to a path)")
