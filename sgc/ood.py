"""Out-of-distribution scores from the model's own density, with the input-complexity correction.

A generative classifier models p(x | y); the mixture p(x) = sum_y p(x | y) p(y) is a density of
the training distribution, and an image it finds unlikely (high bits/dim) is a candidate
out-of-distribution input. Raw likelihoods are known to fail: simple images (constant, smooth,
low-contrast) get *higher* likelihood than the training data (Nalisnick et al. 2019, "Do deep
generative models know what they don't know?"). Serra et al. 2020 ("Input complexity and
out-of-distribution detection with likelihood-based generative models") correct by the image's
complexity L(x), the bits/dim of a general-purpose lossless compressor:

    S(x) = bpd_model(x) - bpd_compressor(x)        (both in bits/dim of the discrete image)

Large values of either score mean "out of distribution". Both are calibrated on held-out
in-distribution images (the validation split): the threshold of a score is its (1 - rate)
quantile there, so that a fraction ``false_alarm`` of in-distribution images is flagged.
"""
from __future__ import annotations

import io
import lzma
import math
import zlib

import numpy as np
from scipy.special import logsumexp

__all__ = ["SCORES", "COMPRESSORS", "mixture_bpd", "complexity_bpd", "ood_scores", "calibrate", "flag",
           "detection_metrics"]

SCORES = ("bpd", "complexity")     # raw mixture bits/dim; bits/dim minus the compressor's (Serra et al.)
COMPRESSORS = ("png", "zlib", "lzma")


def mixture_bpd(log_lik,        # (N, K) log p(x | y = k), nats, density of x on [0, 1]^D
                log_p_y,        # (K,) log p(y)
                dims: int,      # D = C * H * W
                levels: int,    # grey levels of the discrete data
                ) -> np.ndarray:
    """bits/dim of the discrete image under p(x) = sum_k p(x | k) p(k). (N, K) -> (N,)."""
    log_px = logsumexp(np.asarray(log_lik, dtype=np.float64) + np.asarray(log_p_y, dtype=np.float64), axis=1)
    return -log_px / (dims * math.log(2)) + math.log2(levels)


def _to_integers(image: np.ndarray, levels: int) -> np.ndarray:
    k = np.round(np.clip(image, 0, 1) * (levels - 1))
    return k.astype(np.uint8 if levels <= 256 else np.uint16)


def complexity_bpd(images,                 # (N, C, H, W) in [0, 1]
                   levels: int,            # grey levels: pixels are stored as k = round(x (levels - 1))
                   compressor: str = "png",  # "png" (Pillow, level 9), "zlib" (level 9) or "lzma" (preset 9)
                   ) -> np.ndarray:
    """Lossless compressed size of each quantised image in bits per dimension, (N,).

    The size includes the format's fixed header, the same for every image of one shape, so
    differences between images are unaffected; compare images of one shape only.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {images.shape}")
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor must be one of {COMPRESSORS}, got {compressor!r}")
    dims = int(np.prod(images.shape[1:]))
    out = np.empty(len(images))
    for i, x in enumerate(images):
        k = _to_integers(x, levels)
        if compressor == "png":
            from PIL import Image
            # Pillow writes no 16-bit colour PNG: >8-bit images with several channels are stored as one
            # 16-bit grey PNG per channel, their sizes summed (a replicated grey image: the grey bits/dim)
            planes = [k[0] if k.shape[0] == 1 else np.moveaxis(k, 0, -1)] if k.dtype == np.uint8 else list(k)
            n = 0
            for arr in planes:
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="PNG", optimize=True, compress_level=9)
                n += buf.tell()
        elif compressor == "zlib":
            n = len(zlib.compress(k.tobytes(), 9))
        else:
            n = len(lzma.compress(k.tobytes(), preset=9))
        out[i] = 8.0 * n / dims
    return out


def ood_scores(log_lik, images, log_p_y, levels: int, compressor: str = "png") -> dict[str, np.ndarray]:
    """{"bpd": mixture bits/dim, "complexity": bpd - compressor bits/dim, "compressor_bpd": ...}, each (N,)."""
    images = np.asarray(images)
    dims = int(np.prod(images.shape[1:]))
    bpd = mixture_bpd(log_lik, log_p_y, dims, levels)
    comp = complexity_bpd(images, levels, compressor)
    return {"bpd": bpd, "complexity": bpd - comp, "compressor_bpd": comp}


def calibrate(scores: dict[str, np.ndarray],   # in-distribution scores, as from ood_scores
              false_alarm: float = 0.05,         # fraction of in-distribution images to flag
              ) -> dict:
    """Thresholds at the (1 - false_alarm) quantile of each score, with summary statistics."""
    if not 0 < false_alarm < 1:
        raise ValueError(f"false_alarm must be in (0, 1), got {false_alarm}")
    out = {"false_alarm": false_alarm, "scores": {}}
    for name in SCORES:
        v = np.asarray(scores[name], dtype=np.float64)
        if len(v) < 10:
            raise ValueError(f"calibration needs at least 10 in-distribution images, got {len(v)}")
        out["scores"][name] = {
            "threshold": float(np.quantile(v, 1 - false_alarm, method="higher")),
            "n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)),
            "quantiles": {str(q): float(np.quantile(v, q)) for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)},
            "achieved_false_alarm": float(np.mean(v > np.quantile(v, 1 - false_alarm, method="higher")))}
    return out


def flag(scores: dict[str, np.ndarray], calibration: dict) -> dict[str, np.ndarray]:
    """{score name: bool (N,)}: above the calibrated threshold (out of distribution)."""
    return {name: np.asarray(scores[name]) > calibration["scores"][name]["threshold"] for name in SCORES}


def detection_metrics(id_scores, ood_scores_, threshold: float) -> dict:
    """AUROC (OOD positive), detection rate and the in-distribution false-alarm rate at ``threshold``,
    and the false-alarm rate at 95 % detection. Higher score = more out of distribution."""
    from sklearn.metrics import roc_auc_score, roc_curve
    a, b = np.asarray(id_scores, float), np.asarray(ood_scores_, float)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    s = np.r_[a, b]
    fpr, tpr, _ = roc_curve(y, s)
    return {"n_id": int(len(a)), "n_ood": int(len(b)), "auroc": float(roc_auc_score(y, s)),
            "detection_rate": float(np.mean(b > threshold)), "false_alarm_rate": float(np.mean(a > threshold)),
            "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")])}
