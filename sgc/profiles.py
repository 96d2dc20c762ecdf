"""Parameter profiles of the notebook batch: one switch picks the CPU or the GPU settings of a dataset.

    sgc batch --dataset breastmnist                  # params/breastmnist.yaml      -> runs/breastmnist/
    sgc batch --dataset breastmnist --profile gpu    # params/breastmnist.gpu.yaml  -> runs/breastmnist-gpu/

``params/<dataset>.yaml`` is the CPU profile ("cpu", sized for a laptop or CI);
``params/<dataset>.<profile>.yaml`` any other. A profile other than "cpu" gets its own run folder,
``<runs-dir>/<dataset>-<profile>``, so that its model never replaces the CPU one. A profile file
holds the notebooks' parameters and, except in CPU profiles, a ``profile:`` section about the
profile itself, which no notebook receives:

    profile:
      hardware: one NVIDIA H100 or H200 (80 GB)   # what it is sized for
      train_images: 546                           # the training split's size (sizes the estimates)
      test_images: 156                            # the classified split's size
      minutes: 8                                  # the whole batch, estimated (sgc profile shows how)
      gpu_memory_gib: 7.4                         # the peak, estimated (sgc.budget)

:func:`check_profile` validates a profile before any GPU time is spent: every key is one the
notebooks or sgc's configuration know, every value lies in the range the notebooks accept, and
the memory it needs, estimated by :mod:`sgc.budget`, stays under 80 GiB; the stated ``minutes`` and
``gpu_memory_gib`` must be at least the estimates (and not far above them). ``sgc profile`` prints
the profiles, their estimates, and a profile's settings as ``sgc train`` / ``sgc classify`` arguments
(``--args train``), which the SLURM scripts of docs/runbook.md use so that nothing is written twice.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .errors import ConfigError

__all__ = ["CPU", "ABOUT", "params_file", "list_profiles", "read_params", "load_profile", "run_name",
           "check_profile", "train_arguments", "classify_arguments", "announce"]

CPU = "cpu"                       # the profile of params/<dataset>.yaml
ABOUT = {"hardware": str, "train_images": int, "test_images": int, "minutes": (int, float),
         "gpu_memory_gib": (int, float)}


def _dir(params_dir) -> Path:
    if params_dir is None:
        from .resources import params_dir as default
        return default()
    return Path(params_dir)


def params_file(dataset: str, profile: str = CPU, params_dir=None) -> Path:
    """``<params_dir>/<dataset>.yaml`` for the CPU profile, else ``<dataset>.<profile>.yaml``."""
    if not profile or "/" in profile or "." in profile:
        raise ConfigError(f"profile must be a plain name such as 'cpu' or 'gpu', got {profile!r}")
    return _dir(params_dir) / (f"{dataset}.yaml" if profile == CPU else f"{dataset}.{profile}.yaml")


def list_profiles(params_dir=None) -> list[tuple[str, str]]:
    """(dataset, profile) of every parameter file, sorted."""
    out = []
    for path in _dir(params_dir).glob("*.yaml"):
        dataset, _, profile = path.stem.partition(".")
        out.append((dataset, profile or CPU))
    return sorted(out, key=lambda dp: (dp[0], dp[1] != CPU, dp[1]))


def read_params(path) -> dict:
    """A parameter file as a dict (``yaml.safe_load``, ``${VAR}`` expanded); ConfigError naming the file."""
    import yaml
    from .batch import expand_env
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}. Fix the file (plain values only: no !!tags)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of parameter names to values, not {type(data).__name__}")
    return expand_env(data)


def load_profile(dataset: str, profile: str = CPU, params_dir=None) -> tuple[dict, dict]:
    """(notebook parameters, the ``profile:`` section) of a profile. A dataset without a CPU file gets
    ({}, {}) (the notebooks' defaults); a missing other profile is a ConfigError naming those there are."""
    path = params_file(dataset, profile, params_dir)
    if not path.exists():
        if profile == CPU:
            return {}, {}
        known = [f"{d} --profile {p}" for d, p in list_profiles(params_dir) if d == dataset] or ["none"]
        raise ConfigError(f"no profile {profile!r} for dataset {dataset!r}: {path} does not exist. Profiles of "
                          f"{dataset}: {', '.join(known)}; add {path.name} (see sgc.profiles)")
    params = read_params(path)
    about = params.pop("profile", None) or {}
    if not isinstance(about, dict):
        raise ConfigError(f"{path}: 'profile' must be a mapping of {sorted(ABOUT)}, not {type(about).__name__}")
    return params, about


def run_name(dataset: str, profile: str = CPU) -> str:
    """The run folder's name: the dataset for the CPU profile, else ``<dataset>-<profile>``."""
    return dataset if profile == CPU else f"{dataset}-{profile}"


# ------------------------------------------------------------------------------ validation
# The values the notebooks accept (their first cells assert the same): (low, high), None = open. Lists
# are checked element by element; "band" is an ordered pair. Every number-valued parameter a notebook
# declares must have a rule here (tests/test_profiles.py checks it).
RANGES = {
    "cpu_threads": (1, None), "examples_per_class": (1, 32), "preprocess_size": (8, None),
    "samples_per_class": (1, None), "sampler_steps": (2, None), "ema_images": (1, None), "ema_draws": (2, None),
    "min_ema_accuracy": (0, 1), "ema_bpd_band": "band", "limit": (2, None), "batch_size": (1, None),
    "n_boot": (10, None), "min_accuracy": (0, 1), "min_auc": (0, 1), "bpd_band": "band",
    "ablation_images": (2, None), "tolerances": (1e-12, 0.5), "probe_repeats": (2, None), "probe_rtol": (1e-12, 0.5),
    "elbo_draws": (2, None), "step_grid": (1, None), "fractions": (1e-9, 1), "fraction_steps": (1, None),
    "ablation_draws": (2, None), "experiment_fractions": (1e-9, 100), "experiment_seeds": (0, None),
    "experiment_steps": (1, None), "experiment_draws": (2, None), "experiment_boot": (10, None),
    "min_bound_accuracy": (0, 1), "toy_points": (50, None), "toy_steps": (10, None), "toy_t": (1e-9, 1 - 1e-9),
    "seed": (0, None), "min_toy_agreement": (0, 1), "false_alarm": (1e-9, 0.5 - 1e-9), "ood_images": (4, None),
    "file_images": (2, None), "explain_images": (2, None), "evidence_draws": (2, None), "deletion_images": (2, None),
    "deletion_steps": (2, None), "t_stars": (1e-9, 1), "counterfactual_images": (2, None),
    "counterfactual_steps": (10, None), "preprocess_example": "text",
}
CHOICES = {"estimator": ("ode", "elbo"), "score_estimator": ("ode", "elbo"), "prior": ("uniform", "empirical"),
           "split": ("train", "val", "test"), "calibration_split": ("train", "val", "test"),
           "device": (None, "cpu", "cuda")}
TRAIN_RANGES = {"steps": (1, None), "batch_size": (1, None), "lr": (1e-9, 1), "weight_decay": (0, 1),
                "warmup": (0, None), "grad_clip": (0, None), "ema_decay": (0, 1 - 1e-12), "eps": (1e-9, 0.1),
                "levels": (2, None), "seed": (0, None), "checkpoint_every": (1, None), "log_every": (1, None)}
OPTION_RANGES = {"rtol": (1e-12, 0.5), "atol": (1e-12, 0.5), "n_probes": (1, None), "n_draws": (2, None),
                 "steps": (1, None), "max_batch": (1, None), "eps": (1e-9, 0.1)}


def _in_range(name: str, value, rule, problems: list) -> None:
    if rule == "text":
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} must be text or null, got {value!r}")
        return
    if rule == "band":
        if value is not None and not (isinstance(value, list) and len(value) == 2 and value[0] < value[1]):
            problems.append(f"{name} must be [low, high] with low < high (or null), got {value!r}")
        return
    lo, hi = rule
    for v in value if isinstance(value, list) else [value]:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or (hi is not None and v > hi):
            problems.append(f"{name} = {value!r} is out of range: each value must lie in [{lo}, {'inf' if hi is None else hi}]")
            return


