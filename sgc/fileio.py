"""Writing result files safely: unique temporary names, atomic renames, clear disk errors.

Every file sgc writes for later use goes to a temporary name of its own in the target's
folder (``.<name>.<pid>.<random>.tmp``: two processes never share one) and is renamed over
the target when complete, so a reader sees the old file or the new one, never half of one.
A failed write removes its temporary file, and the OS errors a user can fix come back as
sgc errors naming the path and the fix: a full disk (ENOSPC, or torch's "enforce fail" /
"unexpected pos" when it runs out of space mid-checkpoint) as :class:`sgc.errors.DiskFull`,
a read-only folder as :class:`sgc.errors.NotWritable`. ``check_writable`` tests a folder and
its free space before long work starts; ``folder_lock`` gives one process at a time a folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .errors import DiskFull, RunFolderBusy, os_error

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "atomic_write_bytes", "sha256_file",
           "check_writable", "free_bytes", "folder_lock"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: mkstemp creates files 0600, finished files get the usual mode

# torch.save reports a failed write (a full disk, among others) with these phrases
_TORCH_WRITE_FAILED = ("enforce fail at inline_container", "unexpected pos", "PytorchStreamWriter failed",
                       "file write failed")


def free_bytes(folder) -> int:
    """Free bytes on the file system holding ``folder`` (its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _translate(err: BaseException, path: Path) -> BaseException:
    """The sgc error for a failed write of ``path``, or ``err`` itself when it is not a known cause."""
    if isinstance(err, OSError):
        return os_error(err, path)
    if isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILED):
        free = free_bytes(path.parent)
        first = str(err).strip().splitlines()[0][:160]
        return DiskFull(f"writing {path} failed with {free / 2**20:.0f} MiB free on its device (torch: {first}). "
                        f"Free some space and rerun; an interrupted training run continues with --resume")
    return err


@contextlib.contextmanager
def atomic_path(path):
    """Yield a unique temporary path beside ``path``; on success rename it to ``path``.

    The caller writes the whole file to the yielded path. On any exception the temporary
    file is removed and OS / torch write errors are raised as sgc errors naming ``path``.
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise os_error(err, path, "create a file in") from None
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        mapped = _translate(err, path)
        if mapped is err:
            raise
        raise mapped from None


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def sha256_file(path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def check_writable(folder,
                   need_bytes: int = 0,   # free bytes the coming work will write (0: no check)
                   what: str = "the results") -> Path:
    """Create ``folder`` if needed and prove it writable (a probe file is written and removed),
    with at least ``need_bytes`` free. Raises NotWritable or DiskFull naming the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sgc-write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        mapped = os_error(err, folder, "write into")
        if mapped is err:
            raise
        raise mapped from None
    free = free_bytes(folder)
    if need_bytes and free < need_bytes:
        raise DiskFull(f"{folder} has {free / 2**20:.0f} MiB free but about {need_bytes / 2**20:.0f} MiB are needed "
                       f"for {what}. Free some space or choose a folder on another device")
    return folder



# --- one writer per folder -------------------------------------------------------------------

_HELD: dict[str, list] = {}  # resolved lock file -> [open file, depth]


def _command() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    return " ".join(argv)[:200]


def _try_lock(path: Path, command: str | None, what: str, fix: str) -> BaseException | None:
    """Take the flock on ``path`` for this process (recorded in _HELD); the error if another holds it."""
    try:
        check_writable(path.parent)
        handle = open(path, "a+")
    except OSError as err:
        return err
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        try:
            holder = json.loads(handle.read() or "{}")
        except json.JSONDecodeError:
            holder = {}
        handle.close()
        return RunFolderBusy(f"{what} {path.parent} is in use by PID {holder.get('pid', '?')} "
                             f"({holder.get('command', 'another sgc process')}, since {holder.get('started', '?')} "
                             f"on {holder.get('host', '?')}). {fix}")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "command": command or _command(), "host": platform.node(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    handle.flush()
    _HELD[str(path.resolve())] = [handle, 0]
    return None


@contextlib.contextmanager
def folder_lock(folder,
                name: str = ".sgc.lock",   # the lock file inside ``folder``
                what: str = "folder",      # how messages call the folder
                fix: str = "Wait for it to finish",
                command: str | None = None):  # recorded for the message others get (default: argv)
    """Hold an exclusive lock (flock on ``folder/name``) for the block.

    Another process asking for it fails at once with RunFolderBusy naming the PID, command
    and start time of the holder. Re-entrant within a process. Under torchrun rank 0 takes
    the lock and every rank learns the outcome. The kernel releases it when the holder
    exits, however it exits.
    """
    from . import distributed
    path = Path(folder) / name
    key = str(path.resolve())
    fresh, failure = False, None
    if distributed.is_main() and key not in _HELD:
        failure = _try_lock(path, command, what, fix)
        fresh = failure is None
    failure = distributed.broadcast_object(failure)
    if failure is not None:
        raise failure
    if key in _HELD:
        _HELD[key][1] += 1
    try:
        yield Path(folder)
    finally:
        if key in _HELD:
            _HELD[key][1] -= 1
            if fresh:
                handle = _HELD.pop(key)[0]
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
