"""benchmarks/gpu_batch.sh --smoke: the BreastMNIST GPU batch with tiny settings on the CPU runs every
stage (all six notebooks with the GPU profile, the bound, the tables), writes its JSON and Markdown
and the rendered notebooks under the smoke folder only, and a second call skips what is done."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _git_status(path: str) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", path], cwd=REPO,
                          capture_output=True, text=True).stdout


@pytest.mark.slow
def test_gpu_batch_smoke_runs_every_stage_and_resumes(tmp_path, shared_data_dir):
    env = {**os.environ, "SGC_DATA": str(shared_data_dir), "SMOKE_DIR": str(tmp_path), "PY": sys.executable,
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop("SGC_RUN_DIR", None)
    before = _git_status("reports")
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_batch.sh"), "--smoke"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark" / "gpu_batch.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["01 data exploration", "02 training", "03 exact ODE likelihood", "04 ablations",
                            "bound (2 draws)", "06 beyond classification", "05 paper figures and tables"]
    assert all(s["status"] == "done" for s in stages.values()), stages
    checks = report["must_show"]
    assert checks["six notebooks rendered"] == [6, True] and checks["no error cells"] == [[], True]
    assert report["smoke"] and set(report["metrics"]) == {"ode", "elbo"}
    assert report["metrics"]["ode"]["n"] == 156 and report["metrics"]["elbo"]["device"] == "cpu"
    run = tmp_path / "runs" / "breastmnist-gpu"
    state = json.loads((run / "batch.json").read_text())["notebooks"]
    assert state["02_score_model_training"]["parameters"]["model"]["arch"] == "unet"   # the GPU profile's network
    assert state["02_score_model_training"]["parameters"]["data_options"] == {"size": 32}
    results = (tmp_path / "reports" / "tables" / "results.md").read_text()
    assert "| breastmnist | breastmnist-gpu |" in results and (tmp_path / "reports" / "figures" / "results.png").exists()
    md = (tmp_path / "benchmark" / "gpu_batch.md").read_text()
    assert "CPU smoke run" in md and "| 04 ablations | done |" in md
    assert _git_status("reports") == before                      # nothing written into the repository's reports/

    # a second call continues: what is done is skipped, by sgc batch's own check of the parameters
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_batch.sh"), "--smoke"], cwd=tmp_path,
                       env={**env, "STAGES": "01 bound"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark" / "gpu_batch.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["01 data exploration"]["status"] == "done before" and len(report["calls"]) == 2
    assert stages["bound (2 draws)"]["status"] == "done before"
    assert stages["04 ablations"]["status"] == "done"            # not selected this time: the record stays
