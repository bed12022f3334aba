"""Interruption: a benchmark sweep or a `geep train` killed mid-run resumes where it
stopped and ends with the same results as an uninterrupted run, and leaves nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geep.common.errors import GeepError
from geep.common.storage import atomic_write_text
from geep.model.train_state import TrainState, state_folder
from geep.reproduce.units import row_key

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ["benchmarks/test_methods.py", "-k", "pabee", "-q", "-p", "no:cacheprovider"]
RUN_FILE = Path("runs/rotten-tomatoes/pabee-seed42.json")
SWEEP_ROWS = 6  # the smoke profile's three patience settings, shrinking and regrouped
# what a re-run must reproduce exactly (timings differ by nature)
SAME = [
    "setting",
    "batching",
    "speed",
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "flops_full",
    "avg_exit_layer",
]

pytestmark = pytest.mark.slow


def default_sigint() -> None:
    """SIGINT's default action in the child, so that its python raises KeyboardInterrupt on it
    even when pytest inherited SIGINT ignored (a background job of a script ignores it, and a
    python started with SIGINT ignored keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m ARGV`` in the repository, as a user would run it from a terminal."""
    return subprocess.Popen(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


def wait_until(process: subprocess.Popen, condition: Callable[[], bool]) -> None:
    """Poll until ``condition`` holds while ``process`` still runs (then it can be killed)."""
    deadline = time.monotonic() + 600
    while not condition():
        assert process.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def finish(process: subprocess.Popen) -> str:
    """Wait for a run that must succeed; returns its stderr."""
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    return err


def sweep(results: Path, *extra: str) -> subprocess.Popen:
    env = {"GEEP_PROFILE": "smoke", "GEEP_RESULTS": str(results)}
    return start("pytest", *SWEEP, *extra, env=env)


def rows(results: Path) -> list[dict]:
    return json.loads((results / RUN_FILE).read_text())["rows"]


@pytest.fixture(scope="module")
def uninterrupted_sweep(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    results = tmp_path_factory.mktemp("uninterrupted-sweep")
    finish(sweep(results))  # also trains and caches the smoke checkpoint
    assert len(rows(results)) == SWEEP_ROWS
    return rows(results)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=str)
def test_killed_sweep_resumes_to_the_uninterrupted_result(
    sig: signal.Signals, uninterrupted_sweep: list[dict], tmp_path: Path
) -> None:
    process = sweep(tmp_path)
    wait_until(process, (tmp_path / RUN_FILE).is_file)  # the first unit is recorded
    process.send_signal(sig)
    process.communicate()
    done = rows(tmp_path)  # the file is whole: written atomically, never half
    assert 1 <= len(done) < SWEEP_ROWS, "the kill came after the sweep finished: nothing was tested"

    finish(sweep(tmp_path, "--resume"))
    result = rows(tmp_path)
    expected = uninterrupted_sweep
    assert [{k: r[k] for k in SAME} for r in result] == [{k: r[k] for k in SAME} for r in expected]
    # the units measured before the kill were kept, not measured again
    kept = {row_key(r): r["round_seconds_median"] for r in done}
    assert all(r["round_seconds_median"] == kept[row_key(r)] for r in result if row_key(r) in kept)
    assert not list((tmp_path / RUN_FILE).parent.glob(".*.tmp")), "a temporary was left behind"


def test_a_damaged_run_file_is_set_aside_and_its_units_run_again(
    uninterrupted_sweep: list[dict], tmp_path: Path
) -> None:
    damaged = (tmp_path / RUN_FILE).parent
    damaged.mkdir(parents=True)
    truncated = json.dumps({"rows": uninterrupted_sweep}).encode()[:300]  # cut mid-JSON
    (tmp_path / RUN_FILE).write_bytes(truncated)
    process = sweep(tmp_path, "--resume")
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, out[-3000:]
    said = [line for line in out.splitlines() if "moved it to" in line]
    assert said == [
        f"geep: run file {tmp_path / RUN_FILE} is unreadable (JSONDecodeError); moved it to "
        f"{RUN_FILE.name}.damaged, and its units run again"
    ]
    assert (damaged / f"{RUN_FILE.name}.damaged").read_bytes() == truncated  # kept aside
    result = rows(tmp_path)  # rewritten whole: every unit measured again
    expected = uninterrupted_sweep
    assert [{k: r[k] for k in SAME} for r in result] == [{k: r[k] for k in SAME} for r in expected]


def train_argv(out: Path, dataset: Path, model: Path) -> list[str]:
    """`geep train` of FastBERT (two training steps, two epochs each), saving after every step."""
    argv = ["train", "--method", "fastbert", "--dataset", str(dataset), "--model", str(model)]
    argv += ["--out", str(out), "--epochs", "2", "--batch-size", "8", "--seq-len", "16"]
    return [*argv, "--save-every", "0"]


def geep_train(out: Path, dataset: Path, model: Path) -> subprocess.Popen:
    return start("geep.cli", *train_argv(out, dataset, model))


def saved_progress(out: Path) -> dict:
    try:
        return json.loads((state_folder(out) / "latest" / "progress.json").read_text())
    except (OSError, ValueError):  # not saved yet, or the save is being replaced
        return {}


def reached(out: Path, call: int, steps: int) -> bool:
    """Whether the latest save is at least ``steps`` into ``train_loop`` call ``call``."""
    progress = saved_progress(out)
    return (progress.get("call", -1), progress.get("steps", 0)) >= (call, steps)


@pytest.fixture(scope="module")
def uninterrupted(toy_dir: Path, tiny_model: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted") / "fastbert"
    finish(geep_train(out, toy_dir, tiny_model))
    return load_file(out / "model.safetensors")


# (signal, the train_loop call to kill in (0: step 1, 1: step 2), steps into it)
KILLS = [(signal.SIGKILL, 0, 3), (signal.SIGTERM, 0, 14), (signal.SIGINT, 1, 5)]


@pytest.mark.parametrize(("sig", "call", "steps"), KILLS, ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_killed_training_resumes_to_the_uninterrupted_checkpoint(
    sig,
    call,
    steps,
    uninterrupted,
    toy_dir,
    tiny_model,
    tmp_path,
) -> None:
    out = tmp_path / "fastbert"
    process = geep_train(out, toy_dir, tiny_model)
    wait_until(process, lambda: reached(out, call, steps))
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:  # SIGTERM is handled like Ctrl-C: one line, exit status 130
        assert process.returncode == 130, err[-3000:]
        assert "interrupted; nothing half-written" in err.strip().splitlines()[-1]
        assert "Traceback" not in err
    assert not out.exists(), "a checkpoint appeared before training ended"
    killed_at = saved_progress(out)
    assert (killed_at["call"], killed_at["done"]) != (1, True), "the kill came too late"

    err = finish(geep_train(out, toy_dir, tiny_model))
    assert f"resuming from the state saved in {state_folder(out)}" in err
    weights = load_file(out / "model.safetensors")
    assert weights.keys() == uninterrupted.keys()
    differ = {k: float((weights[k] - uninterrupted[k]).abs().max()) for k in weights}
    differ = {k: d for k, d in differ.items() if d > 0}
    assert not differ, f"{len(differ)} tensors differ, by up to {max(differ.values()):.3g}"
    assert not state_folder(out).exists()  # removed once the checkpoint is written
    assert not list(tmp_path.glob(".*.tmp")), "a temporary was left behind"


# saves of the run below to restore: call 0's end; call 1's first step, its epoch boundary (10
# batches an epoch), the first step of its second epoch and the last save before its end
RESTORED = ["0-20", "1-1", "1-10", "1-11", "1-19"]


def test_every_kind_of_save_resumes_to_the_uninterrupted_checkpoint(
    toy_dir: Path, tiny_model: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A resume restores the last save before the kill, so what must hold is that a run resumed
    from any save ends with the uninterrupted checkpoint; this restores chosen saves directly,
    so no kill's timing decides which are tested. The runs share this process, one thread each
    (fast, and the same kernels in every run)."""
    from geep.cli import main

    saves = tmp_path / "saves"
    save = TrainState.save

    def keep(self: TrainState, call: int, progress: dict, *args, **kwargs) -> None:
        save(self, call, progress, *args, **kwargs)
        shutil.copytree(self.folder, saves / f"{call}-{progress['steps']}")  # run.json, latest/

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setattr(TrainState, "save", keep)
        assert main(train_argv(tmp_path / "uninterrupted", toy_dir, tiny_model)) == 0
        monkeypatch.setattr(TrainState, "save", save)
        uninterrupted = load_file(tmp_path / "uninterrupted" / "model.safetensors")
        for name in RESTORED:
            out = tmp_path / name / "fastbert"
            shutil.copytree(saves / name, state_folder(out))
            capsys.readouterr()
            assert main(train_argv(out, toy_dir, tiny_model)) == 0
            assert (
                f"resuming from the state saved in {state_folder(out)}" in capsys.readouterr().err
            )
            weights = load_file(out / "model.safetensors")
            differ = [k for k in weights if not torch.equal(weights[k], uninterrupted[k])]
            assert not differ, f"resumed from save {name}: {len(differ)} tensors differ"
    finally:
        torch.set_num_threads(threads)


def test_saved_state_of_another_run_is_discarded(tmp_path: Path, capsys) -> None:
    folder = tmp_path / ".out.resume"
    TrainState(folder, {"seed": 1}, every_s=0)
    (folder / "latest").mkdir()
    (folder / "latest" / "progress.json").write_text('{"call": 0, "desc": "x", "steps": 3}')
    TrainState(folder, {"seed": 2}, every_s=0)
    assert "discarding the saved state of a different run" in capsys.readouterr().err
    assert not (folder / "latest").exists()
    assert json.loads((folder / "run.json").read_text()) == {"seed": 2}


def test_an_unreadable_saved_state_is_one_clear_error(tmp_path: Path, capsys) -> None:
    folder = tmp_path / ".out.resume"
    TrainState(folder, {"seed": 1}, every_s=0)
    (folder / "latest").mkdir()
    progress = {"call": 0, "desc": "x", "steps": 3, "total": 9, "done": False, "losses": [[]]}
    (folder / "latest" / "progress.json").write_text(json.dumps(progress))
    (folder / "latest" / "model.safetensors").write_bytes(b"not safetensors")
    state = TrainState(folder, {"seed": 1}, every_s=0)
    with pytest.raises(GeepError, match=r"training state saved in .* is unreadable"):
        state.restore(torch.nn.Linear(2, 2))
    # a progress record without its fields is discarded, not trusted
    (folder / "latest" / "progress.json").write_text('{"call": 0}')
    assert TrainState(folder, {"seed": 1}, every_s=0).saved(0) is None
    assert "discarding the unreadable saved state" in capsys.readouterr().err


def test_temporaries_of_killed_writers_are_removed(tmp_path: Path) -> None:
    """A writer killed mid-write leaves ``.NAME.PID.XXXX.tmp``; the next write of NAME removes
    it unless that process still runs (it may be writing the same file)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f".a.json.{gone.pid}.x1y2.tmp"
    live = tmp_path / f".a.json.{os.getpid()}.z3w4.tmp"
    other = tmp_path / f".b.json.{gone.pid}.q5r6.tmp"
    for path in (dead, live, other):
        path.write_text("{half")
    (tmp_path / f".a.json.{gone.pid}.dir.tmp").mkdir()
    atomic_write_text(tmp_path / "a.json", "{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["a.json", live.name, other.name])
