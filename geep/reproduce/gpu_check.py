"""The GPU check: one command that shows the suite's CUDA paths work and measures what the
latency model only assumes (docs/gpu.md).

``python -m geep.reproduce.gpu_check`` runs, on the first CUDA device, in each of the modes of
:data:`MODES` (float32 eager, bfloat16 eager, bfloat16 with CUDA graphs; geep.core.runtime):

1. ``gpu-tests``: the tests marked ``gpu`` (pytest, from the checkout's tests/);
2. ``exit-table``: GEEP's exit table built from about a million distinct keys by the CUDA
   kernels and by the CPU backend: the same keys and counts, the same million lookups;
3. ``trained``: every method trained on the GPU bundle (geep.reproduce.bundle: the embedded
   encoder and ``compare``'s rotten-tomatoes splits), then at its setting nearest 2x FLOPs on
   dev: its test accuracy, the samples whose exit or label bfloat16 changes, and its time;
4. ``methods``: every method on a randomly initialised BERT-base-shaped encoder (12 layers,
   hidden 768, length 128: time does not depend on the weights' values) at full depth and
   at exits giving about 2x FLOPs, at batch sizes 1 to 128, timed by
   :func:`geep.reproduce.units.measure` with NVML utilisation;
5. ``calibration``: full-depth ``bert`` timed at batch sizes 1 to 256 and three lengths, the
   latency model (:mod:`geep.measure.latency`) fitted on those points, then its error on every
   cell of (4) in the same mode (and the float32 datasheet model's).

The exits of (4) are the trained models' of (3), mapped from their 6 layers onto 12 at the same
mean depth (:func:`geep.reproduce.bundle.mapped_exit_layers`); without (3) they are hand-set
with their mean at mid-depth. Either way GEEP's table is built from synthetic training samples
whose tokens come from a band of the vocabulary that names their exit layer, and the test
samples' tokens name the exits wanted, so its predictions land there; a threshold method's
threshold is the quantile of its heads' exit statistics that puts its mean exit nearest the
target; PABEE waits for one layer less than it; HashEE runs its frequency hash at it.

It writes ``<out>/gpu-check.json`` (every check's result and how it was made) and
``<out>/tables.md``, and prints one line per check; the status is 0 when every check passed.
``--dry-run`` runs the same code on the CPU at a tiny size (the CUDA tests then skip, the
trained check trains on synthetic data unless given a bundle), so CI knows the check starts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from transformers.utils import logging as transformers_logging

from geep.common.config import TrainConfig
from geep.common.errors import GeepError
from geep.common.storage import atomic_write_text
from geep.common.style import LINESTYLES, MARKERS, colours, outside_legend
from geep.core.dynamic_exit import DynamicExitMethod, first_exit_layer
from geep.core.interface import Method
from geep.core.registry import get_method, method_names, reference_name
from geep.core.runtime import DEFAULT_RUNTIME, Runtime
from geep.data.encoding import Encoded
from geep.measure.latency import Device, fit_device, published_gpu
from geep.measure.latency import Measurement as Point
from geep.measure.work import calls_from_rows, calls_to_rows, operators_per_call
from geep.methods.exit_table import ExitTable
from geep.reproduce.bundle import Bundle, load_bundle

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, CLS, SEP = 0, 2, 3
LABELS = ["negative", "positive"]
CHECK_FILE = "gpu-check.json"
BUNDLE = "gpu-bundle"  # where the trained check looks for the GPU bundle (geep.reproduce.bundle)

# Float32 datasheet figures (the check runs in float32, TF32 off: torch's default):
# peak FLOP/s and memory bandwidth, matched by name.
FLOAT32_DATASHEETS = {
    "H200": (67e12, 4.8e12, "NVIDIA H200 Tensor Core GPU datasheet: 67 TFLOPS FP32, 4.8 TB/s"),
    "H100": (67e12, 3.35e12, "NVIDIA H100 Tensor Core GPU datasheet: 67 TFLOPS FP32, 3.35 TB/s"),
    "A100": (19.5e12, 2.039e12, "NVIDIA A100 datasheet: 19.5 TFLOPS FP32, 2,039 GB/s"),
}


@dataclass(frozen=True)
class CheckSize:
    """How big the check's model, data and table are."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    seq_len: int
    samples: int  # test samples, all of length seq_len (the paper's)
    train_samples: int  # GEEP's synthetic training samples (its exit table)
    batch_sizes: tuple[int, ...]
    cell_batches: int  # batches per timed round of a cell (at most ``samples`` samples)
    rounds: int
    budget_seconds: float  # the methods check skips the cells left after this long
    trained_batch: int  # the batch size the trained check times its methods at
    table_keys: int
    calibration_sizes: tuple[int, ...]
    calibration_lengths: tuple[int, ...]
    calibration_repeats: int


GPU_SIZE = CheckSize(
    layers=12,
    hidden=768,
    heads=12,
    intermediate=3072,
    vocab=30522,
    seq_len=128,
    samples=2048,
    train_samples=8192,
    batch_sizes=(1, 8, 32, 128),
    cell_batches=16,
    rounds=5,
    budget_seconds=210.0,
    trained_batch=32,
    table_keys=1_000_000,
    calibration_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    calibration_lengths=(32, 64, 128),
    calibration_repeats=5,
)
DRY_SIZE = CheckSize(
    layers=3,
    hidden=16,
    heads=2,
    intermediate=32,
    vocab=120,
    seq_len=12,
    samples=24,
    train_samples=48,
    batch_sizes=(1, 4),
    cell_batches=1,
    rounds=1,
    budget_seconds=600.0,
    trained_batch=4,
    table_keys=5_000,
    calibration_sizes=(1, 2, 4),
    calibration_lengths=(6, 12),
    calibration_repeats=1,
)


