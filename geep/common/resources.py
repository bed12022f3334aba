"""Free memory, and an early, clear failure for work that would not fit in it.

The data path checks before it loads a local file (:mod:`geep.data.sources`) and before it
tokenizes a split (:mod:`geep.data.encoding`), so a dataset too large for the machine stops in a
second with a message naming the fix, not minutes later in the kernel's out-of-memory killer.
"""

from __future__ import annotations

from pathlib import Path

from geep.common.errors import GeepError

_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


def available_memory() -> int | None:
    """Bytes this process may still allocate: Linux's MemAvailable, capped by a cgroup v2
    memory limit when there is one; None where neither is known (not Linux)."""
    free = None
    if _MEMINFO.is_file():
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    limit, used = _CGROUP / "memory.max", _CGROUP / "memory.current"
    try:
        room = int(limit.read_text()) - int(used.read_text())
    except (OSError, ValueError):  # no cgroup v2 files, or "max" (no limit)
        return free
    return room if free is None else min(free, room)


def require_memory(needed: int, what: str, fix: str) -> None:
    """Raise GeepError when ``needed`` bytes exceed :func:`available_memory`."""
    free = available_memory()
    if free is not None and needed > free:
        raise GeepError(
            f"{what} needs about {format_size(needed)} of memory "
            f"but {format_size(free)} is free; {fix}"
        )


def format_size(n: int) -> str:
    """``n`` bytes in GiB, MiB or KiB, whichever is the largest unit below it."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB"
