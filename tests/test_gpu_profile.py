"""benchmarks/gpu_profile.py --smoke: every stage runs on the CPU, writes its JSON and the table,
and a second run resumes (skips the finished stages)."""
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_gpu_profile_smoke_runs_every_stage_and_resumes(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_profile

    threads = torch.get_num_threads()
    try:
        gpu_profile.main(["--smoke", "--out", str(tmp_path), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    stages = {s: json.loads((tmp_path / f"profile_{s}.json").read_text()) for s in gpu_profile.STAGES}
    for name, r in stages.items():
        assert "error" not in r, (name, r.get("traceback"))
        assert r["device"] and r["torch"] == torch.__version__
    train = {row["path"]: row for row in stages["train"]["rows"]}
    assert train["sgc train, compile=graph"]["ran_as"] == "graph (uncaptured)"  # no CUDA: same step, no capture
    assert all(row["steps_per_s"]["median"] > 0 for row in train.values())
    for size in stages["exact"]["sizes"]:
        paths = {row["path"]: row for row in size["rows"]}
        assert {"released code path", "sgc eager", "sgc graph", "sgc graph + bf16"} <= set(paths)
        assert all("error" not in row for row in paths.values())
        assert paths["sgc graph"]["max_diff_bpd_vs_sgc_eager"] < 1e-4  # the same arithmetic, uncaptured
        assert paths["sgc graph"]["nfe"] == paths["sgc eager"]["nfe"]
    md = (tmp_path / "gpu_profile.md").read_text()
    assert "| exact ODE |" in md and "| ODE evaluation |" in md and "FAILED" not in md
    summary = json.loads((tmp_path / "gpu_profile.json").read_text())
    assert set(summary["stages"]) == set(gpu_profile.STAGES)

    capsys.readouterr()
    gpu_profile.main(["--smoke", "--out", str(tmp_path), "--threads", "1", "--stages", "eval", "bound"])
    torch.set_num_threads(threads)
    assert capsys.readouterr().out.count("skipped") == 2


def test_gpu_must_show_smoke_runs_every_stage_on_the_cpu(tmp_path, shared_data_dir):
    """The prepared GPU call (benchmarks/gpu_must_show.sh) with --smoke: every stage writes its
    JSON and the summary reads them; a second call skips the finished stages (resumable)."""
    import os
    import subprocess
    if not (shared_data_dir / "medmnist" / "breastmnist.npz").exists():
        import pytest
        pytest.skip("medmnist/breastmnist.npz not in the test data")
    env = {**os.environ, "SGC_DATA": str(shared_data_dir), "OUT": str(tmp_path), "PY": sys.executable}
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_must_show.sh"), "--smoke"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "FAILED" not in run.stdout and "stopped at its cap" not in run.stdout, run.stdout[-3000:]
    for name in ["gpu_profile.json", "likelihood_32.json", "classify_32.json", "likelihood_16.json",
                 "classify_16.json"]:
        assert (tmp_path / name).exists(), (name, run.stdout[-3000:])
    assert "exact ODE" in run.stdout and "incomplete" not in run.stdout, run.stdout[-3000:]
    again = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_must_show.sh"), "--smoke"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "1. train" not in again.stdout and "3. every estimator" not in again.stdout
