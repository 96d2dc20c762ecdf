"""Classify the user's own image files with a trained run folder or an export.

``predict_files`` reads each file (:mod:`sgc.data.files`), applies the run's recorded
preprocessing (:mod:`sgc.data.recipes`), scores log p(x | y) for every class exactly as
``sgc classify`` scores a split, and returns one row per file: posterior, predicted class,
bits/dim per class, the out-of-distribution scores and flags (:mod:`sgc.ood`), NFE / draws
and seconds. ``calibrate_run`` sets the OOD thresholds on the validation split.

Seeds: ``sgc classify`` scores a split in chunks of ``batch_size`` images and seeds the chunk
that starts at image i with ``sgc.pipeline._chunk_seed(seed, i)`` (dequantisation noise,
Hutchinson probes, bound draws); the images of a chunk also share one adaptive ODE solve.
``predict_files`` chunks its files the same way, so files given in the order of a split, with
the same ``batch_size`` and ``seed``, get bit-identical scores. In another grouping the
scores differ by the estimator's Monte-Carlo noise only (the ``stderr`` of the bound).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from .progress import tqdm

from . import ood
from .classify import ClassScores, log_prior, posterior, score_images
from .data.files import expand_inputs
from .data.recipes import prepare_file, recipe_from_config
from .runs import atomic_write_text

__all__ = ["CALIBRATION", "score_chunked", "predict_files", "write_predictions", "calibrate_run",
           "load_calibration"]

CALIBRATION = "ood_calibration.json"   # in a run folder and in an export


def score_chunked(model, sde, images, *,
                  estimator: str = "ode",        # "ode" or "elbo"
                  estimator_options: dict | None = None,
                  batch_size: int = 64,          # images per chunk (one solve / one seed)
                  seed: int = 0,                 # chunk i is seeded _chunk_seed(seed, first index)
                  levels: int = 256, dequantize: bool = True, progress: bool = True,
                  ) -> tuple[ClassScores, np.ndarray]:
    """Scores of images (N, C, H, W) in [0, 1] chunked and seeded as ``sgc classify`` does.

    Returns (scores, seconds (N,): each image's share of its chunk's wall time)."""
    from .pipeline import _chunk_seed
    parts, seconds = [], np.zeros(len(images))
    with tqdm(total=len(images), disable=not progress, desc=f"predict ({estimator})", unit="img") as bar:
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            s = score_images(model, sde, chunk, estimator=estimator, batch_size=len(chunk), seed=_chunk_seed(seed, i),
                             levels=levels, dequantize=dequantize, progress=False, **(estimator_options or {}))
            parts.append(s)
            seconds[i:i + len(chunk)] = s.seconds / len(chunk)
            bar.update(len(chunk))
    extra = {k: np.concatenate([np.asarray(p.extra[k]) for p in parts]) for k in parts[0].extra}
    scores = ClassScores(np.concatenate([p.log_lik for p in parts]), np.concatenate([p.bpd for p in parts]),
                         np.concatenate([p.nfe for p in parts]), float(seconds.sum()), estimator, extra)
    return scores, seconds


def load_calibration(folder) -> dict | None:
    """The OOD calibration of a run folder or export (``ood_calibration.json``), or None."""
    path = Path(folder) / CALIBRATION
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and rerun sgc calibrate") from None


def _same_estimator(cal: dict, estimator: str, options: dict) -> bool:
    return cal["estimator"] == estimator and json.loads(json.dumps(cal.get("estimator_options") or {})) == \
        json.loads(json.dumps(options or {}, default=str))


def predict_files(clf,                           # a fitted sgc.classify.ScoreClassifier (from_run or load)
                  files,                         # paths, folders or glob patterns
                  *,
                  estimator: str | None = None,  # None: the OOD calibration's, else the classifier's
                  estimator_options: dict | None = None,
                  batch_size: int | None = None,  # None: the classifier's (classify's default 64)
                  seed: int = 0,                 # as sgc classify --seed
                  prior: str | None = None,      # "uniform" / "empirical"; None: the classifier's
                  boxes: dict | None = None,     # {path: (row0, col0, row1, col1)} for lesion-patch runs
                  recipe: dict | None = None,    # None: the run's recorded (or derived) preprocessing
                  panels_dir=None,               # write one PNG panel per image there
                  progress: bool = True) -> pd.DataFrame:
    """One row per file: posterior, predicted class, bits/dim per class, OOD scores and flags.

    Unreadable files give a row with ``error`` set (and no scores) instead of stopping the rest.
    """
    clf._check_fitted()
    config = getattr(clf, "config_", None)
    if recipe is None:
        if config is None:
            raise ValueError("this classifier was fitted in memory and has no recorded preprocessing; pass "
                             "recipe=... (see sgc.data.recipes) or load it with ScoreClassifier.from_run / load")
        recipe = recipe_from_config(config, f"{getattr(clf, 'source_dir_', 'the run')}/config.json")
    data = (config or {}).get("data", {})
    class_names = list(data.get("class_names") or [str(k) for k in clf.classes_])
    levels = int(data.get("levels", clf.levels))
    dequantize = bool((config or {}).get("train", {}).get("dequantize", True))
    cal = load_calibration(clf.source_dir_) if getattr(clf, "source_dir_", None) else None
    stale = bool(cal and getattr(clf, "checkpoint_sha256_", None) and cal["checkpoint_sha256"] != clf.checkpoint_sha256_)
    cal = None if stale else cal
    estimator = estimator or (cal["estimator"] if cal else clf.estimator)
    if estimator_options is None:  # the calibration's options for its estimator, else the classifier's
        estimator_options = cal.get("estimator_options") if cal and cal["estimator"] == estimator else clf.estimator_options
    estimator_options = dict(estimator_options or {})
    paths = expand_inputs([files] if isinstance(files, (str, Path)) else files)
    images, good, rows = [], [], []
    for path in paths:
        row = {"file": str(path), "image_id": path.stem, "error": ""}
        try:
            x, facts = prepare_file(recipe, path, box=(boxes or {}).get(str(path)))
            images.append(x)
            good.append(len(rows))
            row.update({f"prep_{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v)
                        for k, v in facts.items() if k not in ("path", "source_rows", "source_cols")})
        except Exception as err:  # reported per file: one bad file must not lose the others
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not images:
        return frame
    x = np.stack(images)
    k = len(class_names)
    counts = data.get("train_counts")
    labels = None if counts is None else np.repeat(np.arange(k), counts)
    scores, seconds = score_chunked(clf.model_, clf.sde_, x, estimator=estimator, estimator_options=estimator_options,
                                    batch_size=batch_size or clf.batch_size, seed=seed, levels=levels,
                                    dequantize=dequantize, progress=progress)
    post = posterior(scores.log_lik, log_prior(k, prior or clf.prior, labels))
    log_p_y = np.asarray(cal["log_p_y"]) if cal else log_prior(k, "empirical" if labels is not None else "uniform", labels)
    compressor = cal["compressor"] if cal else "png"
    o = ood.ood_scores(scores.log_lik, x, log_p_y, levels, compressor)
    out = {"predicted": [class_names[j] for j in post.argmax(1)], "predicted_index": post.argmax(1)}
    for j, name in enumerate(class_names):
        out[f"p_{name}"] = post[:, j]
    for j, name in enumerate(class_names):
        out[f"bpd_{name}"] = scores.bpd[:, j]
    out.update(ood_bpd=o["bpd"], ood_compressor_bpd=o["compressor_bpd"], ood_complexity=o["complexity"])
    if cal and _same_estimator(cal, estimator, estimator_options):
        flags = ood.flag(o, cal)
        out.update(ood_bpd_flag=flags["bpd"], ood_complexity_flag=flags["complexity"],
                   ood_flag=flags[cal["default"]], ood_note=f"{cal['default']} above its threshold "
                   f"({cal['false_alarm']:.0%} false alarms on the {cal['split']} split)")
    else:
        out.update(ood_flag=None, ood_note=("the OOD calibration is for another checkpoint (rerun sgc calibrate)"
                                            if stale else "no OOD calibration (run sgc calibrate)") if not cal else
                   f"not flagged: the calibration used {cal['estimator']} {cal.get('estimator_options')}, "
                   f"this prediction {estimator} {estimator_options}")
    nfe = scores.nfe
    # draws: bound draws per image x class (elbo) or Hutchinson probes per evaluation (ode)
    draws = nfe if estimator == "elbo" else np.full(len(x), estimator_options.get("n_probes", 1))
    out.update(nfe=nfe, draws=draws, seconds=seconds, estimator=estimator, seed=seed,
               chunk=(np.arange(len(x)) // (batch_size or clf.batch_size)))
    if "stderr" in scores.extra:
        for j, name in enumerate(class_names):
            out[f"stderr_{name}"] = scores.extra["stderr"][:, j]
    scored = pd.DataFrame(out, index=good)
    frame = frame.join(scored)
    if panels_dir is not None:
        _panels(frame.loc[good], x, class_names, Path(panels_dir))
    return frame


def write_predictions(frame: pd.DataFrame, path) -> Path:
    """CSV (``.csv``) or JSON records (``.json``), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        text = frame.to_json(orient="records", indent=1, double_precision=15)
    elif path.suffix.lower() == ".csv":
        text = frame.to_csv(index=False, float_format="%.10g")
    else:
        raise ValueError(f"{path}: write predictions as .csv or .json")
    atomic_write_text(path, text)
    return path


