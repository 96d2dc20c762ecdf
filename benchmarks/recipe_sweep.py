"""Training-recipe sweep for the score classifier, chosen on validation, resumable, on a time budget.

Phase 1 trains every candidate recipe (``CANDIDATES``: width/depth, dropout, augmentation,
learning-rate schedule, EMA decay, loss weighting) for ``--seeds``, scores validation and test
with the bound (Sobol t, antithetic noise) and with the weighting chosen on validation
(``sgc.weighting``), and picks the recipe with the best validation AUC (cross-validated AUC of
its chosen weighting, mean over seeds). Phase 2 trains the winner for ``--confirm-seeds``.
The test split never takes part in a choice. Each (recipe, seed) runs in its own process
(``--workers`` at once: small models leave a GPU mostly idle), trains into
``<runs-dir>/<recipe>_s<seed>`` with checkpoints (a rerun resumes; SIGTERM at the budget's end
checkpoints) and writes ``result.json`` + per-image probabilities there; finished ones are
skipped. Writes ``<out>.json`` and ``<out>.md`` (all rows, the winner's mean over seeds, paired
DeLong tests against the per-image probabilities of ``--baseline-predictions``).

    # GPU (pending: no GPU here): about 8 minutes on one H100/H200 after the GPU engine speed-up
    python benchmarks/recipe_sweep.py --device cuda --data-root DATA/medmnist --workers 4 --budget-s 470 \\
        --baseline-predictions 'reports/tables/breastmnist_results_predictions/densenet121_*'
    python benchmarks/recipe_sweep.py --smoke     # CPU, two-class digits, tiny MLP, seconds (make test)
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# GPU scale: the authors'-size UNet of PAPER.md's H200 run (32 channels, mults 1-2-2), batch 128.
BASE_MODEL = {"arch": "unet", "channels": 32, "channel_mults": [1, 2, 2], "emb_dim": 128}
BASE_TRAIN = {"steps": 4000, "batch_size": 128, "lr": 5e-4, "warmup": 200, "ema_decay": 0.999, "hflip": True,
              "weighting": "sigma2", "checkpoint_every": 500, "log_every": 100}
# name -> (model overrides, training overrides, affine copies of the training set)
CANDIDATES = {
    "base": ({}, {}, 0),
    "cosine": ({}, {"lr_schedule": "cosine", "lr": 1e-3}, 0),
    "dropout": ({"dropout": 0.1}, {}, 0),
    "affine": ({}, {"vflip": True}, 3),
    "ema9995": ({}, {"ema_decay": 0.9995}, 0),
    "wide": ({"channels": 64}, {}, 0),
    "deep": ({"blocks_per_level": 2}, {}, 0),
    "likelihood": ({}, {"weighting": "likelihood"}, 0),
}
SMOKE_MODEL = {"arch": "mlp", "hidden": 32, "blocks": 1, "emb_dim": 16}
SMOKE_TRAIN = {"steps": 20, "batch_size": 32, "lr": 2e-3, "warmup": 5, "checkpoint_every": 10, "log_every": 10}


def _splits(args):
    from sgc.data import ImageSet, load_dataset
    if args.smoke:   # digits 0 vs 1 with a validation split: offline, seconds
        out = {}
        for name, ds in load_dataset("digits", val_size=0.25).items():
            sub = ds.subset(np.flatnonzero(ds.labels < 2))
            out[name] = ImageSet(sub.images, sub.labels, ("zero", "one"), sub.levels, sub.ids, sub.groups)
        return out
    return load_dataset(args.dataset, root=args.data_root)


def run_task(args, name: str, seed: int) -> dict:
    """Train (or resume) one recipe x seed, score val and test; write and return result.json."""
    import torch
    from sgc.augment import affine_copies
    from sgc.comparisons import write_predictions
    from sgc.evidence import compute_evidence, weighted_scores
    from sgc.metrics import accuracy, apply_prior, auc, empirical_prior, fit_temperature
    from sgc.nets import build_model
    from sgc.sde import make_sde
    from sgc.train import TrainConfig, train_score_model
    from sgc.weighting import weighted_posteriors
    torch.set_num_threads(args.threads)
    run = Path(args.runs_dir) / f"{name}_s{seed}"
    splits = _splits(args)
    tr, val, test = splits["train"], splits["val"], splits["test"]
    m_over, t_over, copies = CANDIDATES[name]
    base_model = SMOKE_MODEL if args.smoke else {**BASE_MODEL, **json.loads(args.base_model)}
    base_train = SMOKE_TRAIN if args.smoke else {**BASE_TRAIN, **json.loads(args.base_train)}
    if args.steps:
        base_train = {**base_train, "steps": args.steps}
    mcfg = {**base_model, **m_over, "num_classes": len(tr.class_names), "in_channels": tr.shape[0],
            "image_size": tr.shape[1]}
    tcfg = TrainConfig.from_dict({"levels": tr.levels, **base_train, **t_over, "seed": seed})
    images, labels = affine_copies(tr.images, tr.labels, copies, seed=seed) if copies else (tr.images, tr.labels)
    torch.manual_seed(seed)
    sde = make_sde("vp")
    start = time.perf_counter()
    _, ema, history = train_score_model(build_model(mcfg), sde, images, labels, tcfg, run_dir=run, resume=True,
                                        device=args.device, progress=False,
                                        extra_meta={"recipe": name, "affine_copies": copies})
    train_s = time.perf_counter() - start
    ema.eval()
    t0 = time.perf_counter()
    kw = dict(n_draws=args.draws, t_sampling="sobol", noise_sampling="antithetic", batch_size=args.eval_batch,
              levels=tr.levels, dequantize=tcfg.dequantize, seed=seed, progress=False)
    ev_val = compute_evidence(ema, sde, val.images, ids=val.ids, labels=val.labels, **kw)
    ev_test = compute_evidence(ema, sde, test.images, ids=test.ids, labels=test.labels, **kw)
    prior = empirical_prior(tr.labels, len(tr.class_names))
    b_val, b_test = weighted_scores(ev_val, sde), weighted_scores(ev_test, sde)
    temp = fit_temperature(b_val, val.labels, prior=prior)
    pb_val, pb_test = apply_prior(b_val, prior, temp), apply_prior(b_test, prior, temp)
    pw_val, pw_test, rec = weighted_posteriors(ev_val, ev_test, sde, prior, n_bins=args.bins, repeats=args.cv_repeats)
    write_predictions(run / "predictions_bound.csv", {"val": (val.ids, val.labels, pb_val),
                                                      "test": (test.ids, test.labels, pb_test)})
    write_predictions(run / "predictions_weighted.csv", {"val": (val.ids, val.labels, pw_val),
                                                         "test": (test.ids, test.labels, pw_test)})
    result = {"recipe": name, "seed": seed, "steps": int(tcfg.steps), "model": mcfg, "train": tcfg.__dict__,
              "affine_copies": copies, "device": str(args.device), "seconds_train": train_s,
              "seconds_eval": time.perf_counter() - t0, "draws": args.draws,
              "val_auc_bound": auc(val.labels, pb_val), "val_cv_auc_weighted": max(r["cv_auc"] for r in rec["cv"]),
              "weighting": rec["label"], "test_auc_bound": auc(test.labels, pb_test),
              "test_auc_weighted": auc(test.labels, pw_test), "test_accuracy_bound": accuracy(test.labels, pb_test),
              "test_accuracy_weighted": accuracy(test.labels, pw_test), "final_loss": history[-1]["loss"] if history else None}
    (run / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _launch(args, tasks, deadline):
    """Run tasks (name, seed) as subprocesses, ``args.workers`` at once, until done or the deadline."""
    pending = [t for t in tasks if not (Path(args.runs_dir) / f"{t[0]}_s{t[1]}" / "result.json").exists()]
    running = []
    logs = Path(args.runs_dir)
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < args.workers and time.time() < deadline - args.min_task_s:
            name, seed = pending.pop(0)
            cmd = [sys.executable, __file__, "--task", name, "--task-seed", str(seed), *args.passthrough]
            log = open(logs / f"{name}_s{seed}.log", "w")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log, name, seed))
            print(f"started {name} seed {seed}", flush=True)
        if not running:
            break
        time.sleep(0.5)
        for item in list(running):
            proc, log, name, seed = item
            if proc.poll() is not None:
                running.remove(item)
                log.close()
                print(f"finished {name} seed {seed}: exit {proc.returncode}", flush=True)
            elif time.time() > deadline:
                proc.send_signal(signal.SIGTERM)   # training checkpoints and stops; a rerun resumes
                proc.wait(60)
                running.remove(item)
                log.close()
                print(f"budget reached: {name} seed {seed} stopped (rerun to resume)", flush=True)


def _results(args):
    out = []
    for p in sorted(Path(args.runs_dir).glob("*_s*/result.json")):
        out.append(json.loads(p.read_text()))
    return out


def _winner(rows, seeds):
    by = {}
    for r in rows:
        if r["seed"] in seeds:
            by.setdefault(r["recipe"], []).append(r["val_cv_auc_weighted"])
    return max(by, key=lambda k: (np.mean(by[k]), k == "base")) if by else None


def _report(args, rows, winner, start):
    from sgc.comparisons import read_predictions
    from sgc.metrics import delong_test, mean_ci_over_seeds
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    win = [r for r in rows if r["recipe"] == winner]
    summary = {}
    if win:
        for key in ("test_auc_bound", "test_auc_weighted", "test_accuracy_bound", "test_accuracy_weighted"):
            summary[key] = mean_ci_over_seeds([r[key] for r in win], bounds=(0, 1))
    paired = []
    for pattern in args.baseline_predictions:
        for f in sorted(glob.glob(pattern)):
            ids_b, y_b, p_b = read_predictions(f)
            for r in win:
                ids, y, p = read_predictions(Path(args.runs_dir) / f"{winner}_s{r['seed']}" / "predictions_weighted.csv")
                if ids != ids_b:
                    raise ValueError(f"{f} scored other test images than the sweep")
                d = delong_test(y, p[:, 1], p_b[:, 1], positive=1)
                paired.append({"baseline": Path(f).name, "seed": r["seed"], "auc_sweep": d["auc_a"],
                               "auc_baseline": d["auc_b"], "p_delong": d["p_value"]})
    result = {"winner": winner, "rows": rows, "winner_summary": summary, "paired": paired,
              "seconds_wall": time.time() - start, "command": "python benchmarks/recipe_sweep.py " + " ".join(args.argv)}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    lines = ["# Training-recipe sweep (chosen on validation)", "", f"Command: `{result['command']}`", "",
             "| recipe | seed | steps | s train | val AUC bound | val CV AUC weighted | weighting | test AUC bound | "
             "test AUC weighted | test acc. weighted |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["recipe"], r["seed"])):
        lines.append(f"| {r['recipe']}{' (winner)' if r['recipe'] == winner else ''} | {r['seed']} | {r['steps']} | "
                     f"{r['seconds_train']:.0f} | {r['val_auc_bound']:.3f} | {r['val_cv_auc_weighted']:.3f} | "
                     f"{r['weighting']} | {r['test_auc_bound']:.3f} | {r['test_auc_weighted']:.3f} | "
                     f"{r['test_accuracy_weighted']:.3f} |")
    missing = [f"{n} s{s}" for n, s in _all_tasks(args, winner) if not any(
        r["recipe"] == n and r["seed"] == s for r in rows)]
    lines += ["", f"Winner on validation: **{winner}**; its test metrics, mean [95 % t over seeds "
              f"{sorted(r['seed'] for r in win)}]: " + "; ".join(f"{k} {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
                                                              for k, v in summary.items())]
    if paired:
        lines += ["", "| baseline predictions | seed | AUC sweep (weighted) | AUC baseline | DeLong p |", "|---|---|---|---|---|"]
        lines += [f"| {p['baseline']} | {p['seed']} | {p['auc_sweep']:.3f} | {p['auc_baseline']:.3f} | {p['p_delong']:.3g} |"
                  for p in paired]
    if missing:
        lines += ["", f"Not finished within the budget (rerun the same command to resume): {', '.join(missing)}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def _all_tasks(args, winner=None):
    tasks = [(n, s) for s in args.seeds for n in args.candidates]
    if winner:
        tasks += [(winner, s) for s in args.confirm_seeds if (winner, s) not in tasks]
    return tasks


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="phase 1 seeds (the choice)")
    ap.add_argument("--confirm-seeds", type=int, nargs="*", default=[1, 2], help="phase 2 seeds of the winner")
    ap.add_argument("--steps", type=int, default=None, help="override the training steps of every recipe")
    ap.add_argument("--base-model", default="{}", help="JSON overrides of BASE_MODEL, e.g. '{\"channels\": 16}'")
    ap.add_argument("--base-train", default="{}", help="JSON overrides of BASE_TRAIN")
    ap.add_argument("--draws", type=int, default=128, help="bound draws per image x class")
    ap.add_argument("--bins", type=int, default=16, help="noise-level bins of the weighting")
    ap.add_argument("--cv-repeats", type=int, default=10)
    ap.add_argument("--eval-batch", type=int, default=78)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="(recipe, seed) processes at once")
    ap.add_argument("--budget-s", type=float, default=470, help="wall-clock budget; running tasks get SIGTERM")
    ap.add_argument("--min-task-s", type=float, default=30, help="start no task with less than this left")
    ap.add_argument("--runs-dir", default=str(REPO / "runs" / "recipe_sweep"))
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "recipe_sweep"))
    ap.add_argument("--baseline-predictions", nargs="*", default=[], help="globs of per-image probability CSVs")
    ap.add_argument("--smoke", action="store_true", help="CPU, two-class digits, tiny MLP, 2 recipes")
    ap.add_argument("--task", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--task-seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = argv
    if args.smoke:
        args.device, args.draws, args.bins, args.cv_repeats = "cpu", 16, 4, 2
        args.candidates = [c for c in args.candidates if c in ("base", "cosine")] or ["base", "cosine"]
    if args.task:
        run_task(args, args.task, args.task_seed)
        return None
    args.passthrough = [a for a in argv]
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    start = time.time()
    deadline = start + args.budget_s
    _launch(args, _all_tasks(args), deadline)
    winner = _winner(_results(args), set(args.seeds))
    if winner:
        _launch(args, _all_tasks(args, winner), deadline)
    return _report(args, _results(args), winner, start)


if __name__ == "__main__":
    main()
