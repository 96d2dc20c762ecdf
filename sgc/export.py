"""Export a trained run as a self-contained folder, and load it back without unpickling.

``export_run(run_dir, out)`` writes::

    model.safetensors      the EMA weights (safetensors: tensors only, no code)
    config.json            model, SDE, data (classes, levels, training counts), training settings,
                           the source checkpoint's sha256 and step, provenance
    preprocessing.json     the recipe that turns an image file into a model input (sgc.data.recipes)
    ood_calibration.json   the OOD thresholds, when the run was calibrated (sgc calibrate)
    metrics/               the run's metrics_<split>_<estimator>.json files
    MODEL_CARD.md          data, split, metrics with 95 % bootstrap intervals, intended use, limitations
    SHA256SUMS             checksums of the files above (sha256sum -c format)

``load_export(folder)`` -> (model, sde, config) reads JSON and safetensors only and checks
the checksums; ``ScoreClassifier.load(folder)`` wraps it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .runs import atomic_write_text, find_checkpoint, load_checkpoint, load_run, sha256_file

__all__ = ["EXPORT_FORMAT", "export_run", "load_export", "load_classifier", "model_card"]

EXPORT_FORMAT = "sgc-export-1"
WEIGHTS = "model.safetensors"


def _metrics_with_intervals(run_dir: Path, config: dict, n_boot: int = 1000) -> list[dict]:
    """Per scores_<split>_<estimator>.csv of the run: accuracy, balanced accuracy, AUC with 95 % intervals."""
    from .classify import log_prior, posterior, read_scores_csv
    from .metrics import metrics_with_ci
    data = config["data"]
    k = len(data["class_names"])
    out = []
    for path in sorted(run_dir.glob("scores_*_*.csv")):
        split, estimator = path.stem[len("scores_"):].rsplit("_", 1)
        mpath = run_dir / f"metrics_{split}_{estimator}.json"
        recorded = json.loads(mpath.read_text()) if mpath.exists() else {}
        prior = recorded.get("prior", "uniform")
        _, labels, log_lik = read_scores_csv(path)
        if len(np.unique(labels)) < k:
            continue  # a partial split (--limit): intervals need every class
        post = posterior(log_lik, log_prior(k, prior, np.repeat(np.arange(k), data["train_counts"])))
        ci = metrics_with_ci(labels.astype(int), post, class_names=data["class_names"], n_boot=n_boot)
        out.append({"split": split, "estimator": estimator, "prior": prior, "n": int(len(labels)),
                    "estimator_options": recorded.get("estimator_options"), **ci})
    return out


def model_card(config: dict, metrics: list[dict], calibration: dict | None, recipe: dict) -> str:
    """MODEL_CARD.md text from the export's facts (nothing here is typed in by hand)."""
    data, model, train = config["data"], config["model"], config["train"]
    lines = [f"# Model card: sgc score-based generative classifier ({data['dataset']})", "",
             "## Model",
             f"- Class-conditional score network `{model['arch']}` ({config.get('parameters', 'n/a')} parameters), "
             f"SDE `{config['sde']['name']}`; classes: {', '.join(data['class_names'])}.",
             f"- Trained by denoising score matching for {train['steps']} steps (batch {train['batch_size']}, "
             f"weighting `{train['weighting']}`), EMA weights exported; source checkpoint sha256 "
             f"`{config['source']['checkpoint_sha256'][:16]}…` at step {config['source']['step']}.",
             "- Prediction: p(y | x) ∝ p(x | y) p(y), log p(x | y) from the probability-flow ODE or the "
             "denoising bound (`sgc predict`).", "",
             "## Data",
             f"- Dataset `{data['dataset']}` (loader options {json.dumps(data.get('options') or {})}), "
             f"{data.get('n_train', 'n/a')} training images, per class {data.get('train_counts')}; "
             f"images {data['shape']} with {data['levels']} grey levels.",
             f"- Splits: trained on the loader's `train` split; the metrics below name their split (the source's "
             "official split where it has one; validation carved from training by patient / group otherwise).",
             f"- Preprocessing (`preprocessing.json`, kind `{recipe['kind']}`"
             + (", reconstructed from the loader settings" if recipe.get("derived") else "") + "): "
             + ("decoded, breast-cropped, flipped and resized as in training: "
                + json.dumps(recipe.get("settings")) if recipe["kind"] == "mammogram" else
                f"{recipe['side']}x{recipe['side']} source with {recipe['source_levels']} levels, fitted to "
                f"{recipe['size']}x{recipe['size']}; other sizes are resized first (flagged `prep_resized`)") + ".",
             "", "## Metrics (95 % stratified bootstrap intervals over images)", ""]
    if metrics:
        lines += ["| split | estimator | prior | n | accuracy | balanced accuracy | AUC |", "|---|---|---|---|---|---|---|"]
        for m in metrics:
            cell = lambda d: f"{d['value']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"  # noqa: E731
            lines.append(f"| {m['split']} | {m['estimator']} | {m['prior']} | {m['n']} | {cell(m['accuracy'])} | "
                         f"{cell(m['balanced_accuracy'])} | {cell(m['auc'])} |")
    else:
        lines.append("No complete evaluation in the run folder (run `sgc classify` before exporting).")
    lines += ["", "## Out-of-distribution flag", ""]
    if calibration:
        s = calibration["scores"]
        lines.append(f"Calibrated on the {calibration['split']} split ({s['bpd']['n']} images, {calibration['estimator']}) "
                     f"at {calibration['false_alarm']:.0%} false alarms: mixture bits/dim > {s['bpd']['threshold']:.3f}; "
                     f"complexity-corrected score (bits/dim − {calibration['compressor']} bits/dim) > "
                     f"{s['complexity']['threshold']:.3f}. `ood_flag` uses the {calibration['default']} score.")
    else:
        lines.append("Not calibrated (`sgc calibrate --run-dir ...` before exporting); `ood_flag` stays empty.")
    lines += ["", "## Intended use",
              "Research and teaching: studying generative classifiers, their likelihoods and explanations on "
              "images prepared like the training data. Not a medical device; not for diagnosis or screening.",
              "", "## Limitations",
              f"- Trained on {data.get('n_train', 'a few')} images of one source; performance on other scanners, "
              "sites, views or populations is unknown. The intervals above cover test-set sampling only, not "
              "this shift.",
              "- The posterior of a generative classifier is often over-confident; calibrate it on validation "
              "data before reading it as a probability.",
              "- The OOD flag thresholds a density: it misses inputs the model finds likely, and raw bits/dim "
              "rank simple images (constant, smooth) as *more* likely; the complexity correction mitigates "
              "this but is not a guarantee.",
              "- Files whose size differs from the training source are resized first (`prep_resized`), which "
              "the model never saw in training.", ""]
    return "\n".join(lines)


