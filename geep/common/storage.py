"""Where the suite keeps its cache, how it writes files so no half-written one is ever seen, and
how it makes sure a write destroys nothing it did not write itself.

Every write goes to a hidden temporary beside its target (``.NAME.PID.XXXX.tmp``), is fsynced,
and is renamed over the target. A process killed mid-write, or a write that fails (a full
disk), leaves only that temporary and the previous file; the failed write deletes its temporary,
the next write of the same target deletes a killed writer's. A read-modify-write that several
processes may do at once (benchmark workers adding rows to one run file) holds :func:`exclusive`
around it.

Before any work, a command checks its outputs with :func:`check_target`: a target that exists
is replaced only when the suite wrote it (a checkpoint folder listing its files, a predictions
file, a report's tables), and its folder must be writable. An operating-system fault is one
line naming the path and what to do (:func:`describe_os_error`; the CLI prints it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal

from geep.common.errors import GeepError

CACHE_ENV = "GEEP_CACHE"


def cache_root() -> Path:
    """The cache directory: ``$GEEP_CACHE`` if set, else ``~/.cache/geep``; GeepError when it is
    not a folder that can be written (checked once per process and setting)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "geep"
    return _checked_cache(str(Path(root).expanduser()))


@functools.cache
def _checked_cache(root: str) -> Path:
    what = f"the cache (${CACHE_ENV})" if os.environ.get(CACHE_ENV) else "the cache"
    return check_folder(Path(root), what, f"point ${CACHE_ENV} at a folder you can write to")


# --- one line for every operating-system fault -------------------------------------------------

