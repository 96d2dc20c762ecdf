"""The probability-flow ODE likelihood: the paper's released code path vs sgc's engine, one effect at a time.

Same model, images, tolerance (dopri5 / RK45, rtol = atol), eps and Gaussian Hutchinson probe for
every path; the paths differ in one thing from the row above them:

    released       scipy solve_ivp RK45, one class at a time, the state copied to the host (numpy
                   float64) at every evaluation, 2 forward passes + 1 VJP per evaluation
    one_forward    ... the drift taken from the forward pass of the VJP: 1 forward + 1 VJP
    torchdiffeq    ... torchdiffeq dopri5 instead of scipy RK45 (state still round-tripped through
                   the host as float64 at every evaluation)
    on_device      ... no host round trip (float32 state on the model's device)
    sgc            ... all classes of all images in one batched solve (sgc.likelihood)

Every path is warmed up (one untimed solve of one image and class), then all paths are timed
``--repeats`` times, interleaved (the order rotates each repeat), and the median and the spread
(min, max) of the seconds are reported. Ratios are computed only between rows of this run.

    python benchmarks/likelihood.py                         # CPU, 8x8 digits, ScoreMLP
    python benchmarks/likelihood.py --device cuda --arch unet --size 32 --images 16
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torchdiffeq import odeint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _table import Column, print_table  # noqa: E402
from sgc.likelihood import divergence, log_likelihood, ode_drift  # noqa: E402


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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _prior_plus(zT, delta):
    """log p(x) of x on [0, 1]^D from the ODE's end state and divergence integral (standard normal prior)."""
    dims = zT[0].numel()
    prior = -0.5 * dims * math.log(2 * math.pi) - 0.5 * zT.flatten(1).double().pow(2).sum(1)
    return (prior + delta.double() + dims * math.log(2.0)).float()


def scipy_class(model, sde, x, y, probe, rtol, atol, eps=1e-5, forwards=2):
    """One class with scipy RK45 and a host round trip per evaluation: (log p (N,), nfe).

    forwards=2: the released code's evaluation (drift by one forward pass, then the divergence by a
    second forward + VJP); forwards=1: the drift comes from the forward pass of the VJP.
    x (N, C, H, W) in [0, 1] (already dequantized), y int, probe (N, C, H, W).
    """
    device = next(model.parameters()).device
    shape, n = x.shape, x.shape[0]
    yv = torch.full((n,), int(y), device=device, dtype=torch.long)
    v = probe.to(device)
    nfe = 0

    def div_fn(z, t):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            out = ode_drift(model, sde, z, t, yv)
            (g,) = torch.autograd.grad((out * v).sum(), z)
        return out.detach(), (g * v).flatten(1).sum(1)

    def ode_func(t, state):
        nonlocal nfe
        nfe += 1
        z = torch.from_numpy(state[:-n].reshape(shape)).to(device).float()    # host -> device
        tv = torch.full((n,), t, device=device, dtype=torch.float32)
        if forwards == 2:
            with torch.no_grad():
                drift = ode_drift(model, sde, z, tv, yv)                        # forward 1
            _, div = div_fn(z, tv)                                              # forward 2 + VJP
        else:
            drift, div = div_fn(z, tv)                                          # forward + VJP
        return np.concatenate([drift.cpu().numpy().reshape(-1),                 # device -> host
                               div.detach().cpu().numpy().reshape(-1)]).astype(np.float64)

    init = np.concatenate([(2 * x - 1).double().numpy().reshape(-1), np.zeros(n)])
    sol = solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    zT = torch.from_numpy(sol.y[:-n, -1].reshape(shape))
    return _prior_plus(zT, torch.from_numpy(sol.y[-n:, -1])), nfe


def torchdiffeq_class(model, sde, x, y, probe, rtol, atol, eps=1e-5, host_copies=True):
    """One class with torchdiffeq dopri5, 1 forward + 1 VJP per evaluation; host_copies: the state and
    the derivatives go through numpy float64 at every evaluation, as in the released code."""
    device = next(model.parameters()).device
    n = x.shape[0]
    yv = torch.full((n,), int(y), device=device, dtype=torch.long)
    probes = probe.to(device)[None]
    nfe = 0

    def host(t):
        return torch.from_numpy(t.detach().cpu().double().numpy()).to(device).float() if host_copies else t

    def func(t, state):
        nonlocal nfe
        nfe += 1
        out, div = divergence(lambda v: ode_drift(model, sde, v, t, yv), host(state[0]), probes)
        return host(out), host(div)

    z0 = (2 * x - 1).to(device)
    ts = torch.tensor([eps, sde.T], device=device)
    zs, deltas = odeint(func, (z0, torch.zeros(n, device=device)), ts, method="dopri5", rtol=rtol, atol=atol)
    return _prior_plus(zs[-1].cpu(), deltas[-1].cpu()), nfe