@dataclass
class CheckResult:
    """One check: passed or not, its summary line, and what it measured."""

    name: str
    passed: bool
    summary: str
    seconds: float = 0.0
    details: dict[str, Any] | None = None

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} {self.name}: {self.summary} ({self.seconds:.0f} s)"


# --- synthetic model and data -------------------------------------------------------------------


def make_model(folder: Path, size: CheckSize, seed: int = 0) -> Path:
    """Save a randomly initialised BERT of ``size`` and a word-level tokenizer to ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(seed)
    vocab = SPECIAL + [f"w{i}" for i in range(len(SPECIAL), size.vocab)]
    config = BertConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=size.intermediate,
        max_position_embeddings=max(512, size.seq_len),
    )
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    return folder


def synthetic_split(
    size: CheckSize,
    n: int,
    seed: int,
    length: int | None = None,
    targets: torch.Tensor | None = None,
) -> tuple[Encoded, torch.Tensor]:
    """``n`` samples [CLS] tokens [SEP] of lengths uniform in [8, seq_len] (or ``length``), and
    each one's target exit layer [n] (uniform over 1..L, or ``targets`` [n]): its tokens come
    from the target's band of the vocabulary, so GEEP's table maps them back to it."""
    rng = np.random.default_rng(seed)
    layers = size.layers
    drawn = rng.integers(1, layers + 1, n)  # drawn either way: the same tokens for a seed
    targets = drawn if targets is None else np.asarray(targets, dtype=np.int64)
    lengths = rng.integers(8, size.seq_len + 1, n) if length is None else np.full(n, length)
    band = (size.vocab - len(SPECIAL)) // layers
    ids = np.full((n, size.seq_len), PAD, dtype=np.int64)
    for i, (target, width) in enumerate(zip(targets, lengths, strict=True)):
        start = len(SPECIAL) + (target - 1) * band
        ids[i, 1 : width - 1] = rng.integers(start, start + band, width - 2)
        ids[i, 0], ids[i, width - 1] = CLS, SEP
    mask = torch.from_numpy(np.arange(size.seq_len)[None, :] < lengths[:, None]).long()
    labels = torch.from_numpy(rng.integers(0, len(LABELS), n))
    data = Encoded.from_padded(torch.from_numpy(ids), mask, torch.zeros_like(mask), labels)
    return data, torch.from_numpy(targets)


# --- the checks ---------------------------------------------------------------------------------


def run_gpu_tests(dry_run: bool) -> CheckResult:
    """The ``gpu``-marked tests of the checkout's tests/ (they skip without CUDA and CuPy)."""
    tests = Path.cwd() / "tests"
    marked = sorted(str(f) for f in tests.rglob("test_*.py") if "mark.gpu" in f.read_text())
    if not marked:
        return CheckResult("gpu-tests", False, f"no gpu tests in {tests}: run from the checkout")
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]
    command = [*pytest, "-m", "gpu", *marked]  # only their files: others import notebook tools
    done = subprocess.run(command, capture_output=True, text=True)
    tail = (done.stdout.strip().splitlines() or ["no output"])[-1]
    skipped = " skipped" in tail
    passed = done.returncode == 0 and (dry_run or not skipped)
    details = {
        "command": " ".join(command[1:]),
        "returncode": done.returncode,
        "output": done.stdout[-4000:] + done.stderr[-2000:],
    }
    return CheckResult("gpu-tests", passed, tail.strip("= "), details=details)


