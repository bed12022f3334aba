"""The GPU check: one command that shows the suite's CUDA paths work and measures what the
latency model only assumes (docs/gpu.md).

``python -m geep.reproduce.gpu_check`` runs, on the first CUDA device:

1. ``gpu-tests``: the tests marked ``gpu`` (pytest, from the checkout's tests/);
2. ``exit-table``: GEEP's exit table built from about a million distinct keys by the CUDA
   kernels and by the CPU backend: the same keys and counts, the same million lookups;
3. ``methods``: every method on a randomly initialised BERT-base-shaped encoder (12 layers,
   hidden 768, length up to 128: time does not depend on the weights' values), each at full depth
   and at a hand-set exit setting, timed by :func:`geep.reproduce.units.measure` with NVML
utilisation;
4. ``calibration``: full-depth ``bert`` timed at batch sizes 1 to 256 and three lengths, the
   latency model (:mod:`geep.measure.latency`) fitted on those points, then its error on every unit
   of (3), beside the error of the model built from the GPU's datasheet;
5. ``graphs``: full-depth ``bert`` eager, as one CUDA graph per call and as one graph for the
   whole forward, at batch sizes 1 to 256, with the model fitted on each.

Hand-set exits: GEEP's table is built from synthetic training samples whose tokens come from a
band of the vocabulary that names their exit layer (uniform over 1..L), so its predictions
spread over every layer; a threshold method's threshold is the quantile of its heads' exit
statistics that puts its mean exit nearest mid-depth; PABEE waits for L/2 - 1 agreeing layers;
HashEE runs its frequency hash at L/2.

It writes ``<out>/gpu-check.json`` (every check's result and how it was made) and
``<out>/tables.md``, and prints one line per check; the status is 0 when every check passed.
``--dry-run`` runs the same code on the CPU at a tiny size (the CUDA tests then skip), so CI
knows the check starts.
"""

from __future__ import annotations

import argparse
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
import torch
from transformers.utils import logging as transformers_logging

from geep.common.config import TrainConfig
from geep.common.errors import GeepError
from geep.common.storage import atomic_write_text
from geep.core.dynamic_exit import DynamicExitMethod, first_exit_layer
from geep.core.interface import Method
from geep.core.registry import get_method, method_names, reference_name
from geep.data.encoding import Encoded
from geep.measure.latency import Device, fit_device, published_gpu
from geep.measure.latency import Measurement as Point
from geep.measure.work import calls_from_rows, calls_to_rows, counting, operators_per_call
from geep.methods.exit_table import ExitTable

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, CLS, SEP = 0, 2, 3
LABELS = ["negative", "positive"]
CHECK_FILE = "gpu-check.json"

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
    samples: int  # test samples per unit
    train_samples: int  # GEEP's synthetic training samples (its exit table)
    batch_size: int
    rounds: int
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
    batch_size=32,
    rounds=3,
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
    batch_size=4,
    rounds=1,
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
    size: CheckSize, n: int, seed: int, length: int | None = None
) -> tuple[Encoded, torch.Tensor]:
    """``n`` samples [CLS] tokens [SEP] of lengths uniform in [8, seq_len] (or ``length``), and
    each one's target exit layer [n] (uniform over 1..L): its tokens come from the target's band
    of the vocabulary, so GEEP's table maps them back to it."""
    rng = np.random.default_rng(seed)
    layers = size.layers
    targets = rng.integers(1, layers + 1, n)
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


