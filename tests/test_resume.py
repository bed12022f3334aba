"""A benchmark sweep killed with SIGKILL mid-run resumes where it stopped and ends with the same
results as an uninterrupted run (issue 6, interruption)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ["benchmarks/test_methods.py", "-k", "pabee", "-q", "-p", "no:cacheprovider"]
RUN_FILE = Path("runs/rotten-tomatoes/pabee.json")
# what a re-run must reproduce exactly (timings differ by nature)
SAME = ["speed", "accuracy", "macro_f1", "flops_fastbert", "flops_full", "avg_exit_layer", "n"]

pytestmark = pytest.mark.slow


def sweep(results: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "GEEP_PROFILE": "smoke", "GEEP_RESULTS": str(results)}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *SWEEP, *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def rows(results: Path) -> list[dict]:
    return json.loads((results / RUN_FILE).read_text())["rows"]


def finish(process: subprocess.Popen) -> None:
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, out[-3000:]


def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    uninterrupted = tmp_path / "uninterrupted"
    finish(sweep(uninterrupted))  # also trains and caches the smoke checkpoint
    expected = rows(uninterrupted)
    assert len(expected) == 3

    killed = tmp_path / "killed"
    process = sweep(killed)
    deadline = time.monotonic() + 600
    while not (killed / RUN_FILE).is_file():
        assert process.poll() is None, "the sweep ended before its first unit was recorded"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    done = rows(killed)  # the file is whole: written atomically, never half
    assert 1 <= len(done) < 3, "the kill came after the sweep finished: nothing was tested"

    resumed = sweep(killed, "--resume")
    finish(resumed)
    result = rows(killed)
    assert [{k: r[k] for k in SAME} for r in result] == [{k: r[k] for k in SAME} for r in expected]
    # the units measured before the kill were kept, not measured again
    kept = {r["speed"]: r["round_seconds_median"] for r in done}
    assert all(r["round_seconds_median"] == kept[r["speed"]] for r in result if r["speed"] in kept)
