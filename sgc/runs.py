"""The run folder: one trained model and what it produced. Every read and write goes through here.

Layout (format 2)::

    config.json             model, SDE, training and data settings, provenance (sorted JSON)
    checkpoint.pt           weights, EMA, optimiser, step, RNG states and the config's JSON text
    checkpoint.prev.pt      the checkpoint before it: the fallback when the newest is damaged
    checkpoint*.pt.sha256   written after the checkpoint (``sha256sum -c`` format): the digest of
                            the checkpoint and of the config.json written with it
    status.json             steps trained / planned, complete or interrupted (``run_status``)
    .sgc.lock               the writer lock: PID and command of the process holding it

Results of the evaluation (``sgc.pipeline.evaluate_run``) sit beside them, named by
``result_names``. The checkpoint is the authority: it carries the exact config it was trained
with; ``load_checkpoint`` compares config.json with it and names any hand edit (a config.json
left behind by an interrupted save is recognised by its recorded digest and rewritten).
Run folders of the previous format (config.json + checkpoint + sidecar, no embedded config)
still load, trusting config.json. Training (``sgc.train``), classification, the CLI and the
notebooks read and write run folders only through this module and ``sgc.fileio``.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .errors import RunFolderError, RunNotFound
from .fileio import atomic_path, atomic_write_json, atomic_write_text, check_writable, folder_lock, sha256_file
from .nets import build_model
from .sde import make_sde

__all__ = ["CHECKPOINT", "PREVIOUS", "CONFIG", "STATUS", "atomic_write_text", "atomic_torch_save", "sha256_file",
           "save_checkpoint", "find_checkpoint", "load_checkpoint", "load_run", "run_status", "has_model",
           "clear_run", "writer_lock", "checkpoint_bytes", "check_writable", "same_model", "run_provenance",
           "data_sha256", "result_names", "key_sha256", "collect_metrics", "describe_status", "config_id"]

CHECKPOINT = "checkpoint.pt"       # the newest checkpoint of a run folder
PREVIOUS = "checkpoint.prev.pt"    # the one before, the fallback when the newest is damaged
CONFIG = "config.json"
STATUS = "status.json"
LOCK = ".sgc.lock"
FORMAT = 2                         # 1: config.json trusted as is; 2: the checkpoint carries its config
_RESULTS = ("history.json", "train_seconds.txt", "metrics.json", "metrics_*.json", "scores_*.csv",
            "partial_metrics_*.json", "partial_scores_*.csv", "comparison_*.csv", "partial_comparison_*.csv")


def _say(msg: str) -> None:
    prefix = f"[rank {distributed.rank()}] " if distributed.is_active() else ""
    print(f"sgc: {prefix}{msg}", file=sys.stderr, flush=True)


def _config_text(config: dict) -> str:
    """config.json's exact text: sorted keys, so equal configs give equal bytes and digests."""
    return json.dumps(config, indent=2, sort_keys=True, default=str) + "\n"


def atomic_torch_save(obj, path) -> str:
    """torch.save to a unique temporary name, fsync, rename; returns the file's sha256."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        digest = sha256_file(tmp)
    return digest


def checkpoint_bytes(model) -> int:
    """Disk space one checkpoint of ``model`` takes: weights, EMA and Adam's two moments, + 1 MiB."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters()) + 2 ** 20


# --- checkpoints -----------------------------------------------------------------------------

def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded(run_dir: Path) -> tuple[set, set]:
    """(checkpoint digests, config.json digests) recorded in the sidecars."""
    ckpts, configs = set(), set()
    for s in (_sidecar(run_dir / CHECKPOINT), _sidecar(run_dir / PREVIOUS)):
        if s.exists():
            for line in s.read_text().splitlines():
                parts = line.split()
                if parts:
                    (configs if parts[-1] == CONFIG else ckpts).add(parts[0])
    return ckpts, configs


