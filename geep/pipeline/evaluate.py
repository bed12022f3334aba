"""Evaluate a trained method over a sweep of speed settings: the rows of `geep evaluate --json`."""

from __future__ import annotations

import copy
import json
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import transformers

import geep
import geep.data
from geep.common.errors import GeepError
from geep.common.storage import atomic_write_text, cache_root, check_target
from geep.core.interface import Method, Order, Predictions, check_seq_len
from geep.core.registry import load_checkpoint
from geep.core.runtime import DEFAULT_RUNTIME, Runtime
from geep.core.sweeps import DEV_SETTINGS, dev_sweep
from geep.data import REGISTRY
from geep.data.encoding import Encoded, encode_split
from geep.measure.metrics import accuracy, bootstrap_interval, latency_ms, macro_f1
from geep.measure.work import work_counts


@dataclass
class SpeedResult:
    """One speed setting's results; FLOPs are means per sample.

    ``speedup`` is FLOPs at full depth over FLOPs at this speed for the same model, in the
    ``fastbert`` convention (as FastBERT-style tables report it); ``speedup_full`` in ``full``.
    """

    speed: float
    accuracy: float
    accuracy_low: float  # 95% percentile bootstrap interval of the accuracy (metrics.py)
    accuracy_high: float
    macro_f1: float
    avg_exit_layer: float
    flops_fastbert: float
    flops_full: float
    speedup: float
    speedup_full: float
    throughput: float  # samples per second: the split over the median run's time
    round_spread: float  # the runs' times, (max - min) / median (0 for one run)
    latency_ms_p50: float  # per batch, over every batch of every run
    latency_ms_p95: float
    n: int
    exit_histogram: list[int]  # samples exiting at layer 1..L (per-token exits: rounded up)
    # the work issued (geep.measure.work): executed FLOPs per sample, padding included, and call
    # counts
    flops_executed_full: float
    layer_batches: int
    mean_layer_batch_rows: float
    head_calls: int
    head_rows: int
    extra: dict[str, float] = field(default_factory=dict)  # Method.diagnostics (e.g. GEEP's)


def summarize(
    method: Method, data: Encoded, speed: float, runs: Sequence[Predictions]
) -> SpeedResult:
    """Metrics of repeated prediction runs (same setting) against the labels in ``data``:
    quality, FLOPs and work from the last run, timing from all of them."""
    out = runs[-1]
    labels = data.labels.numpy()
    lengths = data.lengths.numpy()
    full_fastbert = method.full_depth_flops(lengths, "fastbert").mean()
    full_full = method.full_depth_flops(lengths, "full").mean()
    batches = [s for r in runs for s in r.batch_seconds]
    rounds = [sum(r.batch_seconds) for r in runs]
    low, high = bootstrap_interval(labels == out.labels)
    return SpeedResult(
        speed=speed,
        accuracy=accuracy(labels, out.labels),
        accuracy_low=low,
        accuracy_high=high,
        macro_f1=macro_f1(labels, out.labels, method.info.num_labels),
        avg_exit_layer=float(out.exit_layers.mean()),
        flops_fastbert=float(out.flops_fastbert.mean()),
        flops_full=float(out.flops_full.mean()),
        speedup=float(full_fastbert / out.flops_fastbert.mean()),
        speedup_full=float(full_full / out.flops_full.mean()),
        throughput=len(labels) / float(np.median(rounds)),
        round_spread=float((max(rounds) - min(rounds)) / np.median(rounds)),
        latency_ms_p50=latency_ms(batches, 50),
        latency_ms_p95=latency_ms(batches, 95),
        n=len(labels),
        exit_histogram=np.bincount(
            np.ceil(out.exit_layers).astype(np.int64) - 1, minlength=method.num_layers
        ).tolist(),
        **work_counts(out.calls, len(labels)),
        extra=method.diagnostics(data, speed, out),
    )


