"""Per-image probabilities of experiment rows, and paired tests between classifiers.

``sgc experiment`` writes, for every row, the validation and test probabilities of each
image to ``<out_dir>/<tag>_predictions/<classifier>_<config_id>_s<seed>.csv`` (the row's
``predictions`` column holds that path relative to ``out_dir``). ``paired_tests`` pairs
every generative configuration with every other configuration of the same setting (dataset,
fraction, imbalance) on the seeds both have, checks that they scored the same test images,
and reports per seed the DeLong test of AUC(a) = AUC(b) and, over seeds, the mean AUC
difference with a paired bootstrap over test images (the same resampled images for every
seed and both classifiers) for its 95 % interval and p-value. Binary problems only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["write_predictions", "read_predictions", "paired_tests", "paired_markdown", "auc_difference_over_seeds",
           "compare_by_seed", "prediction_files"]

GENERATIVE = ("score_weighted", "score_elbo", "score_ode")   # the order of a in a pair of score models


def write_predictions(path, splits: dict) -> Path:
    """splits: {"val": (ids, labels, proba (N, K)), "test": ...} -> one CSV row per split x image:
    split, image_id, label, p_0 .. p_{K-1}."""
    frames = []
    for name, (ids, labels, proba) in splits.items():
        proba = np.asarray(proba, dtype=np.float64)
        f = pd.DataFrame({"split": name, "image_id": [str(i) for i in ids], "label": np.asarray(labels, dtype=int)})
        for k in range(proba.shape[1]):
            f[f"p_{k}"] = proba[:, k]
        frames.append(f)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pd.concat(frames).to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(path)
    return path


def read_predictions(path, split: str = "test") -> tuple[list, np.ndarray, np.ndarray]:
    """(image ids, labels (N,), proba (N, K)) of one split of a predictions CSV."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: predictions file missing (written by sgc experiment beside its table)")
    f = pd.read_csv(path, dtype={"image_id": str})
    f = f[f["split"] == split]
    if f.empty:
        raise ValueError(f"{path} has no rows of split {split!r}")
    cols = sorted((c for c in f.columns if c.startswith("p_")), key=lambda c: int(c[2:]))
    return f["image_id"].tolist(), f["label"].to_numpy(), f[cols].to_numpy()


def _auc_columns(positive: np.ndarray, s: np.ndarray) -> np.ndarray:
    m, n = int(positive.sum()), int((~positive).sum())
    r = stats.rankdata(s, axis=0)
    return (r[positive].sum(0) - m * (m + 1) / 2) / (m * n)


