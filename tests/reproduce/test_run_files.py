"""Run files' text: a row a line, compact, read back as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geep.reproduce.run_files import run_file_text
from tests.helpers import COMMITTED_RUNS

RUN = {
    "dataset": "toy",
    "method": "geep",
    "num_layers": 6,
    "rows": [{"setting": "0", "accuracy": 0.8125, "calls": [["layer", 1, 32]]}, {"setting": "1"}],
    "provenance": {"profile": "smoke", "seed": 1, "note": "a, b: c"},
}


def test_a_run_file_is_a_field_a_line_and_a_row_a_line() -> None:
    text = run_file_text(RUN)
    assert json.loads(text) == RUN
    lines = text.splitlines()
    assert lines[0] == '{"dataset":"toy",'
    assert '{"setting":"0","accuracy":0.8125,"calls":[["layer",1,32]]},' in lines
    assert '{"setting":"1"}' in lines
    assert len(lines) == 4 + 1 + len(RUN["rows"]) + 1  # fields, "rows":[, the rows, ]}


@pytest.mark.parametrize("folder", COMMITTED_RUNS, ids=lambda p: p.parent.name)
def test_committed_run_files_are_a_row_a_line(folder: Path) -> None:
    """What keeps the checkout small enough to travel to the GPU machine with a bundle."""
    for path in folder.glob("*/*.json"):
        text = path.read_text()
        assert text == run_file_text(json.loads(text)), path
