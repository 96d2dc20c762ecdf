"""Counterfactual images: noise an image part-way with the forward SDE, denoise it as another class.

SDEdit (Meng et al. 2022) with a class-conditional score: z_{t*} = alpha(t*) (2x - 1) + sigma(t*) e,
then the reverse process from t* to eps conditioned on the target class, either the reverse
SDE (Euler-Maruyama) or the probability-flow ODE (Heun), and one Tweedie denoising step. Small
t* keeps the image and changes little; large t* forgets it. The difference map
``counterfactual - x`` shows what the model would change to make the image look like the target
class. ``counterfactual_study`` measures, per t*, how often the classifier's decision flips to
the target and how far the image moved (L2), against the same procedure towards the image's
own predicted class (the change that noising and denoising alone cause).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from .progress import tqdm

from .likelihood import ode_drift
from .sde import SDE, _bcast

__all__ = ["Counterfactual", "counterfactual", "counterfactual_study", "run_counterfactual_study", "counterfactual_figure"]


@dataclass
class Counterfactual:
    images: np.ndarray     # (N, C, H, W) in [0, 1]
    diff: np.ndarray       # (N, C, H, W) images - x, in intensity units
    target: np.ndarray     # (N,) class the reverse process was conditioned on
    t_star: float          # diffusion time the image was noised to
    nfe: int               # network evaluations per image
    seconds: float


@torch.no_grad()
def counterfactual(model, sde: SDE, x, target, *,
                   t_star: float = 0.4,      # noise level in (0, T]: how much of x is forgotten
                   sampler: str = "sde",     # "sde" (Euler-Maruyama) or "ode" (probability flow, Heun)
                   steps: int = 500,         # steps for the whole [eps, T]; t* uses its share
                   eps: float = 1e-3,        # last time before the Tweedie denoising step
                   seed: int = 0,            # seeds the forward noise (and the SDE's noise)
                   ) -> Counterfactual:
    """Counterfactuals of images x (N, C, H, W) in [0, 1] towards ``target`` (int or (N,))."""
    if not eps < t_star <= sde.T:
        raise ValueError(f"t_star must be in ({eps}, {sde.T}], got {t_star}")
    if sampler not in ("sde", "ode"):
        raise ValueError(f"sampler must be 'sde' or 'ode', got {sampler!r}")
    start = time.perf_counter()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    n = len(x)
    y = torch.as_tensor(np.broadcast_to(np.asarray(target), (n,)).copy(), dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(seed)
    z0 = (2 * x - 1).to(device)
    alpha, sigma = sde.marginal(torch.tensor(t_star))
    z = alpha * z0 + sigma * torch.randn(x.shape, generator=gen).to(device)
    k = max(1, math.ceil(steps * (t_star - eps) / (sde.T - eps)))
    ts = torch.linspace(t_star, eps, k + 1)
    was_training = model.training
    model.eval()
    nfe = 0
    try:
        for i in range(k):
            t, dt = ts[i].to(device), float(ts[i + 1] - ts[i])  # dt < 0
            if sampler == "sde":
                t_vec = t.expand(n)
                _, s = sde.marginal(t_vec)
                g = sde.diffusion(t_vec)
                score = -model(z, t_vec, y) / _bcast(s, z)
                drift = sde.drift(z, t_vec) - _bcast(g ** 2, z) * score
                z = z + drift * dt + _bcast(g, z) * abs(dt) ** 0.5 * torch.randn(z.shape, generator=gen).to(device)
                nfe += 1
            else:  # Heun on the probability-flow ODE
                d1 = ode_drift(model, sde, z, t, y)
                z1 = z + d1 * dt
                d2 = ode_drift(model, sde, z1, ts[i + 1].to(device), y)
                z = z + 0.5 * (d1 + d2) * dt
                nfe += 2
        t_end = ts[-1].to(device).expand(n)
        a_end, s_end = sde.marginal(t_end)
        z = (z - _bcast(s_end, z) * model(z, t_end, y)) / _bcast(a_end, z)  # Tweedie: E[z_0 | z_eps]
        nfe += 1
    finally:
        model.train(was_training)
    images = ((z.float().cpu() + 1) / 2).clamp(0, 1).numpy()
    return Counterfactual(images, images - x.numpy(), y.cpu().numpy(), float(t_star), nfe,
                          time.perf_counter() - start)


def counterfactual_study(model, sde: SDE, x, classify_fn, *,
                         t_stars=(0.2, 0.4, 0.6),   # noise levels to compare
                         sampler: str = "sde", steps: int = 500, seed: int = 0, progress: bool = False,
                         ) -> tuple[pd.DataFrame, dict]:
    """Flip rate and distance of counterfactuals per t*, towards the runner-up class and (control)
    towards the predicted class. ``classify_fn``: images (N, C, H, W) -> posterior (N, K).

    Returns (table, {(t*, "target" | "control"): Counterfactual}). Table columns: t_star, towards,
    n, flip_rate (decision afterwards != the original decision), target_rate (== the target class),
    l2_mean / l2_median (||x' - x||_2 over all pixels, intensity units), rmse_mean, nfe, seconds.
    """
    x = np.asarray(x, dtype=np.float32)
    post = classify_fn(x)
    pred = post.argmax(1)
    runner_up = np.argsort(post, axis=1)[:, -2]
    rows, results = [], {}
    d = int(np.prod(x.shape[1:]))
    jobs = [(t, towards, target) for t in t_stars
            for towards, target in (("runner-up class", runner_up), ("predicted class (control)", pred))]
    for t_star, towards, target in tqdm(jobs, desc="counterfactuals", unit="setting", disable=not progress):
        cf = counterfactual(model, sde, x, target, t_star=t_star, sampler=sampler, steps=steps, seed=seed)
        after = classify_fn(cf.images).argmax(1)
        l2 = np.sqrt((cf.diff.reshape(len(x), -1) ** 2).sum(1))
        rows.append({"t_star": t_star, "towards": towards, "n": len(x), "flip_rate": float(np.mean(after != pred)),
                     "target_rate": float(np.mean(after == target)), "l2_mean": float(l2.mean()),
                     "l2_median": float(np.median(l2)), "rmse_mean": float((l2 / np.sqrt(d)).mean()),
                     "nfe": cf.nfe, "seconds": cf.seconds, "sampler": sampler})
        results[(t_star, "target" if towards.startswith("runner") else "control")] = cf
    return pd.DataFrame(rows), results


def run_counterfactual_study(run_dir, *,
                             out_dir="reports/tables",   # <tag>.md / .csv / .json
                             figures_dir=None,           # <tag>.png (default out_dir/../figures)
                             tag: str = "counterfactuals",
                             t_stars=(0.2, 0.4, 0.6), n: int = 100, sampler: str = "sde", steps: int = 500,
                             estimator: str = "elbo", estimator_options: dict | None = None,
                             seed: int = 0, data_root=None) -> pd.DataFrame:
    """``counterfactual_study`` on the first ``n`` test images of a run; the classifier is ``estimator``
    (chunked and seeded as sgc classify), uniform prior. Rows name the run folder and checkpoint."""
    import json
    from pathlib import Path
    from .classify import posterior
    from .data import load_dataset
    from .predict import score_chunked
    from .runs import atomic_write_text, find_checkpoint, load_run, sha256_file
    run_dir = Path(run_dir)
    model, sde, config = load_run(run_dir)
    data = config["data"]
    test = load_dataset(data["dataset"], root=data_root if data_root is not None else data["root"],
                        **(data.get("options") or {}))["test"]
    x = test.images[:n]
    opts = estimator_options if estimator_options is not None else {"n_draws": 64}

    def classify(images):
        s, _ = score_chunked(model, sde, images, estimator=estimator, estimator_options=opts, seed=seed,
                             levels=data["levels"], dequantize=config["train"].get("dequantize", True), progress=False)
        return posterior(s.log_lik)

    table, results = counterfactual_study(model, sde, x, classify, t_stars=t_stars, sampler=sampler, steps=steps,
                                          seed=seed, progress=True)
    sha = sha256_file(find_checkpoint(run_dir))
    table.insert(0, "run", run_dir.name)
    table.insert(1, "checkpoint_sha256", sha[:12])
    table.insert(2, "classifier", f"{estimator} {json.dumps(opts)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{tag}.csv", table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out_dir / f"{tag}.json", json.dumps({"run": run_dir.name, "checkpoint_sha256": sha,
                                                           "rows": table.to_dict("records")}, indent=1))
    lines = [f"Counterfactuals (SDEdit, reverse {sampler}, {steps} steps over [0, T]) of the first {len(x)} test "
             f"images of `{run_dir.name}` ({data['dataset']}, checkpoint `{sha[:12]}`), classified by {estimator} "
             f"{json.dumps(opts)}. flip rate: decision changed; target rate: decision = the class the reverse "
             "process was conditioned on; L2 over all pixels in intensity units [0, 1]. The control denoises "
             "towards the image's own predicted class.", "",
             "| t* | towards | n | flip rate | target rate | mean L2 | median L2 | RMSE | NFE |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['t_star']} | {r['towards']} | {r['n']} | {r['flip_rate']:.3f} | {r['target_rate']:.3f} | "
                     f"{r['l2_mean']:.3f} | {r['l2_median']:.3f} | {r['rmse_mean']:.3f} | {r['nfe']} |")
    atomic_write_text(out_dir / f"{tag}.md", "\n".join(lines) + "\n")
    fig = counterfactual_figure(x, [results[(t, "target")] for t in t_stars], k=6)
    from .plots import save_figure
    save_figure(fig, (Path(figures_dir) if figures_dir else out_dir.parent / "figures") / tag)
    return table


def counterfactual_figure(x, cfs: list[Counterfactual], k: int = 6):
    """Rows: k images; columns: the image, then per t* the counterfactual and its difference map."""
    import matplotlib.pyplot as plt
    k = min(k, len(x))
    fig, axes = plt.subplots(k, 1 + 2 * len(cfs), figsize=(1.3 * (1 + 2 * len(cfs)), 1.3 * k), squeeze=False)
    lim = max(float(np.abs(cf.diff[:k]).max()) for cf in cfs) or 1.0
    for i in range(k):
        axes[i, 0].imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
        for j, cf in enumerate(cfs):
            axes[i, 1 + 2 * j].imshow(cf.images[i, 0], cmap="gray", vmin=0, vmax=1)
            axes[i, 2 + 2 * j].imshow(cf.diff[i, 0], cmap="RdBu_r", vmin=-lim, vmax=lim)
            if i == 0:
                axes[0, 1 + 2 * j].set_title(f"t*={cf.t_star}, other class", fontsize=7)
                axes[0, 2 + 2 * j].set_title("difference", fontsize=7)
    axes[0, 0].set_title("image", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
