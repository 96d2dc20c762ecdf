"""Training-recipe sweep for the score classifier, chosen on validation, resumable, on a time budget.

Stage 1 (the choice) trains every candidate recipe (``CANDIDATES``: width, depth, dropout,
affine copies + vertical flips, cosine learning rate, EMA decay, likelihood loss weighting) for
``--seeds``, scores validation and test with the bound (Sobol t, antithetic noise) and with the
weighting chosen on validation (``sgc.weighting``), and picks the recipe with the best
validation AUC (cross-validated AUC of its chosen weighting, mean over seeds; ties: base).
Stage 2 trains the winner for ``--confirm-seeds``; stage 3, with the time left, the base recipe
for the same seeds (winner vs base on every seed). The test split never takes part in a choice.
Each (recipe, seed) runs in its own process (``--workers`` at once), trains into
``<runs-dir>/<recipe>_s<seed>`` with checkpoints and writes ``result.json`` + per-image
probabilities there. A rerun of the same command skips finished tasks (and refuses ones made
with other settings) and resumes cut ones from their checkpoint. Caps: stage 1 stops at
``--choice-budget-s``, everything at ``--budget-s`` (running tasks get SIGTERM, which writes a
checkpoint). Writes ``<out>.json`` and ``<out>.md``: all rows, the winner's mean over seeds,
paired tests (DeLong per seed, paired bootstrap over seeds) against the base recipe and against
the per-image probabilities of ``--baseline-predictions`` (``sgc experiment``'s files
``<name>_s<seed>.csv``, paired seed by seed), and the verdict on the GPU target of issue 16.

GPU run (PENDING: no GPU here, nothing below is measured), ONE call, hard cap 7.8 minutes:

    python benchmarks/recipe_sweep.py --device cuda --data-root <folder with breastmnist.npz> --size 32 \\
        --workers 4 --threads 2 --budget-s 470 --choice-budget-s 360 \\
        --runs-dir runs/recipe_gpu --out reports/benchmarks/recipe_sweep_gpu \\
        --baseline-predictions 'reports/tables/breastmnist_results_predictions/densenet121_427407d3_s*.csv' \\
                               'reports/tables/breastmnist_results_predictions/resnet18_8db6cf31_s*.csv'

UNet 32 channels, mults 1-2-2 (the authors' model size), 32 px, batch 128, 3,000 steps per task,
bf16, the training engine of ``TrainConfig.compile`` (its default "auto" is one CUDA graph per
step on one GPU, ``sgc.step``); 256 bound draws per image x class. Planned
minutes, ASSUMING about 100 training steps/s for this model on one H100/H200 (the graphed
engine's target, >= 4x its eager rate; not measured yet) and that tasks sharing the GPU add up
rather than overlap:

    stage 0  4 processes start (CUDA, data, graph capture)                      ~0.3 min
    stage 1  8 recipes x seed 0 x 3,000 steps (wide ~2x, deep ~1.4x the cost)  ~5.0 min   cap 6.0 min
             and their scoring (256 draws on val + test, weighting CV)
    stage 2  the winner x seeds 1, 2                                           ~1.1 min   cap 7.8 min
    stage 3  base x seeds 1, 2 (only when the winner is not base)              ~1.1 min   time left
                                                                total ~6.4-7.5 min, hard cap 7.8 min

A slower engine makes the caps stop the call (checkpoints written; the Markdown lists what is
missing); the same command run again resumes. CPU smoke check (two-class digits, a tiny MLP,
seconds; run by ``make test``): ``python benchmarks/recipe_sweep.py --smoke``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))   # recipe_report.py beside this script

# GPU scale: the authors' UNet size (32 channels, mults 1-2-2), batch 128.
BASE_MODEL = {"arch": "unet", "channels": 32, "channel_mults": [1, 2, 2], "emb_dim": 128}
BASE_TRAIN = {"steps": 3000, "batch_size": 128, "lr": 5e-4, "warmup": 200, "ema_decay": 0.999, "hflip": True,
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
# issue 16's GPU target (mean of 3 seeds) and the published ResNet-18 at 28 px (MedMNIST v2, BreastMNIST)
TARGET = {"auc": 0.92, "accuracy": 0.88, "seeds": 3}
PUBLISHED_RESNET18 = {"auc": 0.901, "accuracy": 0.863}


def _splits(args):
    from sgc.data import ImageSet, load_dataset
    if args.smoke:   # digits 0 vs 1 with a validation split: offline, seconds
        out = {}
        for name, ds in load_dataset("digits", val_size=0.25).items():
            sub = ds.subset(np.flatnonzero(ds.labels < 2))
            out[name] = ImageSet(sub.images, sub.labels, ("zero", "one"), sub.levels, sub.ids, sub.groups)
        return out
    return load_dataset(args.dataset, root=args.data_root, **({"size": args.size} if args.size else {}))


def _request(args, name: str, seed: int) -> dict:
    """What a (recipe, seed) task trains and scores, as far as it is known without the data."""
    m_over, t_over, copies = CANDIDATES[name]
    base_model = SMOKE_MODEL if args.smoke else {**BASE_MODEL, **json.loads(args.base_model)}
    base_train = SMOKE_TRAIN if args.smoke else {**BASE_TRAIN, **json.loads(args.base_train)}
    if args.steps:
        base_train = {**base_train, "steps": args.steps}
    return {"model": {**base_model, **m_over}, "train": {**base_train, **t_over, "seed": seed},
            "affine_copies": copies, "draws": args.draws, "size": args.size}


def _mismatch(result: dict, want: dict) -> list[str]:
    """Settings of a finished task's result.json that differ from the requested ones."""
    bad = [f"model.{k}" for k, v in want["model"].items() if result["model"].get(k) != v]
    bad += [f"train.{k}" for k, v in want["train"].items() if result["train"].get(k) != v]
    bad += [k for k in ("affine_copies", "draws") if result.get(k) != want[k]]
    if result.get("size", want["size"]) != want["size"]:
        bad.append("size")
    return bad


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
    req = _request(args, name, seed)
    mcfg = {**req["model"], "num_classes": len(tr.class_names), "in_channels": tr.shape[0], "image_size": tr.shape[1]}
    tcfg = TrainConfig.from_dict({"levels": tr.levels, **req["train"]})
    copies = req["affine_copies"]
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
              "affine_copies": copies, "draws": args.draws, "size": args.size, "device": str(args.device),
              "seconds_train": train_s, "seconds_eval": time.perf_counter() - t0,
              "val_auc_bound": auc(val.labels, pb_val), "val_cv_auc_weighted": max(r["cv_auc"] for r in rec["cv"]),
              "weighting": rec["label"], "test_auc_bound": auc(test.labels, pb_test),
              "test_auc_weighted": auc(test.labels, pw_test), "test_accuracy_bound": accuracy(test.labels, pb_test),
              "test_accuracy_weighted": accuracy(test.labels, pw_test),
              "final_loss": history[-1]["loss"] if history else None}
    (run / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _check_finished(args, tasks) -> None:
    """Refuse finished tasks whose result.json was made with other settings than requested."""
    for name, seed in tasks:
        path = Path(args.runs_dir) / f"{name}_s{seed}" / "result.json"
        if path.exists():
            bad = _mismatch(json.loads(path.read_text()), _request(args, name, seed))
            if bad:
                raise ValueError(f"{path} was made with other settings ({', '.join(bad)}) than this command asks "
                                 f"for; use another --runs-dir or the command that made it")


def _launch(args, tasks, deadline) -> None:
    """Run tasks (name, seed) as subprocesses, ``args.workers`` at once, in the given order, until done
    or the deadline (running tasks then get SIGTERM: training writes a checkpoint; a rerun resumes)."""
    _check_finished(args, tasks)
    pending = [t for t in tasks if not (Path(args.runs_dir) / f"{t[0]}_s{t[1]}" / "result.json").exists()]
    running = []
    logs = Path(args.runs_dir)
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < args.workers and time.time() < deadline - args.min_task_s:
            name, seed = pending.pop(0)
            cmd = [sys.executable, __file__, "--task", name, "--task-seed", str(seed), *args.argv]
            log = open(logs / f"{name}_s{seed}.log", "w")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log, name, seed))
            print(f"[{time.strftime('%H:%M:%S')}] started {name} seed {seed}", flush=True)
        if not running:
            break
        time.sleep(0.5)
        for item in list(running):
            proc, log, name, seed = item
            if proc.poll() is not None:
                running.remove(item)
                log.close()
                print(f"[{time.strftime('%H:%M:%S')}] finished {name} seed {seed}: exit {proc.returncode}", flush=True)
        if running and time.time() > deadline:
            for proc, *_ in running:
                proc.send_signal(signal.SIGTERM)
            for proc, log, name, seed in running:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
                print(f"cap reached: {name} seed {seed} stopped (rerun the command to resume)", flush=True)
            running = []