def auc_difference_over_seeds(y, a, b, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over seeds of AUC(a_s) - AUC(b_s) on the same test images, with a paired bootstrap.

    y (N,) 0/1; a, b (S, N) scores of the positive class, one row per seed. Each round
    resamples images within each class once and scores every seed of both classifiers on them.
    Returns {diff, lo, hi, p_value, n_boot}; p from the bootstrap distribution shifted to zero.
    """
    y = np.asarray(y).astype(bool)
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    d = float(np.mean(_auc_columns(y, a.T) - _auc_columns(y, b.T)))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        yy = y[idx]
        diffs[i] = np.mean(_auc_columns(yy, a[:, idx].T) - _auc_columns(yy, b[:, idx].T))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    p = (1 + np.sum(np.abs(diffs - d) >= abs(d) - 1e-12)) / (1 + n_boot)
    return {"diff": d, "lo": float(lo), "hi": float(hi), "p_value": float(min(1.0, p)), "n_boot": n_boot}


def prediction_files(patterns) -> dict[str, dict[int, Path]]:
    """Group the files matched by glob ``patterns`` named ``<name>_s<seed>.csv`` as {name: {seed: path}}."""
    import glob
    import re
    out: dict[str, dict[int, Path]] = {}
    for pattern in patterns:
        files = sorted(glob.glob(str(pattern)))
        if not files:
            raise FileNotFoundError(f"no predictions file matches {pattern!r} (sgc experiment writes them to "
                                    f"<out-dir>/<tag>_predictions/<classifier>_<config>_s<seed>.csv)")
        for f in files:
            m = re.fullmatch(r"(.+)_s(\d+)\.csv", Path(f).name)
            if m is None:
                raise ValueError(f"{f}: a predictions file name must end in _s<seed>.csv")
            out.setdefault(m.group(1), {})[int(m.group(2))] = Path(f)
    return out


def compare_by_seed(a: dict, b: dict, n_boot: int = 2000) -> dict | None:
    """Classifier a against b on the seeds both have, each seed's test images paired.

    a, b: {seed: predictions CSV path}. Returns per seed the two AUCs and the DeLong p-value
    (two-sided), and over the seeds the mean AUC difference a - b with the paired bootstrap
    of ``auc_difference_over_seeds`` (diff, lo, hi, p_bootstrap); None when no seed is common
    or the problem is not binary. Raises when the two scored different test images.
    """
    from .metrics import delong_test
    seeds = sorted(set(a) & set(b))
    sa, sb, per, y0, ids0 = [], [], [], None, None
    for s in seeds:
        ida, ya, pa = read_predictions(a[s])
        idb, yb, pb = read_predictions(b[s])
        if ida != idb or not np.array_equal(ya, yb) or (ids0 is not None and ida != ids0):
            raise ValueError(f"{a[s]} and {b[s]} scored different test images; paired tests need the same images")
        if pa.shape[1] != 2:
            return None
        ids0, y0 = ida, ya
        sa.append(pa[:, 1])
        sb.append(pb[:, 1])
        d = delong_test(ya, pa[:, 1], pb[:, 1], positive=1)
        per.append({"seed": s, "auc_a": d["auc_a"], "auc_b": d["auc_b"], "p_delong": d["p_value"]})
    if not seeds:
        return None
    boot = auc_difference_over_seeds(y0 == 1, np.array(sa), np.array(sb), n_boot=n_boot)
    return {"seeds": seeds, "n_test": len(y0), "per_seed": per, "diff": boot["diff"], "lo": boot["lo"],
            "hi": boot["hi"], "p_bootstrap": boot["p_value"]}


def paired_tests(rows: pd.DataFrame, out_dir, n_boot: int = 2000) -> pd.DataFrame:
    """One row per (setting, generative config a, other config b) with predictions for common seeds."""
    if "predictions" not in rows.columns:
        return pd.DataFrame()
    have = rows[rows["predictions"].notna()].copy()
    have["imbalance_ratio"] = have["imbalance_ratio"].astype(object).where(have["imbalance_ratio"].notna(), "none")
    keys = ["dataset", "fraction_percent", "imbalance_ratio"]
    out = []
    for setting, g in have.groupby(keys, sort=True):
        configs = g.drop_duplicates("config_id").set_index("config_id")["classifier"]
        for ca, clf_a in configs.items():
            if clf_a not in GENERATIVE:
                continue
            for cb, clf_b in configs.items():
                if cb == ca or (clf_b in GENERATIVE and (GENERATIVE.index(clf_b), cb) < (GENERATIVE.index(clf_a), ca)):
                    continue  # each pair of generative configs once, a = the one first in GENERATIVE
                ra = g[g["config_id"] == ca].drop_duplicates("seed", keep="last").set_index("seed")
                rb = g[g["config_id"] == cb].drop_duplicates("seed", keep="last").set_index("seed")
                c = compare_by_seed({s: Path(out_dir) / f for s, f in ra["predictions"].items()},
                                    {s: Path(out_dir) / f for s, f in rb["predictions"].items()}, n_boot=n_boot)
                if c is None:
                    continue
                out.append({**dict(zip(keys, setting)), "classifier_a": clf_a, "config_a": ca,
                            "classifier_b": clf_b, "config_b": cb, "seeds": " ".join(map(str, c["seeds"])),
                            "n_test": c["n_test"], "auc_diff": c["diff"], "auc_diff_lo": c["lo"],
                            "auc_diff_hi": c["hi"], "p_bootstrap": c["p_bootstrap"],
                            "p_delong_per_seed": " / ".join(f"{r['p_delong']:.3g}" for r in c["per_seed"])})
    return pd.DataFrame(out)


def paired_markdown(table: pd.DataFrame) -> str:
    """A Markdown section for ``paired_tests`` output ('' when empty)."""
    if table.empty:
        return ""
    lines = ["", "## Paired tests on the same test images", "",
             "AUC(a) - AUC(b), mean over the common seeds, with the 95 % paired bootstrap interval over test "
             "images and its p-value; DeLong p-value of each seed (two-sided). Only rows whose per-image "
             "probabilities were kept (column `predictions` of the CSV) are paired.", "",
             "| fraction % | imbalance | a | config a | b | config b | seeds | ΔAUC [95 %] | p (bootstrap) | "
             "p DeLong per seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['fraction_percent']:g} | {r['imbalance_ratio']} | {r['classifier_a']} | {r['config_a']} | "
                     f"{r['classifier_b']} | {r['config_b']} | {r['seeds']} | {r['auc_diff']:+.3f} "
                     f"[{r['auc_diff_lo']:+.3f}, {r['auc_diff_hi']:+.3f}] | {r['p_bootstrap']:.3g} | "
                     f"{r['p_delong_per_seed']} |")
    return "\n".join(lines) + "\n"
