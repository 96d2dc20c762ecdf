"""The paper's claim as experiments: training-set fraction and class imbalance, several seeds.

``fraction_subset`` and ``imbalance_subset`` draw training subsets that keep groups
(patients) whole and every class present. ``run_experiment`` trains, for each seed x setting,
the score model once (scored with the exact ODE and/or the Monte-Carlo bound of
``sgc.elbo``) and the discriminative baselines of ``sgc.baselines`` on exactly the same
subset, validation and test splits, and appends one row per seed x setting x classifier to
``<out_dir>/<tag>.csv`` (metrics with 95 % bootstrap intervals over test images, the JSON
config that produced the row, the date and the git revision) and keeps each row's per-image
validation and test probabilities in ``<out_dir>/<tag>_predictions/`` (``sgc.comparisons``).
It then rewrites ``<out_dir>/<tag>.md`` (mean and 95 % t-interval over seeds, and paired
tests of each score model against the other classifiers on the same test images:
``<tag>_paired.csv``; hand-written notes below ``NOTES_MARK`` survive) and, when several
fractions were run, the low-data figure ``<figures_dir>/low_data_<tag>.png|pdf``.

``score_weighted`` is the score model with the weighting of its per-noise-level evidence
chosen on validation (``sgc.weighting``); when it runs beside ``score_elbo`` both use the same
draws, so their difference is the weighting's alone. ``score_run_dir`` (a template with
``{seed}``) reuses finished run folders, e.g. trained by ``sgc train``, after checking that
they were trained as configured.

Model selection uses validation only: early stopping and the logistic regression's C (in
``train_baseline``), the temperature of the score classifier's posterior (``fit_temperature``
with the training subset's class frequencies as prior) and a Youden threshold for the
"_at_val_threshold" columns. Each classifier predicts the test split once.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import math
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .comparisons import paired_markdown, paired_tests, write_predictions
from .data import ImageSet, load_dataset
from .data.roots import describe_root

__all__ = ["fraction_subset", "imbalance_subset", "run_experiment", "aggregate", "write_markdown", "summarize_tables",
           "plot_low_data", "CLASSIFIERS", "SCORE_MODEL", "SCORE_TRAIN", "SCORE_EVAL"]

CLASSIFIERS = ("score_ode", "score_elbo", "score_weighted", "resnet18", "densenet121", "logreg")
GENERATIVE = ("score_ode", "score_elbo", "score_weighted")
# A small conv UNet that trains on a CPU in minutes at 28x28; use channels=32+ and more steps on a GPU.
SCORE_MODEL = {"arch": "unet", "channels": 16, "channel_mults": [1, 2], "emb_dim": 64}
SCORE_TRAIN = {"steps": 1000, "batch_size": 64, "lr": 1e-3, "warmup": 100, "weighting": "likelihood",
               "hflip": True, "ema_decay": 0.99, "checkpoint_every": 1000, "log_every": 50}
SCORE_EVAL = {"ode": {"rtol": 1e-3, "atol": 1e-3, "method": "dopri5", "n_probes": 1},
              "elbo": {"n_draws": 256},
              "weighted": {"n_bins": 16, "folds": 5, "repeats": 10}}  # sgc.weighting.select_weighting options
METRICS = ("auc", "accuracy", "balanced_accuracy")
NOTES_MARK = "<!-- notes: what follows is kept when the table above is regenerated -->"


# --------------------------------------------------------------------------- subsets
def _group_table(train: ImageSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group names, group label, image -> group index); a group's label is its largest label
    (a patient with any malignant image counts as malignant)."""
    names, inverse = np.unique(np.asarray(train.groups, dtype=object).astype(str), return_inverse=True)
    label = np.zeros(len(names), dtype=np.int64)
    np.maximum.at(label, inverse, train.labels)
    return names, label, inverse


def _take_groups(train: ImageSet, keep: np.ndarray, inverse: np.ndarray) -> ImageSet:
    return train.subset(np.flatnonzero(np.isin(inverse, np.flatnonzero(keep))))


