"""Checks made before any work starts: can the outputs be written?

A stage or CLI calls these first, so that a folder that cannot be written is reported in one line before
minutes (or hours) of work are spent and then discarded. They create nothing they do not need: a missing
folder is judged by its nearest existing ancestor, and the only file ever made is a probe that is deleted
at once.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

__all__ = ["is_permission_error", "output_dir_problem", "output_file_problem"]


def _nearest_existing(path: Path) -> Path:
    """``path`` itself, or its closest ancestor that exists (``/`` at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _probe(folder: Path) -> str | None:
    """Create and delete a temporary file in ``folder``; the reason it failed, or None.

    ``os.access`` is not enough: it says yes to root on a read-only mount and knows nothing of quotas
    or ACL subtleties; a real create is the only reliable answer.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:  # the probe is hidden and harmless; failing to delete it is no reason to stop
        pass
    return None


def output_dir_problem(path: str | os.PathLike, what: str = "output folder") -> str | None:
    """Why ``path`` cannot be used as an output folder, or None when it can.

    The folder may be missing (it is created later, by the writer); then its nearest existing ancestor
    must be a writable folder. Nothing is created here except a probe file, deleted at once.

    Args:
        path: the folder that will be written.
        what: what to call it in the message (``"--out"``, ``"metrics folder"``, ...).

    Returns:
        One line naming the path, the problem and the fix; None if the folder can be written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{what} {path} is a file, not a folder: choose a folder (or move the file away)"
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        return f"{what} {path} cannot be created: {base} is a file, not a folder"
    reason = _probe(base)
    if reason is not None:
        where = "" if base == path.absolute() else f" (its nearest existing folder {base})"
        return f"{what} {path} is not writable{where}: {reason}; choose another folder or fix its permissions"
    return None


def output_file_problem(path: str | os.PathLike, what: str = "output file") -> str | None:
    """Why the file ``path`` cannot be written (atomically, via a temporary file beside it), or None.

    Args:
        path: the file that will be (re)written.
        what: what to call it in the message.

    Returns:
        One line naming the path and the problem; None if it can be written.
    """
    path = Path(path)
    if path.is_dir():
        return f"{what} {path} is a folder, not a file: move it away"
    return output_dir_problem(path.parent, f"{what} {path}: folder")


def is_permission_error(exc: BaseException) -> bool:
    """True for the OSErrors a user fixes by choosing another place (permissions, read-only, full disk)."""
    return isinstance(exc, OSError) and exc.errno in (
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
    )
