"""Every command in the README runs as written, with tiny settings appended (the issue's must-show).

The fenced ``bash`` blocks are read line by line (continuations joined, comments dropped):

- ``sgc ...`` runs in-process (``sgc.cli.main``) in an empty folder whose ``$HOME`` holds a tiny
  BreastMNIST file at ``~/sgc-data/medmnist/breastmnist.npz``, so ``export SGC_DATA=$HOME/sgc-data``
  works as written; the tiny settings are options appended after the README's own (later ones
  win: fewer steps, images, draws, seeds), chosen per sub-command and, for ``sgc batch``, limited
  to the parameters the selected notebooks declare;
- commands under the GPU heading ("Scaling out": a GPU, torchrun, SLURM) are parsed by sgc's own
  parser, not run; ``python benchmarks/X.py ...`` is parsed by the script (``--help`` appended);
  ``bash X.sh`` is syntax-checked; ``make X`` must be a Makefile target; ``conda env create -f F``
  needs F;
- the "From Python" block runs with 20 training steps and 8 test images.

A README command this test does not know fails it: add a rule here rather than leave it untested.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO

README = (REPO / "README.md").read_text()
GPU_HEADING = "## Scaling out"

TRAIN = ["train.steps=2", "train.batch_size=8", "train.warmup=1", "train.checkpoint_every=2"]
MODEL = {"mlp": ["model.hidden=16", "model.blocks=1", "model.emb_dim=8"],
         "unet": ["model.channels=8", "model.emb_dim=16", "model.channel_mults=[1, 2]"]}
ESTIMATOR = {"ode": ["estimator_options.rtol=1e-2", "estimator_options.atol=1e-2"],
             "elbo": ["estimator_options.n_draws=2"]}
NOTEBOOK_PARAMETERS = {   # every notebook parameter that sizes work, at its smallest useful value
    "train": "{steps: 40, batch_size: 32, warmup: 1, checkpoint_every: 40, log_every: 2}",
    "model": "{arch: mlp, hidden: 16, blocks: 1, emb_dim: 8}", "cpu_threads": "1",
    "examples_per_class": "1", "preprocess_size": "32", "samples_per_class": "1", "sampler_steps": "2",
    "ema_images": "4", "ema_draws": "2", "limit": "8", "estimator_options": "{rtol: 0.1, atol: 0.1}",
    "batch_size": "8", "n_boot": "10", "min_accuracy": "0", "ablation_images": "4", "tolerances": "[0.1]",
    "probe_settings": "[[rademacher, 1]]", "probe_repeats": "2", "probe_rtol": "0.1", "elbo_draws": "[2]",
    "step_grid": "[2]", "fractions": "[1.0]", "fraction_steps": "2", "ablation_draws": "2",
    "experiment_fractions": "[100]", "experiment_seeds": "[0]", "experiment_steps": "2",
    "experiment_draws": "2", "experiment_boot": "10", "toy_points": "300", "toy_steps": "300",
    # the result floors and bands hold for the parameter files' own settings, not for these tiny ones
    "min_ema_accuracy": "null", "ema_bpd_band": "null", "min_auc": "null", "bpd_band": "null",
    "min_bound_accuracy": "null", "min_toy_agreement": "0",
    # notebook 06
    "score_options": "{n_draws: 2}", "ood_images": "4", "file_images": "2", "explain_images": "2",
    "evidence_draws": "2", "deletion_images": "2", "deletion_steps": "2", "t_stars": "[0.5]",
    "counterfactual_images": "2", "counterfactual_steps": "10", "check_results": "false",
}


def readme_commands() -> list[tuple[str, bool]]:
    """(command line, in the GPU section) for every line of the README's bash blocks."""
    out = []
    for block in re.finditer(r"```bash\n(.*?)```", README, re.S):
        gpu = README.rfind(GPU_HEADING, 0, block.start()) >= 0
        text = re.sub(r"\\\n\s*", " ", block.group(1))
        for line in text.splitlines():
            if shlex.split(line, comments=True):
                out.append((line.strip(), gpu))
    return out


COMMANDS = readme_commands()


def _tiny(argv: list[str]) -> list[str]:
    command = argv[0]
    if command == "train":
        arch = argv[argv.index("--arch") + 1] if "--arch" in argv else "unet"
        return ["--set", *TRAIN, *MODEL[arch]]
    if command == "classify":
        estimator = argv[argv.index("--estimator") + 1] if "--estimator" in argv else "ode"
        return ["--limit", "4", "--batch-size", "4", "--set", *ESTIMATOR[estimator]]
    if command == "demo":
        return ["--limit", "4", "--set", "train.steps=2", "estimator_options.ode.rtol=1e-2",
                "estimator_options.ode.atol=1e-2", "estimator_options.elbo.n_draws=2"]
    if command == "batch":
        from sgc import batch
        from sgc.cli import build_parser
        selected = batch.select_notebooks(build_parser().parse_args(argv).notebooks)
        declared = set().union(*(batch.notebook_parameters(nb) for nb in selected))
        return ["-p", *(f"{k}={v}" for k, v in NOTEBOOK_PARAMETERS.items() if k in declared)]
    if command == "calibrate":
        return ["--set", *ESTIMATOR["elbo"]]
    if command == "export":
        return ["--n-boot", "10"]
    if command == "experiment":
        # score_weighted: enough draws for antithetic pairs in every noise-level bin, and a small choice
        weighted = (["estimator_options.elbo.n_draws=8", "estimator_options.weighted.n_bins=2",
                     "estimator_options.weighted.folds=2", "estimator_options.weighted.repeats=1"]
                    if "score_weighted" in argv else [])
        return ["--seeds", "0", "--fractions", "100", "--n-boot", "10", "--threads", "1", "--set", *TRAIN,
                *MODEL["unet"], "estimator_options.elbo.n_draws=2", *(f"estimator_options.ode.{o}" for o in
                ["rtol=0.1", "atol=0.1"]), "baseline_options.epochs=1", "baseline_options.batch_size=16", *weighted]
    return []


