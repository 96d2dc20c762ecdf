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
