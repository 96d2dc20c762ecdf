"""Evidence per noise level: the bound's per-draw class differences, and how to weigh them.

The Monte-Carlo bound of ``sgc.elbo`` averages, over draws (t, e), the value
v_k(t, e) = Z/2 (||eps_hat(z_t, t, k) - e||^2 - c(t) ||e||^2) with t drawn from the
likelihood density p(t) = g^2 / (sigma^2 Z) (uniform in log-SNR for the VP SDE). Every class
of an image sees the same (t, e), so v_j(t, e) - v_k(t, e) is a paired, per-noise-level
piece of evidence for class k over class j. A classifier is a weighting of that evidence
over t:

* ``"likelihood"``: weight g^2 / sigma^2 on the denoising error, i.e. the bound itself;
* ``"uniform"``: weight 1 per unit t on ||eps_hat - e||^2 (the sigma^2 / "simple" DSM
  weighting the model was trained with; Diffusion Classifier's evenly spaced timesteps);
* ``"truncated"``: the likelihood weighting on a range of noise levels (bins of the
  likelihood CDF, chosen on validation);
* ``"logistic"``: one weight per noise-level bin fitted by a ridge-regularised logistic
  regression on validation, shrunk towards the likelihood weighting (a calibrated generative
  classifier, ``sgc.weighting``).

Other weightings w(t) of the error are estimated from the same draws by importance weights
w(t) / (g^2 / sigma^2): unbiased for any w, exact for the bound. ``bin_means`` cuts the CDF
position u of the draws into equal-mass bins (equal log-SNR width for VP); with Sobol or
stratified t and n_draws a multiple of the bins, every bin holds the same number of draws.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Evidence", "compute_evidence", "evidence_key", "save_evidence", "load_evidence", "error_weight",
           "weighted_scores", "bin_means", "bin_edges_t", "eliminate_offline", "WEIGHTINGS"]

WEIGHTINGS = ("likelihood", "uniform")


@dataclass
class Evidence:
    """Per-draw bound values of N images x K classes x M draws, and where the draws fell."""
    u: np.ndarray          # (N, M) float64, position of the draw's t in [0, 1) of the likelihood density's CDF
    t: np.ndarray          # (N, M) float64, diffusion time of the draw
    values: np.ndarray     # (N, K, M) float64, per-draw bound values, nats (lower = more likely); paired over K
    Z: float               # normaliser of the likelihood density (the constant draw weight)
    ids: list              # (N,) image ids
    labels: np.ndarray     # (N,) int labels (-1 when unknown)
    options: dict          # estimator options that produced the draws (n_draws, t_sampling, ...)

    def __len__(self) -> int:
        return self.values.shape[0]

    def head(self, m: int) -> "Evidence":
        """The first m draws of every image (with Sobol t a stratified sample of m draws)."""
        if not 2 <= m <= self.values.shape[2]:
            raise ValueError(f"m must be in [2, {self.values.shape[2]}], got {m}")
        return Evidence(self.u[:, :m], self.t[:, :m], self.values[:, :, :m], self.Z, self.ids, self.labels,
                        {**self.options, "n_draws": m})

    def subset(self, index) -> "Evidence":
        index = np.asarray(index)
        return Evidence(self.u[index], self.t[index], self.values[index], self.Z,
                        [self.ids[i] for i in index], self.labels[index], self.options)


def compute_evidence(model, sde, images, *,
                     ids=None,                   # (N,) image ids (default 0..N-1)
                     labels=None,                # (N,) int labels, kept alongside
                     n_draws: int = 256,         # draws (t, e) per image, shared by its classes
                     t_sampling: str = "sobol",  # "sobol" (nested strata), "stratified", "iid"
                     noise_sampling: str = "antithetic",  # "iid", "antithetic", "sobol"
                     batch_size: int = 64,       # images per call of the bound
                     levels: int = 256,          # intensity levels of the source data
                     dequantize: bool = True,    # uniform dequantization shared by the classes
                     seed: int = 0,
                     progress: bool = True,
                     **options) -> Evidence:
    """Per-draw bound values for images (N, C, H, W) in [0, 1] and every class of ``model``."""
    from .classify import score_images
    from .sde import TimeSampler
    s = score_images(model, sde, images, estimator="elbo", batch_size=batch_size, levels=levels,
                     dequantize=dequantize, seed=seed, progress=progress, n_draws=n_draws, t_sampling=t_sampling,
                     noise_sampling=noise_sampling, keep_draws=True, **options)
    n = len(s.log_lik)
    opts = {"n_draws": n_draws, "t_sampling": t_sampling, "noise_sampling": noise_sampling,
            "batch_size": batch_size, "seed": seed, "dequantize": dequantize, **options}
    return Evidence(u=np.asarray(s.extra["u"], dtype=np.float64), t=np.asarray(s.extra["t"], dtype=np.float64),
                    values=np.asarray(s.extra["values"], dtype=np.float64),
                    Z=TimeSampler(sde, "likelihood", options.get("eps", 1e-5)).Z,
                    ids=[str(i) for i in (range(n) if ids is None else ids)],
                    labels=np.full(n, -1) if labels is None else np.asarray(labels, dtype=np.int64),
                    options={**opts, "seconds": s.seconds})   # the cost, kept with a cached file


def evidence_key(**parts) -> str:
    """A short hash of what makes an evidence file valid (checkpoint, options, image ids)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_evidence(path, ev: Evidence, key: str = "") -> Path:
    """Write ``ev`` to an .npz (atomic); ``key`` (``evidence_key``) tells a later run whether it is reusable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez_compressed(f, u=ev.u, t=ev.t, values=ev.values, Z=np.float64(ev.Z), ids=np.asarray(ev.ids, dtype=str),
                            labels=ev.labels, options=json.dumps(ev.options, default=str), key=key)
    tmp.replace(path)
    return path


def load_evidence(path, key: str | None = None) -> Evidence | None:
    """The evidence in ``path``; None when ``key`` is given and differs (the file is stale)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no evidence file; compute it with sgc.evidence.compute_evidence")
    with np.load(path, allow_pickle=False) as z:
        if key is not None and str(z["key"]) != key:
            return None
        return Evidence(u=z["u"], t=z["t"], values=z["values"], Z=float(z["Z"]), ids=[str(i) for i in z["ids"]],
                        labels=z["labels"], options=json.loads(str(z["options"])))


