"""Run files: one per (dataset, method, seed) of a profile, under
``<results>/runs/<dataset>/<method>-seed<seed>.json``, holding a row per measured setting and
how the rows were made (:func:`geep.reproduce.units.record` writes them, ``geep report`` reads
them).

A run file is JSON with a row a line (:func:`run_file_text`): compact enough that a profile's
files stay small in a checkout (the GPU machine takes 64 MiB of it, docs/gpu.md), and a changed
row is a changed line.

Every row names its batching policy (``null``: the method runs no dynamic exits); a row that
does not ran under the run file's options, and is read with the policy they give.

Every read checks the file against :data:`RUN_FILE_SCHEMA` and its place; a file that breaks
either is a :class:`DamagedRunFile`, named with its first bad field. The benchmark harness sets
a damaged file aside (:func:`set_aside`) and measures its units again; ``geep report`` refuses
it and writes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from geep.common.errors import GeepError
from geep.common.schema import (
    Check,
    choice,
    document,
    first_problem,
    listing,
    maybe,
    number,
    text,
    whole,
)
from geep.core.dynamic_exit import BATCHINGS
from geep.core.registry import get_method
from geep.measure.work import KINDS


def run_file(results: Path, dataset: str, method: str, seed: int) -> Path:
    return results / "runs" / dataset / f"{method}-seed{seed}.json"


def run_file_text(run: dict[str, Any]) -> str:
    """``run`` as a run file's text: a field a line, each row of ``rows`` on a line of its own,
    every value in compact JSON (``json.loads`` gives ``run`` back)."""

    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    fields = [f"{compact(k)}:{compact(v)}" for k, v in run.items() if k != "rows"]
    rows = ",\n".join(compact(row) for row in run["rows"])
    return "{" + ",\n".join([*fields, f'"rows":[\n{rows}\n]']) + "}\n"


CALL_ROW = Check(
    lambda v: (
        isinstance(v, list)
        and len(v) == 6
        and v[0] in KINDS
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v[1:])
    ),
    f"a call [kind, rows, tokens, flops, bytes, count] with kind one of {', '.join(KINDS)}",
)
OPTIONS = Check(
    lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "an object of the method's options",
)
OPERATORS = Check(
    lambda v: isinstance(v, dict) and all(k in KINDS and number(0).test(x) for k, x in v.items()),
    "operators per call kind (numbers >= 0)",
)
ROW_SCHEMA = document(
    {
        "setting": text(),
        "speed": number(0),
        "speed_source": choice("grid", "dev"),
        "batching": maybe(choice(*BATCHINGS)),  # null: the method runs no dynamic exits
        "dev_speedup_full": maybe(number(0)),
        "dev_target": maybe(number(0)),  # the FLOPs speedup a dev setting was chosen for
        **{k: number(0, 1) for k in ("accuracy", "accuracy_low", "accuracy_high")},
        "macro_f1": maybe(number(0, 1)),
        **{k: number(0) for k in ("avg_exit_layer", "flops_fastbert", "flops_full")},
        **{k: number(0) for k in ("speedup", "speedup_full", "throughput")},
        **{k: number(0) for k in ("latency_ms_p50", "latency_ms_p95")},
        "n": whole(1),
        "batch_size": whole(1),
        "exit_histogram": listing(whole(0)),
        # the work counts and the device's figures (absent from older runs, null when unknown)
        **{k: maybe(number(0)) for k in ("flops_executed_full", "mean_layer_batch_rows")},
        **{k: maybe(whole(0)) for k in ("layer_batches", "head_calls", "head_rows")},
        **{k: maybe(number(0)) for k in ("round_seconds_median", "round_spread")},
        "cpu_util_percent": maybe(number(0)),
        **{k: maybe(number(0)) for k in ("gpu_util_percent", "gpu_memory_mib")},
        "calls": maybe(listing(CALL_ROW)),
        "operators": maybe(OPERATORS),
        # what a precision other than float32 changed (absent in float32)
        **{k: maybe(number(0, 1)) for k in ("exit_changed", "label_changed", "float32_accuracy")},
    }
)
RUN_FILE_SCHEMA = document(
    {
        "dataset": text(),
        "method": text(),
        "num_layers": whole(1),
        "rows": listing(ROW_SCHEMA, at_least=1),
        "provenance": document(
            {
                "seed": whole(0),
                "profile": text(),
                "config_hash": text(),
                "device": text(),
                "git_commit": maybe(text()),
                "options": maybe(OPTIONS),
                "train_samples": maybe(whole(1)),  # absent from older runs
            }
        ),
    }
)
"""What a run file must hold (:func:`record` writes it; geep.common.schema)."""


class DamagedRunFile(GeepError):
    """A run file that cannot be read, breaks :data:`RUN_FILE_SCHEMA`, or lies elsewhere than
    :func:`run_file` puts it."""


def read_run_file(path: Path) -> dict[str, Any]:
    """A run file, checked: DamagedRunFile naming the file and the first bad field."""
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DamagedRunFile(f"run file {path} is unreadable ({type(err).__name__})") from None
    if problem := first_problem(run, RUN_FILE_SCHEMA):
        raise DamagedRunFile(f"run file {path} is damaged: {problem}")
    for i, row in enumerate(run["rows"]):
        if not row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]:
            raise DamagedRunFile(
                f"run file {path} is damaged: rows[{i}].accuracy {row['accuracy']} lies outside "
                f"its interval [{row['accuracy_low']}, {row['accuracy_high']}]"
            )
    if any("batching" not in row for row in run["rows"]):  # these ran under the run's options
        batching = _batching_of_options(run, path)
        for row in run["rows"]:
            row.setdefault("batching", batching)
    keys = [(row["setting"], row["batching"]) for row in run["rows"]]
    if len(set(keys)) < len(keys):
        raise DamagedRunFile(
            f"run file {path} is damaged: a setting appears twice in its rows under one batching"
        )
    name = f"{run['method']}-seed{run['provenance']['seed']}.json"
    if (path.parent.name, path.name) != (run["dataset"], name):
        raise DamagedRunFile(
            f"run file {path} holds {run['method']} seed {run['provenance']['seed']} on "
            f"{run['dataset']}, which belongs in runs/{run['dataset']}/{name}: move it there "
            "or out of runs/"
        )
    return run


def _batching_of_options(run: dict[str, Any], path: Path) -> str | None:
    """The batching policy a run file's options give its method (geep.core.dynamic_exit)."""
    try:
        runner = get_method(run["method"])
        options = runner.options_class.from_dict(run["provenance"].get("options") or {})
    except GeepError as err:
        raise DamagedRunFile(f"run file {path} is damaged: provenance.options: {err}") from None
    return runner.batching_of(options)


def set_aside(path: Path, damage: str) -> str:
    """Move the damaged run file ``path`` to ``NAME.damaged`` (numbered if taken), so it is
    kept but no longer read, and return the line that says so."""
    aside = path.with_name(f"{path.name}.damaged")
    k = 1
    while aside.exists():
        k += 1
        aside = path.with_name(f"{path.name}.damaged-{k}")
    os.replace(path, aside)
    return f"geep: {damage}; moved it to {aside.name}, and its units run again"