def hand_set(method: Method, size: CheckSize, data: Encoded) -> float:
    """Put exits at hand-set places (module docstring); the speed that gives them. The method
    is asked how its exits are decided and how its speed reads, never its name."""
    layers = method.num_layers
    if method.inference_of(method.options) == "predicted":  # statistics that place each exit
        train, targets = synthetic_split(size, size.train_samples, seed=1)
        method.keep_statistics(train, targets)
        return 0.5  # any threshold in (0, 1) exits at the targets (Method.keep_statistics)
    method.keep_statistics(data)  # e.g. HashEE's token counts; most methods keep none
    if method.speed_reads == "patience":
        return float(max(1, layers // 2 - 1))
    if method.speed_reads == "depth":
        return float(layers // 2)
    if isinstance(method, DynamicExitMethod):
        sample = data.select(torch.arange(min(len(data), 512)))
        stats = method.exit_statistics(sample)  # [N, L-1]
        candidates = torch.quantile(
            stats.flatten().double(), torch.linspace(0.02, 0.98, 49, dtype=torch.double)
        )
        middle = (layers + 1) / 2
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


def check_methods(device: torch.device, size: CheckSize, model: Path, data: Encoded) -> CheckResult:
    """Every method's units on ``device``: the rows :func:`geep.reproduce.units.measure` gives."""
    from geep.reproduce.units import measure

    config = TrainConfig(seq_len=size.seq_len, batch_size=size.batch_size)
    rows, failures = [], []
    for name in method_names():
        for setting in settings_of(name):
            label = " ".join(filter(None, [name, setting.label, setting.batching]))
            try:
                torch.manual_seed(0)  # the same heads for a method's every setting and policy
                method = get_method(name).create(
                    str(model), LABELS, "gpu-check", config, settings=setting.options
                )
                method.to(device)
                chosen = hand_set(method, size, data)  # GEEP's and HashEE's tables: any speed
                speed = chosen if setting.label == "hand-set" else 0.0
                if setting.batching:
                    method.configure([f"batching={setting.batching}"])
                row = measure(method, data, speed, size.batch_size, size.rounds)
            except Exception as err:
                failures.append(f"{label}: {type(err).__name__}: {err}")
                continue
            row.update(method=name, setting=setting.label, options=list(setting.options))
            rows.append(row)
            del method
    expected = sum(len(settings_of(n)) for n in method_names())
    util = [r["gpu_util_percent"] for r in rows if r.get("gpu_util_percent") is not None]
    summary = f"{len(rows)}/{expected} units ran"
    if util:
        summary += f", NVML utilisation {min(util):.0f}-{max(util):.0f}%"
    if failures:
        summary += "; " + failures[0]
    passed = not failures and all(r["n"] == len(data) for r in rows)
    return CheckResult("methods", passed, summary, details={"rows": rows, "failures": failures})


def check_calibration(
    device: torch.device, size: CheckSize, model: Path, units: list[dict[str, Any]]
) -> CheckResult:
    """Fit the latency model on full-depth ``bert`` at every size and length, then predict every
    unit's measured time with it and with the datasheet model of this GPU."""
    config = TrainConfig(seq_len=size.seq_len, batch_size=size.batch_size)
    bert = get_method(reference_name()).create(str(model), LABELS, "gpu-check", config).to(device)
    points, table = [], []
    for length in size.calibration_lengths:
        for batch in size.calibration_sizes:
            data, _ = synthetic_split(size, 2 * batch, seed=batch + length, length=length)
            calls = bert.run(data, 0.0, batch).calls  # also the first-call allocations
            operators = operators_per_call(lambda d=data, b=batch: bert.run(d, 0.0, b))
            seconds = statistics.median(
                sum(bert.run(data, 0.0, batch).batch_seconds)
                for _ in range(size.calibration_repeats)
            )
            points.append(Point(calls, operators, seconds))
            table.append(
                {
                    "batch_size": batch,
                    "length": length,
                    "samples": len(data),
                    "seconds": seconds,
                    "calls": calls_to_rows(calls),
                    "operators": operators,
                }
            )
    fitted = fit_device(points, _device_label(device), overlap=device.type == "cuda")
    models = {"fitted": fitted}
    datasheet = _datasheet(device)
    if datasheet is not None:
        models["datasheet"] = datasheet
    errors: dict[str, dict[str, float]] = {m: {} for m in models}
    for row in units:
        key = " ".join(filter(None, [row["method"], row["setting"], row.get("batching")]))
        calls = calls_from_rows(row["calls"])
        for m, dev in models.items():
            errors[m][key] = dev.seconds(calls, row["operators"]) / row["round_seconds_median"] - 1
    worst = {
        m: max((abs(e) for e in errs.values()), default=float("nan")) for m, errs in errors.items()
    }
    median = {
        m: statistics.median(abs(e) for e in errs.values()) if errs else float("nan")
        for m, errs in errors.items()
    }
    summary = (
        f"{len(points)} bert points; fitted: {fitted.operator_seconds * 1e6:.1f} us/operator, "
        f"{fitted.flops_per_second / 1e12:.1f} TFLOP/s, {fitted.bytes_per_second / 1e12:.2f} TB/s; "
        + "; ".join(f"{m} model error median {median[m]:.0%}, worst {worst[m]:.0%}" for m in models)
    )
    details = {
        "points": table,
        "models": {m: asdict(dev) for m, dev in models.items()},
        "relative_error": errors,
    }
    passed = len(points) >= 3 and all(np.isfinite(v) for v in worst.values() if units)
    return CheckResult("calibration", passed, summary, details=details)


CHECKS = ("gpu-tests", "exit-table", "methods", "calibration", "graphs")
GRAPH_SIZES = (1, 4, 16, 64, 256)
GRAPH_LENGTHS = (32, 128)
GRAPH_REPEATS = 20


def check_graphs(device: torch.device, size: CheckSize, model: Path) -> CheckResult:
    """Full-depth ``bert`` three ways at each (batch size, length): eager, one CUDA graph per
    (layer, batch) call (what fixed-size regrouped batches could replay) and one graph for the
    whole forward; the latency model fitted on each, so its per-operator cost under graphs is
    measured, not assumed. On a CPU (the dry run) only the eager times are taken."""
    config = TrainConfig(seq_len=size.seq_len, batch_size=size.batch_size)
    bert = get_method(reference_name()).create(str(model), LABELS, "gpu-check", config)
    bert = bert.to(device).model
    bert.eval()
    sizes = GRAPH_SIZES if device.type == "cuda" else size.calibration_sizes
    lengths = GRAPH_LENGTHS if device.type == "cuda" else size.calibration_lengths
    ways = ("eager", "layer graphs", "whole graph") if device.type == "cuda" else ("eager",)
    points: dict[str, list[Point]] = {w: [] for w in ways}
    table = []
    for length in lengths:
        for rows in sizes:
            data, _ = synthetic_split(size, rows, seed=rows + length, length=length)
            batch = data.batch(torch.arange(rows)).to(device)
            with torch.inference_mode():
                with counting() as calls:
                    bert.logits(batch)
                operators = operators_per_call(lambda b=batch: bert.logits(b))
                runs = {"eager": lambda b=batch: bert.logits(b)}
                if device.type == "cuda":
                    runs |= _graphed(bert, batch)
                seconds = {w: _median_seconds(runs[w], device, size) for w in ways}
            for w in ways:
                points[w].append(Point(calls, operators, seconds[w]))
            table.append({"batch_size": rows, "length": length, "seconds": seconds})
            del runs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    models = {
        w: fit_device(p, f"{_device_label(device)} ({w})", overlap=device.type == "cuda")
        for w, p in points.items()
    }
    summary = "; ".join(
        f"{w}: {m.operator_seconds * 1e6:.2f} us/operator" for w, m in models.items()
    )
    if "whole graph" in seconds:
        first = table[0]["seconds"]
        summary += (
            f"; batch {table[0]['batch_size']} length {table[0]['length']}: eager "
            f"{first['eager'] * 1e3:.2f} ms, layer graphs {first['layer graphs'] * 1e3:.2f} ms, "
            f"whole graph {first['whole graph'] * 1e3:.2f} ms"
        )
    details = {"points": table, "models": {w: asdict(m) for w, m in models.items()}}
    return CheckResult("graphs", len(table) >= 3, summary, details=details)


def _median_seconds(run: Callable[[], object], device: torch.device, size: CheckSize) -> float:
    """The median time of ``run()`` (synchronised), after one untimed call."""
    repeats = GRAPH_REPEATS if device.type == "cuda" else size.calibration_repeats
    run()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _graphed(model: torch.nn.Module, batch: Any) -> dict[str, Callable[[], object]]:
    """Replays of ``model.logits(batch)`` captured as CUDA graphs: one per call (embeddings, each
    layer, the head; each reads the previous one's output) and one for the whole forward."""
    backbone = model.backbone
    inputs = batch.inputs()
    _, mask = backbone.embed(**inputs)  # the mask is built outside the graphs: it may synchronise

    def whole() -> torch.Tensor:
        h = backbone.encoder.embeddings(
            input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"]
        )
        h = backbone.run_layers(h, mask, 0, backbone.num_layers)
        return model.classifier(backbone.sentence_vector(h, batch.attention_mask))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(2):
            whole()
    torch.cuda.current_stream().wait_stream(side)
    pool = torch.cuda.graph_pool_handle()
    whole_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(whole_graph, pool=pool):
        whole()
    embed = torch.cuda.CUDAGraph()
    with torch.cuda.graph(embed, pool=pool):
        h = backbone.encoder.embeddings(
            input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"]
        )
    layer_graphs = [embed]
    for layer in range(backbone.num_layers):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            h = backbone.run_layers(h, mask, layer, layer + 1)
        layer_graphs.append(graph)
    head = torch.cuda.CUDAGraph()
    with torch.cuda.graph(head, pool=pool):
        model.classifier(backbone.sentence_vector(h, batch.attention_mask))

    def per_layer() -> None:
        for graph in [*layer_graphs, head]:
            graph.replay()

    return {"layer graphs": per_layer, "whole graph": whole_graph.replay}


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
) -> tuple[list[CheckResult], Path]:
    """Every check, in order; writes ``gpu-check.json`` under ``out`` (default
    ``results/gpu-<device>``) and returns the results and that file."""
    if not dry_run and not torch.cuda.is_available():
        raise GeepError(
            "the GPU check needs a CUDA device (torch sees none); --dry-run runs it on the CPU"
        )
    device = torch.device("cpu") if dry_run else torch.device("cuda", torch.cuda.current_device())
    size = DRY_SIZE if dry_run else GPU_SIZE
    if batch_size is not None:
        size = replace(size, batch_size=batch_size)
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
        data, _ = synthetic_split(size, size.samples, seed=0)
        units: list[dict[str, Any]] = []
        if "methods" in only:
            methods = timed("methods", lambda: check_methods(device, size, model, data))
            report(methods)
            units = (methods.details or {}).get("rows", [])
        if "calibration" in only:
            report(timed("calibration", lambda: check_calibration(device, size, model, units)))
        if "graphs" in only:
            report(timed("graphs", lambda: check_graphs(device, size, model)))
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
        description="Check the suite's CUDA paths on this GPU and measure the latency model.",
        epilog=(
            "examples:\n  python -m geep.reproduce.gpu_check\n"
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
        "--batch-size", type=int, help="the methods' batch size (default 32; 4 in a dry run)"
    )
    parser.add_argument("--commit", help="the commit checked (default: git's, where there is one)")
    args = parser.parse_args(argv)
    if args.commit is None:
        from geep.reproduce.units import git_commit

        args.commit = git_commit()
    try:
        if args.batch_size is not None and args.batch_size < 1:
            raise GeepError(f"--batch-size must be at least 1, got {args.batch_size}")
        results, path = run_checks(args.dry_run, args.out, args.commit, args.only, args.batch_size)
    except GeepError as err:
        print(f"geep: {err}", file=sys.stderr)
        return 2
    print(f"{'PASS' if all(r.passed for r in results) else 'FAIL'}: wrote {path}")
    return 0 if all(r.passed for r in results) else 1


# --- the report ---------------------------------------------------------------------------------


def check_tables(document: dict[str, Any]) -> str:
    """The check's file as tables: each check's line, then every unit of the methods check with
    its measured time, its ratio to full-depth ``bert`` and the latency models' errors."""
    size = document["size"]
    lines = [
        f"# Results: profile gpu-check on {document['device']}",
        "",
        f"`python -m geep.reproduce.gpu_check{' --dry-run' if document['dry_run'] else ''}` "
        "at commit "
        f"{document['git_commit']}, {document['date']}; "
        + ", ".join(f"{k} {v}" for k, v in document["versions"].items())
        + ".",
        "",
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
    calibration = checks.get("calibration", {}).get("details") or {}
    for name, model in calibration.get("models", {}).items():
        lines.append(
            f"- {name} model: {model['operator_seconds'] * 1e6:.1f} us per operator, "
            f"{model['flops_per_second'] / 1e12:.1f} TFLOP/s, "
            f"{model['bytes_per_second'] / 1e12:.2f} TB/s ({model['source']})"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