def save_checkpoint(run_dir, state: dict, config: dict) -> Path:
    """Write ``state`` (a dict of tensors and plain values with ``step``) and its ``config`` into
    run_dir as one unit: checkpoint.pt (carrying the config's text), its sidecar, config.json,
    status.json, in that order; the former checkpoint.pt becomes checkpoint.prev.pt. A crash at
    any point leaves a complete checkpoint and a config.json ``load_checkpoint`` accepts."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = _config_text(config)
    ckpt, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS
    with atomic_path(ckpt) as tmp:
        torch.save({**state, "config_json": text, "format": FORMAT}, tmp)
        digest = sha256_file(tmp)
        if ckpt.exists():  # rotate; until the rename below, checkpoint.prev.pt is the newest
            os.replace(ckpt, prev)
            if _sidecar(ckpt).exists():
                os.replace(_sidecar(ckpt), _sidecar(prev))
    config_digest = hashlib.sha256(text.encode()).hexdigest()
    atomic_write_text(_sidecar(ckpt), f"{digest}  {CHECKPOINT}\n{config_digest}  {CONFIG}\n")
    atomic_write_text(run_dir / CONFIG, text)
    atomic_write_json(run_dir / STATUS, {**_status(state.get("step"), config), "format": FORMAT,
                                         "checkpoint_sha256": digest,
                                         "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return ckpt


def _find(run_dir: Path) -> tuple[Path | None, str | None]:
    """(newest complete checkpoint, its sha256), or (None, None); see ``find_checkpoint``."""
    files = [p for p in (run_dir / CHECKPOINT, run_dir / PREVIOUS) if p.exists()]
    known, _ = _recorded(run_dir)
    for p in files:
        digest = sha256_file(p)
        if not known or digest in known:
            return p, digest
        _say(f"skipping {p}: its sha256 matches no checksum sidecar (a partial or corrupt write); "
             f"trying the previous checkpoint")
    return None, None


def find_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of run_dir (checkpoint.pt, else checkpoint.prev.pt), or None.

    A file counts as complete when its sha256 is one recorded in a sidecar (either: a crash
    between the renames of ``save_checkpoint`` can leave a file beside the other's sidecar).
    A file that fails the check is skipped with a message. Runs written before sidecars
    existed (no sidecar at all) are accepted unverified.
    """
    return _find(Path(run_dir))[0]


def has_model(run_dir) -> bool:
    """True when run_dir holds a checkpoint (complete or not) or a config.json."""
    run_dir = Path(run_dir)
    return any((run_dir / f).exists() for f in (CHECKPOINT, PREVIOUS, CONFIG))


def _read(path: Path, map_location) -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file, or pickled code
        raise RunFolderError(f"cannot read checkpoint {path}: {str(err).splitlines()[0][:200]}. Delete it and "
                             f"retrain, or point --run-dir at a complete run") from None