def _user_files(argv: list[str]) -> None:
    """The image files a README ``sgc predict`` line names, written as small grey PNGs when missing
    (the user's own scans in the README: a folder, a glob, a file)."""
    from PIL import Image
    rng = np.random.default_rng(1)
    files = [a for a in argv[1:] if not a.startswith("-")]
    skip = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("-")}   # option values
    for item in files:
        if item in skip:
            continue
        if item.endswith("/"):
            targets = [Path(item) / f"case{i}.png" for i in (1, 2)]
        elif "*" in item:
            targets = [Path(item.replace("*", f"scan{i}")) for i in (1, 2)]
        else:
            targets = [Path(item)]
        for target in targets:
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((60 + 120 * rng.random((28, 28))).astype(np.uint8)).save(target)


def _fake_breastmnist(folder: Path) -> None:
    """80/40/40 images of 28x28, class 1 brighter (so tiny models learn something), two classes per split."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 80), ("val", 40), ("test", 40)):
        y = np.arange(n) % 2
        x = 0.25 + 0.2 * y[:, None, None] + 0.3 * rng.random((n, 28, 28))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = (x * 255).astype(np.uint8), y.astype(np.uint8)[:, None]
    folder.mkdir(parents=True)
    np.savez(folder / "breastmnist.npz", **arrays)


def test_the_readme_has_commands_of_every_kind():
    kinds = {shlex.split(c, comments=True)[0] for c, _ in COMMANDS}
    assert {"sgc", "make", "torchrun"} <= kinds, kinds
    assert not any("../shared" in c or "PAPER.md" in c for c, _ in COMMANDS)
    assert "../shared" not in README and "PAPER.md" not in README


@pytest.mark.slow
def test_every_readme_command_runs_as_written_with_tiny_settings(tmp_path, monkeypatch, capsys):
    import torch
    from sgc.cli import build_parser, main
    torch.set_num_threads(1)
    home = tmp_path / "home"
    _fake_breastmnist(home / "sgc-data" / "medmnist")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name in ("SGC_DATA", "SGC_RUN_DIR", "SGC_CACHE"):
        monkeypatch.delenv(name, raising=False)
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    done = []
    for line, gpu in COMMANDS:
        words = shlex.split(os.path.expandvars(line), comments=True)
        env = {}
        while words and re.match(r"^[A-Z_]+=", words[0]):            # VAR=value command ...
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        head, args = words[0], words[1:]
        if head == "export":
            for item in args:
                key, value = item.split("=", 1)
                monkeypatch.setenv(key, value)
        elif head == "make":
            assert args and args[-1] in targets, f"README: make {args[-1:]} is not a Makefile target"
        elif head == "conda":
            assert yaml.safe_load((REPO / args[args.index("-f") + 1]).read_text())["dependencies"]
        elif head in ("torchrun", "srun"):                            # a multi-GPU node or a cluster
            argv = args[args.index("sgc") + 1:]
            assert args[args.index("sgc") - 1] == "-m" and build_parser().parse_args(argv).command == argv[0]
        elif head == "python" and args[0].startswith("benchmarks/"):
            r = subprocess.run([sys.executable, str(REPO / args[0]), *args[1:], "--help"], capture_output=True,
                               text=True, timeout=300)
            assert r.returncode == 0, f"README: {line}\n{r.stderr[-2000:]}"
        elif head == "bash":
            assert subprocess.run(["bash", "-n", str(REPO / args[0])]).returncode == 0, line
        elif head == "sgc" and gpu:
            assert build_parser().parse_args(args).command == args[0], line
        elif head == "sgc":
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            argv = args + _tiny(args)
            if args[0] == "predict":
                _user_files(args)
            capsys.readouterr()
            code = main(argv)
            out = capsys.readouterr()
            assert code == 0, f"README: {line}\n(with {' '.join(_tiny(args))})\n{out.err[-3000:]}"
        else:
            pytest.fail(f"README command of an unknown kind (add a rule to {Path(__file__).name}): {line}")
        done.append(line)
    assert len(done) == len(COMMANDS)
    assert (work / "runs" / "breastmnist" / "05_paper_figures.ipynb").exists()
    assert list((work / "runs" / "digits-mlp").glob("*metrics_test_elbo_calibrated*.json"))
    assert (work / "runs" / "mytables" / "tables" / "mytable.csv").exists()
    assert set(pd.read_csv(work / "runs" / "mytables" / "tables" / "weighted.csv")["classifier"]) == {
        "score_elbo", "score_weighted"}
    assert (work / "predictions.csv").exists() and (work / "predictions.json").exists()


def test_the_python_example_runs_with_tiny_settings():
    import torch
    torch.set_num_threads(1)
    (code,) = re.findall(r"```python\n(.*?)```", README[README.index("## From Python"):], re.S)[:1]
    tiny = code.replace('"steps": 8000', '"steps": 20').replace('sets["test"].images', 'sets["test"].images[:8]')
    assert tiny != code and tiny.count("[:8]") == 1, "the README's Python example changed: update this test"
    scope = {}
    exec(compile(tiny, "README.md (From Python)", "exec"), scope)  # noqa: S102 - the repository's own README
    assert scope["proba"].shape == (8, 10) and np.allclose(scope["proba"].sum(1), 1)
