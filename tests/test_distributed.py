"""torch.distributed: two gloo processes on the CPU train and classify exactly like one.

One ``torchrun --nproc-per-node 2`` launch (module fixture) runs ``sgc train`` and then
``sgc classify`` in the same two processes; the tests compare with one process in this one.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import one_thread
from sgc import distributed
from sgc.nets import ScoreUNet, build_model
from sgc.pipeline import evaluate_run, train_on_dataset

MODEL = {"arch": "mlp", "hidden": 32, "blocks": 1, "emb_dim": 16}
TRAIN = {"steps": 8, "batch_size": 16, "warmup": 2, "log_every": 2, "checkpoint_every": 4, "hflip": True}
CLASSIFY = dict(estimator="ode", estimator_options={"rtol": 1e-3, "atol": 1e-3}, limit=14, batch_size=4)

JOB = textwrap.dedent("""
    import sys
    from sgc.cli import main
    run_dir = sys.argv[1]
    assert main(["train", "--run-dir", run_dir, "--arch", "mlp", "--model", "hidden=32", "blocks=1", "emb_dim=16",
                 "--train", "steps=8", "batch_size=16", "warmup=2", "log_every=2", "checkpoint_every=4",
                 "hflip=true"]) == 0
    assert main(["classify", "--run-dir", run_dir, "--options", "rtol=1e-3", "atol=1e-3", "--limit", "14",
                 "--batch-size", "4"]) == 0
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "job.py").write_text(JOB)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(tmp / "job.py"), str(tmp / "two")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp / "two", r.stdout


def test_two_gloo_processes_train_like_one(two_process_run, tmp_path):
    run_two, stdout = two_process_run
    assert stdout.count("trained ") == 1  # rank 0 prints, rank 1 does not
    with one_thread():
        train_on_dataset("digits", tmp_path / "one", model=MODEL, train=TRAIN, progress=False)
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = torch.load(run_two / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.allclose(a[part][k], b[part][k], rtol=1e-5, atol=1e-6), (part, k)
    # the logged loss is the global batch's mean on every rank
    la = [h["loss"] for h in json.loads(a["history"])]
    lb = [h["loss"] for h in json.loads(b["history"])]
    assert np.allclose(la, lb, rtol=1e-6)
    cfg = json.loads((run_two / "config.json").read_text())
    assert cfg["provenance"]["world_size"] == 2


def test_sharded_classification_equals_one_process(two_process_run, tmp_path):
    run_two, stdout = two_process_run
    assert stdout.count("digits test: 14 images, ode estimator") == 1
    run_one = tmp_path / "one"
    run_one.mkdir()
    for f in ("config.json", "checkpoint.pt", "checkpoint.pt.sha256"):
        shutil.copy(run_two / f, run_one / f)
    with one_thread():
        m = evaluate_run(run_one, progress=False, **CLASSIFY)
    assert m["n"] == 14 and m["world_size"] == 1 and m["partial"]
    scores = m["scores_file"]  # partial_scores_test_ode_limit14...: --limit
    assert (run_one / scores).read_bytes() == (run_two / scores).read_bytes()

    # a dead rank's chunk is missing: the rerun computes only that chunk, with the same result
    (parts,) = (run_one / "parts").iterdir()  # one folder per settings key
    chunks = sorted(parts.glob("chunk_*.npz"))
    assert len(chunks) == 4  # 14 images in chunks of 4
    chunks[1].unlink()
    stamps = {p: p.stat().st_mtime_ns for p in chunks if p.exists()}
    (run_one / scores).unlink()
    with one_thread():
        evaluate_run(run_one, progress=False, **CLASSIFY)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert chunks[1].exists()
    assert (run_one / scores).read_bytes() == (run_two / scores).read_bytes()

    # other settings (here: another seed) get their own parts folder: never mixed in, nothing discarded
    with one_thread():
        evaluate_run(run_one, progress=False, seed=1, **CLASSIFY)
    assert len(list((run_one / "parts").iterdir())) == 2
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_chunks_and_batch_slices_cover_everything_once():
    for world in (1, 2, 3, 4):
        got = sorted(i for r in range(world) for ch in distributed.shard_chunks(10, 3, r, world) for i in ch)
        assert got == list(range(10))
        rows = [distributed.batch_slice(12, r, world) for r in range(world)]
        assert [i for s in rows for i in range(12)[s]] == list(range(12))
    with pytest.raises(ValueError, match="not divisible"):
        distributed.batch_slice(10, 0, 4)
    # without torchrun: one process, rank 0, nothing started
    assert distributed.init_from_env().world_size == 1 and distributed.is_main() and not distributed.is_active()
    assert distributed.all_gather_objects(3) == [3] and distributed.broadcast_object("x") == "x"


def test_gradient_checkpointing_changes_memory_not_gradients():
    torch.manual_seed(0)
    plain = ScoreUNet(num_classes=2, image_size=16, channels=8, emb_dim=16)
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ckpt = build_model({**plain.config, "checkpointing": True})
    ckpt.load_state_dict(plain.state_dict())
    assert build_model(ckpt.config).config == ckpt.config
    x, t, y = torch.randn(3, 1, 16, 16), torch.rand(3), torch.tensor([0, 1, 0])
    with one_thread():
        for m in (plain, ckpt):
            m(x, t, y).pow(2).sum().backward()
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