def _results(args, tasks) -> list[dict]:
    out = []
    for name, seed in tasks:
        p = Path(args.runs_dir) / f"{name}_s{seed}" / "result.json"
        if p.exists():
            out.append(json.loads(p.read_text()))
    return out


def _winner(args, rows):
    """The recipe with the best mean validation CV AUC over ``--seeds`` (ties: base); None until
    every candidate has every choice seed."""
    by = {}
    for r in rows:
        if r["seed"] in args.seeds:
            by.setdefault(r["recipe"], []).append(r["val_cv_auc_weighted"])
    if set(by) != set(args.candidates) or any(len(v) < len(set(args.seeds)) for v in by.values()):
        return None
    return max(by, key=lambda k: (np.mean(by[k]), k == "base"))


def plan(args, winner=None) -> list[list[tuple[str, int]]]:
    """Stages of (recipe, seed) tasks in launch order: choice, winner's seeds, base's seeds."""
    stages = [[(n, s) for s in args.seeds for n in args.candidates]]
    if winner:
        stages.append([(winner, s) for s in args.confirm_seeds if (winner, s) not in stages[0]])
        stages.append([("base", s) for s in args.confirm_seeds
                       if args.confirm_base and winner != "base" and ("base", s) not in stages[0]])
    return stages


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--data-root", default=None, help="folder with the dataset's files")
    ap.add_argument("--size", type=int, default=None, help="zero-pad the images to this side, px (GPU: 32)")
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="stage 1 seeds (the choice)")
    ap.add_argument("--confirm-seeds", type=int, nargs="*", default=[1, 2], help="stage 2 seeds of the winner")
    ap.add_argument("--no-confirm-base", dest="confirm_base", action="store_false",
                    help="skip stage 3 (base recipe on the confirm seeds)")
    ap.add_argument("--steps", type=int, default=None, help="override the training steps of every recipe")
    ap.add_argument("--base-model", default="{}", help="JSON overrides of BASE_MODEL, e.g. '{\"channels\": 16}'")
    ap.add_argument("--base-train", default="{}", help="JSON overrides of BASE_TRAIN")
    ap.add_argument("--draws", type=int, default=256, help="bound draws per image x class (even: antithetic)")
    ap.add_argument("--bins", type=int, default=16, help="noise-level bins of the weighting")
    ap.add_argument("--cv-repeats", type=int, default=10)
    ap.add_argument("--eval-batch", type=int, default=78, help="images per call of the bound")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS threads per task process")
    ap.add_argument("--workers", type=int, default=1, help="(recipe, seed) processes at once")
    ap.add_argument("--budget-s", type=float, default=470, help="wall-clock cap of the call, s")
    ap.add_argument("--choice-budget-s", type=float, default=None, help="cap of stage 1, s (default: --budget-s)")
    ap.add_argument("--min-task-s", type=float, default=30, help="start no task with less than this left, s")
    ap.add_argument("--runs-dir", default=None, help="task run folders, relative to the repo (default "
                                                     "runs/recipe_sweep; --smoke: runs/recipe_sweep_smoke)")
    ap.add_argument("--out", default=None, help="<out>.json and <out>.md (default reports/benchmarks/recipe_sweep; "
                                                "--smoke: runs/recipe_sweep_smoke/report, ignored by git)")
    ap.add_argument("--baseline-predictions", nargs="*", default=[],
                    help="globs of per-image probability CSVs <name>_s<seed>.csv (sgc experiment)")
    ap.add_argument("--smoke", action="store_true", help="CPU, two-class digits, tiny MLP, 2 recipes")
    ap.add_argument("--task", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--task-seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = argv
    smoke_or = (lambda smoke, real: smoke if args.smoke else real)   # --smoke writes nothing under reports/
    args.runs_dir = str(REPO / (args.runs_dir or smoke_or("runs/recipe_sweep_smoke", "runs/recipe_sweep")))
    args.out = str(REPO / (args.out or smoke_or("runs/recipe_sweep_smoke/report", "reports/benchmarks/recipe_sweep")))
    # (absolute paths stay absolute)
    if args.smoke:
        args.device, args.draws, args.bins, args.cv_repeats = "cpu", 16, 4, 2
        args.candidates = [c for c in args.candidates if c in ("base", "cosine")] or ["base", "cosine"]
    if args.task:
        run_task(args, args.task, args.task_seed)
        return None
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    start = time.time()
    deadline = start + args.budget_s
    stages = plan(args)
    _launch(args, stages[0], min(deadline, start + (args.choice_budget_s or args.budget_s)))
    winner = _winner(args, _results(args, stages[0]))
    if winner:
        stages = plan(args, winner)
        _launch(args, stages[1], deadline)
        _launch(args, stages[2], deadline)
    from _command import public_command
    from recipe_report import write_report
    tasks = [t for stage in stages for t in stage]
    return write_report(args, _results(args, tasks), winner, tasks, start,
                        command=public_command(argv, "benchmarks/recipe_sweep.py", args.dataset),  # no machine folders
                        target=TARGET, published=PUBLISHED_RESNET18)


if __name__ == "__main__":
    main()
