"""docs/runbook.md on the shipped small data: the cache build, training with a profile's settings, and
the batch reusing that model (mini-MIAS's 20 films, the two CBIS-DDSM DICOMs), and the SLURM scripts
run against stand-ins for srun, torchrun and sgc that record what would run."""
import json
import os
import subprocess
import sys
import warnings

import pytest

from conftest import REPO
from sgc import profiles
from sgc.cli import build_parser, main

RUNBOOK = (REPO / "docs" / "runbook.md").read_text()
TINY_TRAIN = ["model.channels=8", "model.channel_mults=[1, 2]", "model.emb_dim=16", "train.steps=6",
              "train.batch_size=4", "train.warmup=1", "train.checkpoint_every=6", "train.log_every=2"]


def test_the_runbook_names_every_profile_and_its_commands():
    for dataset, profile in profiles.list_profiles():
        if profile != profiles.CPU:
            assert f"sgc batch --dataset {dataset} --profile {profile}" in RUNBOOK, (dataset, profile)
    for text in ("docs/slurm/train_node.sbatch", "docs/slurm/seeds_array.sbatch", "bash benchmarks/gpu_batch.sh",
                 "reports/benchmarks/profiles.md", "--cache", "--args train"):
        assert text in RUNBOOK, text
    assert "../shared" not in RUNBOOK and "PAPER.md" not in RUNBOOK


@pytest.mark.slow
def test_mini_mias_cache_training_with_the_profile_and_a_batch_that_reuses_the_model(
        tmp_path, shared_data_dir, monkeypatch, capsys):
    monkeypatch.setenv("SGC_DATA", str(shared_data_dir))
    monkeypatch.setenv("SGC_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    data = ["data_options.size=32", "data_options.missing=drop", "data_options.progress=false"]
    # the cache build, on a CPU node before any GPU job (warnings: the 310 films not shipped are dropped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["profile", "--dataset", "mini_mias", "--profile", "gpu", "--cache", "-p", *data]) == 0
    out = capsys.readouterr().out
    assert "mini_mias train:" in out and "mini_mias test:" in out and "(1, 32, 32)" in out
    assert list((tmp_path / "cache").glob("mini_mias/*/complete.json"))
    # training with the profile's own settings (docs/slurm), tiny sizes appended: later settings win
    assert main(["profile", "--dataset", "mini_mias", "--profile", "gpu", "--args", "train"]) == 0
    settings = capsys.readouterr().out.split("\n")
    assert settings[0] == "--set" and "model.channel_mults=[1,2,2,4,4]" in settings
    run = tmp_path / "runs" / "mini_mias-gpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--dataset", "mini_mias", "--run-dir", str(run), "--device", "cpu",
                     *[s for s in settings if s], *data, *TINY_TRAIN]) == 0
    # the batch finds that model: same settings, as many steps -> reused, not trained again
    tiny = ["device=cpu", "cpu_threads=1", "samples_per_class=1", "sampler_steps=2", "ema_images=2", "ema_draws=2",
            "data_options={size: 32, missing: drop, progress: false}",
            "model={channels: 8, channel_mults: [1, 2], emb_dim: 16}",
            "train={steps: 6, batch_size: 4, warmup: 1, checkpoint_every: 6, log_every: 2}"]
    env_ok = main(["batch", "--dataset", "mini_mias", "--profile", "gpu", "--runs-dir", "runs", "--notebooks", "02",
                   "-p", *tiny])
    assert env_ok == 0, capsys.readouterr().err[-2000:]
    nb = json.loads((run / "02_score_model_training.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "reused the checkpoint in the run folder" in printed and "trained now" not in printed


@pytest.mark.slow
def test_cbis_ddsm_cache_from_the_two_shipped_dicoms(tmp_path, shared_data_dir, monkeypatch, capsys):
    monkeypatch.setenv("SGC_DATA", str(shared_data_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["profile", "--dataset", "cbis_ddsm", "--profile", "gpu", "--cache", "-p",
                     "data_options.missing=drop", "data_options.size=64", "data_options.abnormality=mass",
                     "data_options.progress=false", f"data_options.cache_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "cbis_ddsm test: 2 images (1, 64, 64) (benign 1, malignant 1)" in out


def _stubs(tmp_path):
    """srun runs its command, torchrun hands its sgc call on, sgc records calls (sgc profile runs for real)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (bin_dir / "torchrun").write_text('#!/bin/bash\necho "torchrun $*" >> "%s.torchrun"\n'
                                      'while [ "$1" != "-m" ]; do shift; done\nshift 2\nexec sgc "$@"\n' % log)
    (bin_dir / "sgc").write_text(f'#!/bin/bash\nif [ "$1" = profile ]; then exec {sys.executable} -m sgc "$@"; fi\n'
                                 f'exec {sys.executable} -c "import json, sys; open(sys.argv[1], \'a\').write('
                                 f'json.dumps(sys.argv[2:]) + chr(10))" {log} "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, log


def _run_script(name, tmp_path, **env):
    bin_dir, log = _stubs(tmp_path)
    full = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SGC_DATA": str(tmp_path),
            "RUNS": str(tmp_path / "runs"), **env}
    r = subprocess.run(["bash", str(REPO / "docs" / "slurm" / name)], env=full, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    torchrun = (log.parent / (log.name + ".torchrun"))
    return calls, torchrun.read_text() if torchrun.exists() else ""


def test_slurm_scripts_run_the_profile_settings(tmp_path):
    params, _ = profiles.load_profile("vindr_mammo", "gpu")
    calls, torchrun = _run_script("train_node.sbatch", tmp_path, DATASET="vindr_mammo", SLURM_GPUS_ON_NODE="2")
    assert [c[0] for c in calls] == ["train", "batch"] and "--nproc-per-node 2" in torchrun
    train = build_parser().parse_args(calls[0])
    assert train.run_dir == str(tmp_path / "runs" / "vindr_mammo-gpu") and not train.resume
    assert train.set == profiles.train_arguments(params)[1:]
    batch = build_parser().parse_args(calls[1])
    assert (batch.dataset, batch.profile, batch.runs_dir, batch.resume) == ("vindr_mammo", "gpu", str(tmp_path / "runs"), True)

    (tmp_path / "runs" / "vindr_mammo-gpu").mkdir(parents=True)
    (tmp_path / "runs" / "vindr_mammo-gpu" / "checkpoint.pt").write_bytes(b"")   # a resubmission: --resume
    again = tmp_path / "again"
    again.mkdir()
    calls, _ = _run_script("train_node.sbatch", again, DATASET="vindr_mammo", RUNS=str(tmp_path / "runs"))
    assert build_parser().parse_args(calls[0]).resume

    seeds = tmp_path / "seeds"
    seeds.mkdir()
    calls, _ = _run_script("seeds_array.sbatch", seeds, DATASET="cbis_ddsm", SLURM_ARRAY_TASK_ID="3")
    train, classify = (build_parser().parse_args(c) for c in calls)
    assert train.run_dir == classify.run_dir == str(seeds / "runs" / "cbis_ddsm-gpu-seed3")
    assert train.set[-1] == "train.seed=3" and classify.estimator == "elbo" and classify.batch_size == 16
    collect = seeds / "collect"
    collect.mkdir()
    calls, _ = _run_script("seeds_array.sbatch", collect, DATASET="cbis_ddsm", COLLECT="1")
    assert calls == [["batch", "--dataset", "cbis_ddsm", "--profile", "gpu", "--runs-dir", str(collect / "runs"),
                      "--reports-dir", str(collect / "runs" / "summary"), "--notebooks", "05"]]
