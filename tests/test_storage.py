"""Several processes adding rows to one run file at once, as benchmark workers do: no row is
lost, and the file is whole after every write."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from geep.profiles import get_profile
from geep.reproduce import record, run_file
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