def export_run(run_dir, out, *, overwrite: bool = False, n_boot: int = 1000) -> Path:
    """Write the export folder ``out`` for the run folder ``run_dir`` (see the module doc)."""
    from safetensors.torch import save_file
    from .data.recipes import recipe_from_config
    from .predict import CALIBRATION, load_calibration
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    model, _, config = load_run(run_dir, "cpu")
    _, ckpt = load_checkpoint(run_dir)
    recipe = recipe_from_config(config, run_dir / "config.json")
    calibration = load_calibration(run_dir)
    ckpt_sha = sha256_file(find_checkpoint(run_dir))
    if calibration and calibration.get("checkpoint_sha256") != ckpt_sha:
        raise ValueError(f"{run_dir / CALIBRATION} was made for another checkpoint; rerun sgc calibrate first")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": EXPORT_FORMAT, "source_checkpoint_sha256": ckpt_sha})
    data = {**config["data"], "preprocessing": recipe, "root": None}
    exported = {"format": EXPORT_FORMAT, "model": config["model"], "sde": config["sde"], "train": config["train"],
                "data": data, "parameters": config.get("parameters"),
                "source": {"run_folder": run_dir.name, "checkpoint_sha256": ckpt_sha, "step": int(ckpt.get("step", -1))},
                "provenance": config.get("provenance")}
    atomic_write_text(out / "config.json", json.dumps(exported, indent=2))
    atomic_write_text(out / "preprocessing.json", json.dumps(recipe, indent=2))
    if calibration:
        atomic_write_text(out / CALIBRATION, json.dumps(calibration, indent=1))
    (out / "metrics").mkdir(exist_ok=True)
    for path in sorted(run_dir.glob("metrics_*_*.json")):
        shutil.copyfile(path, out / "metrics" / path.name)
    metrics = _metrics_with_intervals(run_dir, config, n_boot)
    atomic_write_text(out / "metrics" / "intervals.json", json.dumps(metrics, indent=1))
    atomic_write_text(out / "MODEL_CARD.md", model_card(exported, metrics, calibration, recipe))
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    atomic_write_text(out / "SHA256SUMS", "".join(f"{sha256_file(p)}  {p.relative_to(out).as_posix()}\n" for p in files))
    return out


def load_export(folder, device="cpu", verify: bool = True):
    """(model in eval mode, sde, config) from an export folder; JSON + safetensors only."""
    from safetensors.torch import load_file
    from .nets import build_model
    from .sde import make_sde
    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / WEIGHTS
    for p in (cfg_path, weights):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: {folder} is not an sgc export (make one with "
                                    "sgc export --run-dir RUN --out DIR)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); re-export the model") from None
    if config.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{cfg_path}: format {config.get('format')!r}, expected {EXPORT_FORMAT!r}; "
                         "re-export with this version of sgc")
    sums = folder / "SHA256SUMS"
    if verify and sums.exists():
        for line in sums.read_text().splitlines():
            digest, name = line.split(maxsplit=1)
            if not (folder / name).exists() or sha256_file(folder / name) != digest:
                raise ValueError(f"{folder / name} is missing or does not match SHA256SUMS (a damaged or edited "
                                 "export); re-export it, or pass verify=False to load it anyway")
    model = build_model(config["model"])
    try:
        model.load_state_dict(load_file(str(weights), device="cpu"))
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the model in {cfg_path}: {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), make_sde(**config["sde"]), config


def load_classifier(cls, folder, device=None, **kwargs):
    """A fitted ``cls`` (ScoreClassifier) from an export folder."""
    from .classify import log_prior
    model, sde, config = load_export(folder, device or "cpu")
    k = model.num_classes
    clf = cls(arch=config["model"]["arch"], sde=config["sde"]["name"], levels=config["data"]["levels"],
              device=device, **kwargs)
    clf.model_, clf.sde_, clf.classes_ = model, sde, np.arange(k)
    counts = config["data"].get("train_counts")
    clf.log_prior_ = log_prior(k, kwargs.get("prior", "uniform"), None if counts is None else np.repeat(np.arange(k), counts))
    clf.config_, clf.source_dir_ = config, Path(folder)
    clf.checkpoint_sha256_ = config["source"]["checkpoint_sha256"]
    return clf