def fraction_subset(train: ImageSet, fraction: float, *,
                    seed: int = 0,             # seeds which groups are kept
                    by_group: bool = True,     # keep groups (patients) whole; False: sample images
                    ) -> ImageSet:
    """A stratified random ``fraction`` in (0, 1] of the training split.

    Groups are stratified by their label and ceil(fraction x n) of each stratum are kept
    (at least one), so every class stays present and no group is split; the images keep
    their original order. fraction = 1 returns the whole split.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction} (percent? divide by 100)")
    if fraction == 1:
        return train.subset(np.arange(len(train)))
    rng = np.random.default_rng([int(seed), 1])
    if by_group:
        _, label, inverse = _group_table(train)
    else:
        label, inverse = train.labels, np.arange(len(train))
    keep = np.zeros(len(label), dtype=bool)
    for c in np.unique(label):
        idx = np.flatnonzero(label == c)
        keep[rng.choice(idx, size=max(1, math.ceil(fraction * len(idx))), replace=False)] = True
    return _take_groups(train, keep, inverse)


def imbalance_subset(train: ImageSet, minority_class: int, ratio: float, seed: int = 0) -> ImageSet:
    """Subsample ``minority_class`` to ``ratio`` x (size of the largest other class).

    ratio: target minority : majority image ratio, e.g. 0.1 for one malignant per ten benign;
    it must not exceed the split's own ratio. Whole groups of the minority class are dropped
    (at least one is kept); the other classes are untouched.
    """
    counts = np.bincount(train.labels, minlength=len(train.class_names))
    if not 0 <= minority_class < len(counts):
        raise ValueError(f"minority_class must be in [0, {len(counts)}); got {minority_class}")
    majority = np.delete(counts, minority_class).max()
    have = counts[minority_class] / majority
    if not 0 < ratio <= have + 1e-12:
        raise ValueError(f"ratio must be in (0, {have:.3f}] (the split's own minority:majority "
                         f"ratio); got {ratio}")
    names, label, inverse = _group_table(train)
    sizes = np.bincount(inverse, minlength=len(names))
    minority = np.flatnonzero(label == minority_class)
    rng = np.random.default_rng([int(seed), 2])
    order = rng.permutation(minority)
    target = ratio * majority
    n_keep = max(1, int(np.searchsorted(np.cumsum(sizes[order]), target + 1e-9, side="right")))
    keep = label != minority_class
    keep[order[:n_keep]] = True
    return _take_groups(train, keep, inverse)


# --------------------------------------------------------------------------- provenance
def _git_revision() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "sgc"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_SETTING_KEYS = ("fraction_percent", "n_train", "train_counts")


def _config_id(config: dict, ignore=("seed",)) -> str:
    """Short hash of a row's config without the seed: rows with the same id differ only by seed.
    ``ignore=("seed", *_SETTING_KEYS)`` gives the id of a low-data curve (same method, any fraction)."""
    def strip(d):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k not in ignore}
    c = strip(config)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- one setting
def _metrics_row(y_test, proba_test, y_val, proba_val, class_names, n_boot, seed) -> dict:
    from .metrics import choose_threshold_on_val, metrics_with_ci, summary_metrics
    ci = metrics_with_ci(y_test, proba_test, n_boot=n_boot, seed=seed)
    row = {}
    for m in METRICS:
        row.update({m: ci[m]["value"], f"{m}_lo": ci[m]["lo"], f"{m}_hi": ci[m]["hi"]})
    thr = None
    if proba_test.shape[1] == 2:
        thr = choose_threshold_on_val((np.asarray(y_val) == 1).astype(int), proba_val[:, 1])
    s = summary_metrics(y_test, proba_test, class_names=class_names, threshold=thr)
    row.update({"ece": s["ece"], "brier": s["brier"]})
    if thr is not None:
        row.update({"threshold_val": thr, "accuracy_at_val_threshold": s["accuracy_at_threshold"],
                    "balanced_accuracy_at_val_threshold": s["balanced_accuracy_at_threshold"],
                    "sensitivity_at_val_threshold": s["sensitivity_at_threshold"],
                    "specificity_at_val_threshold": s["specificity_at_threshold"]})
    return row


def _score_classifiers(sub, val, test, wanted, *, model_cfg, train_cfg, sde_cfg, eval_cfg, seed,
                       run_dir, device, progress, reuse=False) -> list[tuple[str, dict, np.ndarray, np.ndarray, dict]]:
    """Train (or reuse) one score model on ``sub``; (classifier, diagnostics, proba_val, proba_test, config) each."""
    from .classify import score_images
    from .evidence import weighted_scores
    from .metrics import apply_prior, empirical_prior, fit_temperature
    from .sde import make_sde
    from .train import TrainConfig
    from .score_runs import cached_evidence, trained_score_model
    from .weighting import weighted_posteriors
    c, h, _ = sub.shape
    k = len(sub.class_names)
    mcfg = {**model_cfg, "num_classes": k, "in_channels": c, "image_size": h}
    tcfg = TrainConfig.from_dict({"levels": sub.levels, **train_cfg, "seed": seed})
    sde = make_sde(**sde_cfg)
    ema, train_s = trained_score_model(sub, mcfg, tcfg, sde, run_dir, reuse=reuse, device=device, progress=progress)
    ema.eval()
    prior = empirical_prior(sub.labels, k)
    shared = "score_weighted" in wanted   # score_elbo then reads the bound off the same draws
    out = []
    for name in wanted:
        est = "elbo" if name == "score_weighted" else name.split("_", 1)[1]
        opts = dict(eval_cfg.get(est, {}))
        bs = int(opts.pop("batch_size", 64))
        t0 = time.perf_counter()
        extra_cfg, diag = {}, {}
        if est == "elbo" and shared:
            kw = dict(seed=seed, levels=sub.levels, dequantize=tcfg.dequantize, progress=progress)
            eopts = {"t_sampling": "stratified", "noise_sampling": "iid", **opts, "batch_size": bs}  # elbo's defaults
            t_draw = time.perf_counter()
            ev_val = cached_evidence(ema, sde, val, run_dir, eopts, **kw)
            ev_test = cached_evidence(ema, sde, test, run_dir, eopts, **kw)
            drawn_s = time.perf_counter() - t_draw
            nfe = float(ev_test.values.shape[2])
        if name == "score_weighted":
            wopts = dict(eval_cfg.get("weighted", {}))
            p_val, p_test, rec = weighted_posteriors(ev_val, ev_test, sde, prior, **wopts)
            temp = rec["temperature"]
            extra_cfg = {"weighting": wopts, "decision": "weighting of the per-noise-level evidence chosen by "
                         "cross-validated AUC on val; posterior: logistic logits, else training prior + "
                         "temperature fitted on val"}
            diag = {"weighting_chosen": rec["label"], "weighting": json.dumps(
                {key: rec[key] for key in ("label", "params", "n_bins", "temperature")}
                | {"cv": [{key: r[key] for key in ("label", "cv_auc", "cv_auc_sd")} for r in rec["cv"]]},
                default=str)}
        else:
            if est == "elbo" and shared:
                ll_val, ll_test = weighted_scores(ev_val, sde), weighted_scores(ev_test, sde)
            else:
                kw = dict(estimator=est, batch_size=bs, levels=sub.levels, dequantize=tcfg.dequantize, seed=seed,
                          progress=progress, **opts)
                ll_val = score_images(ema, sde, val.images, **kw).log_lik
                s_test = score_images(ema, sde, test.images, **kw)
                ll_test, nfe = s_test.log_lik, float(np.mean(s_test.nfe))
            temp = fit_temperature(ll_val, val.labels, prior=prior)
            p_val, p_test = apply_prior(ll_val, prior, temp), apply_prior(ll_test, prior, temp)
            extra_cfg = {"decision": "posterior with training-subset prior, temperature fitted on val"}
        config = {"model": mcfg, "train": {**train_cfg, "seed": seed}, "sde": sde_cfg,
                  "estimator": est, "estimator_options": {**opts, "batch_size": bs}, **extra_cfg}
        seconds = time.perf_counter() - t0
        if est == "elbo" and shared:   # the draws' cost, whether computed now or read from the run folder
            seconds += sum(float(e.options.get("seconds", 0.0)) for e in (ev_val, ev_test)) - drawn_s
        diag = {"seconds_train": train_s, "seconds_eval": seconds, "temperature": temp,
                "train_size": int(tcfg.steps), "mean_nfe": nfe, **diag}
        out.append((name, diag, p_val, p_test, config))
    return out


def _baseline(name, sub, val, test, *, options, seed, device, progress):
    from .baselines import predict_proba, train_baseline
    start = time.perf_counter()
    model, history = train_baseline(name, sub, val, seed=seed, device=device, progress=progress, **options)
    train_s = time.perf_counter() - start
    t0 = time.perf_counter()
    p_val = predict_proba(model, val.images)
    p_test = predict_proba(model, test.images)
    diag = {"seconds_train": train_s, "seconds_eval": time.perf_counter() - t0,
            "train_size": len(history)}  # epochs run (C values tried for logreg)
    return diag, p_val, p_test, {"baseline": name, "options": options, "seed": seed}


# --------------------------------------------------------------------------- the experiment
@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive lock on ``<path>.lock``: experiments of other seeds (processes, SLURM array
    tasks on a shared file system) append to the same table one at a time."""
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _append_csv(path: Path, rows: pd.DataFrame) -> pd.DataFrame:
    if path.exists():
        rows = pd.concat([pd.read_csv(path, dtype={"config_id": str}), rows], ignore_index=True, sort=False)
    tmp = path.with_name(path.name + ".tmp")
    rows.to_csv(tmp, index=False)
    tmp.replace(path)
    return rows