def check_exit_table(device: torch.device, size: CheckSize) -> CheckResult:
    """The table on ``device`` against the CPU backend: the same items and lookups."""
    generator = torch.Generator().manual_seed(0)
    # token ids and packed bigram keys (bit 62 set), with repeats: each key about twice
    distinct = torch.randint(0, 1 << 40, (size.table_keys,), generator=generator)
    distinct[::2] |= 1 << 62
    keys = distinct[torch.randint(0, size.table_keys, (2 * size.table_keys,), generator=generator)]
    keys = torch.cat([distinct, keys])
    layers = torch.randint(1, 13, (len(keys),), generator=generator)
    amounts = torch.randint(1, 4, (len(keys),), generator=generator, dtype=torch.int32)
    queries = torch.cat(
        [
            distinct[: size.table_keys // 2],
            torch.randint(0, 1 << 40, (size.table_keys // 2,), generator=generator),
        ]
    )
    timings = {}
    tables = {}
    for where in dict.fromkeys(["cpu", device.type]):
        start = time.perf_counter()
        table = ExitTable(12, device=torch.device(where) if where == "cpu" else device)
        table.add(keys.to(table.device), layers.to(table.device), amounts.to(table.device))
        found = table.lookup(queries.to(table.device)).cpu()
        _synchronize(table.device)
        timings[where] = time.perf_counter() - start
        tables[where] = (table.items(), found, table.backend)
    (cpu_keys, cpu_counts), cpu_found, _ = tables["cpu"]
    (keys_, counts), found, backend = tables[device.type]
    # an independent count: each distinct key's total over all layers
    unique, inverse = torch.unique(keys, return_inverse=True)
    totals = torch.zeros(len(unique), dtype=torch.int64).index_add_(0, inverse, amounts.long())
    same = (
        torch.equal(keys_, cpu_keys)
        and torch.equal(counts, cpu_counts)
        and torch.equal(found, cpu_found)
        and torch.equal(cpu_keys, unique)
        and torch.equal(cpu_counts.long().sum(dim=1), totals)
    )
    present = int((found.sum(dim=1) > 0).sum())
    summary = (
        f"{len(unique):,} keys from {len(keys):,} inserts, {backend} == cpu (items, "
        f"{len(queries):,} lookups, {present:,} found); "
        + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
    )
    details = {
        "keys": len(unique),
        "inserts": len(keys),
        "lookups": len(queries),
        "found": present,
        "backend": backend,
        "seconds": timings,
    }
    return CheckResult("exit-table", same, summary, details=details)


@dataclass(frozen=True)
class Setting:
    """One unit of the methods check."""

    method: str
    label: str  # "full" (speed 0) or "hand-set" (the speed :func:`hand_set` gives)
    batching: str | None = None
    options: tuple[str, ...] = ()


def hand_set(
    method: Method, size: CheckSize, data: Encoded, mean_exit: float | None = None
) -> float:
    """Put exits at hand-set places (module docstring) with their mean at ``mean_exit``
    (default mid-depth, (L + 1) / 2); the speed that gives them. A predicted-exit method exits
    where ``data``'s tokens name. The method is asked how its exits are decided and how its
    speed reads, never its name."""
    layers = method.num_layers
    middle = (layers + 1) / 2 if mean_exit is None else mean_exit
    if method.inference_of(method.options) == "predicted":  # statistics that place each exit
        train, targets = synthetic_split(size, size.train_samples, seed=1)
        method.keep_statistics(train, targets)
        return 0.5  # any threshold in (0, 1) exits at the targets (Method.keep_statistics)
    method.keep_statistics(data)  # e.g. HashEE's token counts; most methods keep none
    if method.speed_reads == "patience":  # exits about one layer after its patience runs out
        return float(max(1, round(middle) - 1))
    if method.speed_reads == "depth":
        return float(max(1, round(middle)))
    if isinstance(method, DynamicExitMethod):
        sample = data.select(torch.arange(min(len(data), 512)))
        stats = method.exit_statistics(sample)  # [N, L-1]
        candidates = torch.quantile(
            stats.flatten().double(), torch.linspace(0.02, 0.98, 49, dtype=torch.double)
        )
        return float(
            min(
                candidates.tolist(),
                key=lambda s: abs(float(first_exit_layer(stats, s).float().mean()) - middle),
            )
        )
    return 0.0


def settings_of(name: str) -> list[Setting]:
    """Full depth, then the hand-set setting as the method runs by default (unless that is
    dynamic exit) and under each batching policy of dynamic exit, with the options that
    switch it on (``Method.dynamic_settings``); the reference runs at full depth only."""
    cls = get_method(name)
    full = [Setting(name, "full")]
    if cls.reference:
        return full
    default = cls.inference_of(cls.options_class())
    plain = [] if default == "dynamic" else [Setting(name, "hand-set")]
    if cls.dynamic_settings is None:
        return full + plain
    switch = cls.dynamic_settings
    return full + plain + [Setting(name, "hand-set", b, switch) for b in ("shrink", "regroup")]


MODES = (DEFAULT_RUNTIME, Runtime("bfloat16"), Runtime("bfloat16", graphs=True))
"""Each unit's precision and graph mode, in this order: float32 eager (torch's default),
bfloat16 eager, bfloat16 with CUDA graphs (geep.core.runtime). A unit's weights are cast once,
from float32 to bfloat16, so every mode starts from the same model."""


def cell_key(row: dict[str, Any]) -> str:
    """A measured cell's name: its unit, mode and batch size."""
    unit = " ".join(filter(None, [row["method"], row["setting"], row["batching"]]))
    return f"{unit} | {row['runtime']} | batch {row['batch_size']}"


def check_methods(
    device: torch.device,
    size: CheckSize,
    model: Path,
    data: Encoded,
    exits: dict[str, torch.Tensor] | None = None,
) -> CheckResult:
    """Every unit (:func:`settings_of`) in every mode of :data:`MODES` at every batch size of
    ``size``: the rows :func:`geep.reproduce.units.measure` gives, each over the first
    ``cell_batches`` batches of ``data``. A method with ``exits`` (exit layers [N] mapped from
    its trained model, :func:`check_trained`) exits as they do: its setting is ``trained
    exits``, its samples' tokens name those layers and its mean exit is theirs; the others'
    exits are hand-set. A mode a unit cannot run in (CUDA graphs on a CPU, or a method whose
    calls cannot be captured) is recorded as skipped with the reason, and so is every cell
    left when the check has run ``size.budget_seconds``."""
    from geep.reproduce.units import measure

    config = TrainConfig(seq_len=size.seq_len, batch_size=max(size.batch_sizes))
    rows, failures, skipped = [], [], []
    start = time.perf_counter()
    exits = exits or {}
    for name in method_names():
        mapped = exits.get(name)
        mean_exit = None if mapped is None else float(mapped.double().mean())
        units_data = data
        if mapped is not None:  # the tokens name the mapped layers (GEEP predicts from them)
            units_data, _ = synthetic_split(size, len(mapped), 0, size.seq_len, mapped)
        for setting in settings_of(name):
            if mapped is not None and setting.label != "full":
                setting = replace(setting, label="trained exits")
            unit = " ".join(filter(None, [name, setting.label, setting.batching]))
            torch.manual_seed(0)  # the same heads for a method's every setting and policy
            method = get_method(name).create(
                str(model), LABELS, "gpu-check", config, settings=setting.options
            )
            method.to(device)
            for runtime in MODES:
                try:
                    method.use_runtime(runtime)
                except GeepError as err:
                    skipped.append(f"{unit} | {runtime.label}: {err}")
                    continue
                chosen = hand_set(method, size, units_data, mean_exit)  # in this precision
                speed = 0.0 if setting.label == "full" else chosen
                if setting.batching:
                    method.configure([f"batching={setting.batching}"])
                for batch in size.batch_sizes:
                    cell = f"{unit} | {runtime.label} | batch {batch}"
                    if time.perf_counter() - start > size.budget_seconds:
                        skipped.append(f"{cell}: past the check's {size.budget_seconds:.0f} s")
                        continue
                    cut = units_data.select(
                        torch.arange(min(len(units_data), size.cell_batches * batch))
                    )
                    try:
                        row = measure(method, cut, speed, batch, size.rounds)
                    except Exception as err:
                        failures.append(f"{cell}: {type(err).__name__}: {err}")
                        continue
                    row.update(method=name, setting=setting.label, options=list(setting.options))
                    row.update(precision=runtime.precision, graphs=runtime.graphs)
                    rows.append(row)
            del method
            if device.type == "cuda":
                torch.cuda.empty_cache()
    util = [r["gpu_util_percent"] for r in rows if r.get("gpu_util_percent") is not None]
    summary = f"{len(rows)} cells ran, {len(skipped)} skipped"
    if util:
        summary += f", NVML utilisation {min(util):.0f}-{max(util):.0f}%"
    if failures:
        summary += "; " + failures[0]
    passed = not failures and bool(rows)
    details = {"rows": rows, "failures": failures, "skipped": skipped}
    return CheckResult("methods", passed, summary, details=details)


def synthetic_bundle(folder: Path, size: CheckSize) -> Bundle:
    """A bundle of the synthetic model in ``folder`` and synthetic splits, for a dry run (the
    real one, :mod:`geep.reproduce.bundle`, trains the embedded encoder: minutes per method on
    a CPU)."""
    config = TrainConfig(epochs=1, batch_size=8, seq_len=size.seq_len).to_dict()
    manifest = {
        "dataset": "synthetic samples",
        "profile": "a dry run",
        "model": "the check's random BERT",
        "task": "single",
        "labels": LABELS,
        "train": {name: config for name in method_names()},
    }
    train, dev, test = (synthetic_split(size, size.samples, seed)[0] for seed in (2, 3, 4))
    return Bundle(folder, manifest, folder, train, dev, test)


def nearest_setting(
    method: Method, dev: Encoded, batch_size: int, target: float = 2.0
) -> tuple[float, float]:
    """The speed of ``method``'s grid whose FLOPs speedup (``full`` convention) on ``dev`` is
    nearest ``target``, and that speedup; full depth for the reference."""
    from geep.pipeline.evaluate import sweep

    if method.reference:
        return 0.0, 1.0
    results, _, _ = sweep(method, dev, method.default_speeds(), batch_size, progress=False)
    best = min(results, key=lambda r: abs(r.speedup_full - target))
    return best.speed, best.speedup_full


def check_trained(device: torch.device, size: CheckSize, bundle: Bundle) -> CheckResult:
    """Every method trained on ``bundle`` on ``device`` (:func:`geep.reproduce.bundle.train_all`,
    at the bundle's recipe), then, at its setting nearest 2x FLOPs on the dev split, in every
    mode of :data:`MODES`: accuracy on the test split, the share of test samples that exit at
    another layer or get another label than in float32 eager, and the time at batch size
    ``size.trained_batch`` (:func:`geep.reproduce.units.measure`). The details keep each
    method's exit distribution over its layers in float32 (``shares``), which
    :func:`check_methods` maps onto the deeper model."""
    from geep.pipeline.evaluate import precision_changes
    from geep.reproduce.bundle import layer_shares, train_all
    from geep.reproduce.units import measure

    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the training bars: one line per check
        trained = train_all(bundle, device, method_names())
    train_seconds = time.perf_counter() - start
    batch, labels = size.trained_batch, bundle.test.labels.numpy()
    rows, failures, skipped, shares = [], [], [], {}
    for name in list(trained):
        method = trained.pop(name)  # freed (with its graphs) before the next one runs
        speed, dev_speedup = nearest_setting(method, bundle.dev, batch)
        float32 = method.run(bundle.test, speed, batch)
        shares[name] = layer_shares(float32.exit_layers, method.num_layers).tolist()
        for runtime in MODES:
            cell = f"{name} | {runtime.label} | batch {batch}"
            try:
                method.use_runtime(runtime)
            except GeepError as err:
                skipped.append(f"{cell}: {err}")
                continue
            try:
                row = measure(method, bundle.test, speed, batch, size.rounds)
                low = method.run(bundle.test, speed, batch)
            except Exception as err:
                failures.append(f"{cell}: {type(err).__name__}: {err}")
                continue
            row.update(precision_changes(float32, low, labels))
            row.update(method=name, dev_speedup_full=dev_speedup)
            row.update(precision=runtime.precision, graphs=runtime.graphs)
            rows.append(row)
        del method
        if device.type == "cuda":
            torch.cuda.empty_cache()
    reference = {r["runtime"]: r["accuracy"] for r in rows if r["method"] == reference_name()}
    summary = (
        f"{len(shares)} methods trained in {train_seconds:.0f} s; {len(rows)} cells ran, "
        f"{len(skipped)} skipped; {reference_name()} accuracy "
        + ", ".join(f"{a:.3f} ({m})" for m, a in reference.items())
    )
    if failures:
        summary += "; " + failures[0]
    details = {
        "bundle": {
            k: bundle.manifest.get(k) for k in ("dataset", "profile", "model", "git_commit")
        },
        "train_seconds": train_seconds,
        "rows": rows,
        "failures": failures,
        "skipped": skipped,
        "shares": shares,
    }
    return CheckResult("trained", not failures and bool(rows), summary, details=details)


def mapped_exits(trained: CheckResult | None, size: CheckSize) -> dict[str, torch.Tensor]:
    """Each trained method's exits (the trained check's ``shares``) mapped onto ``size.layers``
    layers for ``size.samples`` samples (:func:`geep.reproduce.bundle.mapped_exit_layers`);
    none for the reference or without a trained check."""
    from geep.reproduce.bundle import mapped_exit_layers

    shares = ((trained.details or {}) if trained else {}).get("shares", {})
    return {
        name: mapped_exit_layers(torch.tensor(s), size.layers, size.samples)
        for name, s in shares.items()
        if name != reference_name()
    }


def check_calibration(
    device: torch.device, size: CheckSize, model: Path, cells: list[dict[str, Any]]
) -> CheckResult:
    """Per mode of the measured ``cells``: the latency model (geep.measure.latency) fitted on
    full-depth ``bert`` at every calibration size and length in that mode, then its error on
    every cell of that mode (and, for float32 eager on a GPU, the datasheet model's)."""
    config = TrainConfig(seq_len=size.seq_len, batch_size=max(size.batch_sizes))
    modes = [m for m in MODES if any(r["runtime"] == m.label for r in cells)]
    models: dict[str, Device] = {}
    errors: dict[str, dict[str, float]] = {}
    points_of: dict[str, list[dict[str, Any]]] = {}
    for runtime in modes:
        bert = get_method(reference_name()).create(str(model), LABELS, "gpu-check", config)
        bert.to(device).use_runtime(runtime)
        points, table = [], []
        for length in size.calibration_lengths:
            for batch in size.calibration_sizes:
                data, _ = synthetic_split(size, 2 * batch, seed=batch + length, length=length)
                calls = bert.run(data, 0.0, batch).calls  # also the first-call allocations
                operators = operators_per_call(lambda m=bert, d=data, b=batch: m.run(d, 0.0, b))
                seconds = statistics.median(
                    sum(bert.run(data, 0.0, batch).batch_seconds)
                    for _ in range(size.calibration_repeats)
                )
                points.append(Point(calls, operators, seconds))
                table.append(
                    {"batch_size": batch, "length": length, "seconds": seconds}
                    | {"calls": calls_to_rows(calls), "operators": operators}
                )
        label = f"{_device_label(device)} ({runtime.label})"
        fitted = {runtime.label: fit_device(points, label, overlap=device.type == "cuda")}
        datasheet = _datasheet(device) if runtime == DEFAULT_RUNTIME else None
        if datasheet is not None:
            fitted["float32 datasheet"] = datasheet
        for name, model_ in fitted.items():
            models[name] = model_
            errors[name] = {
                cell_key(r): model_.seconds(calls_from_rows(r["calls"]), r["operators"])
                / r["round_seconds_median"]
                - 1
                for r in cells
                if r["runtime"] == runtime.label and r["method"] != reference_name()
            }
        points_of[runtime.label] = table
    median = {
        m: statistics.median(abs(e) for e in errs.values()) if errs else float("nan")
        for m, errs in errors.items()
    }
    summary = "; ".join(f"{m}: model error median {median[m]:.0%}" for m in models)
    details = {
        "points": points_of,
        "models": {m: asdict(d) for m, d in models.items()},
        "relative_error": errors,
        "median_error": median,
    }
    passed = bool(models) and all(np.isfinite(v) for v in median.values())
    return CheckResult("calibration", passed, summary or "no cells to fit", details=details)


CHECKS = ("gpu-tests", "exit-table", "trained", "methods", "calibration")


def _datasheet(device: torch.device) -> Device | None:
    """This GPU's float32 datasheet model (geep.measure.latency's sustained shares and launch
    cost)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (flops, bandwidth, source) in FLOAT32_DATASHEETS.items():
        if key in name:
            return published_gpu(f"{name}, float32", flops, bandwidth, source, bytes_scale=1.0)
    return None


# --- running it ---------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_label(device: torch.device) -> str:
    from geep.reproduce.units import device_name

    return device_name(device)


def slug(name: str) -> str:
    """A folder name from a device name: ``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "device"


def timed(name: str, run: Callable[[], CheckResult]) -> CheckResult:
    """``run()``, timed; a check that raises fails with its error as summary (the others go on)."""
    start = time.perf_counter()
    try:
        result = run()
    except Exception as err:
        result = CheckResult(name, False, f"{type(err).__name__}: {err}")
    result.seconds = time.perf_counter() - start
    return result


def run_checks(
    dry_run: bool,
    out: Path | None,
    commit: str | None,
    only: tuple[str, ...] = CHECKS,
    batch_size: int | None = None,
    bundle: Path | None = None,
) -> tuple[list[CheckResult], Path]:
    """Every check of ``only``, in order; writes ``gpu-check.json`` under ``out`` (default
    ``results/gpu-<device>``) and returns the results and that file. The trained check reads
    the GPU bundle at ``bundle`` (default :data:`BUNDLE`; in a dry run without one, a synthetic
    bundle of the tiny model)."""
    if not dry_run and not torch.cuda.is_available():
        raise GeepError(
            "the GPU check needs a CUDA device (torch sees none); --dry-run runs it on the CPU"
        )
    device = torch.device("cpu") if dry_run else torch.device("cuda", torch.cuda.current_device())
    size = DRY_SIZE if dry_run else GPU_SIZE
    if batch_size is not None:
        size = replace(size, batch_sizes=(batch_size,))
    label = _device_label(device)
    out = out or Path("results") / f"gpu-{slug(label.split(',')[0])}"
    out.mkdir(parents=True, exist_ok=True)
    results: list[CheckResult] = []
    transformers_logging.disable_progress_bar()  # one line per check, no loading bars

    def report(result: CheckResult) -> None:
        results.append(result)
        print(result.line(), flush=True)

    if "gpu-tests" in only:
        report(timed("gpu-tests", lambda: run_gpu_tests(dry_run)))
    if "exit-table" in only:
        report(timed("exit-table", lambda: check_exit_table(device, size)))
    with tempfile.TemporaryDirectory() as folder:
        model = make_model(Path(folder), size)
        data, _ = synthetic_split(size, size.samples, seed=0, length=size.seq_len)
        trained = None
        if "trained" in only:

            def train() -> CheckResult:
                if bundle is None and dry_run:
                    return check_trained(device, size, synthetic_bundle(model, size))
                return check_trained(device, size, load_bundle(bundle or Path(BUNDLE)))

            trained = timed("trained", train)
            report(trained)
        exits = mapped_exits(trained, size)
        units: list[dict[str, Any]] = []
        if "methods" in only:
            methods = timed("methods", lambda: check_methods(device, size, model, data, exits))
            report(methods)
            units = (methods.details or {}).get("rows", [])
        if "calibration" in only:
            report(timed("calibration", lambda: check_calibration(device, size, model, units)))
    path = out / CHECK_FILE
    document = {
        "device": label,
        "dry_run": dry_run,
        "size": asdict(size),
        "git_commit": commit,
        "versions": _versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "passed": all(r.passed for r in results),
        "checks": [asdict(r) for r in results],
    }
    atomic_write_text(path, json.dumps(document, indent=1, default=float) + "\n")
    atomic_write_text(out / "tables.md", check_tables(document))
    return results, path


def _versions() -> dict[str, str | None]:
    from geep.pipeline.evaluate import library_versions

    versions = dict(library_versions())
    versions["cuda"] = torch.version.cuda
    try:
        import cupy

        versions["cupy"] = cupy.__version__
    except ImportError:
        versions["cupy"] = None
    return versions


def _check_names(text: str) -> tuple[str, ...]:
    names = tuple(text.split(","))
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"no check {unknown[0]!r}: choose from {','.join(CHECKS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geep.reproduce.gpu_check",
        description="Check the suite's CUDA paths on this GPU: every method trained on the GPU "
        "bundle, then timed in float32, bfloat16 and bfloat16 with CUDA graphs at batch sizes "
        "1-128 beside the latency model's prediction (docs/gpu.md).",
        epilog=(
            "examples:\n"
            "  python -m geep.reproduce.bundle --out gpu-bundle   # where the suite's data is\n"
            "  python -m geep.reproduce.gpu_check                 # on the GPU, in the checkout\n"
            "  python -m geep.reproduce.gpu_check --only methods,calibration --batch-size 32\n"
            "  python -m geep.reproduce.gpu_check --dry-run --out /tmp/gpu-dry"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU at a tiny size")
    parser.add_argument(
        "--out", type=Path, help="folder for gpu-check.json (default results/gpu-<device>)"
    )
    parser.add_argument(
        "--only", type=_check_names, default=CHECKS, help=f"some of: {','.join(CHECKS)}"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="time the methods at this batch size only (default 1, 8, 32 and 128; 1 and 4 in a "
        "dry run)",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        help=f"the GPU bundle the trained check trains on (default {BUNDLE}; a dry run without "
        "one trains on synthetic data)",
    )
    parser.add_argument("--commit", help="the commit checked (default: git's, where there is one)")
    args = parser.parse_args(argv)
    if args.commit is None:
        from geep.reproduce.units import git_commit

        args.commit = git_commit()
    try:
        if args.batch_size is not None and args.batch_size < 1:
            raise GeepError(f"--batch-size must be at least 1, got {args.batch_size}")
        results, path = run_checks(
            args.dry_run, args.out, args.commit, args.only, args.batch_size, args.bundle
        )
    except GeepError as err:
        print(f"geep: {err}", file=sys.stderr)
        return 2
    print(f"{'PASS' if all(r.passed for r in results) else 'FAIL'}: wrote {path}")
    return 0 if all(r.passed for r in results) else 1


# --- the report ---------------------------------------------------------------------------------


def _header(document: dict[str, Any]) -> list[str]:
    """The tables' title and how the check was made."""
    return [
        f"# Results: profile gpu-check on {document['device']}",
        "",
        f"`python -m geep.reproduce.gpu_check{' --dry-run' if document['dry_run'] else ''}` "
        "at commit "
        f"{document['git_commit']}, {document['date']}; "
        + ", ".join(f"{k} {v}" for k, v in document["versions"].items())
        + ".",
        "",
    ]


def cell_frame(document: dict[str, Any]) -> pd.DataFrame:
    """The methods check's cells (one row each), with ``ms`` per batch (median round over its
    batches), the rounds' ``spread`` ((max - min) / median), the ``speedup`` over full-depth
    ``bert`` in the same mode and batch size, and the per-mode latency model's ``modelled_ms``
    and ``model_error`` (measured cells of ``bert`` itself have none)."""
    checks = {c["name"]: c for c in document["checks"]}
    rows = (checks.get("methods", {}).get("details") or {}).get("rows", [])
    errors = (checks.get("calibration", {}).get("details") or {}).get("relative_error", {})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["cell"] = [cell_key(r) for r in rows]
    batches = np.ceil(frame["n"] / frame["batch_size"])
    frame["ms"] = frame["round_seconds_median"] / batches * 1e3
    frame["spread"] = frame["round_spread"]
    full = frame[frame["method"] == reference_name()].set_index(["runtime", "batch_size"])["ms"]
    keys = list(zip(frame["runtime"], frame["batch_size"], strict=True))
    frame["speedup"] = [full.get(k, np.nan) / ms for k, ms in zip(keys, frame["ms"], strict=True)]
    fitted = {m: e for m, e in errors.items() if "datasheet" not in m}
    error = {cell: e for errs in fitted.values() for cell, e in errs.items()}
    frame["model_error"] = frame["cell"].map(error)
    frame["modelled_ms"] = frame["ms"] * (1 + frame["model_error"])
    return frame


def trained_lines(document: dict[str, Any]) -> list[str]:
    """The trained check (:func:`check_trained`) as a table: per method and mode, the accuracy
    with its interval, what bfloat16 changed against float32, FLOPs and time against ``bert``
    in the same mode; nothing for a check without it."""
    checks = {c["name"]: c for c in document["checks"]}
    details = checks.get("trained", {}).get("details") or {}
    rows = details.get("rows", [])
    if not rows:
        return []
    made = details["bundle"]
    ms = [r["round_seconds_median"] / np.ceil(r["n"] / r["batch_size"]) * 1e3 for r in rows]
    full = {
        r["runtime"]: t for r, t in zip(rows, ms, strict=True) if r["method"] == reference_name()
    }
    lines = [
        f"Trained models: every method trained on the GPU bundle ({made['model']} on "
        f"{made['dataset']} at {made['profile']}'s recipe) in {details['train_seconds']:.0f} s, "
        f"each at its setting nearest 2x FLOPs on dev, on the {rows[0]['n']} test samples in "
        f"batches of {rows[0]['batch_size']}; changed: the share of test samples that exit at "
        "another layer or get another label than in float32 eager.",
        "",
        "| method | mode | accuracy | exit changed | label changed | mean exit | FLOPs speedup | "
        "ms per batch | speedup over `bert` |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r, t in zip(rows, ms, strict=True):
        lines.append(
            f"| `{r['method']}` | {r['runtime']} | {r['accuracy']:.3f} "
            f"[{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}] | {r['exit_changed']:.1%} | "
            f"{r['label_changed']:.1%} | {r['avg_exit_layer']:.2f} | {r['speedup_full']:.2f}x | "
            f"{t:.2f} | " + (f"{full[r['runtime']] / t:.2f}x |" if r["runtime"] in full else "- |")
        )
    skipped = details.get("skipped", [])
    lines += ["", *(f"- not measured: {s}" for s in skipped), ""] if skipped else [""]
    return lines


def matrix_tables(document: dict[str, Any]) -> str:
    """A check of every mode and batch size (:func:`check_methods`): per batch size, every
    cell's time beside what the latency model fitted on ``bert`` in its mode predicts."""
    size = document["size"]
    checks = {c["name"]: c for c in document["checks"]}
    lines = [
        *_header(document),
        f"A randomly initialised BERT ({size['layers']} layers, hidden {size['hidden']}); "
        f"{size['samples']} synthetic samples of length {size['seq_len']}; every method at "
        "full depth and at exits that give about 2x FLOPs: its trained model's exits mapped "
        "onto these layers where the trained check ran (setting `trained exits`), else hand-set "
        "(mean exit nearest mid-depth; docs/gpu.md), in each mode; each time is the median of "
        f"{size['rounds']} rounds of "
        f"at most {size['cell_batches']} batches, one cell after the other. The modelled time "
        "is the latency model fitted on full-depth `bert` in the same mode "
        "(geep/measure/latency.py).",
        "",
        *(
            f"- {'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['summary']}"
            for c in document["checks"]
        ),
        "",
    ]
    lines += trained_lines(document)
    frame = cell_frame(document)
    for batch, cells in frame.groupby("batch_size", sort=True) if len(frame) else []:
        lines += [
            f"Batch size {batch}:",
            "",
            "| method | setting | batching | mode | mean exit | FLOPs speedup | ms per batch | "
            "spread | speedup over `bert` | GPU utilisation | modelled ms | model error |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in cells.itertuples():
            util = r.gpu_util_percent
            batching = r.batching if isinstance(r.batching, str) else "-"
            lines.append(
                f"| `{r.method}` | {r.setting} | {batching} | {r.runtime} | "
                f"{r.avg_exit_layer:.2f} | {r.speedup_full:.2f}x | {r.ms:.2f} | {r.spread:.0%} | "
                f"{r.speedup:.2f}x | {'-' if pd.isna(util) else f'{util:.0f}%'} | "
                + ("- | - |" if pd.isna(r.model_error) else f"{r.modelled_ms:.2f} | ")
                + ("" if pd.isna(r.model_error) else f"{r.model_error:+.0%} |")
            )
        lines.append("")
    skipped = (checks.get("methods", {}).get("details") or {}).get("skipped", [])
    if skipped:
        lines += ["Not measured:", "", *(f"- {s}" for s in skipped), ""]
    lines += _model_lines(checks, with_error=True)
    return "\n".join(lines) + "\n"


def plot_cells(document: dict[str, Any]) -> Figure:
    """Speedup over full-depth ``bert`` against batch size, a panel per mode, a line per unit
    at its early exits (trained or hand-set)."""
    frame = cell_frame(document)
    frame = frame[frame["setting"] != "full"]
    modes = [m.label for m in MODES if m.label in set(frame["runtime"])]
    fig = Figure(figsize=(4.2 * max(len(modes), 1) + 1.8, 3.6), layout="constrained")
    axes = fig.subplots(1, max(len(modes), 1), squeeze=False, sharey=True)[0]
    palette = colours(method_names())
    for ax, mode in zip(axes, modes, strict=False):
        cells = frame[frame["runtime"] == mode]
        for (method, batching), line in cells.groupby(
            ["method", "batching"], dropna=False, sort=False
        ):
            batching = batching if isinstance(batching, str) else None
            ax.plot(
                line["batch_size"],
                line["speedup"],
                color=palette[method],
                linestyle=LINESTYLES[batching],
                marker=MARKERS[batching],
                label=" ".join(filter(None, [method, batching])) if ax is axes[0] else None,
            )
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(mode)
        ax.set_xlabel("batch size")
    axes[0].set_ylabel("speedup over full-depth bert (measured)")
    outside_legend(fig)
    fig.suptitle(f"{document['device']}: exits at about 2x FLOPs")
    return fig


def check_tables(document: dict[str, Any]) -> str:
    """The check's file as tables: :func:`matrix_tables` for a check of several modes, else
    (the float32 check at one batch size) each check's line, then every unit of the methods
    check with its measured time, its ratio to full-depth ``bert`` and the latency models'
    errors."""
    if "batch_sizes" in document["size"]:
        return matrix_tables(document)
    size = document["size"]
    lines = [
        *_header(document),
        f"A randomly initialised BERT ({size['layers']} layers, hidden {size['hidden']}), "
        f"{size['samples']} synthetic samples of lengths 8-{size['seq_len']} in batches of "
        f"{size['batch_size']}, float32; each time is the median of {size['rounds']} rounds "
        "over the whole split, one unit after the other. Exits are hand-set (docs/gpu.md).",
        "",
        *(
            f"- {'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['summary']}"
            for c in document["checks"]
        ),
        "",
    ]
    checks = {c["name"]: c for c in document["checks"]}
    rows = (checks.get("methods", {}).get("details") or {}).get("rows", [])
    errors = (checks.get("calibration", {}).get("details") or {}).get("relative_error", {})
    full = next((r for r in rows if r["method"] == reference_name()), None)
    if rows and full:
        models = list(errors)
        lines += [
            "| method | setting | batching | mean exit | FLOPs speedup | layer batches | rows per "
            "layer batch | head calls | seconds | speedup over `bert` | GPU utilisation | "
            + " | ".join(f"{m} model error" for m in models)
            + " |",
            "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(models),
        ]
        for r in rows:
            key = " ".join(filter(None, [r["method"], r["setting"], r["batching"]]))
            util = r.get("gpu_util_percent")
            cells = [
                f"`{r['method']}`",
                r["setting"],
                r["batching"] or "-",
                f"{r['avg_exit_layer']:.2f}",
                f"{r['speedup_full']:.2f}x",
                str(r["layer_batches"]),
                f"{r['mean_layer_batch_rows']:.1f}",
                str(r["head_calls"]),
                f"{r['round_seconds_median']:.3f}",
                f"{full['round_seconds_median'] / r['round_seconds_median']:.2f}x",
                "-" if util is None else f"{util:.0f}%",
                *(f"{errors[m][key]:+.0%}" if key in errors[m] else "-" for m in models),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    graphs = (checks.get("graphs", {}).get("details") or {}).get("points", [])
    if graphs:
        ways = list(graphs[0]["seconds"])
        lines += [
            "Full-depth `bert`, ms per batch (median of repeated calls):",
            "",
            "| batch size | length | " + " | ".join(ways) + " |",
            "|---|---|" + "---|" * len(ways),
            *(
                f"| {p['batch_size']} | {p['length']} | "
                + " | ".join(f"{p['seconds'][w] * 1e3:.2f}" for w in ways)
                + " |"
                for p in graphs
            ),
            "",
        ]
    lines += _model_lines(checks, with_error=False)
    return "\n".join(lines) + "\n"


def _model_lines(checks: dict[str, Any], with_error: bool) -> list[str]:
    """A line per latency model of the calibration check: its fitted figures, its median error
    on the measured cells when ``with_error``, and its source."""
    calibration = checks.get("calibration", {}).get("details") or {}
    lines = []
    for name, model in calibration.get("models", {}).items():
        error = f", median error {calibration['median_error'][name]:.0%}" if with_error else ""
        lines.append(
            f"- {name} model: {model['operator_seconds'] * 1e6:.1f} us per operator, "
            f"{model['flops_per_second'] / 1e12:.1f} TFLOP/s, "
            f"{model['bytes_per_second'] / 1e12:.2f} TB/s{error} ({model['source']})"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
