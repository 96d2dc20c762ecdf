"""The probability-flow ODE likelihood: the paper's released code path vs sgc's engine.

Same model, images, tolerance, eps and Hutchinson probe vector for both:

(a) reference: scipy ``solve_ivp`` RK45 (rtol = atol = 1e-5), one class at a time, the state
    copied to the host (numpy float64) at every evaluation, two forward passes and one backward
    per evaluation (drift, then the divergence by a separate forward + VJP), Gaussian probe;
(b) sgc: torchdiffeq dopri5 on the model's device, all classes of all images in one solve,
    one forward + one VJP per evaluation (``sgc.likelihood.class_log_likelihoods``).

Prints a table and writes JSON (seconds per image x class, NFE, speed-up, the largest
log-likelihood difference in bits/dim). Without ``--run-dir`` (or with an empty one) a small
model is trained first on scikit-learn's digits.

    python benchmarks/likelihood.py                         # CPU, 8x8 digits, ScoreMLP
    python benchmarks/likelihood.py --device cuda --arch unet --size 32 --images 16
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _table import Column, print_table  # noqa: E402
from sgc.likelihood import log_likelihood, ode_drift  # noqa: E402


def prepare_model(run_dir=None, arch="mlp", size=8, steps=600, device="cpu", seed=0,
                  dataset="digits", root=None):
    """(model, sde, data splits, seconds spent training) for the benchmarks.

    Loads ``run_dir`` when it holds a checkpoint, else trains a small class-conditional
    model on ``dataset`` (likelihood weighting) and, given ``run_dir``, saves it there.
    """
    from sgc.data import load_dataset
    from sgc.nets import ScoreMLP, ScoreUNet
    from sgc.sde import VPSDE
    from sgc.runs import load_run
    from sgc.train import train_score_model
    splits = load_dataset(dataset, root=root, size=size)
    if run_dir is not None and (Path(run_dir) / "checkpoint.pt").exists():
        model, sde, _ = load_run(run_dir, device)
        return model, sde, splits, 0.0
    torch.manual_seed(seed)
    tr = splits["train"]
    k, c = len(tr.class_names), tr.images.shape[1]
    if arch == "mlp":
        model = ScoreMLP(num_classes=k, in_channels=c, image_size=size, hidden=256, blocks=2, emb_dim=64)
    else:
        model = ScoreUNet(num_classes=k, in_channels=c, image_size=size, channels=32, channel_mults=(1, 2, 2))
    sde = VPSDE()
    cfg = dict(steps=steps, batch_size=128, lr=1e-3, warmup=50, weighting="likelihood",
               levels=tr.levels, seed=seed, checkpoint_every=max(steps, 1))
    start = time.perf_counter()
    _, ema, _ = train_score_model(model, sde, tr.images, tr.labels, cfg, run_dir=run_dir,
                                  device=device, progress=False)
    return ema.eval(), sde, splits, time.perf_counter() - start


def reference_log_likelihood(model, sde, x, y, probe, rtol=1e-5, atol=1e-5, eps=1e-5):
    """The released code's path for one class: (log p(x | y) nats on [0,1]^D (N,), nfe).

    x (N, C, H, W) in [0, 1] (already dequantized), y int, probe (N, C, H, W) Gaussian.
    """
    device = next(model.parameters()).device
    shape = x.shape
    n = shape[0]
    yv = torch.full((n,), int(y), device=device, dtype=torch.long)
    v = probe.to(device)
    nfe = 0

    def drift_fn(z, t):
        with torch.no_grad():
            return ode_drift(model, sde, z, t, yv)

    def div_fn(z, t):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            out = ode_drift(model, sde, z, t, yv)
            (g,) = torch.autograd.grad((out * v).sum(), z)
        return (g * v).flatten(1).sum(1)

    def ode_func(t, state):
        nonlocal nfe
        nfe += 1
        z = torch.from_numpy(state[:-n].reshape(shape)).to(device).float()  # host -> device
        tv = torch.full((n,), t, device=device, dtype=torch.float32)
        drift = drift_fn(z, tv).detach().cpu().numpy().reshape(-1)            # forward 1
        div = div_fn(z, tv).detach().cpu().numpy().reshape(-1)                # forward 2 + VJP
        return np.concatenate([drift, div]).astype(np.float64)

    z0 = (2 * x - 1).double().numpy().reshape(-1)
    init = np.concatenate([z0, np.zeros(n)])
    sol = solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    zT = torch.from_numpy(sol.y[:-n, -1].reshape(shape))
    delta = torch.from_numpy(sol.y[-n:, -1])
    dims = zT[0].numel()
    prior = -0.5 * dims * math.log(2 * math.pi) - 0.5 * zT.flatten(1).pow(2).sum(1)
    return (prior + delta + dims * math.log(2.0)).float(), nfe


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=None, help="trained run folder (trained here when empty)")
    ap.add_argument("--arch", default="mlp", choices=["mlp", "unet"])
    ap.add_argument("--dataset", default="digits", help="digits or breastmnist")
    ap.add_argument("--data-root", default=None, help="the dataset's folder (default: the data-root rule, "
                                                      "$SGC_DATA/<folder> else a default; see sgc train --help)")
    ap.add_argument("--size", type=int, default=8, help="image side (padded with zeros)")
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--images", type=int, default=4, help="test images")
    ap.add_argument("--classes", type=int, default=10, help="classes scored per image")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "likelihood.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model, sde, splits, train_s = prepare_model(args.run_dir, args.arch, args.size, args.train_steps, device,
                                                args.seed, args.dataset, args.data_root)
    model = model.to(device).eval()
    test = splits["test"]
    g = torch.Generator().manual_seed(args.seed)
    x = torch.from_numpy(test.images[:args.images])
    levels = test.levels
    x = (torch.round(x * (levels - 1)) + torch.rand(x.shape, generator=g)) / levels  # shared dequantization
    probe = torch.randn(x.shape, generator=g)  # the same Gaussian probe for both paths
    k = min(args.classes, model.num_classes)
    n = x.shape[0]
    dims = x[0].numel()

    # (a) the released code's path: one solve per class
    start = time.perf_counter()
    ref, ref_nfe = [], []
    for c in range(k):
        lp, nfe = reference_log_likelihood(model, sde, x, c, probe, args.rtol, args.atol)
        ref.append(lp)
        ref_nfe.append(nfe)
    ref_s = time.perf_counter() - start
    ref = torch.stack(ref, 1)

    # (b) sgc: all classes of all images in one solve, same probe
    xs = x.repeat_interleave(k, 0)
    ys = torch.arange(k).repeat(n)
    probes = probe.repeat_interleave(k, 0)[None]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    res = log_likelihood(model, sde, xs, ys, levels=levels, method="dopri5", rtol=args.rtol, atol=args.atol,
                         probes=probes)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sgc_s = time.perf_counter() - start
    ours = res.logp.view(n, k)

    diff_bpd = ((ours - ref).abs() / (dims * math.log(2))).max().item()
    rows = [
        {"path": "reference (scipy RK45, per class, host copies, 2 fwd + 1 VJP)",
         "s_per_image_class": ref_s / (n * k), "nfe": int(np.mean(ref_nfe)), "seconds": ref_s},
        {"path": "sgc (torchdiffeq dopri5, classes batched, 1 fwd + 1 VJP)",
         "s_per_image_class": sgc_s / (n * k), "nfe": res.nfe, "seconds": sgc_s},
    ]
    speedup = ref_s / sgc_s
    print(f"\nprobability-flow ODE log-likelihood, {args.arch} on {args.dataset} {args.size}x{args.size}, "
          f"{n} images x {k} classes, rtol=atol={args.rtol:g}, device {device}")
    print_table(rows, [Column("path", "path"), Column("s_per_image_class", "s/(img*class)", ".4f"),
                       Column("nfe", "NFE", "d"), Column("seconds", "total s", ".2f")])
    print(f"speed-up {speedup:.1f}x; largest |log p| difference {diff_bpd:.5f} bits/dim "
          f"(mean bpd: reference {float(-ref.mean() / (dims * math.log(2)) + math.log2(levels)):.4f})")

    out = {"benchmark": "likelihood", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
           "host": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
           "command": "python benchmarks/likelihood.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "dataset": args.dataset, "arch": args.arch, "size": args.size, "images": n, "classes": k, "rtol": args.rtol, "atol": args.atol,
           "train_seconds": train_s, "rows": rows, "speedup": speedup, "max_diff_bits_per_dim": diff_bpd}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