def run_experiment(dataset: str = "digits", *,
                   data_root=None,                        # folder with the dataset's files
                   data_options: dict | None = None,      # loader keywords, e.g. {"size": 32}
                   splits: dict | None = None,            # ready {"train","val","test"} ImageSets (skips loading)
                   fractions: Sequence[float] = (1, 5, 10, 25, 50, 100),  # training-set fractions, percent
                   imbalance_ratios: Sequence[float] | None = None,  # minority:majority ratios (None: as is)
                   minority_class: int = 1,               # class subsampled by imbalance_ratios
                   seeds: Sequence[int] = (0, 1, 2),      # one training run per seed and setting
                   classifiers: Sequence[str] = CLASSIFIERS,
                   score_model: dict | None = None,       # score network config (default SCORE_MODEL)
                   score_train: dict | None = None,       # TrainConfig fields (default SCORE_TRAIN)
                   score_sde: dict | None = None,         # SDE config (default VP, beta 0.1..20)
                   score_eval: dict | None = None,        # {"ode": {...}, "elbo": {...}} estimator options
                   baseline_options: dict | None = None,  # {"resnet18": {"epochs": 20, ...}, ...}
                   n_boot: int = 1000,                    # bootstrap resamples of the test split
                   out_dir="reports/tables",              # <tag>.csv and <tag>.md go here
                   figures_dir=None,                      # low_data_<tag>.png|pdf (default out_dir/../figures)
                   work_dir=None,                         # score-model run folders (default: a temp folder)
                   score_run_dir: str | None = None,      # reuse/train score runs here, "{seed}" filled in
                   tag: str = "experiment",
                   device=None, threads: int | None = None, progress: bool = False) -> pd.DataFrame:
    """Run every seed x fraction (x imbalance ratio) x classifier; return this call's rows.

    Each row holds the test metrics (auc, accuracy, balanced_accuracy with _lo/_hi 95 %
    bootstrap bounds; ECE, Brier; accuracy etc. at a threshold chosen on val), sizes,
    seconds, ``config`` (JSON of everything that made the number), ``config_id`` (its hash
    without the seed), date and git revision. Rows are appended to ``<out_dir>/<tag>.csv``;
    the Markdown summary and the low-data figure are rebuilt from the whole CSV.
    """
    unknown = sorted(set(classifiers) - set(CLASSIFIERS))
    if unknown or not classifiers:
        raise ValueError(f"unknown classifier(s) {unknown}; choose from {CLASSIFIERS}")
    bad = [f for f in fractions if not 0 < f <= 100]
    if bad:
        raise ValueError(f"fractions are percentages in (0, 100]; got {bad}")
    if threads:
        torch.set_num_threads(int(threads))
    if splits is None:
        splits = load_dataset(dataset, root=data_root, **(data_options or {}))
    if "val" not in splits:
        raise ValueError(f"dataset {dataset!r} has no validation split (digits: pass val_size=...)")
    train, val, test = splits["train"], splits["val"], splits["test"]
    model_cfg = dict(score_model or SCORE_MODEL)
    train_cfg = dict(score_train or SCORE_TRAIN)
    sde_cfg = dict(score_sde or {"name": "vp", "beta_min": 0.1, "beta_max": 20.0})
    eval_cfg = {**SCORE_EVAL, **(score_eval or {})}
    base_opts = baseline_options or {}
    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="sgc-experiment-"))
    common = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "git_revision": _git_revision(), "tag": tag, "dataset": dataset, "device": dev,
              "torch_threads": torch.get_num_threads(), "n_val": len(val), "n_test": len(test)}
    rows = []
    for seed in seeds:
        for ratio in (imbalance_ratios or [None]):
            base = train if ratio is None else imbalance_subset(train, minority_class, ratio, seed=seed)
            for frac in fractions:
                sub = fraction_subset(base, frac / 100, seed=seed)
                setting = {"fraction_percent": float(frac), "imbalance_ratio": ratio,
                           "n_train": len(sub),
                           "train_counts": json.dumps(np.bincount(sub.labels, minlength=len(sub.class_names)).tolist())}
                data_cfg = {"dataset": dataset, "data_root": describe_root(data_root),  # no machine path
                            "data_options": data_options or {}, **setting, "minority_class": minority_class,
                            "subset": "fraction_subset(imbalance_subset(train)) by group, stratified",
                            "n_boot": n_boot, "seed": seed}
                results = []
                wanted = [c for c in classifiers if c in GENERATIVE]
                if wanted:
                    run_dir = (work / f"f{frac:g}_r{ratio}_s{seed}" if score_run_dir is None else
                               Path(str(score_run_dir).format(seed=seed, fraction=f"{frac:g}", ratio=ratio)))
                    results += _score_classifiers(sub, val, test, wanted, model_cfg=model_cfg, train_cfg=train_cfg,
                                                  sde_cfg=sde_cfg, eval_cfg=eval_cfg, seed=seed, run_dir=run_dir,
                                                  device=device, progress=progress, reuse=score_run_dir is not None)
                for name in classifiers:
                    if name not in GENERATIVE:
                        results.append((name, *_baseline(name, sub, val, test, options=base_opts.get(name, {}),
                                                         seed=seed, device=device, progress=progress)))
                for name, diag, p_val, p_test, cfg in results:
                    config = {**data_cfg, "classifier": name, **cfg}
                    cid = _config_id(config)
                    preds = f"{tag}_predictions/{name}_{cid}_s{seed}.csv"   # relative to out_dir
                    write_predictions(Path(out_dir) / preds, {"val": (val.ids, val.labels, p_val),
                                                              "test": (test.ids, test.labels, p_test)})
                    row = {**common, "seed": seed, **setting, "classifier": name,
                           **_metrics_row(test.labels, p_test, val.labels, p_val, list(test.class_names), n_boot, seed),
                           **diag, "config_id": cid, "predictions": preds,
                           "config": json.dumps(config, sort_keys=True, default=str)}
                    rows.append(row)
                    if progress:
                        print(f"{tag} seed {seed} fraction {frac:g}% ratio {ratio} {name}: AUC {row['auc']:.3f} "
                              f"accuracy {row['accuracy']:.3f} ({diag['seconds_train']:.0f} s train)", flush=True)
    frame = pd.DataFrame(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out / f"{tag}.csv"):
        everything = _append_csv(out / f"{tag}.csv", frame)
        summary = aggregate(everything)
        md = out / f"{tag}.md"
        notes = md.read_text().partition(NOTES_MARK) if md.exists() else ("", "", "")
        write_markdown(summary, md, title=f"{tag}: {dataset}, mean and 95 % t-interval over seeds")
        paired = paired_tests(everything, out)
        if not paired.empty:
            paired.to_csv(out / f"{tag}_paired.csv", index=False)
        with open(md, "a") as f:
            f.write(paired_markdown(paired) + ("\n" + notes[1] + notes[2] if notes[1] else ""))
        if summary["fraction_percent"].nunique() > 1:
            plot_low_data(summary, Path(figures_dir) if figures_dir is not None else out.parent / "figures",
                          name=f"low_data_{tag}")
    return frame


