"""torch.distributed for sgc: one process per device, started by ``torchrun``.

``torchrun --nproc-per-node N sgc train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; ``init_from_env`` reads them and starts the process group
(NCCL on CUDA, gloo on CPU). Without those variables everything here is a no-op for one
process (rank 0 of 1), so library code calls these helpers unconditionally.

* training: ``sgc.train`` wraps the model in DistributedDataParallel; every rank draws the
  same global batch from the same generator and keeps its slice (``batch_slice``).
* evaluation: images are split into fixed chunks, chunk i goes to rank i mod N
  (``shard_chunks``); adaptive solvers need no lock-step, ranks meet once at the end.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_from_env", "is_active", "rank", "world_size", "is_main", "barrier",
           "all_reduce_sum", "all_gather_objects", "broadcast_object", "batch_slice", "shard_chunks",
           "default_device", "cleanup"]

# Ranks of a sharded evaluation wait for the slowest at the end; NCCL's 10-minute default
# would abort an uneven likelihood run. Minutes, overridable with SGC_DIST_TIMEOUT_MIN.
DEFAULT_TIMEOUT_MIN = 180


@dataclass
class DistInfo:
    rank: int          # global rank, 0..world_size-1
    world_size: int    # number of processes
    local_rank: int    # rank on this node (the CUDA device index)
    backend: str       # "nccl", "gloo" or "none" (one process)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init_from_env(backend: str | None = None) -> DistInfo:
    """Start the process group from torchrun's environment (idempotent).

    backend: None picks "nccl" when CUDA is available, else "gloo". With WORLD_SIZE unset or
    1 nothing is started. On CUDA the process's current device becomes cuda:LOCAL_RANK.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0),
                        dist.get_backend())
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo(0, 1, 0, "none")
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    local_rank = _env_int("LOCAL_RANK", 0)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    timeout = timedelta(minutes=float(os.environ.get("SGC_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN)))
    dist.init_process_group(backend, init_method="env://", timeout=timeout)
    atexit.register(cleanup)  # one group per process, reused by every call, destroyed at exit
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def is_active() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints results."""
    return rank() == 0


def default_device(device=None) -> torch.device:
    """The device of this rank: ``device`` if given ("cuda" means cuda:LOCAL_RANK under
    torchrun), else cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", _env_int("LOCAL_RANK", 0) if is_active() else torch.cuda.current_device())
    return device


def barrier() -> None:
    if is_active():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks, in place (returns t). One process: t unchanged."""
    if is_active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not is_active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def batch_slice(batch_size: int, rank_: int | None = None, world: int | None = None) -> slice:
    """This rank's rows of a global batch of ``batch_size`` (which the world size must divide)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world} processes; "
                         f"choose a global batch size that is a multiple of the world size")
    per = batch_size // world
    return slice(rank_ * per, (rank_ + 1) * per)


def shard_chunks(n_items: int, chunk: int, rank_: int | None = None, world: int | None = None) -> list[range]:
    """The index ranges of the chunks this rank handles: chunk i = [i*chunk, (i+1)*chunk) goes
    to rank i mod world. The chunks do not depend on the world size, so results computed
    per chunk are identical for any number of processes and can be resumed by any of them."""
    if chunk < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk}")
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    starts = range(0, n_items, chunk)
    return [range(s, min(s + chunk, n_items)) for i, s in enumerate(starts) if i % world == rank_]


def cleanup() -> None:
    """Destroy the process group if this process started one, after every rank got here.

    Without the barrier a rank that finishes first tears down its gloo sockets while another
    is still shutting down, which can abort that one ("terminate called without an active
    exception", exit -6) after all work is done. A rank that never arrives (it crashed) is
    waited for at most 60 s on gloo.
    """
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=60))
            else:
                dist.barrier()
        dist.destroy_process_group()
