"""How well the OOD scores separate a run's test split from images it was never meant to see.

``ood_sets`` builds the out-of-distribution sets from real data and simple synthetic images,
each passed through the run's preprocessing recipe exactly as ``sgc predict`` would pass a
user's file: scikit-learn's digits (resized), mini-MIAS mammogram patches, the CBIS-DDSM
DICOMs (whole, resized, and patches), constant images, uniform and blurred noise, and
transformed copies of the test split (vertically flipped, intensity-inverted; horizontally
flipped as a control when training used horizontal flips). ``run_ood_study`` scores them
with the run's calibrated estimator and writes one table row per set (AUROC with its DeLong
95 % interval, detection rate at the calibrated threshold, false-alarm rate at 95 % detection)
for the raw mixture bits/dim and the complexity-corrected score, naming the run folder and
checkpoint each row came from, and every image's scores (JSON ``per_image``); plus a histogram figure.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import ood
from .data.recipes import prepare_image, recipe_from_config

__all__ = ["ood_sets", "score_sets", "ood_figure", "run_ood_study"]


def _breast_crops(image: np.ndarray, n: int, side: int, rng) -> list[np.ndarray]:
    """n square crops of ``side`` pixels whose centres lie inside the breast mask."""
    from .data.preprocess import breast_mask
    mask = breast_mask(image)
    rows, cols = np.nonzero(mask[side // 2:-side // 2, side // 2:-side // 2])
    pick = rng.choice(len(rows), size=n, replace=False)
    return [image[r:r + side, c:c + side] for r, c in zip(rows[pick], cols[pick])]


def ood_sets(recipe: dict,                 # the run's preprocessing (sgc.data.recipes)
             test_images: np.ndarray,      # (N, C, S, S) the run's in-distribution test images
             *,
             mini_mias_root=None,          # folder with mini-MIAS *.pgm (searched recursively); None: skipped
             cbis_ddsm_root=None,          # folder with CBIS-DDSM *.dcm; None: skipped
             n: int = 64,                  # images per synthetic set
             hflip_trained: bool = False,  # add the horizontally flipped test split as a control
             seed: int = 0) -> dict[str, np.ndarray]:
    """{set name: float32 (M, C, S, S) in [0, 1]}.

    Images from other sources go through ``prepare_image(recipe, ...)`` as a user's file would
    (an "array" recipe: digits and MedMNIST runs); the synthetic sets are made at the model's
    input size on the run's grey-level grid."""
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    prep = lambda img: prepare_image(recipe, img)[0]  # noqa: E731
    c, s = test_images.shape[1], test_images.shape[-1]
    out: dict[str, np.ndarray] = {}
    if recipe.get("dataset") != "digits":
        from sklearn.datasets import load_digits
        digits = load_digits().images.astype(np.float32) / 16
        out["digits (resized)"] = np.stack([prep(d) for d in digits[rng.choice(len(digits), len(test_images), replace=False)]])
    if mini_mias_root is not None:
        from .data.mini_mias import read_pgm
        films = sorted(Path(mini_mias_root).rglob("*.pgm"))
        if not films:
            raise FileNotFoundError(f"{mini_mias_root}: no mini-MIAS .pgm films found (searched recursively)")
        crops = []
        for f in films:
            raw, maxval = read_pgm(f)
            crops += _breast_crops(raw.astype(np.float32) / maxval, 4, 256, rng)
        out["mini-MIAS patches"] = np.stack([prep(x) for x in crops])
    if cbis_ddsm_root is not None:
        from .data.dicom import read_dicom
        images = [read_dicom(p)[0] for p in sorted(Path(cbis_ddsm_root).rglob("*.dcm"))]
        if not images:
            raise FileNotFoundError(f"{cbis_ddsm_root}: no CBIS-DDSM .dcm files found (searched recursively)")
        out["CBIS-DDSM DICOMs (whole, resized)"] = np.stack([prep(x) for x in images])
        out["CBIS-DDSM patches"] = np.stack([prep(x) for im in images for x in _breast_crops(im, 16, 512, rng)])
    levels = recipe["levels"]
    grid = lambda x: (np.round(x * (levels - 1)) / (levels - 1)).astype(np.float32)  # noqa: E731
    out["constant"] = grid(np.stack([np.full((c, s, s), v) for v in np.linspace(0, 1, n // 2)]))
    noise = rng.random((n, c, s, s))
    out["uniform noise"] = grid(noise)
    blurred = np.stack([gaussian_filter(x, sigma=(0, 2, 2)) for x in noise])
    lo, hi = blurred.min((1, 2, 3), keepdims=True), blurred.max((1, 2, 3), keepdims=True)
    out["blurred noise"] = grid((blurred - lo) / (hi - lo))
    out["test, vertically flipped"] = test_images[:, :, ::-1].copy()
    out["test, inverted (1 - x)"] = (1 - test_images).astype(np.float32)
    if hflip_trained:
        out["test, horizontally flipped (control: trained with h-flips)"] = test_images[:, :, :, ::-1].copy()
    return out


def score_sets(model, sde, sets: dict, calibration: dict, *, levels: int, dequantize: bool,
               progress: bool = True) -> dict[str, dict]:
    """OOD scores of every set with the calibration's estimator, options, seed and chunk size."""
    from .predict import score_chunked
    out = {}
    for name, images in sets.items():
        scores, seconds = score_chunked(model, sde, images, estimator=calibration["estimator"],
                                        estimator_options=calibration.get("estimator_options"),
                                        batch_size=calibration["batch_size"], seed=calibration["seed"],
                                        levels=levels, dequantize=dequantize, progress=progress)
        out[name] = {**ood.ood_scores(scores.log_lik, images, np.asarray(calibration["log_p_y"]), levels,
                                      calibration["compressor"]), "seconds": float(seconds.sum())}
    return out


def run_ood_study(run_dir, *,
                  out_dir="reports/tables",     # where <tag>.md / .csv / .json go
                  figures_dir=None,             # where <tag>.png goes (default: out_dir/../figures)
                  tag: str = "ood",
                  mini_mias_root=None, cbis_ddsm_root=None, data_root=None,
                  n: int = 64, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Score the test split and every OOD set with the run's OOD calibration; write the tables."""
    from .data import load_dataset
    from .metrics import delong_ci
    from .predict import load_calibration
    from .runs import atomic_write_text, find_checkpoint, load_run, sha256_file
    run_dir = Path(run_dir)
    cal = load_calibration(run_dir)
    if cal is None:
        raise FileNotFoundError(f"{run_dir}/ood_calibration.json not found: run sgc calibrate --run-dir {run_dir} first")
    model, sde, config = load_run(run_dir)
    sha = sha256_file(find_checkpoint(run_dir))
    if cal["checkpoint_sha256"] != sha:
        raise ValueError(f"{run_dir}/ood_calibration.json was made for another checkpoint; rerun sgc calibrate")
    data = config["data"]
    test = load_dataset(data["dataset"], root=data_root if data_root is not None else data["root"],
                        **(data.get("options") or {}))["test"]
    if cal["split"] == "test":  # calibrated on the first test images: judge on the others only
        test = test.subset(np.arange(cal.get("limit") or len(test), len(test)))
    sets = ood_sets(recipe_from_config(config), test.images, mini_mias_root=mini_mias_root,
                    cbis_ddsm_root=cbis_ddsm_root, n=n, hflip_trained=bool(config["train"].get("hflip")), seed=seed)
    start = time.perf_counter()
    scored = score_sets(model, sde, {"test (in distribution)": test.images, **sets}, cal, levels=data["levels"],
                        dequantize=config["train"].get("dequantize", True), progress=progress)
    ref = scored["test (in distribution)"]
    rows = []
    for name, s in scored.items():
        row = {"run": run_dir.name, "checkpoint_sha256": sha[:12], "dataset": data["dataset"],
               "estimator": cal["estimator"], "options": json.dumps(cal.get("estimator_options") or {}),
               "calibration": f"{cal['split']} split, {cal['false_alarm']:.0%} false alarms", "set": name,
               "n": len(s["bpd"]), "mean_bpd": float(np.mean(s["bpd"])), "mean_complexity": float(np.mean(s["complexity"]))}
        for score in ood.SCORES:
            thr = cal["scores"][score]["threshold"]
            if name == "test (in distribution)":
                row.update({f"{score}_flagged": float(np.mean(s[score] > thr))})
                continue
            m = ood.detection_metrics(ref[score], s[score], thr)
            y = np.r_[np.zeros(len(ref[score])), np.ones(len(s[score]))]
            _, lo, hi = delong_ci(y, np.r_[ref[score], s[score]])
            row.update({f"{score}_auroc": m["auroc"], f"{score}_auroc_lo": lo, f"{score}_auroc_hi": hi,
                        f"{score}_flagged": m["detection_rate"], f"{score}_fpr_at_95_tpr": m["fpr_at_95_tpr"]})
        rows.append(row)
    table = pd.DataFrame(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{tag}.csv", table.to_csv(index=False, float_format="%.4f"))
    meta = {"run": run_dir.name, "checkpoint_sha256": sha, "calibration": {k: v for k, v in cal.items() if k != "scores"},
            "thresholds": {k: v["threshold"] for k, v in cal["scores"].items()}, "seconds": time.perf_counter() - start,
            "rows": rows, "per_image": {name: {k: np.round(s[k], 5).tolist() for k in ("bpd", "complexity", "compressor_bpd")}
                                        for name, s in scored.items()}}
    atomic_write_text(out_dir / f"{tag}.json", json.dumps(meta, indent=1))
    atomic_write_text(out_dir / f"{tag}.md", _markdown(table, cal, run_dir.name, sha))
    _figure(scored, cal, Path(figures_dir) if figures_dir else out_dir.parent / "figures", tag)
    return table


def _markdown(table: pd.DataFrame, cal: dict, run: str, sha: str) -> str:
    f = lambda r, s: "" if pd.isna(r.get(f"{s}_auroc")) else f"{r[f'{s}_auroc']:.3f} [{r[f'{s}_auroc_lo']:.3f}, {r[f'{s}_auroc_hi']:.3f}]"  # noqa: E731
    lines = [f"OOD detection by run `{run}` (checkpoint `{sha[:12]}`), estimator {cal['estimator']} "
             f"{json.dumps(cal.get('estimator_options') or {})}; thresholds set on the {cal['split']} split at "
             f"{cal['false_alarm']:.0%} false alarms (bits/dim > {cal['scores']['bpd']['threshold']:.3f}, complexity "
             f"score > {cal['scores']['complexity']['threshold']:.3f}, compressor {cal['compressor']}). "
             "AUROC: out-of-distribution positive, DeLong 95 % interval; flagged: fraction above the threshold "
             "(for the test split: the false-alarm rate); FPR@95: false-alarm rate at 95 % detection.", "",
             "| set | n | mean bits/dim | AUROC bits/dim | AUROC complexity | flagged bits/dim | flagged complexity "
             "| FPR@95 bits/dim | FPR@95 complexity |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        g = lambda k: "" if pd.isna(r.get(k)) else f"{r[k]:.3f}"  # noqa: E731
        lines.append(f"| {r['set']} | {r['n']} | {r['mean_bpd']:.3f} | {f(r, 'bpd')} | {f(r, 'complexity')} | "
                     f"{g('bpd_flagged')} | {g('complexity_flagged')} | {g('bpd_fpr_at_95_tpr')} | "
                     f"{g('complexity_fpr_at_95_tpr')} |")
    return "\n".join(lines) + "\n"


def ood_figure(scored: dict,    # set name -> {score name: (N,) scores}, as score_sets returns
               cal: dict,       # the run's OOD calibration (thresholds per score)
               ):
    """Histograms of the raw bits/dim and the complexity score per set, the calibrated thresholds
    dashed; the in-distribution test set drawn thick, control sets dashed. Returns the figure."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, score, label in zip(axes, ood.SCORES, ("mixture bits/dim", "bits/dim − compressor bits/dim")):
        values = np.concatenate([v[score] for v in scored.values()])
        bins = np.linspace(np.percentile(values, 0.5), np.percentile(values, 99.5), 40)
        for name, v in scored.items():
            ax.hist(np.clip(v[score], bins[0], bins[-1]), bins=bins, histtype="step", density=True, label=name,
                    linewidth=2.2 if name.startswith("test (in") else 1.1, linestyle="--" if "control" in name else "-")
        ax.axvline(cal["scores"][score]["threshold"], color="k", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("density")
    axes[1].legend(fontsize=7, frameon=False, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def _figure(scored: dict, cal: dict, folder: Path, tag: str) -> None:
    import matplotlib.pyplot as plt
    from .plots import save_figure, set_theme
    set_theme()
    fig = ood_figure(scored, cal)
    save_figure(fig, folder / tag)
    plt.close(fig)