# --------------------------------------------------------------------------- summaries
def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset x setting x classifier x config_id: mean, lo, hi over seeds of each metric."""
    from .metrics import mean_ci_over_seeds
    rows = rows.copy()
    rows["imbalance_ratio"] = rows["imbalance_ratio"].astype(object).where(rows["imbalance_ratio"].notna(), "none")
    keys = ["dataset", "fraction_percent", "imbalance_ratio", "classifier", "config_id"]
    out = []
    for key, g in rows.groupby(keys, sort=True):
        r = dict(zip(keys, key))
        r["curve_id"] = _config_id(json.loads(g["config"].iloc[0]), ignore=("seed", *_SETTING_KEYS))
        r.update({"seeds": int(g["seed"].nunique()), "n_train": float(g["n_train"].mean()),
                  "train_size": float(g["train_size"].mean()), "seconds_train": float(g["seconds_train"].mean()),
                  "seconds_eval": float(g["seconds_eval"].mean()), "device": ",".join(sorted(set(g["device"])))})
        for m in METRICS:
            r[m], r[f"{m}_lo"], r[f"{m}_hi"] = mean_ci_over_seeds(g[m].to_numpy(), bounds=(0.0, 1.0))
        out.append(r)
    return pd.DataFrame(out)


def _setup(row) -> str:
    if row["classifier"] in GENERATIVE:
        return f"{row['train_size']:.0f} steps"
    if row["classifier"] == "logreg":
        return "C on val"
    return f"{row['train_size']:.0f} epochs (mean)"


def write_markdown(summary: pd.DataFrame, path, title: str = "") -> Path:
    """A Markdown table of ``aggregate``'s output: metric means with [lo, hi] over seeds."""
    lines = [f"# {title}", "",
             "Test metrics, mean over seeds with the 95 % Student-t interval over seeds in brackets "
             "(a row of one seed has no such interval: it says \"1 seed\"; per-run 95 % bootstrap intervals "
             "over test images are in the CSV). Rows with different `config` (column `config` of the CSV) are "
             "never pooled; `curve` is the id the low-data figure's legend shows (the config without seed "
             "and fraction).", "",
             "| fraction % | imbalance | classifier | config | curve | seeds | n train | AUC | accuracy | "
             "balanced accuracy | training | s train | s test | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        cells = [f"{r['fraction_percent']:g}", str(r["imbalance_ratio"]), r["classifier"], r["config_id"],
                 str(r.get("curve_id", "")), str(r["seeds"]), f"{r['n_train']:.0f}"]
        cells += [f"{r[m]:.3f} (1 seed)" if int(r["seeds"]) == 1 else
                  f"{r[m]:.3f} [{r[f'{m}_lo']:.3f}, {r[f'{m}_hi']:.3f}]" for m in METRICS]
        cells += [_setup(r), f"{r['seconds_train']:.0f}", f"{r['seconds_eval']:.1f}", r["device"]]
        lines.append("| " + " | ".join(cells) + " |")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_low_data(summary: pd.DataFrame, figures_dir, name: str = "low_data") -> list[Path]:
    """AUC vs training fraction (log x), one line per classifier and config (``curve_id``: the config
    without seed and fraction), error bars = t-interval over seeds (none with one seed)."""
    import matplotlib
    import matplotlib.pyplot as plt
    from .plots import save_figure, set_theme
    set_theme()
    data = summary[summary["imbalance_ratio"] == "none"]
    fig, ax = plt.subplots(figsize=(4.6, 3.3))
    for i, ((clf, cid), g) in enumerate(data.groupby(["classifier", "curve_id"], sort=True)):
        g = g.sort_values("fraction_percent")
        gen = clf in GENERATIVE
        ax.errorbar(g["fraction_percent"], g["auc"], yerr=[g["auc"] - g["auc_lo"], g["auc_hi"] - g["auc"]],
                    marker="o" if gen else "s", linestyle="-" if gen else "--", capsize=3, color=f"C{i}",
                    label=f"{clf} ({'generative' if gen else 'discriminative'}, {cid}"
                          + (f", {g['train_size'].max():.0f} steps)" if gen else ")"))
    ax.set(xscale="log", xticks=sorted(data["fraction_percent"].unique()), xlabel="training fraction (%)", ylabel="test AUC", title="AUC vs training-set size")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths = save_figure(fig, Path(figures_dir) / name)
    plt.close(fig)
    return paths


def summarize_tables(tables: Sequence, out, *, figures_dir=None, title: str = "",
                     exclude_config_ids: Sequence[str] = ()) -> pd.DataFrame:
    """Pool the rows of several experiment CSVs (e.g. a low-data run and a 100 % run) into one
    summary: ``<out>.csv`` (one row per setting x classifier x config, mean and 95 % t-interval
    over seeds), ``<out>.md`` and, with ``figures_dir``, the low-data figure ``<figures_dir>/<name of out>``.

    Rows are pooled only by ``config_id`` (never across configs); ``exclude_config_ids`` (prefixes
    as shown in the Markdown) leaves superseded configs out of the summary, not out of the CSVs.
    """
    rows = pd.concat([pd.read_csv(t, dtype={"config_id": str}) for t in tables], ignore_index=True, sort=False)
    drop = rows["config_id"].map(lambda c: any(c.startswith(p) for p in exclude_config_ids))
    summary = aggregate(rows[~drop])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out.with_suffix(".csv"), index=False)
    write_markdown(summary, out.with_suffix(".md"), title=title or out.stem)
    if figures_dir is not None:
        plot_low_data(summary, figures_dir, name=out.stem)
    return summary