def sweep(
    method: Method,
    data: Encoded,
    speeds: list[float],
    batch_size: int,
    progress: bool = True,
    order: Order = "length",
    rounds: int = 1,
) -> tuple[list[SpeedResult], list[Predictions], int]:
    """Run every speed setting ``rounds`` times on ``data`` (labels required), batching in
    ``order``; results in the order of ``speeds`` (timing over the rounds: the median and the
    spread), the last run of each, and the batch size used (``batch_size``, halved while it
    does not fit in GPU memory)."""
    if rounds < 1:
        raise GeepError(f"--rounds must be at least 1, got {rounds}")
    for speed in speeds:  # fail before any work on a bad setting
        method.check_speed(speed)
    batch_size = method.warm_up(data, speeds[0], batch_size)
    results, last = [], []
    for speed in speeds:
        runs = [
            method.run(data, speed, batch_size, progress and k == 0, order) for k in range(rounds)
        ]
        results.append(summarize(method, data, speed, runs))
        last.append(runs[-1])
    return results, last, batch_size


def float32_copy(method: Method) -> Method:
    """A copy of a float32 ``method`` that stays in float32 eager when the original is cast."""
    info, extras = copy.deepcopy(method.info), dict(method.extras)
    return type(method)(copy.deepcopy(method.model), method.tokenizer, info, extras)


def precision_changes(
    float32: Predictions, low: Predictions, labels: np.ndarray
) -> dict[str, float]:
    """What a run in lower precision (``low``) changed against one in float32 on the same
    samples: the share of samples that exit at another layer or get another label, and the
    accuracy either way."""
    return {
        "exit_changed": float(np.mean(low.exit_layers != float32.exit_layers)),
        "label_changed": float(np.mean(low.labels != float32.labels)),
        "float32_accuracy": accuracy(labels, float32.labels),
    }


def library_versions() -> dict[str, str]:
    """The versions a result depends on, for its provenance."""
    return {
        "geep": geep.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": _installed("datasets"),
    }


