"""Every classifier estimator on one trained model against the exact-likelihood reference.

Estimators: the probability-flow ODE with adaptive dopri5 (the reference), fixed-step ODE
solves (rk4 / dpm2 on an NFE budget), the Monte-Carlo denoising bound at several numbers of
draws, and the bound with adaptive class elimination. For each: images per second, network
forward passes per image (an ODE evaluation also carries one VJP), accuracy, AUC (one-vs-rest
macro for K > 2), top-1 agreement and mean Spearman rank correlation of the class scores with
the reference. Prints a table and writes JSON.

    python benchmarks/classify.py                                  # CPU, digits 8x8, ScoreMLP
    python benchmarks/classify.py --dataset breastmnist --size 28 --images 0  # data: $SGC_DATA/medmnist, ...
    python benchmarks/classify.py --device cuda --arch unet --size 64 --compile reduce-overhead
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
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


def estimators(draws, compile_mode=None):
    """(name, estimator, options) for every configuration benchmarked."""
    rows = [("ode dopri5 1e-5 (reference)", "ode", dict(method="dopri5", rtol=1e-5, atol=1e-5)),
            ("ode rk4, 64 evals", "ode", dict(method="rk4", nfe_budget=64)),
            ("ode dpm2, 32 evals", "ode", dict(method="dpm2", nfe_budget=32))]
    for n in draws:
        rows.append((f"elbo {n} draws", "elbo", dict(n_draws=n)))
    n = max(draws)
    rows.append((f"elbo {n} draws + elimination", "elbo", dict(n_draws=n, eliminate=True)))
    if compile_mode:  # the fixed-shape estimators again, through torch.compile
        rows += [(f"{name} + compile", est, {**opts, "compile": compile_mode})
                 for name, est, opts in rows[2:] if "eliminate" not in opts]
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
    ap.add_argument("--compile", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                    help="also time dpm2 and the bounds through torch.compile in this mode "
                         "(reduce-overhead = CUDA graphs on a GPU); compilation is done in an untimed "
                         "warm-up pass, reported as warmup_seconds")
    ap.add_argument("--released-code", default=None, metavar="JSON",
                    help="output of benchmarks/likelihood.py on the same model: adds each estimator's "
                         "speed-up over the paper's released code path (seconds per image x class)")
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

    released = None
    if args.released_code:  # seconds per image x class of the released code path, same model
        released = json.loads(Path(args.released_code).read_text())["rows"][0]["s_per_image_class"]
    results, ref = [], None
    for name, est, opts in estimators(args.draws, args.compile):
        warm = None
        if "compile" in opts:  # compile every batch shape first, outside the timed pass
            warm = score_images(model, sde, x, estimator=est, batch_size=args.batch_size, levels=test.levels,
                                dequantize=True, seed=args.seed, progress=False, **opts).seconds
        s = score_images(model, sde, x, estimator=est, batch_size=args.batch_size, levels=test.levels,
                         dequantize=True, seed=args.seed, progress=False, **opts)
        post = posterior(s.log_lik)
        k = s.log_lik.shape[1]
        fwd = s.nfe * k if est == "ode" else s.extra["evals"]  # network forward passes per image
        row = {"estimator": name, "images_per_s": n / s.seconds, "seconds": s.seconds,
               "forward_passes_per_image": float(np.mean(fwd)),
               "accuracy": float((post.argmax(1) == y).mean()), "auc": _auc(y, post)}
        if ref is None:
            ref = s.log_lik
        row["top1_agreement"] = float((s.log_lik.argmax(1) == ref.argmax(1)).mean())
        row["spearman_vs_reference"] = _spearman(s.log_lik, ref)
        if warm is not None:
            row["warmup_seconds"] = warm  # the first, untimed pass: compilation + one run
        if est == "elbo":
            row["mean_stderr_nats"] = float(np.mean(s.extra["stderr"]))
        row["speedup_vs_reference"] = results[0]["seconds"] / s.seconds if results else 1.0
        if released is not None:
            row["speedup_vs_released_code"] = released * k * n / s.seconds
        results.append(row)
        print(f"done {name}: {s.seconds:.1f} s", flush=True)

    print(f"\n{args.dataset} {args.size}x{args.size}, {n} test images, {model.num_classes} classes, "
          f"{args.arch}, device {device}")
    columns = [Column("estimator", "estimator"), Column("images_per_s", "img/s", ".2f"),
               Column("speedup_vs_reference", "speed-up", ".1f", suffix="x"),
               Column("forward_passes_per_image", "fwd/img", ".0f"), Column("accuracy", "acc", ".3f"),
               Column("auc", "AUC", ".3f"), Column("top1_agreement", "top1=ref", ".3f"),
               Column("spearman_vs_reference", "Spearman", ".3f")]
    if released:
        columns.append(Column("speedup_vs_released_code", "vs released", ".0f", suffix="x"))
    print_table(results, columns)
    out = {"benchmark": "classify", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
           "host": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
           "command": "python benchmarks/classify.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "dataset": args.dataset, "size": args.size, "arch": args.arch, "images": n,
           "train_seconds": train_s, "rows": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