def _check_values(dataset: str, params: dict, defaults: dict, problems: list) -> None:
    """Ranges of every value, and the sections against sgc's own checks (loader, network, SDE, estimators)."""
    from . import pipeline
    from .data.medmnist import RESOLUTIONS
    for name, value in params.items():
        if name in RANGES:
            _in_range(name, value, RANGES[name], problems)
        elif name in CHOICES and value not in CHOICES[name]:
            problems.append(f"{name} must be one of {CHOICES[name]}, got {value!r}")
    p = {**defaults, **params}
    data = p.get("data_options") or {}
    for check, args in ((pipeline.check_data_options, (dataset, data)), (pipeline.check_model_options, (p.get("model"),)),
                        (pipeline.check_train_options, (p.get("train"),))):
        try:
            check(*args)
        except (ConfigError, ValueError) as err:
            problems.append(str(err))
    if data.get("channels", 1) not in (1, 3, None):
        problems.append(f"data_options.channels must be 1 or 3, got {data['channels']!r}")
    if isinstance(data.get("preprocess"), dict):
        try:
            from .data.preprocess import PreprocessSettings
            PreprocessSettings.from_dict(data["preprocess"])
        except (ValueError, TypeError) as err:
            problems.append(f"data_options.preprocess: {err}")
    if "resolution" in data and data["resolution"] not in RESOLUTIONS:
        problems.append(f"data_options.resolution must be one of {RESOLUTIONS}, got {data['resolution']!r}")
    for name, value in (p.get("train") or {}).items():
        if name in TRAIN_RANGES:
            _in_range(f"train.{name}", value, TRAIN_RANGES[name], problems)
    try:
        from .sde import make_sde
        from .train import TrainConfig
        TrainConfig.from_dict(p.get("train"))
        sde = dict(p.get("sde") or {})
        make_sde(**sde)
        if sde.get("beta_min", 0) >= sde.get("beta_max", 20.0):
            problems.append(f"sde.beta_min must be below sde.beta_max, got {sde}")
        from .budget import _build, image_shape, network_config
        _build(network_config(params, defaults), image_shape(dataset, data), 2)  # image size, channels vs network
    except (ConfigError, ValueError, TypeError) as err:
        problems.append(str(err))
    for est, opts in (("estimator", "estimator_options"), ("score_estimator", "score_options")):
        try:
            pipeline.check_estimator_options(p.get(est, "ode"), p.get(opts))
        except (ConfigError, ValueError) as err:
            problems.append(f"{opts}: {err}")
        for name, value in (p.get(opts) or {}).items():
            if name in OPTION_RANGES:
                _in_range(f"{opts}.{name}", value, OPTION_RANGES[name], problems)