def _differences(a, b, prefix="") -> list[str]:
    """Dotted keys where the JSON values a and b differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _checked_config(run_dir: Path, ckpt: dict, path: Path) -> dict:
    """The checkpoint's own config, after comparing config.json with it (see the module text)."""
    text = ckpt["config_json"]
    config = json.loads(text)
    cfg_path = run_dir / CONFIG
    on_disk = cfg_path.read_text() if cfg_path.exists() else None
    if on_disk == text:
        return config
    try:
        edited = None if on_disk is None else json.loads(on_disk)
    except json.JSONDecodeError:
        edited = "<not JSON>"
    if edited == config:  # reformatted, same content
        return config
    if on_disk is None or hashlib.sha256(on_disk.encode()).hexdigest() in _recorded(run_dir)[1]:
        # missing, or the config of another checkpoint (an interrupted save, or a fallback to
        # checkpoint.prev.pt): the checkpoint's own copy is the truth
        with contextlib.suppress(OSError):
            atomic_write_text(cfg_path, text)
            _say(f"{cfg_path} rewritten from {path.name}, which carries the config it was trained with")
        return config
    keys = _differences(edited, config) if isinstance(edited, dict) else ["the whole file"]
    shown = ", ".join(f"{k} ({_at(edited, k)!r} in config.json, {_at(config, k)!r} in the checkpoint)"
                      for k in keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    raise RunFolderError(f"{cfg_path} was edited after training: {shown}. The checkpoint was trained with "
                         f"its own copy; delete config.json to restore it from the checkpoint, or train a "
                         f"new model with the settings you want (another --run-dir, or --overwrite)")


def _at(config, dotted: str):
    for k in dotted.split("."):
        if not isinstance(config, dict):
            return "<missing>"
        config = config.get(k, "<missing>")
    return config


def load_checkpoint(run_dir, map_location="cpu") -> tuple[dict, dict]:
    """(config, checkpoint) of the newest complete checkpoint in run_dir; weights only, never
    unpickled code. The config is the checkpoint's own (format 2) or config.json (format 1)."""
    config, ckpt, _, _ = _load(Path(run_dir), map_location)
    return config, ckpt


def _load(run_dir: Path, map_location) -> tuple[dict, dict, Path, str]:
    if not (run_dir / CHECKPOINT).exists() and not (run_dir / PREVIOUS).exists():
        raise RunNotFound(f"{run_dir / CHECKPOINT} not found. Train a model into {run_dir} first "
                          f"(sgc train --run-dir {run_dir}), or point --run-dir at a trained run")
    path, digest = _find(run_dir)
    if path is None:
        raise RunFolderError(f"no complete checkpoint in {run_dir}: {CHECKPOINT} (and {PREVIOUS}, if any) fail "
                             f"their sha256 check. Delete them and retrain, or point --run-dir at a complete run")
    ckpt = _read(path, map_location)
    if "config_json" in ckpt:
        return _checked_config(run_dir, ckpt, path), ckpt, path, digest
    cfg_path = run_dir / CONFIG  # format 1: config.json is all there is
    if not cfg_path.exists():
        raise RunNotFound(f"{cfg_path} not found and {path.name} (an older format) does not carry its config. "
                          f"Restore config.json or retrain")
    try:
        return json.loads(cfg_path.read_text()), ckpt, path, digest
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{cfg_path} is not valid JSON ({err}). Restore it, or retrain") from None


def _status(step, config: dict) -> dict:
    planned = (config.get("train") or {}).get("steps")
    done = None if step is None else int(step)
    return {"steps_done": done, "steps_planned": planned,
            "complete": done is not None and planned is not None and done >= int(planned)}


def run_status(run_dir) -> dict:
    """What the run folder's model is: steps_done, steps_planned, complete (bool), checkpoint
    (file name), checkpoint_sha256, format (1 or 2), read from the verified checkpoint."""
    config, ckpt, path, digest = _load(Path(run_dir), "cpu")
    return {**_status(ckpt.get("step"), config), "checkpoint": path.name, "checkpoint_sha256": digest,
            "format": int(ckpt.get("format", 1))}


def describe_status(status: dict) -> str:
    """'145 of 3000 steps (interrupted)' / '3000 steps (complete)'."""
    if status["complete"]:
        return f"{status['steps_done']} steps (complete)"
    return f"{status['steps_done']} of {status['steps_planned']} steps (interrupted: continue with --resume)"


def clear_run(run_dir) -> None:
    """Remove the model and every result of it (for --overwrite); notebooks and figures stay."""
    run_dir = Path(run_dir)
    for name in (CHECKPOINT, PREVIOUS, CONFIG, STATUS):
        for p in (run_dir / name, _sidecar(run_dir / name)):
            p.unlink(missing_ok=True)
    for pattern in _RESULTS:
        for p in run_dir.glob(pattern):
            p.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "parts", ignore_errors=True)


def same_model(a: dict | None, b: dict | None) -> bool:
    """Model configs equal up to options that do not change the weights (checkpointing)."""
    strip = lambda c: {k: v for k, v in (c or {}).items() if k != "checkpointing"}  # noqa: E731
    return strip(a) == strip(b)