def error_weight(weighting: str, sde, t, Z: float) -> np.ndarray:
    """Importance weight of a draw at time t (any shape) drawn from the likelihood density
    p(t) = g^2 / (sigma^2 Z): (weight per unit t on ||eps_hat - e||^2) / (g^2 / sigma^2), scaled
    to mean one under p. "likelihood": 1; "uniform": sigma^2 / g^2 x Z / (T - eps)."""
    t = np.asarray(t, dtype=np.float64)
    if weighting == "likelihood":
        return np.ones_like(t)
    if weighting == "uniform":
        tt = torch.as_tensor(t)
        _, sigma = sde.marginal(tt)
        return (sigma ** 2 / sde.diffusion(tt) ** 2).numpy() * Z / sde.T  # eps (1e-5) is negligible
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def weighted_scores(ev: Evidence, sde, weighting: str = "likelihood") -> np.ndarray:
    """(N, K) class scores, higher = more likely: minus the weighted mean of the per-draw values.

    "likelihood" gives minus the bound's diffusion part (log p(x | k) up to a per-image
    constant); "uniform" the uniform-in-t weighting of the same draws, with importance weights
    of mean one (the same units; only differences between classes matter). Draws not made
    (NaN) are skipped.
    """
    w = error_weight(weighting, sde, ev.t, ev.Z)                 # (N, M)
    v = ev.values
    ok = ~np.isnan(v)
    return -(np.where(ok, v, 0.0) * w[:, None, :]).sum(2) / ok.sum(2)


def bin_means(ev: Evidence, n_bins: int = 16) -> np.ndarray:
    """(N, K, B) mean draw value per equal-mass bin of the likelihood CDF (bin 0 = least noise).

    With every bin holding the same number of draws, the mean over bins equals the bound's
    diffusion part. A bin without draws is NaN.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    b = np.minimum((ev.u * n_bins).astype(np.int64), n_bins - 1)        # (N, M)
    onehot = np.eye(n_bins)[b]                                          # (N, M, B)
    v = np.nan_to_num(ev.values)
    ok = (~np.isnan(ev.values)).astype(np.float64)
    sums = np.einsum("nkm,nmb->nkb", v, onehot)
    counts = np.einsum("nkm,nmb->nkb", ok, onehot)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def bin_edges_t(sde, n_bins: int = 16, eps: float = 1e-5) -> np.ndarray:
    """(B + 1,) diffusion times at the edges of the equal-mass bins of the likelihood density."""
    from .sde import TimeSampler
    sampler = TimeSampler(sde, "likelihood", eps)
    u = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    t, _ = sampler.sample(n_bins + 1, u=u)
    out = t.double().numpy()
    out[0], out[-1] = eps, sde.T
    return out


def eliminate_offline(ev: Evidence, z: float = 3.0, first_round: int = 16, round_size: int | None = None,
                      pairs: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What ``elbo_class_scores(eliminate=True, stop_when_decided=True)`` would spend and return on
    these draws: ((N, K) likelihood-weighted scores, (N,) network evaluations per image).

    After ``first_round`` draws and then every ``round_size``, classes worse than the best by more
    than z paired standard errors are dropped (``sgc.elbo``'s rule); an image down to one class
    stops. A dropped class keeps its difference to the best class on the draws it saw. Antithetic
    draws (default: from ``ev.options``) count in pairs.
    """
    from .elbo import _eliminated
    pairs = ev.options.get("noise_sampling") == "antithetic" if pairs is None else pairs
    v = torch.as_tensor(ev.values)
    n, k, m = v.shape
    units = v.view(n, k, m // 2, 2).mean(3) if pairs else v
    per = 2 if pairs else 1
    step = round_size or first_round
    stops = sorted({s for s in list(range(first_round, m + 1, step)) + [m] if s >= 2})
    drawing = torch.ones(n, k, dtype=torch.bool)
    used = torch.full((n, k), m, dtype=torch.long)             # draws each class saw
    for s in stops[:-1]:
        u = units[:, :, :s // per]
        drop = _eliminated(u, drawing, z, 1)
        drawing &= ~drop
        used[drop] = s
        done = drawing.sum(1) <= 1                             # decided: the survivor stops too
        stop = done[:, None] & drawing
        used[stop] = torch.minimum(used[stop], torch.tensor(s))
        drawing &= ~done[:, None]
    # scores as sgc.elbo reports them: a class with fewer draws than the image's most-drawn ones is
    # re-expressed relative to the best of those, on the draws both saw
    scores = np.empty((n, k))
    for i in range(n):
        top = [c for c in range(k) if used[i, c] == used[i].max()]
        means = {c: float(units[i, c, :int(used[i, c]) // per].mean()) for c in top}
        r = min(top, key=lambda c: means[c])
        base = units[i, r, :int(used[i, r]) // per].mean()
        for c in range(k):
            if c in means:
                scores[i, c] = -means[c]
                continue
            shared = int(used[i, c]) // per
            scores[i, c] = -float(base + (units[i, c, :shared] - units[i, r, :shared]).mean())
    return scores, used.sum(1).numpy()
