"""The errors sgc raises on purpose: bad input, a damaged or busy run folder, a full disk.

Every one derives from :class:`SgcError`, whose message is one line "<problem>. <fix>"; the
``sgc`` command prints it as ``sgc <command> error: <message>`` and exits with code 2
(``sgc.cli.main``), while any other exception keeps its traceback. Each class also derives
from the built-in type callers caught before it existed (``ValueError``,
``FileNotFoundError``, ``RuntimeError``, ...), so ``except ValueError`` keeps working.
"""
from __future__ import annotations

import errno as _errno

__all__ = ["SgcError", "ConfigError", "DataError", "RunFolderError", "RunFolderBusy", "RunExists",
           "RunNotFound", "NotWritable", "DiskFull", "SolverError", "BoundError", "BatchError",
           "one_line", "os_error"]


def one_line(text) -> str:
    """``text`` with line breaks folded into spaces (messages of YAML, torch, papermill)."""
    return " ".join(str(text).split())


class SgcError(Exception):
    """An error of sgc's own; ``str(err)`` names the problem and the fix on one line."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(SgcError, ValueError):
    """An option key or value that sgc does not know (CLI, YAML, notebook parameters)."""


class DataError(SgcError, ValueError):
    """Images, labels or data files that cannot be used as they are."""


class RunFolderError(SgcError, ValueError):
    """A run folder that is damaged, edited by hand, or not what the command needs."""


class RunFolderBusy(RunFolderError):
    """Another process holds the run folder's writer lock."""


class RunExists(RunFolderError):
    """Training into a run folder that already holds a model, without --resume/--overwrite."""


class RunNotFound(SgcError, FileNotFoundError):
    """A run folder or one of its files that is not there."""


class NotWritable(SgcError, PermissionError):
    """A folder or file sgc must write to is read-only."""


class DiskFull(SgcError, OSError):
    """No space left on the device (errno ENOSPC), or less free space than the work needs."""


class SolverError(SgcError, RuntimeError):
    """The probability-flow ODE solve failed or returned non-finite values."""


class BoundError(SgcError, FloatingPointError):
    """The Monte-Carlo likelihood bound is not finite (a NaN/inf model output)."""


class BatchError(SgcError, RuntimeError):
    """A notebook of ``sgc batch`` failed or could not be executed."""


def os_error(err: OSError, path, action: str = "write") -> SgcError | OSError:
    """The sgc error for an OSError met while ``action``-ing ``path``: NotWritable for a
    permission or read-only-file-system error, DiskFull for ENOSPC/EDQUOT; otherwise ``err``."""
    code = getattr(err, "errno", None)
    if isinstance(err, PermissionError) or code in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        return NotWritable(f"cannot {action} {path}: permission denied ({err.strerror or err}). "
                           f"Make the folder writable, or choose another folder (e.g. --run-dir)")
    if code in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
        return DiskFull(f"no space left on the device to {action} {path}. Free some space (or raise the "
                        f"quota) and rerun; an interrupted training run continues with --resume")
    return err
