"""The ``sgc`` command: train, classify, status, demo, batch (the notebooks) and experiment.

Settings: every sub-command takes ``--set KEY=VALUE ...`` with dotted keys whose values are YAML
(``--set train.steps=2000 model.channels=64 "data_options={size: 32}"``; ``sgc batch`` also
spells it ``-p``). Nested values merge: ``train.steps=20`` changes one key and keeps the rest
(:mod:`sgc.config`). Unknown keys fail before any work, with a suggestion. The spellings of
sgc 0.1 (``--train steps=20``, ``--model``, ``--data``, ``--options``, ``--ode``/``--elbo``,
``--baseline``, ``--out``, ``--out-dir``, ``--work-dir``, ``demo --steps``) still work and are
hidden from ``--help``; each use prints a one-line note naming the new spelling.

Errors: an error of sgc's own (``sgc.errors.SgcError``, and the built-in ValueError /
FileNotFoundError / PermissionError / FloatingPointError that sgc raises with a message) is
printed as one line ``sgc <command> error: <problem>. <fix>`` on stderr with exit code 2; any
other exception keeps its traceback (it is a bug to report). SIGTERM/SIGINT during training
exit with 128 + the signal after writing a checkpoint.

Sub-commands: each parser sets ``run`` (a function of the parsed arguments returning None or
an exit code) with ``set_defaults``; modules with further sub-commands add their parsers in
:func:`build_parser` where it says so.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


# --------------------------------------------------------------------------- parser helpers
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show (None, False, required)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or action.required or action.default == []:
            return action.help
        return super()._get_help_string(action)


class _OldSection(argparse.Action):
    """A hidden 0.1 spelling of --set for one section: ``--train steps=20`` = ``--set train.steps=20``."""

    def __init__(self, option_strings, dest, section=None, **kwargs):
        self.section = section
        super().__init__(option_strings, "set", nargs="*", help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        # a malformed item (no '=') is passed on unchanged, so that the config parser names it
        items = [f"{self.section}.{v.lstrip()}" if "=" in v else v for v in values]
        _note(f"{option_string} {' '.join(values)} is the old spelling of --set {' '.join(items)}")
        setattr(namespace, "set", [*(getattr(namespace, "set", None) or []), *items])


class _OldName(argparse.Action):
    """A hidden 0.1 name of an option (``--out`` for ``--runs-dir``): stores the value, with a note."""

    def __init__(self, option_strings, dest, new=None, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        _note(f"{option_string} is the old name of {self.new}")
        setattr(namespace, self.dest, values)


def _note(text: str) -> None:
    print(f"sgc: note: {text}", file=sys.stderr)


def _add_set(p, sections: str, example: str, *flags: str) -> None:
    p.add_argument(*(flags or ("--set",)), dest="set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help=f"settings as dotted keys with YAML values; sections: {sections}; e.g. {example}. "
                        "A section's other keys keep their values")


def _add_data_args(p) -> None:
    from .data import DATASETS
    from .data.roots import ENV
    p.add_argument("--dataset", default="digits", choices=sorted(DATASETS), metavar="NAME",
                   help=f"dataset: {', '.join(sorted(DATASETS))}")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help=f"the dataset's own folder (e.g. one holding breastmnist.npz); when not given: "
                        f"${ENV}/<folder> if {ENV} is set (medmnist/, mini-mias/, cbis-ddsm/, inbreast/, "
                        f"vindr-mammo/), else ~/.medmnist for MedMNIST and ~/sgc-data/<folder> for the others; "
                        f"digits need none")


def _add_device(p) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available; under torchrun: "
                                                   "this rank's GPU)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="sgc", formatter_class=_Formatter,
                                     description="Score-based generative classifiers: one class-conditional score "
                                                 "model, Bayes' rule over per-class log-likelihoods.")
    parser.add_argument("--version", action="version", version=f"sgc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help):
        return sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)

    p = command("train", "train a class-conditional score model into a run folder")
    _add_data_args(p)
    p.add_argument("--run-dir", required=True, help="the run folder (config.json, checkpoint.pt, status.json, ...)")
    p.add_argument("--arch", default="unet", choices=["unet", "mlp"], help="score network (= --set model.arch=...)")
    p.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"], help="forward SDE (= --set sde.name=...)")
    _add_set(p, "data_options (loader), model (network), sde, train (TrainConfig)",
             "train.steps=2000 model.channels=64")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true",
                     help="continue from the newest complete checkpoint in run-dir (checkpoint.pt, else "
                          "checkpoint.prev.pt)")
    how.add_argument("--overwrite", action="store_true",
                     help="replace the model (and its results) that run-dir holds; without this or --resume, "
                          "training into a run folder that holds a model is refused")
    _add_device(p)
    for old, section in (("--data", "data_options"), ("--model", "model"), ("--train", "train")):
        p.add_argument(old, action=_OldSection, section=section)
    p.set_defaults(run=_train)

    p = command("classify", "per-class log-likelihoods, posteriors and metrics of one split")
    p.add_argument("--run-dir", required=True, help="a run folder written by sgc train")
    p.add_argument("--split", default="test", help="the split to classify")
    p.add_argument("--estimator", default="ode", choices=["ode", "elbo"],
                   help="ode: exact probability-flow ODE likelihood; elbo: the Monte-Carlo bound (faster)")
    _add_set(p, "estimator_options", "estimator_options.rtol=1e-5 (ode) or estimator_options.n_draws=256 (elbo)")
    p.add_argument("--prior", default="uniform", choices=["uniform", "empirical"],
                   help="class prior p(y): uniform, or the training frequencies")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a temperature on the validation split and write calibrated posteriors "
                        "(ECE before/after in the metrics)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batched solve (and per saved chunk)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (results are then partial_*)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="the dataset's folder, when not where the run recorded it (default: as recorded, "
                        "else the data-root rule; see sgc train --help)")
    _add_device(p)
    p.add_argument("--options", action=_OldSection, section="estimator_options")
    p.set_defaults(run=_classify)

    p = command("status", "what a run folder holds: the model's steps, complete or not, its results")
    p.add_argument("--run-dir", required=True, help="a run folder")
    p.set_defaults(run=_status_cmd)

    p = command("demo", "the whole method on scikit-learn's digits (offline, CPU, about 4 minutes)")
    p.add_argument("--run-dir", default="runs/digits", help="run folder (runs/ is ignored by git)")
    _add_set(p, "model, train, estimator_options.ode, estimator_options.elbo",
             "train.steps=500 estimator_options.elbo.n_draws=16")
    p.add_argument("--limit", type=int, default=None,
                   help="classify only the first N test images (results are then partial_*)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a model of other settings in run-dir (default: refuse; the same settings are reused)")
    _add_device(p)
    p.add_argument("--steps", type=int, action=_OldName, new="--set train.steps=N")
    p.set_defaults(run=_demo)

    p = command("batch", "run the numbered notebooks with papermill for one dataset")
    p.add_argument("--dataset", default="digits", help="dataset name; parameters from params/<dataset>.yaml")
    p.add_argument("--profile", default="cpu", help="cpu: params/<dataset>.yaml; another, e.g. gpu: "
                                                    "params/<dataset>.gpu.yaml, run folder <runs-dir>/<dataset>-gpu")
    p.add_argument("--notebooks", nargs="*", default=None, metavar="NN",
                   help="which notebooks, e.g. 01 02 (default: all)")
    _add_set(p, "the notebooks' parameters (train is a TrainConfig)", "train.steps=2000 limit=50", "-p", "--set")
    p.add_argument("--runs-dir", default="runs",
                   help="parent folder of the run folders: <runs-dir>/<dataset>/ (runs/ is ignored by git; "
                        "reports/runs rewrites the committed results)")
    p.add_argument("--reports-dir", default=None,
                   help="where notebook 05 writes figures/ and tables/ (default: <runs-dir>/summary)")
    p.add_argument("--resume", action="store_true", help="skip the leading notebooks done before with the same "
                                                         "parameters")
    p.add_argument("--out", dest="runs_dir", action=_OldName, new="--runs-dir")
    p.add_argument("--param", dest="set", nargs="*", action="extend", help=argparse.SUPPRESS)
    p.set_defaults(run=_batch)

    p = command("experiment", "low-data / imbalance experiment: score model vs baselines over seeds, rows "
                              "appended to <reports-dir>/tables/<tag>.csv")
    _add_data_args(p)
    _add_set(p, "data_options, model, train, estimator_options.ode, estimator_options.elbo, "
                "estimator_options.weighted, baseline_options",
             "train.steps=1000 estimator_options.elbo.n_draws=64 estimator_options.weighted.n_bins=16 "
             "baseline_options.epochs=20")
    p.add_argument("--fractions", nargs="+", type=float, default=[1, 5, 10, 25, 50, 100],
                   help="training-set fractions in percent (stratified by group)")
    p.add_argument("--imbalance-ratios", nargs="*", type=float, default=None,
                   help="minority:majority ratios to subsample the minority class to (default: as is)")
    p.add_argument("--minority-class", type=int, default=1, help="the class --imbalance-ratios subsamples")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one training run per seed and setting")
    p.add_argument("--classifiers", nargs="+", default=["score_ode", "score_elbo", "resnet18", "densenet121", "logreg"],
                   choices=["score_ode", "score_elbo", "score_weighted", "resnet18", "densenet121", "logreg"],
                   metavar="NAME",
                   help="score_ode, score_elbo (the score model, one training for all three score rows), "
                        "score_weighted (the bound's evidence weighted by noise level, the weighting chosen on "
                        "val: estimator_options.weighted; reads score_elbo's draws when both run), resnet18, "
                        "densenet121, logreg")
    p.add_argument("--score-run-dir", default=None,
                   help="score-model run folder template with {seed}: reused when trained as configured, "
                        "else trained there (default: <runs-dir>/<tag>/...)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the test split")
    p.add_argument("--tag", default="experiment", help="table name: <tag>.csv and <tag>.md")
    p.add_argument("--reports-dir", default="reports", help="tables/<tag>.csv|md and figures/ go here")
    p.add_argument("--figures-dir", default=None, help="the low-data figure's folder (default: <reports-dir>/figures)")
    p.add_argument("--runs-dir", default="runs/experiments", help="score-model run folders: <runs-dir>/<tag>/...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    _add_device(p)
    for old, section in (("--data", "data_options"), ("--model", "model"), ("--train", "train"),
                         ("--ode", "estimator_options.ode"), ("--elbo", "estimator_options.elbo"),
                         ("--weighted", "estimator_options.weighted"), ("--baseline", "baseline_options")):
        p.add_argument(old, action=_OldSection, section=section)
    p.add_argument("--out-dir", dest="tables_dir", action=_OldName, new="--reports-dir (tables go to <reports-dir>/tables)")
    p.add_argument("--work-dir", dest="runs_dir", action=_OldName, new="--runs-dir")
    p.set_defaults(run=_experiment)

    # Further sub-commands register here: add_parsers(command) adds parsers that set_defaults(run=...).
    from .commands import add_parsers  # predict, calibrate, export and the studies of sgc.commands
    add_parsers(command)
    from .profile_command import add_parser as add_profile_parser  # sgc profile
    add_profile_parser(command)
    return parser


# --------------------------------------------------------------------------- settings
def _settings(args, schema, defaults=None) -> dict:
    """The --set items of ``args`` parsed, checked against ``schema`` and merged into ``defaults``."""
    from .config import ConfigError, apply_overrides
    try:
        return apply_overrides(defaults or {}, args.set, schema, what="setting")
    except ConfigError as err:
        text = str(err).strip()
        raise ConfigError(f"{text}. Write settings as --set section.key=value (sgc {args.command} --help "
                          "lists the sections)") from None


def _model_section(base: dict, override: dict | None) -> dict:
    """The network config: ``override`` merged into ``base``, or replacing it when it names another arch."""
    from .config import merge
    override = override or {}
    if "arch" in override and override["arch"] != base.get("arch"):
        return dict(override)
    return merge(base, override)


# --------------------------------------------------------------------------- sub-commands
def _train(args) -> None:
    from . import distributed, pipeline, runs
    from .config import OPEN
    from .train import TrainConfig
    ov = _settings(args, {"data_options": OPEN, "model": OPEN, "sde": OPEN, "train": TrainConfig})
    start = time.perf_counter()
    _, history = pipeline.train_on_dataset(
        args.dataset, args.run_dir, data_root=args.data_root, data_options=ov.get("data_options") or {},
        model={"arch": args.arch, **ov.get("model", {})}, sde={"name": args.sde, **ov.get("sde", {})},
        train=ov.get("train") or {}, resume=args.resume, overwrite=args.overwrite, device=args.device)
    if distributed.is_main():
        st = runs.run_status(args.run_dir)
        config, _ = runs.load_checkpoint(args.run_dir)
        loss = f"final loss {history[-1]['loss']:.4f}" if history else "no new steps"
        print(f"trained {args.run_dir}: {st['steps_done']} of {st['steps_planned']} steps, {loss}, "
              f"{time.perf_counter() - start:.0f} s, {config.get('parameters', 0):,} parameters "
              f"({config['model'].get('arch')})")


def _summary(m: dict) -> str:
    model = (f"model {m['train_steps']} steps" if m.get("model_complete", True) else
             f"model {m['train_steps']} of {m['train_steps_planned']} steps, INTERRUPTED")
    partial = f"; PARTIAL ({', '.join(m['partial_reasons'])})" if m.get("partial") else ""
    cal = m.get("calibration")
    calibrated = (f"; calibrated, T={cal['temperature']:.3g}, ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}"
                  if cal else "")
    seconds = m.get("seconds_classify", m.get("seconds", 0.0))
    return (f"{m['dataset']} {m['split']}: {m['n']} images, {m['estimator']} estimator ({model}{partial}{calibrated}): "
            f"accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}, "
            f"AUC {'n/a' if m['auc_macro_ovr'] is None else format(m['auc_macro_ovr'], '.3f')}, "
            f"{m['mean_bpd_true_class']:.3f} bits/dim, NFE {m['mean_nfe']:.0f}, "
            f"classification {seconds:.1f} s -> {m.get('metrics_file', 'metrics.json')}")


def _classify(args) -> None:
    from . import distributed, pipeline
    from .config import OPEN
    ov = _settings(args, {"estimator_options": OPEN})
    m = pipeline.evaluate_run(args.run_dir, split=args.split, estimator=args.estimator,
                              estimator_options=ov.get("estimator_options") or {}, prior=args.prior,
                              batch_size=args.batch_size, limit=args.limit, calibrate=args.calibrate,
                              data_root=args.data_root, device=args.device)
    if distributed.is_main():
        print(_summary(m))


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


def _status_cmd(args) -> None:
    print(_status(args.run_dir))


def _demo(args) -> None:
    from . import pipeline, runs
    from .config import OPEN
    from .train import TrainConfig
    ov = _settings(args, {"model": OPEN, "train": TrainConfig, "estimator_options": {"ode": OPEN, "elbo": OPEN}})
    if getattr(args, "steps", None):
        ov.setdefault("train", {}).setdefault("steps", args.steps)
    with runs.writer_lock(args.run_dir):  # the whole demo: no other writer in between
        _demo_locked(args, pipeline, ov)


def _demo_locked(args, pipeline, ov: dict) -> None:
    from .batch import ensure_trained
    from .config import merge
    from .fileio import atomic_write_json
    model = _model_section(pipeline.DEMO_MODEL, ov.get("model"))
    train = merge(pipeline.DEMO_TRAIN, ov.get("train"))
    options = ov.get("estimator_options") or {}
    start = time.perf_counter()
    action = ensure_trained(args.run_dir, "digits", model=model, train=train, retrain=args.overwrite,
                            device=args.device, progress=True)
    if action == "reused":
        print(f"reusing the model in {args.run_dir} (trained with these settings before)", file=sys.stderr)
    common = dict(split="test", batch_size=120, limit=args.limit, device=args.device)
    fast = pipeline.evaluate_run(args.run_dir, estimator="elbo", estimator_options=merge(pipeline.DEMO_ELBO,
                                 options.get("elbo")), **common)
    m = pipeline.evaluate_run(args.run_dir, estimator="ode", estimator_options=merge(pipeline.DEMO_ODE,
                              options.get("ode")), **common)
    m["wall_seconds"] = time.perf_counter() - start
    m["other_estimators"] = {"elbo": fast}
    if not m["partial"]:  # metrics.json: the ODE result with the bound's beside it
        atomic_write_json(Path(args.run_dir) / "metrics.json", m)
    print(_summary(m))
    print(_summary(fast) + f" (wall {m['wall_seconds']:.0f} s in all, training included)")


def _batch(args) -> None:
    from .batch import run_batch
    from .config import parse_overrides
    start = time.perf_counter()
    done = run_batch(args.dataset, notebooks=args.notebooks, params=parse_overrides(args.set), out=args.runs_dir,
                     resume=args.resume, reports_dir=args.reports_dir, progress=True, profile=args.profile)
    if done:
        print(f"[batch] {args.dataset}: {len(done)} notebook(s) in {time.perf_counter() - start:.0f} s -> "
              f"{done[0].parent}")


def _experiment(args) -> None:
    from .config import OPEN, merge
    from .experiments import SCORE_EVAL, SCORE_MODEL, SCORE_TRAIN, run_experiment
    from .train import TrainConfig
    from .weighting import SELECT_OPTIONS
    ov = _settings(args, {"data_options": OPEN, "model": OPEN, "train": TrainConfig,
                          "estimator_options": {"ode": OPEN, "elbo": OPEN, "weighted": SELECT_OPTIONS},
                          "baseline_options": OPEN})
    tables = getattr(args, "tables_dir", None) or str(Path(args.reports_dir, "tables"))
    figures = args.figures_dir or (str(Path(args.reports_dir, "figures")) if not getattr(args, "tables_dir", None)
                                   else None)  # None: <tables>/../figures, as before
    opts = ov.get("baseline_options") or {}
    frame = run_experiment(
        args.dataset, data_root=args.data_root, data_options=ov.get("data_options") or {}, fractions=args.fractions,
        imbalance_ratios=args.imbalance_ratios, minority_class=args.minority_class, seeds=args.seeds,
        classifiers=args.classifiers, score_model=_model_section(SCORE_MODEL, ov.get("model")),
        score_train=merge(SCORE_TRAIN, ov.get("train")), score_eval=merge(SCORE_EVAL, ov.get("estimator_options")),
        score_run_dir=args.score_run_dir,
        baseline_options={n: opts for n in ("resnet18", "densenet121")}, n_boot=args.n_boot,
        out_dir=tables, figures_dir=figures, work_dir=f"{args.runs_dir}/{args.tag}",
        tag=args.tag, device=args.device, threads=args.threads, progress=True)
    print(f"{len(frame)} rows appended to {tables}/{args.tag}.csv")


# --------------------------------------------------------------------------- entry point
def _close_progress_bars() -> None:
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", None) or []):
        bar.close()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import distributed
    from .errors import SgcError, one_line
    from .train import TrainingInterrupted
    try:
        code = args.run(args)
    except TrainingInterrupted as err:  # SIGTERM / SIGINT: checkpoint written, exit 128 + signal
        if distributed.is_main():
            print(f"sgc {args.command}: {err}", file=sys.stderr)
        return 128 + int(err.signum)
    except (SgcError, ValueError, FileNotFoundError, PermissionError, FloatingPointError) as err:
        # sgc's own errors, and the built-in types sgc raises with a message naming the fix
        _close_progress_bars()  # so that the error starts a line of its own
        print(f"sgc {args.command} error: {one_line(err)}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