@lru_cache(maxsize=4)
def _notebook_parameters(folder: str | None) -> tuple[dict, dict]:
    """(sgc.batch.parameter_schema, {name: the first notebook's default}) of the numbered notebooks."""
    from .batch import list_notebooks, notebook_defaults, parameter_schema
    notebooks = list_notebooks(folder)
    defaults = {}
    for nb in notebooks:
        for key, value in notebook_defaults(nb).items():
            defaults.setdefault(key, value)
    return parameter_schema(notebooks), defaults


def check_profile(dataset: str,                  # a name of sgc.data.DATASETS
                  profile: str = CPU,            # "cpu" (<dataset>.yaml) or another (<dataset>.<profile>.yaml)
                  params_dir=None,               # folder of the parameter files (default: sgc's own)
                  overrides: dict | None = None,  # -p items as a nested dict, merged as sgc batch merges them
                  notebooks_dir=None,            # folder of the numbered notebooks (default: sgc's own)
                  ) -> dict:
    """Validate a profile; ConfigError listing every problem. Returns {"params", "about", "estimate"}
    (the estimate None for the CPU profile, which states none).

    Checked: every key is a parameter of a numbered notebook (``train`` a TrainConfig field, the
    loader, network, SDE and estimator sections against sgc's own checks), every value in the range
    the notebooks accept; for other profiles the ``profile:`` section (all of :data:`ABOUT`), a memory
    estimate under 80 GiB, and (for the file as written, without ``overrides``) stated ``minutes`` /
    ``gpu_memory_gib`` at least the estimates and at most 1.5 x + 1 of them (neither optimistic nor stale).
    """
    from .budget import GPU_GIB, batch_estimate
    from .config import validate
    path = params_file(dataset, profile, params_dir)
    params, about = load_profile(dataset, profile, params_dir)
    if overrides:   # merged as sgc batch merges -p items (a model naming another arch replaces the section)
        from .batch import _merge_value
        params = {**params, **{k: _merge_value(k, params[k], v) if k in params else v for k, v in overrides.items()}}
    schema, defaults = _notebook_parameters(None if notebooks_dir is None else str(notebooks_dir))
    problems = []
    try:
        validate(params, schema, what="notebook parameter")   # what sgc batch checks: keys and types
    except ConfigError as err:
        problems.append(f"{err} (the notebooks' parameters cells list them)")
    _check_values(dataset, params, defaults, problems)
    result = {"params": params, "about": about, "estimate": None}
    if profile != CPU:
        for key, kind in ABOUT.items():
            if not isinstance(about.get(key), kind) or isinstance(about.get(key), bool):
                problems.append(f"profile.{key} is missing or not {getattr(kind, '__name__', 'a number')}")
        unknown = sorted(set(about) - set(ABOUT))
        if unknown:
            problems.append(f"profile section: unknown key(s) {unknown}; known: {sorted(ABOUT)}")
        if not problems:
            est = batch_estimate(dataset, params, about, defaults)
            result["estimate"] = est
            if est["gib"] >= GPU_GIB:
                problems.append(f"the estimated peak GPU memory, {est['gib']:.1f} GiB ({_worst(est)}), does not fit "
                                f"{GPU_GIB} GB: lower train.batch_size or batch_size, or the network's width")
            for key, value, unit in (("gpu_memory_gib", est["gib"], "GiB"), ("minutes", est["minutes"], "min")):
                stated = about[key]
                if overrides:    # the statement is about the file's settings, not about overridden ones
                    continue
                if not value <= stated <= 1.5 * value + 1:
                    problems.append(f"profile.{key} = {stated} but the estimate is {value:.1f} {unit}: state a value "
                                    f"in [{value:.1f}, {1.5 * value + 1:.1f}] (sgc profile --dataset {dataset} "
                                    f"--profile {profile} shows the estimate)")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return result


