"""Every classifier estimator on one trained model against the exact-likelihood reference.

Estimators: the probability-flow ODE with adaptive dopri5 (the reference), fixed-step ODE
solves (rk4 / dpm2 on an NFE budget), the Monte-Carlo denoising bound at several numbers of
draws, and the bound with adaptive class elimination. For each: images per second, network
forward passes per image (an ODE evaluation also carries one VJP), accuracy, AUC (one-vs-rest
macro for K > 2), top-1 agreement and mean Spearman rank correlation of the class scores with
the reference. Prints a table and writes JSON.

Like with like, in one process: every estimator scores the same images in the same batches; each
is warmed up first (one untimed pass over the first batch, which also compiles with --compile),
then all are timed ``--repeats`` times, interleaved (the order rotates each repeat), and the
median and the spread (min, max) are reported. Speed-ups are ratios of medians measured in this
run. ``--released-code`` adds the paper's released code path (scipy RK45, one class at a time,
host round trips, 2 forward passes + 1 VJP per evaluation; ``benchmarks/likelihood.py``) as a row
of this run, on the same images and batches: it is slow, one full solve per batch and class.

    python benchmarks/classify.py                                  # CPU, digits 8x8, ScoreMLP
    python benchmarks/classify.py --dataset breastmnist --size 28 --images 0  # data: $SGC_DATA/medmnist, ...
    python benchmarks/classify.py --device cuda --arch unet --size 64 --compile graph
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
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _table import Column, print_table  # noqa: E402
from sgc.classify import posterior, score_images  # noqa: E402


def _auc(labels, post):
    k = post.shape[1]
    if len(np.unique(labels)) < k:
        return float("nan")  # a class without test images: AUC undefined
    if k == 2:
        return float(roc_auc_score(labels, post[:, 1]))
    return float(roc_auc_score(labels, post, multi_class="ovr", labels=list(range(k))))


def _spearman(a, b):
    rs = [spearmanr(x, y).statistic for x, y in zip(a, b)]
    return float(np.nanmean(rs))


def _released_scores(model, sde, x, levels, seed, batches):
    """The released code path over the same batches: ClassScores-like (log_lik, nfe per image).

    Same dequantization as score_images(seed) would draw is not reproduced (another generator
    stream); what is compared is time, and the scores only for agreement (top-1, Spearman).
    """
    from likelihood import scipy_class
    from sgc.classify import ClassScores
    g = torch.Generator().manual_seed(seed)
    xs = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    logs, nfes = [], []
    start = time.perf_counter()
    for b in batches:
        xb = xs[b]
        if len(xb) == 0:
            continue
        xb = (torch.round(xb * (levels - 1)) + torch.rand(xb.shape, generator=g)) / levels
        probe = torch.randn(xb.shape, generator=g)
        out = [scipy_class(model, sde, xb, c, probe, 1e-5, 1e-5, forwards=2) for c in range(model.num_classes)]
        logs.append(torch.stack([o[0] for o in out], 1).numpy())
        nfes.append(np.full(len(xb), sum(o[1] for o in out) / len(out)))
    log_lik = np.concatenate(logs)
    dims = xs[0].numel()
    return ClassScores(log_lik, -log_lik / (dims * math.log(2)) + math.log2(levels), np.concatenate(nfes),
                       time.perf_counter() - start, "released")


def estimators(draws, compile_mode=None):
    """(name, estimator, options) for every configuration benchmarked."""
    rows = [("ode dopri5 1e-5 (reference)", "ode", dict(method="dopri5", rtol=1e-5, atol=1e-5)),
            ("ode rk4, 64 evals", "ode", dict(method="rk4", nfe_budget=64)),
            ("ode dpm2, 32 evals", "ode", dict(method="dpm2", nfe_budget=32))]
    for n in draws:
        rows.append((f"elbo {n} draws", "elbo", dict(n_draws=n)))
    n = max(draws)
    rows.append((f"elbo {n} draws + elimination", "elbo", dict(n_draws=n, eliminate=True)))
    if compile_mode:  # the fixed-shape estimators again: CUDA graphs ("graph") or torch.compile
        label = "graph" if compile_mode == "graph" else "compile"
        rows += [(f"{name} + {label}", est, {**opts, "compile": compile_mode})
                 for name, est, opts in rows if "eliminate" not in opts]
    return rows


def main(argv=None):
    from likelihood import prepare_model
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=None, help="trained run folder (trained here when empty)")
    ap.add_argument("--dataset", default="digits", help="digits or breastmnist")
    ap.add_argument("--data-root", default=None, help="the dataset's folder (default: the data-root rule, "
                                                      "$SGC_DATA/<folder> else a default; see sgc train --help)")
    ap.add_argument("--arch", default="mlp", choices=["mlp", "unet"])
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--images", type=int, default=100, help="test images (0 = all)")
    ap.add_argument("--draws", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", default=None, choices=["graph", "default", "reduce-overhead", "max-autotune"],
                    help="also time every estimator but elimination with CUDA graphs of each network evaluation "
                         "(graph; sgc.graphs) or through torch.compile in this mode "
                         "(reduce-overhead = CUDA graphs on a GPU); compilation is done in an untimed "
                         "warm-up pass, reported as warmup_seconds")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes of every estimator (interleaved)")
    ap.add_argument("--released-code", nargs="?", const=True, default=None, metavar="IGNORED",
                    help="also time the paper's released code path in this run, on the same images and "
                         "batches, and report every estimator's speed-up over it (an argument, e.g. the "
                         "JSON path older scripts passed, is accepted and ignored: nothing is taken from "
                         "another run)")
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "classify.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model, sde, splits, train_s = prepare_model(args.run_dir, args.arch, args.size, args.train_steps,
                                                device, args.seed, args.dataset, args.data_root)
    model = model.to(device).eval()
    test = splits["test"]
    n = len(test) if args.images <= 0 else min(args.images, len(test))
    # a class-balanced subset: round-robin over classes in test-set order (every class present)
    rank = np.zeros(len(test), dtype=int)
    for c in np.unique(test.labels):
        rank[test.labels == c] = np.arange((test.labels == c).sum())
    idx = np.sort(np.argsort(rank, kind="stable")[:n])
    x, y = test.images[idx], test.labels[idx]

    if isinstance(args.released_code, str):
        print(f"note: --released-code {args.released_code}: ignored; the released code path is timed in this run")
    configs = estimators(args.draws, args.compile)
    batches = [slice(i, i + args.batch_size) for i in range(0, n, args.batch_size)]

    def runner(est, opts):
        return lambda xs: score_images(model, sde, xs, estimator=est, batch_size=args.batch_size,
                                       levels=test.levels, dequantize=True, seed=args.seed, progress=False, **opts)

    named = {name: (est, opts, runner(est, opts)) for name, est, opts in configs}
    if args.released_code:
        named = {"released code path (scipy RK45, per class, host copies, 2 fwd + 1 VJP)":
                 ("released", {}, lambda xs: _released_scores(model, sde, xs, test.levels, args.seed, batches)),
                 **named}
    warm = {}
    for name, (_, _, fn) in named.items():  # warm-up (and compilation): the first batch, untimed
        start = time.perf_counter()
        fn(x[batches[0]])
        warm[name] = time.perf_counter() - start
        print(f"warm-up {name}: {warm[name]:.1f} s", flush=True)
    names = list(named)
    times, scores = {k: [] for k in names}, {}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            s = named[name][2](x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            scores.setdefault(name, s)
            print(f"repeat {r + 1}/{args.repeats} {name}: {times[name][-1]:.1f} s", flush=True)
    ref_name = next(nm for nm, (est, opts, _) in named.items() if est == "ode" and opts.get("method") == "dopri5")
    ref, ref_s = scores[ref_name].log_lik, statistics.median(times[ref_name])
    released = statistics.median(times[names[0]]) if args.released_code else None
    results = []
    for name in names:
        est, opts, _ = named[name]
        s, med = scores[name], statistics.median(times[name])
        post = posterior(s.log_lik)
        k = s.log_lik.shape[1]
        fwd = s.nfe * k if est in ("ode", "released") else s.extra["evals"]  # network forward passes per image
        row = {"estimator": name, "images_per_s": n / med, "seconds": med, "seconds_min": min(times[name]),
               "seconds_max": max(times[name]), "seconds_all": times[name], "warmup_seconds": warm[name],
               "forward_passes_per_image": float(np.mean(fwd)) * (2 if est == "released" else 1),
               "accuracy": float((post.argmax(1) == y).mean()), "auc": _auc(y, post),
               "top1_agreement": float((s.log_lik.argmax(1) == ref.argmax(1)).mean()),
               "spearman_vs_reference": _spearman(s.log_lik, ref), "speedup_vs_reference": ref_s / med}
        if est == "elbo":
            row["mean_stderr_nats"] = float(np.mean(s.extra["stderr"]))
        if released is not None:
            row["speedup_vs_released_code"] = released / med
        results.append(row)

    print(f"\n{args.dataset} {args.size}x{args.size}, {n} test images, {model.num_classes} classes, "
          f"{args.arch}, device {device}")
    print(f"median of {args.repeats} interleaved passes after a warm-up; spread = min-max seconds")
    columns = [Column("estimator", "estimator"), Column("images_per_s", "img/s", ".2f"),
               Column("spread", "spread s", lambda r: f"{r['seconds_min']:.2f}-{r['seconds_max']:.2f}"),
               Column("speedup_vs_reference", "speed-up", ".2f", suffix="x"),
               Column("forward_passes_per_image", "fwd/img", ".0f"), Column("accuracy", "acc", ".3f"),
               Column("auc", "AUC", ".3f"), Column("top1_agreement", "top1=ref", ".3f"),
               Column("spearman_vs_reference", "Spearman", ".3f")]
    if released:
        columns.append(Column("speedup_vs_released_code", "vs released", ".1f", suffix="x"))
    print_table(results, columns)
    out = {"benchmark": "classify", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
           "host": f"{platform.machine()}, {__import__('os').cpu_count()} cores", "torch_threads": torch.get_num_threads(),
           "load_average": [round(v, 2) for v in __import__("os").getloadavg()],
           "command": "python benchmarks/classify.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "dataset": args.dataset, "size": args.size, "arch": args.arch, "images": n,
           "batch_size": args.batch_size, "repeats": args.repeats, "train_seconds": train_s, "rows": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
