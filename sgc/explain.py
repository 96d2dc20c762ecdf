"""Class-evidence maps through the denoising bound, with the sanity checks that keep them honest.

The evidence for class a over class b at image x is the gradient of the log-likelihood ratio,

    E_ab(x) = grad_x [log p(x | a) - log p(x | b)]        (nats per unit intensity, shape of x)

estimated through the Monte-Carlo bound of ``sgc.elbo`` with *paired* draws: both classes see
the same times t and noise e, so the prior term and the control variate cancel and

    log p(x | a) - log p(x | b) ~ -1/M sum_m Z/2 (||eps(z_t, t, a) - e||^2 - ||eps(z_t, t, b) - e||^2),
    z_t = alpha(t) (2x - 1) + sigma(t) e.

Differentiating this average is cheap (M forward + backward passes per class) and, because
every draw sees a noised copy of x, the average over draws smooths the map as SmoothGrad
(Smilkov et al. 2017) does with added noise. Positive values: raising that pixel makes a more
likely than b.

Sanity checks (Adebayo et al. 2018, "Sanity checks for saliency maps"): a map that survives
randomising the model's weights explains the image, not the model (``randomized_model``,
``rank_similarity``); deletion / insertion curves (Petsiuk et al. 2018) check that the pixels
ranked first by the map move the classifier most (``deletion_insertion``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from .sde import SDE, TimeSampler, _bcast

__all__ = ["EvidenceMap", "evidence_map", "randomized_model", "rank_similarity", "deletion_insertion",
           "run_evidence_study"]


@dataclass
class EvidenceMap:
    maps: np.ndarray        # (N, C, H, W) grad_x [log p(x|a) - log p(x|b)], nats per unit intensity of x in [0, 1]
    log_ratio: np.ndarray   # (N,) estimate of log p(x|a) - log p(x|b), nats
    stderr: np.ndarray      # (N,) Monte-Carlo standard error of log_ratio (paired draws), nats
    a: np.ndarray           # (N,) class of the numerator
    b: np.ndarray           # (N,) class of the denominator
    n_draws: int            # draws (t, e) per image, shared by both classes
    seconds: float


def evidence_map(model, sde: SDE, x, a, b, *,
                 n_draws: int = 32,          # Monte-Carlo draws per image, shared by classes a and b
                 eps: float = 1e-5,          # smallest diffusion time
                 draws_per_pass: int = 16,   # draws evaluated together (memory: N x this rows)
                 seed: int = 0,              # seeds times and noise
                 ) -> EvidenceMap:
    """Evidence maps of images x (N, C, H, W) in [0, 1] for class a over class b (ints or (N,) arrays)."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    n = len(x)
    a_t = torch.as_tensor(np.broadcast_to(np.asarray(a), (n,)).copy(), dtype=torch.long, device=device)
    b_t = torch.as_tensor(np.broadcast_to(np.asarray(b), (n,)).copy(), dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(seed)
    sampler = TimeSampler(sde, "likelihood", eps)
    u = (torch.arange(n_draws).double() + torch.rand(n, n_draws, generator=gen, dtype=torch.float64)) / n_draws
    t_all = sampler.sample(n * n_draws, u=u.flatten())[0].view(n, n_draws)  # stratified, density g^2/sigma^2
    noise = torch.randn((n, n_draws, *x.shape[1:]), generator=gen)
    xg = x.to(device).requires_grad_(True)
    grad = torch.zeros_like(xg)
    values = torch.zeros(n, n_draws, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for j0 in range(0, n_draws, draws_per_pass):
                j1 = min(n_draws, j0 + draws_per_pass)
                m = j1 - j0
                z0 = (2 * xg - 1).unsqueeze(1).expand(n, m, *x.shape[1:]).reshape(n * m, *x.shape[1:])
                t = t_all[:, j0:j1].reshape(-1).to(device)
                e = noise[:, j0:j1].reshape(n * m, *x.shape[1:]).to(device)
                alpha, sigma = sde.marginal(t)
                zt = _bcast(alpha, z0) * z0 + _bcast(sigma, z0) * e
                err_a = (model(zt, t, a_t.repeat_interleave(m)) - e).flatten(1).pow(2).sum(1)
                err_b = (model(zt, t, b_t.repeat_interleave(m)) - e).flatten(1).pow(2).sum(1)
                ratio = -0.5 * sampler.Z * (err_a - err_b)          # per-draw log p(x|a) - log p(x|b)
                values[:, j0:j1] = ratio.detach().double().view(n, m).cpu()
                (g,) = torch.autograd.grad(ratio.sum() / n_draws, xg)
                grad += g
    finally:
        model.train(was_training)
    stderr = values.std(1, unbiased=True) / np.sqrt(n_draws)
    return EvidenceMap(grad.detach().cpu().numpy(), values.mean(1).numpy(), stderr.numpy(),
                       a_t.cpu().numpy(), b_t.cpu().numpy(), n_draws, time.perf_counter() - start)


def randomized_model(model, seed: int = 0):
    """A copy of ``model`` with every layer re-initialised (Adebayo et al.'s full randomisation)."""
    rnd = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in rnd.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return rnd.eval()


def rank_similarity(maps_a, maps_b, absolute: bool = True) -> np.ndarray:
    """Spearman rank correlation per image between two sets of maps (N, ...) -> (N,)."""
    from scipy.stats import spearmanr
    a, b = np.asarray(maps_a).reshape(len(maps_a), -1), np.asarray(maps_b).reshape(len(maps_b), -1)
    if absolute:
        a, b = np.abs(a), np.abs(b)
    return np.array([spearmanr(u, v).statistic for u, v in zip(a, b)])


def deletion_insertion(score_fn,               # images (N, C, H, W) -> (N,) e.g. p(a | x)
                       x,                      # (N, C, H, W) in [0, 1]
                       order,                  # (N, D) pixel indices, most important first
                       *,
                       steps: int = 8,         # points after the start (fractions k / steps)
                       baseline: float = 0.0,  # value of a deleted pixel (digits: the background)
                       ) -> dict:
    """Deletion (remove the top pixels from x) and insertion (add them to the baseline) curves.

    Returns {"fractions" (S+1,), "deletion" (N, S+1), "insertion" (N, S+1)} of score_fn values;
    a faithful order makes deletion fall and insertion rise quickly (small / large area)."""
    x = np.asarray(x, dtype=np.float32)
    n, d = len(x), int(np.prod(x.shape[1:]))
    order = np.asarray(order)
    fractions = np.linspace(0, 1, steps + 1)
    dele, ins = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
    flat = x.reshape(n, d)
    for s, f in enumerate(fractions):
        k = int(round(f * d))
        mask = np.zeros((n, d), dtype=bool)
        np.put_along_axis(mask, order[:, :k], True, axis=1)
        deleted = np.where(mask, baseline, flat).reshape(x.shape).astype(np.float32)
        inserted = np.where(mask, flat, baseline).reshape(x.shape).astype(np.float32)
        dele[:, s], ins[:, s] = score_fn(deleted), score_fn(inserted)
    return {"fractions": fractions, "deletion": dele, "insertion": ins}


def run_evidence_study(run_dir, *,
                       out_dir="reports/tables",   # <tag>.md / .csv / .json
                       figures_dir=None,           # <tag>.png (default out_dir/../figures)
                       tag: str = "evidence",
                       n: int = 100, n_draws: int = 64, steps: int = 16, baseline: float = 0.0,
                       estimator_options: dict | None = None,  # the bound that scores p(a | x) on the curves
                       seed: int = 0, data_root=None):
    """Evidence maps of the first ``n`` test images (predicted class vs runner-up): the randomisation
    check and deletion / insertion curves against a random pixel order. Returns the summary table."""
    import json
    from pathlib import Path
    import pandas as pd
    from .classify import posterior
    from .data import load_dataset
    from .predict import score_chunked
    from .runs import atomic_write_text, find_checkpoint, load_run, sha256_file
    run_dir = Path(run_dir)
    model, sde, config = load_run(run_dir)
    data = config["data"]
    x = load_dataset(data["dataset"], root=data_root if data_root is not None else data["root"],
                     **(data.get("options") or {}))["test"].images[:n]
    opts = estimator_options if estimator_options is not None else {"n_draws": 64}

    def post(images):
        s, _ = score_chunked(model, sde, images, estimator="elbo", estimator_options=opts, seed=seed,
                             levels=data["levels"], dequantize=False, progress=False)
        return posterior(s.log_lik)

    p = post(x)
    a, b = p.argmax(1), np.argsort(p, 1)[:, -2]
    ev = evidence_map(model, sde, x, a, b, n_draws=n_draws, seed=seed)
    again = evidence_map(model, sde, x, a, b, n_draws=n_draws, seed=seed + 1)
    rnd = evidence_map(randomized_model(model, seed), sde, x, a, b, n_draws=n_draws, seed=seed)
    score = lambda images: post(images)[np.arange(len(x)), a]  # noqa: E731
    rng = np.random.default_rng(seed)
    orders = {"evidence map": np.argsort(-ev.maps.reshape(len(x), -1), 1),
              "random order": np.stack([rng.permutation(ev.maps[0].size) for _ in x])}
    curves = {k: deletion_insertion(score, x, o, steps=steps, baseline=baseline) for k, o in orders.items()}
    area = lambda c, kind: float(np.sum((c[kind].mean(0)[1:] + c[kind].mean(0)[:-1]) / 2 * np.diff(c["fractions"])))  # noqa: E731
    sha = sha256_file(find_checkpoint(run_dir))
    rows = [{"run": run_dir.name, "checkpoint_sha256": sha[:12], "n": len(x), "draws": n_draws, "order": k,
             "deletion_auc": area(c, "deletion"), "insertion_auc": area(c, "insertion")} for k, c in curves.items()]
    sim = {"trained_vs_trained_other_draws": float(rank_similarity(ev.maps, again.maps).mean()),
           "trained_vs_randomised_weights": float(rank_similarity(ev.maps, rnd.maps).mean())}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    atomic_write_text(out_dir / f"{tag}.csv", table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out_dir / f"{tag}.json", json.dumps({
        "run": run_dir.name, "checkpoint_sha256": sha, "rank_similarity_abs_maps": sim, "rows": rows,
        "curves": {k: {kind: c[kind].mean(0).tolist() for kind in ("deletion", "insertion")} | {
            "fractions": c["fractions"].tolist()} for k, c in curves.items()}, "curve_score": f"p(a | x), elbo {opts}",
        "baseline": baseline}, indent=1))
    lines = [f"Evidence maps grad_x[log p(x|a) - log p(x|b)] ({n_draws} paired draws) of the first {len(x)} test images "
             f"of `{run_dir.name}` ({data['dataset']}, checkpoint `{sha[:12]}`), a = predicted class, b = runner-up. "
             f"Randomisation check (Spearman rank correlation of |map|, mean over images): trained vs trained with "
             f"other draws {sim['trained_vs_trained_other_draws']:.3f}, trained vs re-initialised weights "
             f"{sim['trained_vs_randomised_weights']:.3f}. Deletion / insertion (pixels set to {baseline} / inserted "
             f"into a blank image, {steps} steps) of p(a | x) by the bound {json.dumps(opts)}: area under the mean curve "
             "(deletion: lower is better; insertion: higher is better).", "",
             "| pixel order | n | deletion AUC | insertion AUC |", "|---|---|---|---|"]
    lines += [f"| {r['order']} | {r['n']} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} |" for r in rows]
    atomic_write_text(out_dir / f"{tag}.md", "\n".join(lines) + "\n")
    import matplotlib.pyplot as plt
    from .plots import save_figure, set_theme
    set_theme()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for k, c in curves.items():
        for ax, kind in zip(axes, ("deletion", "insertion")):
            ax.plot(c["fractions"], c[kind].mean(0), marker="o", markersize=3, label=k)
            ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
            ax.set_ylabel("p(a | x)")
            ax.set_title(kind)
    axes[0].legend(frameon=False)
    save_figure(fig, (Path(figures_dir) if figures_dir else out_dir.parent / "figures") / tag)
    plt.close(fig)
    return table