def paths(model, sde, x, probe, k, levels, rtol, atol):
    """{name: (description, fn() -> (log p (N, K), nfe per solve))} for the five paths, in order."""
    n = x.shape[0]

    def per_class(solve):
        def run():
            out = [solve(c) for c in range(k)]
            return torch.stack([o[0] for o in out], 1), float(np.mean([o[1] for o in out]))
        return run

    def batched():
        xs, ys = x.repeat_interleave(k, 0), torch.arange(k).repeat(n)
        res = log_likelihood(model, sde, xs, ys, levels=levels, method="dopri5", rtol=rtol, atol=atol,
                             probes=probe.repeat_interleave(k, 0)[None])
        return res.logp.view(n, k), float(res.nfe)

    return {
        "released": ("scipy RK45, per class, host round trip, 2 forward + 1 VJP",
                     per_class(lambda c: scipy_class(model, sde, x, c, probe, rtol, atol, forwards=2))),
        "one_forward": ("scipy RK45, per class, host round trip, 1 forward + 1 VJP",
                        per_class(lambda c: scipy_class(model, sde, x, c, probe, rtol, atol, forwards=1))),
        "torchdiffeq": ("torchdiffeq dopri5, per class, host round trip, 1 forward + 1 VJP",
                        per_class(lambda c: torchdiffeq_class(model, sde, x, c, probe, rtol, atol, host_copies=True))),
        "on_device": ("torchdiffeq dopri5, per class, on device, 1 forward + 1 VJP",
                      per_class(lambda c: torchdiffeq_class(model, sde, x, c, probe, rtol, atol, host_copies=False))),
        "sgc": ("torchdiffeq dopri5, classes batched, on device, 1 forward + 1 VJP (sgc.likelihood)", batched),
    }


def measure(named, repeats, device, log=print):
    """Time every path ``repeats`` times, interleaved with a rotating order; {name: (seconds list, result)}."""
    names = list(named)
    times = {name: [] for name in names}
    results = {}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            out = named[name][1]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            results.setdefault(name, out)
            log(f"repeat {r + 1}/{repeats} {name}: {times[name][-1]:.2f} s")
    return times, results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=None, help="trained run folder (trained here when empty)")
    ap.add_argument("--arch", default="mlp", choices=["mlp", "unet"])
    ap.add_argument("--dataset", default="digits", help="digits or breastmnist")
    ap.add_argument("--data-root", default=None, help="the dataset's folder (default: the data-root rule, "
                                                      "$SGC_DATA/<folder> else a default; see sgc train --help)")
    ap.add_argument("--size", type=int, default=8, help="image side (padded with zeros)")
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--images", type=int, default=2, help="test images (one batch)")
    ap.add_argument("--classes", type=int, default=10, help="classes scored per image")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of every path (interleaved)")
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
    probe = torch.randn(x.shape, generator=g)  # the same Gaussian probe for every path
    k = min(args.classes, model.num_classes)
    n, dims = x.shape[0], x[0].numel()

    # warm-up: every path once on one image and one class, untimed
    for _, fn in paths(model, sde, x[:1], probe[:1], 1, levels, args.rtol, args.atol).values():
        fn()
    named = paths(model, sde, x, probe, k, levels, args.rtol, args.atol)
    times, results = measure(named, args.repeats, device)

    released = statistics.median(times["released"])
    ref = results["released"][0]
    rows, prev = [], None
    for name, (desc, _) in named.items():
        med = statistics.median(times[name])
        logp, nfe = results[name]
        rows.append({"path": name, "description": desc, "median_s": med, "min_s": min(times[name]),
                     "max_s": max(times[name]), "seconds": times[name], "s_per_image_class": med / (n * k),
                     "nfe_per_solve": nfe, "speedup_vs_released": released / med,
                     "speedup_vs_previous_row": None if prev is None else prev / med,
                     "max_diff_bits_per_dim_vs_released": float(((logp - ref).abs() / (dims * math.log(2))).max())})
        prev = med

    print(f"\nprobability-flow ODE log-likelihood, {args.arch} on {args.dataset} {args.size}x{args.size}, "
          f"{n} images x {k} classes, rtol=atol={args.rtol:g}, device {device}, median of {args.repeats}")
    print_table(rows, [Column("path", "path"), Column("median_s", "median s", ".2f"),
                       Column("spread", "min-max s", lambda r: f"{r['min_s']:.2f}-{r['max_s']:.2f}"),
                       Column("nfe_per_solve", "NFE", ".0f"),
                       Column("speedup_vs_released", "vs released", ".2f", suffix="x"),
                       Column("speedup_vs_previous_row", "vs above", ".2f", suffix="x"),
                       Column("max_diff_bits_per_dim_vs_released", "max diff bpd", ".5f"),
                       Column("description", "what changes")])

    out = {"benchmark": "likelihood", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
           "host": f"{platform.machine()}, {__import__('os').cpu_count()} cores", "torch_threads": torch.get_num_threads(),
           "load_average": [round(v, 2) for v in __import__("os").getloadavg()],
           "command": "python benchmarks/likelihood.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "dataset": args.dataset, "arch": args.arch, "size": args.size, "images": n, "classes": k,
           "rtol": args.rtol, "atol": args.atol, "repeats": args.repeats, "train_seconds": train_s,
           "parameters": sum(p.numel() for p in model.parameters()), "rows": rows,
           "speedup": rows[-1]["speedup_vs_released"],
           "max_diff_bits_per_dim": rows[-1]["max_diff_bits_per_dim_vs_released"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
