"""A profile's units, one (dataset, method, speed) at a time: a cached checkpoint, a timed
measurement, and a run file per (dataset, method) that says how it was made.

The benchmark harness (``benchmarks/test_methods.py``) drives these; ``geep report`` turns the
run files into tables and plots (:mod:`geep.report.results`).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from geep.common.errors import GeepError
from geep.common.storage import atomic_write_text, cache_root, exclusive
from geep.core.interface import Method, Predictions
from geep.core.registry import get_method
from geep.core.sweeps import dev_sweep
from geep.data.encoding import Encoded
from geep.data.registry import get_spec
from geep.measure.flops import dims_for
from geep.measure.monitor import UtilisationMonitor
from geep.measure.work import calls_to_rows, operators_per_call
from geep.pipeline.evaluate import (
    float32_copy,
    library_versions,
    load_split,
    precision_changes,
    prepare_checkpoint,
    summarize,
)
from geep.pipeline.train import train_method
from geep.reproduce.profiles import Profile
from geep.reproduce.run_files import (
    DamagedRunFile,
    read_run_file,
    run_file,
    run_file_text,
    set_aside,
)

Timer = Callable[[Callable[[], None], int], None]  # runs fn ``rounds`` times (pytest-benchmark)


def speeds_for(profile: Profile, entry: str, dataset: str) -> list[float]:
    """The fixed sweep of ``entry`` (a method or an ablation) on ``dataset``: the profile's (a
    ablation's own), else its method's grid."""
    ablation = profile.ablations.get(entry)
    if ablation is not None and ablation.speeds is not None:
        return list(ablation.speeds)
    if entry in profile.speeds:
        return list(profile.speeds[entry])
    layers = dims_for(profile.model_for(dataset)).num_layers
    method = get_method(profile.method_of(entry)[0])
    return method.speed_grid(layers, get_spec(dataset).num_classes)


def settings_for(profile: Profile, entry: str, dataset: str) -> list[str]:
    """The settings a profile measures: the fixed sweep's speeds (``"0.5"``), then for threshold
    methods those chosen on the dev split (``"dev1"``, ...; geep.core.sweeps): one per
    ``profile.dev_speedups`` target, else ``profile.dev_settings`` in even steps."""
    grid = [f"{speed:g}" for speed in speeds_for(profile, entry, dataset)]
    if not get_method(profile.method_of(entry)[0]).calibrates:
        return grid
    chosen = len(profile.dev_speedups) or profile.dev_settings
    return grid + [f"dev{k}" for k in range(1, chosen + 1)]


def batchings_for(profile: Profile, entry: str) -> list[str | None]:
    """The batching policies ``entry`` runs under: the profile's ``batchings`` when its options
    run dynamic exits (FastBERT, DeeBERT, PABEE), else [None]."""
    method, options = profile.method_of(entry)
    runner = get_method(method)
    if runner.batching_of(runner.options_class().with_settings(options)) is None:
        return [None]
    return list(profile.batchings)


class Unit(NamedTuple):
    """One measurement of a profile: a setting of a trained model, under a batching policy
    (None for methods without dynamic exits). ``method`` is a profile entry: a registered
    method or an ablation."""

    dataset: str
    method: str
    seed: int
    setting: str
    batching: str | None

    @property
    def id(self) -> str:
        policy = f"-{self.batching}" if self.batching else ""
        return f"{self.dataset}-{self.method}-seed{self.seed}-{self.setting}{policy}"


def units(profile: Profile) -> list[Unit]:
    """Every (dataset, entry, seed, setting, batching) of the profile, in the order they run:
    a setting's policies one after the other, so they are timed in the same minutes."""
    return [
        Unit(dataset, method, seed, setting, batching)
        for dataset in profile.datasets
        for method in profile.entries()
        for seed in profile.seeds
        for setting in settings_for(profile, method, dataset)
        for batching in batchings_for(profile, method)
    ]