def _worst(est: dict) -> str:
    return max(est["memory"], key=est["memory"].get)


# ------------------------------------------------------------------------------ use
def _yaml(value) -> str:
    import json
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value


def train_arguments(params: dict) -> list[str]:
    """The profile's loader, network, SDE and training settings as ``sgc train`` arguments
    (``--set data_options.size=384 model.channels=32 ... train.steps=60000``): training with them into
    the profile's run folder gives the model that ``sgc batch --profile`` then reuses."""
    items = []
    for section in ("data_options", "model", "sde", "train"):
        for key, value in (params.get(section) or {}).items():
            items.append(f"{section}.{key}={_yaml(value)}")
    return ["--set", *items] if items else []


def classify_arguments(params: dict) -> list[str]:
    """Notebook 03's estimator, options and batch of the profile as ``sgc classify`` arguments."""
    items = [f"estimator_options.{k}={_yaml(v)}" for k, v in (params.get("estimator_options") or {}).items()]
    out = ["--estimator", str(params.get("estimator", "ode")), "--batch-size", str(params.get("batch_size", 64))]
    return out + (["--set", *items] if items else [])


def announce(dataset: str, profile: str, about: dict, log=print) -> None:
    """One line on what the profile is sized for, and a warning when it wants a GPU and none is here."""
    if profile == CPU or not about:
        return
    import torch
    log(f"[batch] {dataset} --profile {profile}: sized for {about.get('hardware', '?')}, about "
        f"{about.get('minutes', '?')} min and {about.get('gpu_memory_gib', '?')} GiB of GPU memory (estimates)")
    if any(w in str(about.get("hardware", "")) for w in ("GPU", "NVIDIA")) and not torch.cuda.is_available():
        log(f"[batch] warning: no CUDA device here; the {profile} profile on a CPU takes far longer than that")