def _installed(package: str) -> str | None:
    """The installed version of ``package`` (None where it is not installed: the GPU check
    runs without ``datasets``)."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def report_json(ev: Evaluation) -> dict:
    """The `geep evaluate --json` document, with how it was made under "provenance"."""
    info = ev.method.info
    return {
        "method": ev.method.name,
        "dataset": ev.split.dataset,
        "num_layers": ev.method.num_layers,
        "results": [asdict(r) for r in ev.results],
        "provenance": {
            "model": info.model,
            "trained_on": info.dataset,
            "train": info.train,
            "dev_accuracy": info.dev_accuracy,
            "options": info.options,
            "split": ev.split.name,
            "speed_source": ev.speed_source,
            "dev_sweep": ev.dev_sweep,
            "batch_size": ev.batch_size,
            "order": ev.order,
            "seq_len": ev.split.data.seq_len,
            "device": str(ev.method.device),
            "runtime": ev.method.runtime.to_dict(),
            "torch_threads": torch.get_num_threads(),
            "versions": library_versions(),
        },
    }


PREDICTION_KEYS = ("index", "text", "label", "pred", "exit_layer", "speed")


def check_predictions_target(path: Path) -> Path:
    """GeepError unless ``path`` can take a predictions file (checked before the evaluation,
    so a bad path does not cost the run): an existing file is replaced only when it is one."""
    return check_target(path, "--predictions", "file", _predictions_ownership)


def _predictions_ownership(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        first = None
    if isinstance(first, dict) and tuple(first) == PREDICTION_KEYS:
        return None
    return "it is not a predictions file of `geep evaluate`"


def write_predictions(
    path: Path, texts: list[str], labels: np.ndarray, speeds: list[float], runs: list[Predictions]
) -> None:
    """One JSON line per sample and speed: index, text, label, pred, exit_layer, speed."""
    path = check_predictions_target(path)
    lines = [
        json.dumps(
            {
                "index": i,
                "text": texts[i],
                "label": int(labels[i]),
                "pred": int(r.labels[i]),
                "exit_layer": float(r.exit_layers[i]),
                "speed": speed,
            },
            ensure_ascii=False,
        )
        for speed, r in zip(speeds, runs, strict=True)
        for i in range(len(texts))
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def label_mapping(names: Sequence[str], trained: Sequence[str], dataset: str) -> list[int]:
    """For each of the data's label names, the checkpoint's class index.

    Classes are matched by name; integer labels (0..C-1, named by their digits) are the
    checkpoint's class indices. The data may hold fewer classes than the checkpoint, never
    others: GeepError naming the unknown ones.
    """
    index = {name: i for i, name in enumerate(trained)}
    if all(name in index for name in names):
        return [index[name] for name in names]
    if all(name.isdigit() and int(name) < len(trained) for name in names):
        return [int(name) for name in names]
    unknown = [name for name in names if name not in index]
    raise GeepError(
        f"{dataset} has labels {unknown} that the checkpoint does not know: it was trained on "
        f"{list(trained)}; use those names (or the indices 0..{len(trained) - 1})"
    )


def prepare_checkpoint(
    checkpoint: str | Path, settings: Sequence[str] = (), runtime: Runtime = DEFAULT_RUNTIME
) -> Method:
    """A checkpoint ready to evaluate: loaded, its inference options changed by ``settings``
    (``KEY=VALUE``), on the GPU when there is one, in ``runtime``'s precision and graph mode
    (:mod:`geep.core.runtime`). `geep evaluate` and the benchmark units both start here."""
    cache_root()  # checked before the work
    method = load_checkpoint(checkpoint)
    method.configure(settings)
    if torch.cuda.is_available():
        method.to("cuda")
    return method.use_runtime(runtime)


@dataclass
class Split:
    """A split as a checkpoint evaluates it: its texts and their encoding (labels as the
    checkpoint's class indices)."""

    dataset: str
    name: str  # train, dev, test or all
    texts: list[str]
    data: Encoded


def load_split(
    method: Method,
    dataset: str,
    split: str,
    max_eval: int | None = None,
    seq_len: int | None = None,
) -> Split:
    """``split`` of ``dataset`` (all: every sample of it, none set aside), its first
    ``max_eval`` samples, encoded with the checkpoint's tokenizer at ``seq_len`` (default: the
    training length; checked against the encoder's positions before any data is read), labels
    matched to the checkpoint's classes (:func:`label_mapping`)."""
    if max_eval is not None and max_eval < 1:
        raise GeepError(f"--max-eval must be at least 1, got {max_eval}")
    if seq_len is not None:
        check_seq_len(seq_len, method.backbone)
    data = geep.data.load_dataset(dataset, carve=split != "all")  # imports `datasets` now
    if split == "all":
        from datasets import concatenate_datasets

        rows = concatenate_datasets(list(data.values()))
    elif split in data:
        rows = data[split]
    else:
        raise GeepError(f"no split '{split}' in {dataset}: choose one of {', '.join(data)}, all")
    to_trained = label_mapping(rows.features["label"].names, method.info.label_names, dataset)
    if max_eval is not None:
        rows = rows.select(range(min(max_eval, len(rows))))
    encoded = encode_split(method.tokenizer, rows, seq_len or method.info.seq_len)
    if to_trained != list(range(len(to_trained))):
        encoded = replace(encoded, labels=torch.tensor(to_trained)[encoded.labels])
    return Split(dataset, split, list(rows["text"]), encoded)


SpeedSource = Literal["grid", "dev", "given"]  # where a sweep's speeds come from


def choose_speeds(
    method: Method, source: SpeedSource, max_dev: int | None = None
) -> tuple[list[float], dict[str, Any]]:
    """The speeds of a sweep and the record of how they were chosen. ``grid``: the method's
    fixed grid. ``dev``: full depth, then :data:`geep.core.sweeps.DEV_SETTINGS` speeds chosen on the
    dev split of the data the checkpoint was trained on (its first ``max_dev`` samples), never
    on the split it is evaluated on (:func:`geep.core.sweeps.dev_sweep`)."""
    full_depth = method.default_speeds()[0]
    if source == "grid":
        return method.default_speeds(), {}
    if not method.calibrates:
        raise GeepError(f"{method.name} has no threshold to choose on dev: use --sweep grid")
    try:
        dev = load_split(method, method.info.dataset, "dev", max_dev)
    except GeepError as err:
        raise GeepError(
            f"the dev-chosen sweep needs the dev split of {method.info.dataset}, the data the "
            f"checkpoint was trained on ({err}); give --sweep grid or --speed"
        ) from None
    record = dev_sweep(method, dev.data, DEV_SETTINGS)
    return [full_depth, *(s for s in record["speeds"] if s != full_depth)], record


@dataclass
class Evaluation:
    """A checkpoint evaluated on one split over a sweep of speeds."""

    method: Method
    split: Split
    batch_size: int
    speeds: list[float]
    speed_source: SpeedSource
    dev_sweep: dict[str, Any]  # how the dev-chosen speeds were chosen; {} otherwise
    results: list[SpeedResult]
    runs: list[Predictions]
    order: Order


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str | None = None,
    split: str | None = None,
    speeds: list[float] | None = None,
    batch_size: int = 32,
    seq_len: int | None = None,
    max_eval: int | None = None,
    progress: bool = True,
    settings: Sequence[str] = (),
    order: Order = "length",
    speed_source: SpeedSource | None = None,
    runtime: Runtime = DEFAULT_RUNTIME,
    compare_precision: bool = False,
    rounds: int = 1,
) -> Evaluation:
    """Load ``checkpoint`` and sweep it on a split.

    ``dataset`` defaults to the one the checkpoint was trained on. ``split`` is train, dev, test
    or all (the three together); by default test, and all for a single local file, which is
    evaluated whole, in its order, however small (:func:`load_split`). ``max_eval`` keeps the
    split's first N samples. The speeds are ``speeds`` when given, else chosen by
    ``speed_source`` (:func:`choose_speeds`; by default ``dev`` for a threshold method, whose
    papers' fixed grid can leave every setting at full depth, else ``grid``). ``settings``
    (``KEY=VALUE``) change the method's inference options. ``order``: how samples are batched
    (:meth:`Method.run`). ``runtime``: the precision and graph mode inference runs in; with
    ``compare_precision`` a float32 copy runs every speed too, and each result's ``extra``
    says what the precision changed (:func:`precision_changes`). ``rounds``: timed runs of each
    speed (the median's throughput and the runs' spread).
    """
    method = prepare_checkpoint(checkpoint, settings)
    reference = float32_copy(method) if compare_precision else None
    method.use_runtime(runtime)
    dataset = dataset or method.info.dataset
    split = split or ("all" if Path(dataset).is_file() and dataset not in REGISTRY else "test")
    evaluated = load_split(method, dataset, split, max_eval, seq_len)
    record: dict[str, Any] = {}
    if speeds:
        speed_source = "given"
    else:
        speed_source = speed_source or ("dev" if method.calibrates else "grid")
        speeds, record = choose_speeds(method, speed_source, max_eval)
    if rounds < 1:  # before the work
        raise GeepError(f"--rounds must be at least 1, got {rounds}")
    results, runs, batch_size = sweep(
        method, evaluated.data, speeds, batch_size, progress, order, rounds
    )
    if reference is not None:
        _, float32_runs, _ = sweep(reference, evaluated.data, speeds, batch_size, progress, order)
        labels = evaluated.data.labels.numpy()
        for result, run, base in zip(results, runs, float32_runs, strict=True):
            result.extra |= precision_changes(base, run, labels)
    return Evaluation(
        method, evaluated, batch_size, speeds, speed_source, record, results, runs, order
    )