_FIXES = {
    errno.ENOSPC: "free some space or choose a place on another disk",
    errno.EDQUOT: "free some space or choose a place on another disk",
    errno.EACCES: "choose a place you can write to, or change its permissions",
    errno.EPERM: "choose a place you can write to, or change its permissions",
    errno.EROFS: "choose a place on a writable filesystem",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EISDIR: "it is a folder: give a file's path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def describe_os_error(err: OSError) -> str:
    """``err`` as one line: what failed, on which path, and what to do."""
    reason = err.strerror or (str(err).strip().splitlines() or [type(err).__name__])[0]
    where = f" ({err.filename})" if err.filename else ""
    fix = _FIXES.get(err.errno, "check the path and try again")
    return f"{reason}{where}; {fix}"


def safetensors_os_error(err: Exception, path: Path) -> OSError | None:
    """The operating-system error inside a safetensors error (which its Rust writer reports as
    text: "... No space left on device (os error 28)"), or None when it holds none."""
    found = re.search(r"os error (\d+)", str(err))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


# --- checks before the work --------------------------------------------------------------------

Ownership = Callable[[Path], str | None]
"""Why replacing an existing path could destroy what the suite did not write; None when the
suite wrote it (so it may be replaced)."""


def check_target(
    path: str | Path, what: str, kind: Literal["file", "folder"], ownership: Ownership
) -> Path:
    """Check, before any work, that ``path`` can be written as a ``kind`` without destroying
    anything of the user's; GeepError (one line, beginning with ``what``) when not.

    Refused: the current folder or one holding it (``.``, ``..``); a path of the other kind; an
    existing target that ``ownership`` does not recognise as the suite's (an empty folder or file
    is nobody's work and may be replaced); a place whose nearest existing folder cannot be
    written (permissions, a read-only filesystem, a file where a folder should be). Nothing is
    created. Returns the path, absolute.
    """
    path = Path(path).expanduser()
    absolute = path.resolve()
    here = Path.cwd().resolve()
    if absolute == here or absolute in here.parents:
        raise GeepError(f"{what} {path} is the current folder or holds it: give a new name")
    if absolute.exists():
        if kind == "folder" and not absolute.is_dir():
            raise GeepError(f"{what} {path} is a file, not a folder: give a new folder's name")
        if kind == "file" and absolute.is_dir():
            raise GeepError(f"{what} {path} is a folder: give a file's path")
        empty = not any(absolute.iterdir()) if kind == "folder" else absolute.stat().st_size == 0
        reason = None if empty else ownership(absolute)
        if reason is not None:
            raise GeepError(
                f"{what} {path} exists and geep did not write it ({reason}); give a new name, "
                "or move it away yourself"
            )
    problem = _unwritable(absolute.parent)
    if problem is not None:
        raise GeepError(f"{what} {path} cannot be written ({problem})")
    return absolute


def check_folder(path: Path, what: str, fix: str) -> Path:
    """GeepError (naming ``what`` and the ``fix``) unless ``path`` is a folder files can be
    written in, or can be made one; nothing is created."""
    if path.exists() and not path.is_dir():
        raise GeepError(f"{what} {path} is a file, not a folder: {fix}")
    problem = _unwritable(path)
    if problem is not None:
        raise GeepError(f"{what} {path} cannot be written ({problem}): {fix}")
    return path


def json_ownership(*keys: str) -> Ownership:
    """An :data:`Ownership` for the suite's JSON files: an object holding ``keys``."""

    def ownership(path: Path) -> str | None:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            document = None
        if isinstance(document, dict) and all(key in document for key in keys):
            return None
        return f"it is not a JSON file with {', '.join(keys)}"

    return ownership


def _unwritable(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (or in its nearest existing ancestor, when it
    does not exist yet), found by creating and deleting a probe file; None when one can."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".geep-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{err.strerror or err} in {existing}"
    return None


# --- writes that are whole or not at all -------------------------------------------------------


def _temporary_prefix(path: Path) -> str:
    """``.NAME.PID.``: the hidden temporaries of ``path`` carry the writer's process id."""
    return f".{path.name}.{os.getpid()}."


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporaries of ``path`` whose writer is gone (killed with SIGKILL, say), and
    put back a folder that a killed :func:`atomic_directory` had moved aside.

    A live writer's temporary is left alone, so two processes may write the same file.
    """
    path = Path(path)
    live = False
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            live = True
        elif tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    old = _set_aside(path)
    if not live and old.is_dir() and not path.exists():
        os.replace(old, path)  # killed between its two renames: the previous folder comes back


def _set_aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


_held: dict[Path, tuple[tuple[int, int], int]] = {}  # lock -> ((pid, thread), depth) holding it


@contextlib.contextmanager
def exclusive(path: Path, busy: str | None = None, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a folder, or a file created empty if missing) for the
    block. Another process asking for it waits until the block ends or, when ``busy`` is given,
    gets GeepError(``busy``) at once. The lock is the kernel's (``flock``): a killed holder
    releases it. ``remove``: delete the lock file when the block ends (a waiter that had opened
    it sees it gone and opens the new one). A thread may take a lock it holds again (a profile's
    training lock, then ``geep train``'s on the same checkpoint)."""
    path = Path(path).resolve()
    me = (os.getpid(), threading.get_ident())
    holder, depth = _held.get(path, (None, 0))
    if holder == me:
        _held[path] = (me, depth + 1)
        try:
            yield
        finally:
            _held[path] = (me, depth)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock(path, busy)
    _held[path] = (me, 1)
    try:
        yield
    finally:
        del _held[path]
        if remove:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # still locked: nobody holds the file that is gone
        os.close(fd)  # closing releases the lock


def _lock(path: Path, busy: str | None) -> int:
    """An open descriptor of ``path`` holding its flock; see :func:`exclusive`."""
    while True:
        flags = os.O_RDONLY if path.is_dir() else os.O_RDONLY | os.O_CREAT
        fd = os.open(path, flags, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            os.close(fd)
            raise GeepError(busy) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass  # its holder removed the file as it let go: lock the new one
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    atomic_write_files({Path(path): data})


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_files(files: Mapping[Path, bytes]) -> None:
    """Write several files as one: every temporary is written and fsynced before the first
    rename, so a failure (a full disk, a kill before the renames) leaves every target as it was.
    """
    temporaries: dict[Path, str] = {}
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path)
            fd, tmp = tempfile.mkstemp(
                dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp"
            )
            temporaries[path] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        for path, tmp in temporaries.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in temporaries.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``, as 64 hex digits (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` only if the block succeeds.

    A reader sees either the old ``path``, the complete new one, or nothing: never a half-written
    checkpoint or cache entry. Replacing takes two renames (the old folder aside, the new one in):
    a failure or an interrupt between them puts the old folder back, and after a kill between
    them the next write, or :func:`remove_stale_temporaries` before a read, does. Everything in
    it gets the modes the umask gives new files and folders, whichever library wrote it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    old = _set_aside(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual folder mode
        yield tmp
        mask = _umask()
        for f in tmp.rglob("*"):
            # the usual modes, whatever wrote them (safetensors renames a 0600 temporary in)
            if f.is_dir():
                os.chmod(f, 0o777 & ~mask)
            elif f.is_file():
                os.chmod(f, 0o666 & ~mask)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if not path.exists() and old.is_dir():
            os.replace(old, path)  # stopped between the renames: the previous folder comes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
