"""A profile's units, one (dataset, method, speed) at a time: a cached checkpoint, a timed
measurement, and a run file per (dataset, method) that says how it was made.

The benchmark harness (``benchmarks/test_methods.py``) drives these; ``geep report`` turns the
run files into tables and plots (:mod:`geep.report`).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers

import geep
from geep.data import load_dataset
from geep.data.registry import get_spec
from geep.encoding import Encoded, encode_split
from geep.evaluation import summarize
from geep.flops import dims_for
from geep.monitor import UtilisationMonitor
from geep.profiles import Profile
from geep.runner import Method, Predictions, get_method, load_checkpoint
from geep.storage import atomic_write_text, cache_root
from geep.training import train_method

Timer = Callable[[Callable[[], None], int], None]  # runs fn ``rounds`` times (pytest-benchmark)


def speeds_for(profile: Profile, method: str, dataset: str) -> list[float]:
    """The sweep of ``method`` on ``dataset``: the profile's, else the method's default grid."""
    if method in profile.speeds:
        return list(profile.speeds[method])
    layers = dims_for(profile.model_for(dataset)).num_layers
    return get_method(method).speed_grid(layers, get_spec(dataset).num_classes)


def checkpoint(profile: Profile, method: str, dataset: str) -> Path:
    """``method`` trained on ``dataset`` under ``profile``, trained once and then reused from
    ``$GEEP_CACHE/checkpoints/`` (keyed by everything that defines the training).

    DeeBERT's first stage is ordinary fine-tuning, which is what ``bert`` is: when the profile
    runs both, DeeBERT starts from ``bert``'s checkpoint and trains only its highways.
    """
    model = profile.model_for(dataset)
    config = profile.train_config(method, dataset)
    start = None
    if method == "deebert" and "bert" in profile.methods:
        start = checkpoint(profile, "bert", dataset)
    recipe = {
        "method": method,
        "dataset": dataset,
        "model": model,
        "train": config.to_dict(),
        "start_from": start.name if start else None,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root() / "checkpoints" / f"{method}-{dataset}-{key}"
    if not (path / "config.json").is_file():
        train_method(method, dataset, path, model, config, start_from=start)
    return path


def eval_split(method: Method, dataset: str, max_eval: int | None) -> Encoded:
    """The first ``max_eval`` test samples (all when None), encoded at the training length."""
    rows = load_dataset(dataset)["test"]
    if max_eval is not None:
        rows = rows.select(range(min(max_eval, len(rows))))
    return encode_split(method.tokenizer, rows, method.info.seq_len)


def measure(
    method: Method,
    data: Encoded,
    speed: float,
    batch_size: int,
    rounds: int,
    timer: Timer | None = None,
) -> dict[str, Any]:
    """Accuracy, FLOPs, exits, latency and utilisation of one speed setting.

    An untimed warm-up batch, then ``rounds`` timed runs of the whole split (through ``timer``,
    e.g. pytest-benchmark's, when given), synchronised on a GPU; the device is sampled while
    they run. Latency percentiles are over every batch of every round; throughput is samples
    over the median round. A batch size the GPU cannot hold is halved until it fits
    (:meth:`Method.warm_up`); the row records both sizes.
    """
    method.check_speed(speed)
    requested, batch_size = batch_size, method.warm_up(data, speed, batch_size)
    runs: list[Predictions] = []

    def once() -> None:
        runs.append(method.run(data, speed, batch_size))

    with UtilisationMonitor(method.device) as monitor:
        if timer is None:
            for _ in range(rounds):
                once()
        else:
            timer(once, rounds)
    row = asdict(summarize(method, data, speed, runs))
    row.update(asdict(monitor.result))
    row["batch_size"] = batch_size
    row["batch_size_requested"] = requested
    row["rounds"] = len(runs)
    row["round_seconds_median"] = statistics.median(sum(r.batch_seconds) for r in runs)
    return row


def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when files changed), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if dirty else head


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [
            line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = models[0].split(":", 1)[1].strip() if models else cpu
    return f"{cpu}, {torch.get_num_threads()} threads"


def provenance(profile: Profile, method: Method, data: Encoded) -> dict[str, Any]:
    """How a run file's rows were made."""
    info = method.info
    return {
        "profile": profile.name,
        "config_hash": profile.config_hash(),
        "git_commit": git_commit(),
        "model": info.model,
        "train": info.train,
        "seed": info.train["seed"],
        "options": info.options,
        "dev_accuracy": info.dev_accuracy,
        "test_samples": len(data),
        "device": device_name(method.device),
        "versions": {
            "geep": geep.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
        },
    }


def run_file(results: Path, dataset: str, method: str) -> Path:
    return results / "runs" / dataset / f"{method}.json"


def recorded(results: Path, profile: Profile, dataset: str, method: str, speed: float) -> bool:
    """Whether the run file of (dataset, method) already holds ``speed`` under this profile's
    configuration (a resumed run skips it)."""
    path = run_file(results, dataset, method)
    if not path.is_file():
        return False
    run = json.loads(path.read_text())
    if run["provenance"]["config_hash"] != profile.config_hash():
        return False
    return any(math.isclose(row["speed"], speed) for row in run["rows"])


def record(
    results: Path, profile: Profile, method: Method, dataset: str, data: Encoded, row: dict
) -> Path:
    """Add (or replace) ``row``'s speed in the run file of (dataset, method), atomically.

    A run file made under a different profile configuration is replaced, not mixed with.
    """
    path = run_file(results, dataset, method.name)
    meta = provenance(profile, method, data)
    rows: list[dict] = []
    if path.is_file():
        old = json.loads(path.read_text())
        if old["provenance"]["config_hash"] == meta["config_hash"]:
            rows = [r for r in old["rows"] if not math.isclose(r["speed"], row["speed"])]
    rows = sorted([*rows, row], key=lambda r: r["speed"])
    document = {
        "dataset": dataset,
        "method": method.name,
        "num_layers": method.num_layers,
        "rows": rows,
        "provenance": {**meta, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    atomic_write_text(path, json.dumps(_finite(document), indent=2) + "\n")
    return path


def _finite(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    return value


def load_unit(profile: Profile, method: str, dataset: str) -> tuple[Method, Encoded]:
    """The trained method (on the GPU when there is one) and its test split for a profile."""
    trained = load_checkpoint(checkpoint(profile, method, dataset))
    if torch.cuda.is_available():
        trained.to("cuda")
    return trained, eval_split(trained, dataset, profile.max_eval)
