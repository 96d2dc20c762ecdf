"""The ``sgc`` command: train, classify, status, demo (and batch, for the notebooks).

Errors: an error of sgc's own (``sgc.errors.SgcError``, and the built-in ValueError /
FileNotFoundError / PermissionError / FloatingPointError that sgc raises with a message) is
printed as one line ``sgc <command> error: <problem>. <fix>`` on stderr with exit code 2; any
other exception keeps its traceback (it is a bug to report). SIGTERM/SIGINT during training
exit with 128 + the signal after writing a checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _kv(items) -> dict:
    """Parse ["key=value", ...] with YAML scalars (numbers, booleans, lists) as values."""
    import yaml
    from .errors import ConfigError
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}. Write options as key=value, e.g. steps=100")
        k, v = item.split("=", 1)
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError as err:
            raise ConfigError(f"the value of {k.strip()!r} is not a plain YAML value ({err}). Write a number, "
                              f"true/false, a string or a [list]; tags such as !!python/... are refused") from None
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[k.strip()] = value
    return out


def _add_data_args(p):
    p.add_argument("--dataset", default="digits", help="dataset name (digits, breastmnist, ...)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset's files")
    p.add_argument("--data", nargs="*", metavar="KEY=VALUE", help="loader options, e.g. size=32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgc", description="Score-based generative classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a class-conditional score model into a run folder")
    _add_data_args(p)
    p.add_argument("--run-dir", required=True, help="output folder (config.json, checkpoint.pt)")
    p.add_argument("--arch", default="unet", choices=["unet", "mlp"])
    p.add_argument("--model", nargs="*", metavar="KEY=VALUE", help="network options, e.g. channels=64")
    p.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"])
    p.add_argument("--train", nargs="*", metavar="KEY=VALUE",
                   help="TrainConfig fields, e.g. steps=8000 batch_size=128 weighting=likelihood")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true",
                     help="continue from the newest complete checkpoint in run-dir (checkpoint.pt, else checkpoint.prev.pt)")
    how.add_argument("--overwrite", action="store_true",
                     help="replace the model (and its results) that run-dir holds; without this or --resume, "
                          "training into a run folder that holds a model is refused")
    p.add_argument("--device", default=None, help="cpu, cuda (under torchrun: this rank's GPU)")

    p = sub.add_parser("classify", help="per-class log-likelihoods, posteriors and metrics for a split")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--estimator", default="ode", choices=["ode", "elbo"])
    p.add_argument("--options", nargs="*", metavar="KEY=VALUE",
                   help="estimator options, e.g. rtol=1e-5 atol=1e-5 method=dopri5 n_probes=1")
    p.add_argument("--prior", default="uniform", choices=["uniform", "empirical"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--data-root", default=None, help="override the data folder recorded in the run")
    p.add_argument("--device", default=None)

    p = sub.add_parser("status", help="what a run folder holds: the model's steps, complete or not, its results")
    p.add_argument("--run-dir", required=True)

    p = sub.add_parser("demo", help="the whole method on scikit-learn's digits (offline, CPU)")
    p.add_argument("--run-dir", default="runs/digits", help="run folder (default runs/digits, ignored by git)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    p.add_argument("--limit", type=int, default=None,
                   help="classify only the first N test images (results are then partial_*)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a model of other settings in run-dir (default: refuse; the same settings are reused)")
    p.add_argument("--device", default=None)

    p = sub.add_parser("batch", help="run the numbered notebooks with papermill for one dataset")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--notebooks", nargs="*", default=None, help="which notebooks, e.g. 01 02 (default: all)")
    p.add_argument("-p", "--param", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="notebook parameters overriding params/<dataset>.yaml")
    p.add_argument("--out", default="runs", help="parent folder of the run folders (default runs/, ignored by git; "
                                                 "reports/runs rewrites the committed results)")
    p.add_argument("--reports-dir", default=None,
                   help="where notebook 05 writes figures/ and tables/ (default <out>/summary)")
    p.add_argument("--resume", action="store_true", help="skip notebooks already executed")

    p = sub.add_parser("experiment", help="low-data / imbalance experiment: score model vs baselines, "
                                          "rows appended to <out-dir>/<tag>.csv")
    _add_data_args(p)
    p.add_argument("--fractions", nargs="+", type=float, default=[1, 5, 10, 25, 50, 100],
                   help="training-set fractions in percent (stratified by group)")
    p.add_argument("--imbalance-ratios", nargs="*", type=float, default=None,
                   help="minority:majority ratios to subsample the minority class to (default: as is)")
    p.add_argument("--minority-class", type=int, default=1)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--classifiers", nargs="+", default=["score_ode", "score_elbo", "resnet18", "densenet121", "logreg"],
                   choices=["score_ode", "score_elbo", "resnet18", "densenet121", "logreg"])
    p.add_argument("--model", nargs="*", metavar="KEY=VALUE",
                   help="score network (default sgc.experiments.SCORE_MODEL), e.g. arch=unet channels=16")
    p.add_argument("--train", nargs="*", metavar="KEY=VALUE", help="score-model TrainConfig fields, e.g. steps=1000")
    p.add_argument("--ode", nargs="*", metavar="KEY=VALUE", help="ODE estimator options, e.g. rtol=1e-3")
    p.add_argument("--elbo", nargs="*", metavar="KEY=VALUE", help="bound estimator options, e.g. n_draws=256")
    p.add_argument("--baseline", nargs="*", metavar="KEY=VALUE",
                   help="options of the network baselines, e.g. epochs=20 patience=5")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the test split")
    p.add_argument("--tag", default="experiment", help="table name: <out-dir>/<tag>.csv and .md")
    p.add_argument("--out-dir", default="reports/tables")
    p.add_argument("--figures-dir", default=None, help="default: <out-dir>/../figures")
    p.add_argument("--work-dir", default="runs/experiments", help="score-model run folders (<work-dir>/<tag>/...)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None)
    from .commands import add_parsers  # predict, calibrate, export
    add_parsers(sub)
    return parser


def _summary(m: dict) -> str:
    model = (f"model {m['train_steps']} steps" if m.get("model_complete", True) else
             f"model {m['train_steps']} of {m['train_steps_planned']} steps, INTERRUPTED")
    partial = f"; PARTIAL ({', '.join(m['partial_reasons'])})" if m.get("partial") else ""
    return (f"{m['dataset']} {m['split']} ({m['estimator']}, n={m['n']}, {model}{partial}): "
            f"accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
            f"AUC {'n/a' if m['auc_macro_ovr'] is None else format(m['auc_macro_ovr'], '.3f')}, "
            f"{m['mean_bpd_true_class']:.3f} bits/dim, NFE {m['mean_nfe']:.0f}, "
            f"{m['seconds']:.0f} s -> {m.get('metrics_file', 'metrics.json')}")


def _status(run_dir) -> str:
    """Lines describing a run folder: its model and the results beside it."""
    from . import runs
    run_dir = Path(run_dir)
    st = runs.run_status(run_dir)
    config, _ = runs.load_checkpoint(run_dir)
    data = config.get("data", {})
    lines = [f"{run_dir}: {data.get('dataset', '?')} model ({config['model'].get('arch')}, "
             f"{config.get('parameters', '?')} parameters), {runs.describe_status(st)}, "
             f"{st['checkpoint']} (format {st['format']})"]
    for path in sorted(run_dir.glob("*metrics_*.json")):
        m = json.loads(path.read_text())
        lines.append(f"  {path.name}: n={m.get('n')}, accuracy {m.get('accuracy', float('nan')):.3f}"
                     + (f", partial: {', '.join(m.get('partial_reasons') or [])}" if m.get("partial") else ""))
    return "\n".join(lines)


def _demo(args) -> None:
    from . import pipeline, runs
    with runs.writer_lock(args.run_dir):  # the whole demo: no other writer in between
        _demo_locked(args, pipeline)


def _demo_locked(args, pipeline) -> None:
    from .fileio import atomic_write_json
    train = dict(pipeline.DEMO_TRAIN)
    if args.steps:
        train["steps"] = args.steps
    start = time.perf_counter()
    from .batch import ensure_trained
    action = ensure_trained(args.run_dir, "digits", model=pipeline.DEMO_MODEL, train=train,
                                     retrain=args.overwrite, device=args.device, progress=True)
    if action == "reused":
        print(f"reusing the model in {args.run_dir} (trained with these settings before)", file=sys.stderr)
    common = dict(split="test", batch_size=120, limit=args.limit, device=args.device)
    fast = pipeline.evaluate_run(args.run_dir, estimator="elbo", estimator_options=pipeline.DEMO_ELBO, **common)
    m = pipeline.evaluate_run(args.run_dir, estimator="ode", estimator_options=pipeline.DEMO_ODE, **common)
    m["wall_seconds"] = time.perf_counter() - start
    m["other_estimators"] = {"elbo": fast}
    if not m["partial"]:  # metrics.json: the ODE result with the bound's beside it
        atomic_write_json(Path(args.run_dir) / "metrics.json", m)
    print(_summary(m))
    print(_summary(fast) + f" (wall {m['wall_seconds']:.0f} s in all)")


def _close_progress_bars() -> None:
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", None) or []):
        bar.close()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import commands, distributed, pipeline
    from .errors import SgcError, one_line
    from .train import TrainingInterrupted
    try:
        if args.command == "train":
            pipeline.train_on_dataset(args.dataset, args.run_dir, data_root=args.data_root,
                                      data_options=_kv(args.data), model={"arch": args.arch, **_kv(args.model)},
                                      sde={"name": args.sde}, train=_kv(args.train), resume=args.resume,
                                      overwrite=args.overwrite, device=args.device)
            if distributed.is_main():
                print(f"trained: {args.run_dir}")
        elif args.command == "classify":
            m = pipeline.evaluate_run(args.run_dir, split=args.split, estimator=args.estimator,
                                      estimator_options=_kv(args.options), prior=args.prior,
                                      batch_size=args.batch_size, limit=args.limit,
                                      data_root=args.data_root, device=args.device)
            if distributed.is_main():
                print(_summary(m))
        elif args.command == "status":
            print(_status(args.run_dir))
        elif args.command == "demo":
            _demo(args)
        elif args.command == "batch":
            from .batch import run_batch
            run_batch(args.dataset, notebooks=args.notebooks, params=_kv(args.param), out=args.out,
                      resume=args.resume, reports_dir=args.reports_dir)
        elif args.command == "experiment":
            from .experiments import SCORE_EVAL, SCORE_MODEL, SCORE_TRAIN, run_experiment
            opts = _kv(args.baseline)
            frame = run_experiment(
                args.dataset, data_root=args.data_root, data_options=_kv(args.data), fractions=args.fractions,
                imbalance_ratios=args.imbalance_ratios, minority_class=args.minority_class, seeds=args.seeds,
                classifiers=args.classifiers, score_model={**SCORE_MODEL, **_kv(args.model)},
                score_train={**SCORE_TRAIN, **_kv(args.train)},
                score_eval={"ode": _kv(args.ode) or SCORE_EVAL["ode"], "elbo": _kv(args.elbo) or SCORE_EVAL["elbo"]},
                baseline_options={n: opts for n in ("resnet18", "densenet121")}, n_boot=args.n_boot,
                out_dir=args.out_dir, figures_dir=args.figures_dir, work_dir=f"{args.work_dir}/{args.tag}",
                tag=args.tag, device=args.device, threads=args.threads, progress=True)
            print(f"{len(frame)} rows appended to {args.out_dir}/{args.tag}.csv")
        elif args.command in commands.COMMANDS:
            return commands.run(args)
        else:  # a sub-command without a branch here must not exit 0 having done nothing
            raise NotImplementedError(f"sgc {args.command} is parsed but not dispatched")
    except TrainingInterrupted as err:  # SIGTERM / SIGINT: checkpoint written, exit 128 + signal
        if distributed.is_main():
            print(f"sgc {args.command}: {err}", file=sys.stderr)
        return 128 + int(err.signum)
    except (SgcError, ValueError, FileNotFoundError, PermissionError, FloatingPointError) as err:
        # sgc's own errors, and the built-in types sgc raises with a message naming the fix
        _close_progress_bars()  # so that the error starts a line of its own
        print(f"sgc {args.command} error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