def checkpoint(profile: Profile, entry: str, dataset: str, seed: int) -> Path:
    """``entry`` (a method, or an ablation: its method trained with the ablation's options)
    trained on ``dataset`` with ``seed`` under ``profile``, trained once and then reused from
    ``$GEEP_CACHE/checkpoints/`` (keyed by everything that defines the training).

    A method whose first stage is another method's training (``starts_from``: DeeBERT's is
    ``bert``'s fine-tuning) starts from that method's checkpoint of the same seed when the
    profile runs it, and trains only the rest.
    """
    method, options = profile.method_of(entry)
    model = profile.model_for(dataset)
    config = profile.train_config(method, dataset, seed)
    start = None
    first_stage = get_method(method).starts_from
    if first_stage in profile.method_names():
        start = checkpoint(profile, first_stage, dataset, seed)
    recipe = {
        "method": method,
        "dataset": dataset,
        "model": model,
        "train": config.to_dict(),
        "start_from": start.name if start else None,
        "max_dev": profile.max_eval,
    }
    if options:  # a method's own recipe has no options key, so its cached checkpoints hold
        recipe["options"] = list(options)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root() / "checkpoints" / f"{entry}-{dataset}-{key}"
    with exclusive(path.with_name(f".{path.name}.lock")):  # one worker trains, the others wait
        if not (path / "config.json").is_file():
            train_method(
                method,
                dataset,
                path,
                model,
                config,
                settings=options,
                start_from=start,
                max_dev=recipe["max_dev"],
            )
    return path


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
    row["batching"] = method.batching
    row["batch_size"] = batch_size
    row["batch_size_requested"] = requested
    row["rounds"] = len(runs)
    row["round_seconds"] = [sum(r.batch_seconds) for r in runs]
    row["round_seconds_median"] = statistics.median(row["round_seconds"])
    row["calls"] = calls_to_rows(runs[-1].calls)  # every call's shape, for geep.measure.latency
    first = data.select(torch.arange(min(len(data), batch_size)))  # untimed
    if method.graphs is not None:  # its graphs captured first: a replay's operators are counted
        method.run(first, speed, batch_size)
    row["operators"] = operators_per_call(lambda: method.run(first, speed, batch_size))
    row["runtime"] = method.runtime.label
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
        "train_samples": info.train_samples,
        "seed": info.train["seed"],
        "options": info.options,
        "dev_accuracy": info.dev_accuracy,
        "dev_samples": info.dev_samples,
        "test_samples": len(data),
        "inference_order": "length",  # Method.run's default, the same for every method
        "device": device_name(method.device),
        "runtime": method.runtime.to_dict(),
        "versions": library_versions(),
    }


def recover_run_files(results: Path, profile: Profile) -> list[str]:
    """Set aside every damaged run file of ``profile``'s units under ``results`` (a resumed
    run then measures their units again); one line per file set aside."""
    lines = []
    for dataset, method, seed in dict.fromkeys(u[:3] for u in units(profile)):
        path = run_file(results, dataset, method, seed)
        if not path.is_file():
            continue
        with exclusive(path.parent):
            try:
                read_run_file(path)
            except DamagedRunFile as damage:
                lines.append(set_aside(path, str(damage)))
    return lines


def _current_run(
    results: Path, profile: Profile, dataset: str, entry: str, seed: int
) -> dict | None:
    """The run file of (dataset, entry, seed) when it exists, reads whole and was made under this
    profile's configuration; else None."""
    path = run_file(results, dataset, entry, seed)
    if not path.is_file():
        return None
    try:
        run = read_run_file(path)
    except DamagedRunFile:
        return None
    return run if run["provenance"]["config_hash"] == profile.config_hash() else None


def recorded(results: Path, profile: Profile, unit: Unit) -> bool:
    """Whether the run file of the unit's (dataset, method, seed) already holds its setting and
    batching under this profile's configuration (a resumed run skips it; a damaged file holds
    nothing)."""
    run = _current_run(results, profile, *unit[:3])
    return run is not None and any(row_key(r) == unit[3:] for r in run["rows"])


def missing_units(results: Path, profile: Profile) -> list[Unit]:
    """The profile's units a run into ``results`` has still to measure: neither recorded
    (:func:`recorded`) nor a dev setting that its run file's dev sweep found no speed for
    (:meth:`Trained.resolve`: a run skips it). None missing: the run is finished."""
    missing, runs = [], {}
    for unit in units(profile):
        if unit[:3] not in runs:  # each run file read once
            runs[unit[:3]] = _current_run(results, profile, *unit[:3])
        run = runs[unit[:3]]
        if run is not None:
            if any(row_key(r) == unit[3:] for r in run["rows"]):
                continue
            if unit.setting.startswith("dev"):
                sweep = run["provenance"].get("dev_sweep", {})
                try:
                    Trained(None, None, sweep, unit.method).resolve(unit.setting)
                except GeepError:
                    continue  # no speed on dev: skipped, not missing
        missing.append(unit)
    return missing


def row_key(row: dict) -> tuple[str, str | None]:
    """What tells a run file's rows apart: the setting and the batching policy."""
    return row["setting"], row.get("batching")


