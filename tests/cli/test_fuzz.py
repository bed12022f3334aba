"""Fuzzing the inputs a user controls: local data files, the CLI's numeric options, and the
JSON files the suite reads back (a checkpoint's metadata, run files).

Every input must either load (a train/dev/test DatasetDict with text and labels; a checkpoint
that evaluates; run files that report) or give one GeepError line; no other exception, no
traceback. Bounded: a fixed number of examples each.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geep.cli import build_parser, main, train_config
from geep.common.errors import GeepError
from geep.data import load_dataset
from tests.helpers import snapshot, train_args

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)

# text from every corner of unicode, plus the characters that structure the formats
TEXT = st.text(
    alphabet=st.one_of(st.characters(), st.sampled_from(["\t", "\n", "\r", ",", '"', "{", "\x00"])),
    max_size=60,
)
LABEL = st.one_of(
    st.integers(-3, 40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["pos", "neg", "", " 1", "1.0", "true", "null"]),
    TEXT,
)


@st.composite
def table_file(draw: st.DrawFn) -> tuple[str, bytes]:
    """A TSV, CSV or JSONL file with a plausible header and fuzzed rows, in some encoding."""
    kind = draw(st.sampled_from(["tsv", "csv", "jsonl"]))
    fuzzed = draw(st.lists(st.tuples(st.one_of(st.sampled_from("01"), LABEL), TEXT), max_size=12))
    clean = [(str(i % 2), f"clean example {i}") for i in range(draw(st.integers(0, 40)))]
    rows = draw(st.permutations(fuzzed + clean))
    if kind == "tsv":
        body = "label\ttext_a\n" + "".join(f"{label}\t{text}\n" for label, text in rows)
    elif kind == "csv":
        body = "label,text\n" + "".join(f'{label},"{text}"\n' for label, text in rows)
    else:
        body = "".join(f'{{"label": {label}, "text": "{text}"}}\n' for label, text in rows)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1"]))
    return kind, body.encode(encoding, errors="replace")


def loads_or_says_why(name: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            data = load_dataset(str(path))
        except GeepError as err:
            assert str(err) and "\n" not in str(err)
            return
        assert set(data) == {"train", "dev", "test"}
        for split in data.values():
            assert {"text", "label"} <= set(split.column_names)
            assert all(isinstance(t, str) and t for t in split["text"])


@FUZZ
@given(table_file())
def test_fuzzed_table_files(file: tuple[str, bytes]) -> None:
    kind, content = file
    loads_or_says_why(f"data.{kind}", content)


@FUZZ
@given(st.sampled_from(["tsv", "csv", "jsonl"]), st.binary(max_size=3000))
def test_random_bytes(kind: str, content: bytes) -> None:
    loads_or_says_why(f"data.{kind}", content)


def test_a_huge_line_is_read_or_refused(tmp_path: Path) -> None:
    """One 20 MB example: loaded (texts are truncated at tokenization, not here) or refused."""
    path = tmp_path / "huge.tsv"
    lines = ["label\ttext_a", "1\t" + "word " * 4_000_000]
    lines += [f"{i % 2}\tshort text {i}" for i in range(30)]
    path.write_text("\n".join(lines) + "\n")
    loads_or_says_why("huge.tsv", path.read_bytes())


NUMBERS = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "-0", "1e309", "9" * 5000, "0x10", "1_000", " 3 ", "٣"]),
    TEXT,
)
OPTIONS = ["--seq-len", "--epochs", "--batch-size", "--lr", "--seed", "--max-train"]


@FUZZ
@given(option=st.sampled_from(OPTIONS), value=NUMBERS)
def test_fuzzed_numeric_options(option: str, value: str, capsys) -> None:
    """Each value is parsed into a valid number or refused with one line and status 2; a parsed
    one then gives a valid training config or one GeepError line."""
    argv = ["train", "--method", "bert", "--dataset", "d", "--out", "o", option, value]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        assert stop.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err
        return
    try:
        train_config(args)
    except GeepError as err:
        assert "\n" not in str(err)


@FUZZ
@given(value=NUMBERS)
def test_fuzzed_speeds(value: str, capsys) -> None:
    try:
        args = build_parser().parse_args(["evaluate", "--checkpoint", "c", "--speed", value])
    except SystemExit as stop:
        assert stop.code == 2 and capsys.readouterr().err.count("\n") == 1
        return
    assert all(s >= 0 and s != float("inf") for s in args.speed)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e309"])
def test_non_finite_or_negative_speeds_are_refused(value: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--checkpoint", "c", "--speed", value])


# --- the JSON files the suite reads back ---------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 100)  # sizes stay small: a damaged size builds a model before it is refused
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=4,
)
DELETE = object()  # a mutation that removes the field


def paths(document: Any, prefix: tuple = ()) -> list[tuple]:
    """Every field of a JSON document, as key paths (list items by index)."""
    found = [prefix] if prefix else []
    if isinstance(document, dict | list):
        items = document.items() if isinstance(document, dict) else enumerate(document)
        for key, value in items:
            found += paths(value, (*prefix, key))
    return found


@st.composite
def mutation(draw: st.DrawFn, document: Any) -> tuple[tuple, Any]:
    """A field of ``document`` and what it becomes: another JSON value, or deleted."""
    path = draw(st.sampled_from(paths(document)))
    return path, draw(st.one_of(JSON_VALUES, st.just(DELETE)))


def mutated(document: Any, path: tuple, value: Any) -> Any:
    copy = json.loads(json.dumps(document))
    *parents, last = path
    target = copy
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return copy


def fails_in_one_line(status: int, err: str) -> None:
    assert status in (0, 2), err
    if status == 2:
        lines = err.strip().splitlines()
        assert lines[-1].startswith("geep: error: ") and "Traceback" not in err, err


@pytest.fixture(scope="module")
def geep_checkpoint(tiny_model: Path, toy_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "geep-toy"
    options = ["--method", "geep", "--epochs", "1", "--seq-len", "16", "--batch-size", "8"]
    assert main(train_args(toy_dir, tiny_model, out, *options)) == 0
    return out


CHECKPOINT_FIELDS = 150


@settings(FUZZ, max_examples=CHECKPOINT_FIELDS)
@given(data=st.data())
def test_fuzzed_checkpoint_metadata(data: st.DataObject, geep_checkpoint: Path, capsys) -> None:
    """A field of a GEEP checkpoint's config.json changed to any JSON value, or deleted:
    `geep evaluate` evaluates it or says in one line what is wrong."""
    info = json.loads((geep_checkpoint / "config.json").read_text())
    path, value = data.draw(mutation(info))
    with tempfile.TemporaryDirectory() as folder:
        damaged = Path(folder) / "ck"
        shutil.copytree(geep_checkpoint, damaged)
        (damaged / "config.json").write_text(json.dumps(mutated(info, path, value)))
        status = main(["evaluate", "--checkpoint", str(damaged), "--speed", "0", "--max-eval", "4"])
    fails_in_one_line(status, capsys.readouterr().err)


RUN_FILE_FIELDS = 60


@settings(FUZZ, max_examples=RUN_FILE_FIELDS)
@given(data=st.data())
def test_fuzzed_run_files(data: st.DataObject, results: Path, capsys) -> None:
    """A field of a run file changed to any JSON value, or deleted: `geep report` writes every
    output, or says in one line what is wrong and writes none."""
    target = data.draw(st.sampled_from(sorted(results.glob("runs/*/*.json"))))
    run = json.loads(target.read_text())
    path, value = data.draw(mutation(run))
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "results"
        shutil.copytree(results, copy)
        (copy / target.relative_to(results)).write_text(json.dumps(mutated(run, path, value)))
        before = snapshot(copy)
        status = main(["report", str(copy)])
        fails_in_one_line(status, capsys.readouterr().err)
        if status == 2:
            assert snapshot(copy) == before
