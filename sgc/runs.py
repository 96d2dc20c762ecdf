"""The run folder: one trained model and what it produced.

A run folder holds ``config.json`` (model, SDE, training and data settings, provenance) and
``checkpoint.pt`` (a ``state_dict``-style dict loaded with ``weights_only=True``), the one
before it as ``checkpoint.prev.pt``, and sha256 sidecars (``<name>.sha256``, ``sha256sum -c``
format) written last, which mark a checkpoint complete. Every file is written under a
temporary name and renamed. Training (``sgc.train``), classification (``sgc.pipeline``) and
the notebooks read and write run folders only through this module.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import distributed
from .nets import build_model
from .sde import make_sde

__all__ = ["CHECKPOINT", "PREVIOUS", "atomic_write_text", "atomic_torch_save", "sha256_file", "save_checkpoint",
           "find_checkpoint", "load_checkpoint", "load_run", "same_model", "run_provenance"]

CHECKPOINT = "checkpoint.pt"       # the newest checkpoint of a run folder
PREVIOUS = "checkpoint.prev.pt"    # the one before, the fallback when the newest is damaged


def _say(msg: str) -> None:
    prefix = f"[rank {distributed.rank()}] " if distributed.is_active() else ""
    print(f"sgc: {prefix}{msg}", file=sys.stderr, flush=True)


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fsync(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def sha256_file(path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def atomic_torch_save(obj, path) -> str:
    """torch.save to a temporary name, fsync, rename; returns the file's sha256."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    _fsync(tmp)
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    return digest


# --- checkpoints: checkpoint.pt (newest) and checkpoint.prev.pt (the one before), each
# verified by a sha256 sidecar written after the file ("<digest>  <name>", sha256sum -c format).

def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(run_dir, state: dict, config: dict) -> Path:
    """Write config.json and checkpoint.pt (``state``: a dict of tensors and plain values) into
    run_dir; the former checkpoint.pt becomes checkpoint.prev.pt. Every file is written under a
    temporary name and renamed, and the checksum sidecar is written last, so a crash at any point
    leaves a complete checkpoint."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    tmp = run_dir / (CHECKPOINT + ".new")
    digest = atomic_torch_save(state, tmp)
    ckpt, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS
    if ckpt.exists():
        os.replace(ckpt, prev)
        if _sidecar(ckpt).exists():
            os.replace(_sidecar(ckpt), _sidecar(prev))
    os.replace(tmp, ckpt)
    atomic_write_text(_sidecar(ckpt), f"{digest}  {CHECKPOINT}\n")
    return ckpt


def find_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of run_dir (checkpoint.pt, else checkpoint.prev.pt), or None.

    A file counts as complete when its sha256 is one recorded in a sidecar (any of the two:
    a crash between the renames of ``save_checkpoint`` can leave a file beside the other's
    sidecar). A file that fails the check is skipped with a message. Runs written before
    sidecars existed (no sidecar at all) are accepted unverified.
    """
    run_dir = Path(run_dir)
    files = [p for p in (run_dir / CHECKPOINT, run_dir / PREVIOUS) if p.exists()]
    sidecars = [s for s in (_sidecar(run_dir / CHECKPOINT), _sidecar(run_dir / PREVIOUS)) if s.exists()]
    if not sidecars:
        return files[0] if files else None
    known = {s.read_text().split()[0] for s in sidecars if s.read_text().split()}
    for p in files:
        if sha256_file(p) in known:
            return p
        _say(f"skipping {p}: its sha256 matches no checksum sidecar (a partial or corrupt write); "
             f"trying the previous checkpoint")
    return None


def load_checkpoint(run_dir, map_location="cpu") -> tuple[dict, dict]:
    """(config, checkpoint) of the newest complete checkpoint in run_dir; weights only, never
    unpickled code."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    for p in (cfg_path, run_dir / CHECKPOINT):
        if not p.exists() and not (p.name == CHECKPOINT and (run_dir / PREVIOUS).exists()):
            raise FileNotFoundError(f"{p} not found: train a model into {run_dir} first (sgc train --run-dir ...)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); the run folder is damaged") from None
    ckpt_path = find_checkpoint(run_dir)
    if ckpt_path is None:
        raise ValueError(f"no complete checkpoint in {run_dir}: {CHECKPOINT} (and {PREVIOUS}, if any) fail "
                         f"their sha256 check. Delete them and retrain, or point --run-dir at a complete run")
    try:
        ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise ValueError(f"cannot read checkpoint {ckpt_path}: {err}. Delete it and retrain, "
                         f"or point --run-dir at a complete run") from None
    return config, ckpt


def run_provenance(seed: int) -> dict:
    """Git revision, package versions, host and seeds of this process, for config.json."""
    def git(*args):
        try:
            r = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                               text=True, timeout=10)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None
    packages = {}
    for name in ("sgc", "torch", "torchdiffeq", "numpy", "scipy", "scikit-learn"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_revision": git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
            "packages": packages, "python": platform.python_version(), "cuda": torch.version.cuda,
            "host": platform.node(), "world_size": distributed.world_size(),
            "seeds": {"seed": seed, "batch_and_noise_generator": seed,
                      "torch_manual_seed": "seed + rank (dropout only)"},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def same_model(a: dict | None, b: dict | None) -> bool:
    """Model configs equal up to options that do not change the weights (checkpointing)."""
    strip = lambda c: {k: v for k, v in (c or {}).items() if k != "checkpointing"}  # noqa: E731
    return strip(a) == strip(b)


def load_run(run_dir, device="cpu", use_ema: bool = True):
    """(model, sde, config) of a trained run, the model in eval mode on ``device``."""
    config, ckpt = load_checkpoint(run_dir)
    model = build_model(config["model"])
    try:
        model.load_state_dict(ckpt["ema" if use_ema else "model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint in {run_dir} does not match its config.json model "
                         f"{config['model']}: {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), make_sde(**config["sde"]), config