def load_run(run_dir, device="cpu", use_ema: bool = True):
    """(model, sde, config) of a trained run, the model in eval mode on ``device``."""
    config, ckpt = load_checkpoint(run_dir)
    for key in ("model", "sde"):
        if not isinstance(config.get(key), dict):
            raise RunFolderError(f"{Path(run_dir) / CONFIG} has no {key!r} section; it was not written by sgc "
                                 f"train. Point --run-dir at a run folder sgc trained")
    model = build_model(config["model"])
    try:
        model.load_state_dict(ckpt["ema" if use_ema else "model"])
    except (RuntimeError, KeyError) as err:
        raise RunFolderError(f"checkpoint in {run_dir} does not match its config.json model "
                             f"{config['model']}: {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), make_sde(**config["sde"]), config


# --- the writer lock -----------------------------------------------------------------------

def writer_lock(run_dir, command: str | None = None):
    """Context manager holding the run folder's exclusive writer lock (``.sgc.lock``).

    A second writer (another process) fails at once with RunFolderBusy naming the PID and the
    command that hold it; re-entrant within a process; under torchrun rank 0 takes it and
    every rank learns the outcome; released when the holder exits, even by a kill.
    """
    return folder_lock(run_dir, LOCK, what="run folder", fix="Wait for it to finish, or use another --run-dir",
                       command=command)


# --- results: named by what produced them ---------------------------------------------------

def data_sha256(images, labels, ids) -> str:
    """Content hash of the images actually scored (float32 bytes), their labels and ids."""
    h = hashlib.sha256()
    x = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    h.update(str(x.shape).encode())
    flat = x.reshape(-1).view(np.uint8)
    for i in range(0, flat.size, 1 << 24):
        h.update(flat[i:i + (1 << 24)].tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    h.update("\n".join(map(str, ids)).encode())
    return h.hexdigest()


def key_sha256(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def config_id(run_dir) -> str | None:
    """8 hex digits naming how a run folder's model was made: a hash of its config.json's ``model``,
    ``sde``, ``train`` and the data's ``dataset`` and loader ``options`` (not where the files were, not
    the provenance). Runs with the same id were trained the same way; None without a config.json."""
    try:
        config = json.loads((Path(run_dir) / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    data = config.get("data") or {}
    what = {"model": config.get("model"), "sde": config.get("sde"), "train": config.get("train"),
            "data": {"dataset": data.get("dataset"), "options": data.get("options")}}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]


def collect_metrics(runs_dir) -> tuple[list[dict], list[str]]:
    """(metrics of every full evaluation, "<run>/<file>" of the partial ones left out) of the run
    folders in ``runs_dir`` (``<run>/metrics_*.json``). Partial: ``partial_metrics_*`` files, and
    metrics files that say ``partial`` or come from an unfinished model or (files of older sgc
    versions, which do not say) lack an AUC. Each dict gains ``run`` (the folder's name) and
    ``config_id`` (:func:`config_id` of the folder)."""
    runs_dir = Path(runs_dir)
    full, left_out = [], [str(p.relative_to(runs_dir)) for p in sorted(runs_dir.glob("*/partial_metrics_*.json"))]
    for path in sorted(runs_dir.glob("*/metrics_*.json")):
        m = json.loads(path.read_text())
        if m.get("partial") or m.get("model_complete") is False or m.get("auc_macro_ovr") is None:
            left_out.append(str(path.relative_to(runs_dir)))
        else:
            full.append({**m, "run": path.parent.name, "config_id": config_id(path.parent)})
    return full, left_out


def result_names(split: str, estimator: str, partial: list[str]) -> tuple[str, str]:
    """(scores CSV, metrics JSON) file names. Full results (the whole split, every class, a
    complete model) are ``scores_<split>_<estimator>.csv`` / ``metrics_<split>_<estimator>.json``;
    anything less is ``partial_scores_<split>_<estimator>_<reasons>.csv`` (and metrics), so it
    never replaces the full results and globs of ``metrics_*.json`` do not pick it up."""
    tag = f"{split}_{estimator}"
    if not partial:
        return f"scores_{tag}.csv", f"metrics_{tag}.json"
    why = "_".join(partial)
    return f"partial_scores_{tag}_{why}.csv", f"partial_metrics_{tag}_{why}.json"


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
