"""The method end to end on a named dataset: train a run folder, then classify with it.

A run folder (``sgc.runs``) holds the model (``config.json`` + ``checkpoint.pt``), its
``status.json`` and ``history.json`` and the results of evaluating it:
``scores_<split>_<estimator>.csv`` (log p(x|y) per image x class) and
``metrics_<split>_<estimator>.json``, with ``metrics.json`` the latest of them. Results of
less than a full split, a split missing a class, or a model that did not finish training are
``partial_scores_*`` / ``partial_metrics_*`` beside them (``sgc.runs.result_names``) and never
replace the full ones. Every metrics file records what produced it (``produced_by``: model
checksum and steps, estimator and options, split, limit, content hash of the images scored,
sgc version). The CLI, the demo and the notebooks all call these functions; each holds the
run folder's writer lock while it works.

Under torchrun both are distributed (``sgc.distributed``): training by DDP, evaluation by
chunks of ``batch_size`` images spread over the ranks, each chunk saved to
``parts/<settings key>/chunk_<first index>.npz`` as soon as it is done (a rerun with the same
settings skips finished chunks, whatever the number of processes; other settings have their
own folder). Only rank 0 writes the run files.
"""
from __future__ import annotations

import difflib
import inspect
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from .progress import SolveProgress, tqdm

from . import __version__, distributed, runs
from .classify import ESTIMATORS, ClassScores, log_prior, posterior, save_scores_csv, score_images
from .data import DATASETS, load_dataset
from .data.roots import RELATIVE_TO_RUN, record_root, recorded_root
from .errors import ConfigError, DataError, RunExists, RunFolderError
from .data.recipes import recipe_for
from .fileio import atomic_path, atomic_write_json, atomic_write_text, check_writable
from .nets import build_model, count_parameters
from .sde import make_sde
from .train import TrainConfig, train_score_model

__all__ = ["train_on_dataset", "evaluate_run", "check_data_options", "check_model_options",
           "check_train_options", "check_estimator_options",
           "DEMO_MODEL", "DEMO_TRAIN", "DEMO_ODE", "DEMO_ELBO"]

# The digits demo: a residual MLP (the conv UNet is too slow for a 2-core CPU at this budget)
# trained with the paper's sigma^2 weighting, about 5 minutes on 2 CPU cores. Measured here:
# the likelihood weighting (g^2, aimed at bits/dim) gave a worse ODE classifier (0.91-0.94 vs 0.98).
DEMO_MODEL = {"arch": "mlp", "hidden": 256, "blocks": 3, "expansion": 2, "emb_dim": 128}
DEMO_TRAIN = {"steps": 8000, "batch_size": 256, "lr": 1e-3, "warmup": 200, "lr_schedule": "constant",
              "weighting": "sigma2", "ema_decay": 0.999, "checkpoint_every": 1000}
DEMO_ODE = {"rtol": 1e-5, "atol": 1e-5, "method": "dopri5"}
DEMO_ELBO = {"n_draws": 64}


def _unknown(kind: str, given, known: set, where: str) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, sorted(known), 1))
                             else "") for k in unknown]
        raise ConfigError(f"unknown {kind} option(s) {', '.join(hints)} for {where}. Known options: {sorted(known)}")


def _keywords(fn, drop=()) -> set:
    return {n for n, p in inspect.signature(fn).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in drop}


def check_data_options(dataset: str, options: dict | None) -> None:
    """ConfigError naming an unknown dataset or loader option (before any work or deletion)."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}. Choose one of {sorted(DATASETS)}")
    if dataset == "digits":
        from .data.digits import load_digits_splits as loader
    else:
        from .data import loaders
        loader = getattr(loaders, DATASETS[dataset].__name__)
    _unknown("data", options or {}, _keywords(loader, ("root",)), f"dataset {dataset!r}")


def check_model_options(model: dict | None) -> None:
    """ConfigError naming an unknown network architecture or option (before any work)."""
    from .nets import ScoreMLP, ScoreUNet
    classes = {"unet": ScoreUNet, "mlp": ScoreMLP}
    arch = (model or {}).get("arch", "unet")
    if arch not in classes:
        raise ConfigError(f"unknown architecture {arch!r}. Choose one of {sorted(classes)} (--arch)")
    given = set(model or {}) - {"arch", "num_classes", "in_channels", "image_size"}
    _unknown("model", given, _keywords(classes[arch].__init__, ("self",)), f"--arch {arch}")


def check_train_options(train: dict | None) -> None:
    """ConfigError naming an unknown training option (a TrainConfig field), before any work."""
    from dataclasses import fields
    _unknown("training", train or {}, {f.name for f in fields(TrainConfig)}, "train (--set train.KEY=VALUE)")


def check_estimator_options(estimator: str, options: dict | None) -> None:
    """ConfigError naming an unknown estimator or option key (before any work or deletion)."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {estimator!r}. Choose one of {ESTIMATORS}")
    internal = {"model", "sde", "x", "y", "classes", "levels", "dequantize", "dequantize_noise", "generator", "probes"}
    if estimator == "ode":
        from .likelihood import class_log_likelihoods, log_likelihood
        known = _keywords(class_log_likelihoods, internal) | _keywords(log_likelihood, internal)
    else:
        from .elbo import elbo_class_scores
        known = _keywords(elbo_class_scores, internal)
    _unknown(f"{estimator} estimator", options or {}, known, f"--estimator {estimator}")


