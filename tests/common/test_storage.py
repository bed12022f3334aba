"""Writes that stay whole: several processes adding rows to one run file at once, as benchmark
workers do, lose no row; a folder replaced in two renames survives an interrupt or a kill
between them."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from geep.common.storage import atomic_directory
from geep.model.train_state import TrainState
from geep.reproduce.profiles import get_profile
from geep.reproduce.units import record, run_file
from tests.helpers import new_method, run_row, toy_test_split

WRITERS, ROWS = 4, 25


def write_rows(args: tuple[Path, int, object, object]) -> None:
    results, writer, method, data = args
    profile = get_profile("smoke")
    for i in range(ROWS):
        row = run_row("0", 0.5, 1.0) | {"setting": f"{writer}-{i}", "speed": float(i)}
        record(results, profile, method, "toy", data, row)


@pytest.mark.slow
def test_concurrent_writers_lose_no_row(tiny_model: Path, tmp_path: Path) -> None:
    method = new_method("bert", tiny_model)
    data = toy_test_split(method)
    jobs = [(tmp_path, writer, method, data) for writer in range(WRITERS)]
    with multiprocessing.get_context("fork").Pool(WRITERS) as pool:
        pool.map(write_rows, jobs)
    seed = method.info.train["seed"]
    rows = json.loads(run_file(tmp_path, "toy", "bert", seed).read_text())["rows"]
    expected = {f"{writer}-{i}" for writer in range(WRITERS) for i in range(ROWS)}
    assert sorted(r["setting"] for r in rows) == sorted(expected)


def test_an_interrupt_between_the_two_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("old")
    real_replace = os.replace

    def interrupted(src, dst):  # the old folder goes aside, then Ctrl-C before the new comes in
        real_replace(src, dst)
        if Path(dst).name == ".ckpt.old":
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_save_a_kill_left_aside_is_read_after_all(tmp_path) -> None:
    """Killed between the renames (kill -9: no handler ran), the save sits in .latest.old; the
    next run finds it there instead of starting over."""
    folder = tmp_path / ".out.resume"
    state = TrainState(folder, {"seed": 1}, every_s=0)
    (folder / ".latest.old").mkdir()
    progress = {"call": 0, "desc": "x", "steps": 3, "total": 9, "done": False, "losses": [[1.0]]}
    (folder / ".latest.old" / "progress.json").write_text(json.dumps(progress))
    state = TrainState(folder, {"seed": 1}, every_s=0)
    assert state.saved(0)["steps"] == 3
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "run.json"]


@pytest.fixture
def umask_027():
    """A umask other than the usual 022, so a mode a library chose shows: new files 0640."""
    previous = os.umask(0o027)
    yield 0o027
    os.umask(previous)


def wrong_modes(root: Path, mask: int) -> list[str]:
    """Every file and folder under ``root`` whose mode is not what ``mask`` gives a new one."""
    wrong = []
    for path in sorted([root, *root.rglob("*")]):
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        if path.stat().st_mode & 0o777 != want:
            wrong.append(f"{path.relative_to(root)} {path.stat().st_mode & 0o777:o}")
    return wrong


def test_every_file_the_suite_writes_gets_the_umasks_mode(
    tiny_model: Path, toy_dir: Path, tmp_path: Path, monkeypatch, umask_027
) -> None:
    """Checkpoints (safetensors, tokenizer files), the training state, the caches (encoded
    splits), predictions, run files and reports: whatever library writes them."""
    from geep.cli import main
    from tests.helpers import train_args

    monkeypatch.setenv("GEEP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "written"
    options = ["--epochs", "1", "--seq-len", "16", "--batch-size", "8", "--save-every", "0"]
    assert main(train_args(toy_dir, tiny_model, out / "bert-toy", *options)) == 0
    predictions = out / "predictions.jsonl"
    argv = ["evaluate", "--checkpoint", str(out / "bert-toy"), "--predictions", str(predictions)]
    assert main(argv) == 0
    method = new_method("bert", tiny_model)
    record(
        out / "results",
        get_profile("smoke"),
        method,
        "toy",
        toy_test_split(method),
        run_row("0", 0.9, 1.0),
    )
    assert main(["report", str(out / "results")]) == 0
    assert {p.name for p in out.iterdir()} >= {"bert-toy", "predictions.jsonl", "results"}
    assert (tmp_path / "cache" / "encoded").is_dir()
    assert wrong_modes(out, umask_027) == []
    assert wrong_modes(tmp_path / "cache", umask_027) == []