def _panels(frame: pd.DataFrame, images: np.ndarray, class_names, folder: Path) -> None:
    import matplotlib.pyplot as plt
    from .plots import save_figure
    for (_, row), x in zip(frame.iterrows(), images):
        fig, (a, b) = plt.subplots(1, 2, figsize=(6.5, 2.8), gridspec_kw={"width_ratios": [1, 1.3]},
                                   layout="constrained")
        a.imshow(x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1), cmap="gray", vmin=0, vmax=1)
        a.set_title(row["image_id"], fontsize=8)
        a.axis("off")
        b.barh(class_names, [row[f"p_{n}"] for n in class_names])
        b.set_xlim(0, 1)
        b.set_xlabel("posterior p(y | x)")
        flag = row.get("ood_flag")
        b.set_title(f"{row['predicted']} · {row['ood_bpd']:.2f} bits/dim"
                    + ("" if flag is None or pd.isna(flag) else (" · OOD" if flag else " · in distribution")), fontsize=8)
        save_figure(fig, folder / f"{row['image_id']}", formats=("png",))
        plt.close(fig)


def calibrate_run(run_dir, *,
                  split: str = "val",            # held-out in-distribution images
                  estimator: str = "ode", estimator_options: dict | None = None,
                  false_alarm: float = 0.05,     # fraction of in-distribution images flagged
                  compressor: str = "png",       # lossless compressor of the complexity score
                  default: str = "complexity",   # which score sets ood_flag: "complexity" or "bpd"
                  batch_size: int = 64, seed: int = 0,
                  limit: int | None = None,      # only the first N images of the split
                  data_root=None, device=None, progress: bool = True) -> dict:
    """Classify ``split`` (``sgc classify``) and write the OOD thresholds to ``ood_calibration.json``.

    p(y) of the mixture is the training frequency (``train_counts``). Returns the calibration.
    A dataset without a validation split can calibrate on the first ``limit`` test images (and
    must then judge OOD detection on the other test images only).
    """
    from .classify import read_scores_csv
    from .data import load_dataset
    from .pipeline import evaluate_run
    from .runs import find_checkpoint, load_checkpoint, sha256_file
    if default not in ood.SCORES:
        raise ValueError(f"default must be one of {ood.SCORES}, got {default!r}")
    run_dir = Path(run_dir)
    config, _ = load_checkpoint(run_dir)
    data = config["data"]
    splits = load_dataset(data["dataset"], root=data_root if data_root is not None else data["root"],
                          **(data.get("options") or {}))
    if split not in splits or len(splits[split]) == 0:
        raise ValueError(f"{run_dir}: dataset {data['dataset']!r} (options {data.get('options')}) has no "
                         f"{split!r} split to calibrate on (splits: {sorted(k for k in splits if len(splits[k]))}); "
                         "pass --split, or train with a validation split (digits: --data val_size=0.2)")
    start = time.perf_counter()
    scored = evaluate_run(run_dir, split=split, estimator=estimator, estimator_options=estimator_options,
                          batch_size=batch_size, seed=seed, limit=limit, data_root=data_root, device=device,
                          progress=progress)
    scores_file = scored["scores_file"]  # scores_<split>_<estimator>.csv, or partial_scores_... for a subset
    ids, _, log_lik = read_scores_csv(run_dir / scores_file)
    ds = splits[split] if limit is None else splits[split].subset(np.arange(min(limit, len(splits[split]))))
    if list(ids) != list(ds.ids):
        raise RuntimeError(f"{scores_file} does not list the {split} split's images in order")
    k = len(data["class_names"])
    log_p_y = log_prior(k, "empirical", np.repeat(np.arange(k), data["train_counts"]))
    scores = ood.ood_scores(log_lik, ds.images, log_p_y, data["levels"], compressor)
    cal = {**ood.calibrate(scores, false_alarm), "split": split, "limit": limit, "estimator": estimator,
           "estimator_options": estimator_options or {}, "batch_size": batch_size, "seed": seed,
           "compressor": compressor, "default": default, "log_p_y": log_p_y.tolist(),
           "checkpoint_sha256": sha256_file(find_checkpoint(run_dir)), "dataset": data["dataset"],
           "seconds": time.perf_counter() - start, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(run_dir / CALIBRATION, json.dumps(cal, indent=1))
    return cal