def _load(dataset, data_root, data_options):
    # rank 0 first, so that a cache it builds is complete before the other ranks read it
    if not distributed.is_main():
        distributed.barrier()
    splits = load_dataset(dataset, root=data_root, **(data_options or {}))
    if distributed.is_main():
        distributed.barrier()
    return splits


def _on_main(fn):
    """fn() on rank 0; an sgc error it raises is raised on every rank (none waits forever)."""
    failure = None
    if distributed.is_main():
        try:
            fn()
        except (RunFolderError, OSError) as err:
            failure = err
    failure = distributed.broadcast_object(failure)
    if failure is not None:
        raise failure


def train_on_dataset(dataset: str = "digits", run_dir="runs/digits", *,
                     data_root=None,                 # folder with the dataset's files
                     data_options: dict | None = None,  # e.g. {"size": 32}
                     model: dict | None = None,      # network config: arch + keyword arguments
                     sde: dict | None = None,        # e.g. {"name": "vp", "beta_max": 20}
                     train: dict | None = None,      # TrainConfig fields
                     resume: bool = False,           # continue the run folder's model
                     overwrite: bool = False,        # replace the run folder's model and its results
                     device=None, progress: bool = True):
    """Train the class-conditional score model of ``dataset`` into ``run_dir``.

    Returns (ema_model, history). ``model`` defaults to a UNet sized to the data. A run folder
    that already holds a model is refused (RunExists) unless ``resume`` or ``overwrite``.
    Under torchrun (WORLD_SIZE > 1) this trains with DDP; ``train["batch_size"]`` is the global batch.
    """
    distributed.init_from_env()
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other. Pass one of them")
    check_data_options(dataset, data_options)
    check_model_options(model)
    check_train_options(train)
    TrainConfig.from_dict(train)  # and bad values
    run_dir = Path(run_dir)
    with runs.writer_lock(run_dir):
        def refuse_existing():
            if runs.has_model(run_dir) and not resume and not overwrite:
                try:
                    what = runs.describe_status(runs.run_status(run_dir))
                except (RunFolderError, FileNotFoundError) as err:
                    what = f"damaged: {err}"
                raise RunExists(f"run folder {run_dir} already holds a model ({what}). Pass --resume to continue "
                                f"it, --overwrite to replace it and its results, or choose another --run-dir")
        _on_main(refuse_existing)
        splits = _load(dataset, data_root, data_options)
        tr = splits["train"]
        c, h, _ = tr.shape
        mcfg = {"arch": "unet", **(model or {})}
        mcfg.update(num_classes=len(tr.class_names), in_channels=c, image_size=h)
        tcfg = TrainConfig.from_dict({"levels": tr.levels, **(train or {})})
        torch.manual_seed(tcfg.seed)  # the initial weights follow the seed too
        net = build_model(mcfg)
        sde_obj = make_sde(**(sde or {"name": "vp"}))

        def prepare():
            check_writable(run_dir, need_bytes=runs.checkpoint_bytes(net), what="a checkpoint")
            if overwrite:
                runs.clear_run(run_dir)
        _on_main(prepare)
        # an explicit data root is recorded relative to the run folder; None: the data-root rule finds it
        meta = {"data": {"dataset": dataset, "root": record_root(data_root, run_dir), "root_base": RELATIVE_TO_RUN,
                         "options": data_options or {}, "class_names": list(tr.class_names),
                         "levels": tr.levels, "shape": list(tr.shape), "n_train": len(tr),
                         "train_counts": np.bincount(tr.labels, minlength=len(tr.class_names)).tolist(),
                         "preprocessing": recipe_for(dataset, data_options or {}, tr.shape, tr.levels)},  # for sgc predict
                "parameters": count_parameters(net), "torch": torch.__version__, "sgc": __version__}
        start = time.perf_counter()
        _, ema, history = train_score_model(net, sde_obj, tr.images, tr.labels, tcfg, run_dir=run_dir,
                                            resume=resume, device=device, progress=progress, extra_meta=meta)
        if distributed.is_main():
            atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1))
            atomic_write_text(run_dir / "train_seconds.txt", f"{time.perf_counter() - start:.1f}\n")
    return ema, history