def record(
    results: Path,
    profile: Profile,
    method: Method,
    dataset: str,
    data: Encoded,
    row: dict,
    sweep: dict[str, Any] | None = None,
    entry: str | None = None,
) -> Path:
    """Add (or replace) ``row``'s setting and batching (:func:`row_key`) in the run file of
    (dataset, entry, seed), atomically; ``sweep`` is the dev sweep's record (:func:`dev_sweep`)
    and ``entry`` the profile entry the method was trained as (default: the method's name).

    A run file made under a different profile configuration is replaced, not mixed with; a
    damaged one is set aside (:func:`set_aside`, with a warning) and a new one begun.
    Benchmark workers may record rows of one run file at once: the folder's lock makes each
    read-modify-write whole, so no row is lost.
    """
    meta = provenance(profile, method, data)
    entry = entry or method.name
    path = run_file(results, dataset, entry, meta["seed"])
    if sweep:
        meta["dev_sweep"] = sweep
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path.parent):
        rows: list[dict] = []
        try:
            old = read_run_file(path) if path.is_file() else None
        except DamagedRunFile as damage:
            warnings.warn(set_aside(path, str(damage)), stacklevel=2)
            old = None
        if old is not None and old["provenance"]["config_hash"] == meta["config_hash"]:
            rows = [r for r in old["rows"] if row_key(r) != row_key(row)]
        rows = sorted(
            [*rows, row],
            key=lambda r: (r["speed_source"] == "dev", r["speed"], r.get("batching") or ""),
        )
        document = {
            "dataset": dataset,
            "method": entry,
            "num_layers": method.num_layers,
            "rows": rows,
            "provenance": {**meta, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        }
        atomic_write_text(path, run_file_text(_finite(document)))
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


@dataclass
class Trained:
    """A unit's trained method with its test split and dev-chosen speeds."""

    method: Method
    test: Encoded
    sweep: dict[str, Any]  # dev_sweep's record; {} when the method has none
    entry: str  # the profile entry it was trained as: a method or an ablation
    float32: Method | None = None  # a float32 eager copy, when the profile runs another precision

    def precision_changes(self, speed: float, batch_size: int) -> dict[str, float]:
        """What the profile's precision changes against float32 eager at ``speed`` on the test
        split (:func:`geep.pipeline.evaluate.precision_changes`); nothing in float32."""
        if self.float32 is None:
            return {}
        self.float32.configure([f"batching={self.method.batching}"] if self.method.batching else [])
        base = self.float32.run(self.test, speed, batch_size)
        low = self.method.run(self.test, speed, batch_size)
        return precision_changes(base, low, self.test.labels.numpy())

    def resolve(self, setting: str) -> dict[str, Any]:
        """A setting id's row fields: ``"0.5"`` is a fixed speed (``speed_source`` "grid"),
        ``"devK"`` the K-th speed chosen on dev ("dev", with its ``dev_speedup_full``, and the
        ``dev_target`` speedup it was chosen for when the sweep had targets).
        GeepError when the dev sweep found fewer than K distinct speeds."""
        if not setting.startswith("dev"):
            return {"setting": setting, "speed": float(setting), "speed_source": "grid"}
        k = int(setting[3:])
        speeds = self.sweep.get("speeds", [])
        if k > len(speeds):
            raise GeepError(f"the dev sweep found only {len(speeds)} distinct settings")
        fields = {
            "setting": setting,
            "speed": speeds[k - 1],
            "speed_source": "dev",
            "dev_speedup_full": self.sweep["dev_speedup_full"][k - 1],
        }
        if "target_speedups" in self.sweep:  # chosen for a target speedup: which one
            fields["dev_target"] = self.sweep["target_speedups"][k - 1]
            if fields["speed"] is None:
                raise GeepError(f"no setting reaches {fields['dev_target']:g}x FLOPs on dev")
        return fields


def load_unit(profile: Profile, entry: str, dataset: str, seed: int) -> Trained:
    """The trained entry, a method or an ablation
    (:func:`geep.pipeline.evaluate.prepare_checkpoint`), its test split and its dev sweep, both
    capped at the profile's ``max_eval`` samples
    (:func:`load_split`). With dev-chosen settings, the options it chooses on dev
    (:meth:`Method.choose_on_dev`) are chosen first and recorded in the sweep's ``choice``.
    In a profile of another precision than float32 it runs in that one, and a float32 eager copy
    is kept to compare with (:meth:`Trained.precision_changes`)."""
    trained = prepare_checkpoint(checkpoint(profile, entry, dataset, seed))
    float32 = None if profile.precision == "float32" else float32_copy(trained)
    trained.use_runtime(profile.runtime)
    sweep = {}
    if trained.calibrates and profile.dev_settings:
        dev = load_split(trained, dataset, "dev", profile.max_eval)
        choice = trained.choose_on_dev(dev.data, profile.batch_size)  # GEEP: its exit rule
        sweep = dev_sweep(trained, dev.data, profile.dev_settings, profile.dev_speedups)
        if choice:
            sweep["choice"] = choice
    test = load_split(trained, dataset, "test", profile.max_eval).data
    return Trained(trained, test, sweep, entry, float32)