def _chunk_seed(seed: int, start: int) -> int:
    """The seed of the chunk starting at image ``start``: independent of rank and world size."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1)[0])


def _read_key(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _score_sharded(model, sde, images, parts: Path, key: dict, *, estimator, batch_size, seed,
                   progress, **kwargs) -> ClassScores | None:
    """score_images over chunks of ``batch_size`` images, chunk i on rank i mod world size.

    Each finished chunk is saved to ``parts`` (the folder of this settings ``key``: model
    checksum, estimator, options, seeds, content hash of the images), and chunks already
    there are skipped, so a rank that died leaves its work resumable. Returns the scores of
    all images in input order on rank 0, None on the other ranks.
    """
    if distributed.is_main():
        key_file = parts / "key.json"
        if key_file.exists() and _read_key(key_file) != json.loads(json.dumps(key)):
            shutil.rmtree(parts)  # chunks of other settings under this name (edited or foreign): score again
        parts.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            atomic_write_json(key_file, key)
    distributed.barrier()
    n = images.shape[0]
    mine = distributed.shard_chunks(n, batch_size)
    with tqdm(total=sum(len(r) for r in mine), disable=not (progress and distributed.is_main()),
              desc=f"classify ({estimator}, rank 0 of {distributed.world_size()})", unit="img") as bar:
        for r in mine:
            path = parts / f"chunk_{r.start:09d}.npz"
            if path.exists():  # done before (this process or another)
                bar.update(len(r))
                continue
            # within a chunk (one batched solve) the bar follows the ODE's time; compiled nets are not hooked
            live = progress and estimator == "ode" and not kwargs.get("compile") and distributed.is_main()
            with SolveProgress(bar, model, len(r), sde.T, enabled=live) as within:
                s = score_images(model, sde, images[r.start:r.stop], estimator=estimator, batch_size=len(r),
                                 seed=_chunk_seed(seed, r.start), progress=False, **kwargs)
                within.finish()
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, log_lik=s.log_lik, bpd=s.bpd, nfe=s.nfe, seconds=np.float64(s.seconds),
                         **{f"extra_{k}": np.asarray(v) for k, v in s.extra.items()})
    distributed.barrier()
    if not distributed.is_main():
        return None
    chunks = []
    for start in range(0, n, batch_size):
        with np.load(parts / f"chunk_{start:09d}.npz") as z:
            chunks.append({k: z[k] for k in z.files})
    extra = {k[6:]: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if k.startswith("extra_")}
    return ClassScores(*(np.concatenate([c[k] for c in chunks]) for k in ("log_lik", "bpd", "nfe")),
                       float(sum(c["seconds"] for c in chunks)), estimator, extra)


def evaluate_run(run_dir="runs/digits", *, split: str = "test",
                 estimator: str = "ode",            # "ode" or "elbo"
                 estimator_options: dict | None = None,  # rtol, atol, method, n_probes / n_draws ...
                 prior: str = "uniform",            # "uniform" or "empirical" (training frequencies)
                 batch_size: int = 64, limit: int | None = None, seed: int = 0,
                 calibrate: bool = False,           # temperature fitted on the validation split
                 data_root=None, device=None, progress: bool = True) -> dict:
    """Classify one split with the run's EMA model; write scores CSV and metrics JSON.

    Returns the metrics dict (accuracy, balanced accuracy, macro one-vs-rest AUC, ...,
    mean bits/dim of the true class, mean NFE, seconds, the model's real ``train_steps``,
    ``partial`` and ``partial_reasons``, the files written and ``produced_by``). Images are
    scored in chunks of ``batch_size``, each with its own seed derived from ``seed``, so the
    scores do not depend on the number of processes; under torchrun the chunks are shared
    among the ranks and every rank returns rank 0's metrics.

    ``calibrate``: also score the validation split, fit a temperature T on it
    (``sgc.decision.fit_temperature``: the posterior is softmax(log p(x|y) / T + log p(y))) and
    write calibrated posteriors; the metrics gain ``calibration`` (T, the validation images, the
    test split's expected calibration error before and after) and the files are named
    ``*_<estimator>_calibrated``. A dataset without a validation split is refused (ConfigError).
    """
    distributed.init_from_env()
    options = json.loads(json.dumps(estimator_options or {}, default=str))
    check_estimator_options(estimator, options)
    if prior not in ("uniform", "empirical"):
        raise ConfigError(f"prior must be 'uniform' or 'empirical', got {prior!r}")
    if batch_size < 1 or (limit is not None and limit < 1):
        raise ConfigError(f"batch size and limit must be >= 1 (got {batch_size}, {limit}): nothing to classify. "
                          f"Pass a positive --batch-size and --limit, or leave --limit out for the whole split")
    with runs.writer_lock(run_dir):
        return _evaluate(Path(run_dir), split, estimator, options, prior, batch_size, limit, seed, data_root,
                         device, progress, calibrate)


def _evaluate(run_dir, split, estimator, options, prior, batch_size, limit, seed, data_root, device, progress,
              calibrate=False):
    from .metrics import summary_metrics
    wall = time.perf_counter()
    device = distributed.default_device(device)
    model, sde, config = runs.load_run(run_dir, device)
    status = runs.run_status(run_dir)
    data = config.get("data") or {}
    missing = [k for k in ("dataset", "class_names", "levels", "train_counts") if k not in data]
    if missing or "train" not in config:
        raise RunFolderError(f"{run_dir / runs.CONFIG} lacks {missing or ['train']}: it was not written by sgc "
                             f"train. Score its model from Python (sgc.classify.score_images) instead")
    root = data_root if data_root is not None else recorded_root(data.get("root"), run_dir, data.get("root_base"))
    splits = _load(data["dataset"], root, data.get("options") or {})
    if split not in splits:
        raise ConfigError(f"dataset {data['dataset']!r} has splits {sorted(splits)}, not {split!r}. "
                          f"Choose one of them with --split")
    if calibrate and ("val" not in splits or split == "val"):
        raise ConfigError(f"--calibrate fits the temperature on the validation split, and dataset {data['dataset']!r} "
                          f"(options {data.get('options') or {}}) has splits {sorted(splits)}"
                          + (" (calibrating the val split on itself would be circular)" if split == "val" else "")
                          + ". Classify the test split, or train with a validation split "
                            "(e.g. --set data_options.val_size=0.2 for digits)")
    ds = splits[split]
    n_split, k, names = len(ds), len(data["class_names"]), list(data["class_names"])
    if limit is not None and limit < len(ds):
        ds = ds.subset(np.arange(limit))
    if list(ds.class_names) != names or len(ds) == 0 or ds.labels.min() < 0 or ds.labels.max() >= k:
        raise DataError(f"the {split} split at {root or data['dataset']} ({len(ds)} images, classes "
                        f"{list(ds.class_names)}, labels {sorted(set(ds.labels.tolist()))[:12]}) does not fit the "
                        f"model, trained on classes {names}. Point --data-root at the data the run was trained on")
    present = np.unique(ds.labels)
    reasons = ([f"limit{len(ds)}"] if len(ds) < n_split else []) + (["missing-classes"] if len(present) < k else [])
    if not status["complete"]:
        reasons.append(f"model{status['steps_done']}of{status['steps_planned']}")
    dequantize = config["train"].get("dequantize", True)
    key = {"sgc": __version__, "checkpoint_sha256": status["checkpoint_sha256"], "split": split,
           "estimator": estimator, "options": options, "batch_size": batch_size, "seed": seed,
           "levels": data["levels"], "dequantize": dequantize, "n": len(ds),
           "data_sha256": runs.data_sha256(ds.images, ds.labels, ds.ids)}
    _on_main(lambda: check_writable(run_dir, need_bytes=64 * len(ds) * k + 2 ** 20, what="the scores"))
    scores = _score_sharded(model, sde, ds.images, run_dir / "parts" / runs.key_sha256(key)[:16], key,
                            estimator=estimator, batch_size=batch_size, seed=seed, progress=progress,
                            levels=data["levels"], dequantize=dequantize, **options)
    calibration = None
    if calibrate:  # the same estimator on the validation split, in its own parts folder
        val = splits["val"]
        vkey = {**key, "split": "val", "n": len(val), "data_sha256": runs.data_sha256(val.images, val.labels, val.ids)}
        val_scores = _score_sharded(model, sde, val.images, run_dir / "parts" / runs.key_sha256(vkey)[:16], vkey,
                                    estimator=estimator, batch_size=batch_size, seed=seed, progress=progress,
                                    levels=data["levels"], dequantize=dequantize, **options)
    if scores is None:  # not rank 0: rank 0 merges, writes and tells the metrics
        return distributed.broadcast_object(None)
    counts = np.repeat(np.arange(k), data["train_counts"])
    post = posterior(scores.log_lik, log_prior(k, prior, counts))
    if calibrate:
        from .decision import apply_prior, fit_temperature
        from .metrics import expected_calibration_error
        prior_p = np.exp(log_prior(k, prior, counts))
        temperature = fit_temperature(val_scores.log_lik, splits["val"].labels, prior=prior_p)
        uncalibrated, post = post, apply_prior(scores.log_lik, prior_p, temperature=temperature)
        val_y = splits["val"].labels
        nll = lambda p: float(-np.mean(np.log(np.clip(p[np.arange(len(val_y)), val_y], 1e-300, None))))  # noqa: E731
        calibration = {"method": "temperature scaling (sgc.decision.fit_temperature)", "fitted_on": "val",
                       "n_val": len(val_y), "temperature": temperature,
                       "nll_val_before": nll(apply_prior(val_scores.log_lik, prior_p)),
                       "nll_val_after": nll(apply_prior(val_scores.log_lik, prior_p, temperature=temperature)),
                       "ece_before": expected_calibration_error(ds.labels, uncalibrated),
                       "ece_after": expected_calibration_error(ds.labels, post),
                       "seconds_val": val_scores.seconds}
    tag = f"{estimator}_calibrated" if calibrate else estimator
    scores_name, metrics_name = runs.result_names(split, tag, reasons)
    save_scores_csv(run_dir / scores_name, scores, ds.ids, ds.labels, names, post)
    if len(present) == k:
        metrics = summary_metrics(ds.labels, post, class_names=names)
    else:  # AUCs need every class; report what is defined
        pred = post.argmax(1)
        recalls = [float(np.mean(pred[ds.labels == c] == c)) for c in present]
        metrics = {"n": len(ds), "accuracy": float(np.mean(pred == ds.labels)),
                   "balanced_accuracy": float(np.mean(recalls)), "auc_macro_ovr": None,
                   "note": f"classes {sorted(set(range(k)) - set(present.tolist()))} absent: no AUC"}
    train_seconds = run_dir / "train_seconds.txt"
    bpd_true = float(scores.bpd[np.arange(len(ds)), ds.labels].mean())
    metrics.update({
        "dataset": data["dataset"], "split": split, "estimator": estimator,
        "estimator_options": options, "prior": prior,
        "mean_bpd_true_class": bpd_true,
        "mean_nfe": float(scores.nfe.mean()),
        "seconds_classify": scores.seconds,  # the scoring of this split (training and loading not included)
        "seconds_per_image": scores.seconds / len(ds),
        "seconds_train": float(train_seconds.read_text()) if train_seconds.exists() else None,
        "seconds_wall": time.perf_counter() - wall, "world_size": distributed.world_size(),
        "device": str(device), "parameters": config.get("parameters"),
        "train_steps": status["steps_done"], "train_steps_planned": status["steps_planned"],
        "model_complete": status["complete"], "partial": bool(reasons), "partial_reasons": reasons,
        "scores_file": scores_name, "metrics_file": metrics_name,
        "produced_by": {**key, "prior": prior, "limit": limit, "n_split": n_split, "dataset": data["dataset"],
                        "data_root": record_root(root, run_dir), "data_root_base": RELATIVE_TO_RUN,
                        "data_options": data.get("options") or {},
                        "model_steps": status["steps_done"], "model_steps_planned": status["steps_planned"]},
    })
    metrics["seconds"] = metrics["seconds_classify"]  # before 0.2: classification + training
    if calibration is not None:
        metrics["calibration"] = calibration
        metrics["produced_by"]["calibrate"] = True
    plausible = 2 * np.log2(data["levels"]) + 8
    if not bpd_true < plausible:
        metrics["warnings"] = [f"mean bits/dim of the true class is {bpd_true:.4g}, implausible for "
                               f"{data['levels']}-level data (a uniform model gives {np.log2(data['levels']):.2f}): "
                               f"the checkpoint's weights may be damaged or not match this data"]
        runs._say("warning: " + metrics["warnings"][0])
    atomic_write_json(run_dir / metrics_name, metrics)
    if not reasons:
        atomic_write_json(run_dir / "metrics.json", metrics)
    return distributed.broadcast_object(metrics)
