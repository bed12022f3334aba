"""Turn a profile's run files into the paper-style outputs: a CSV, Markdown tables and plots.

``geep report results/quick`` (and ``notebooks/figures.ipynb``) read
``results/<profile>/runs/<dataset>/<method>-seed<seed>.json`` (:mod:`geep.reproduce.units`) and
write:

- ``results.csv``: one row per (dataset, method, seed, setting, batching);
- ``tables.md``: per dataset, every method at full depth and at matched FLOPs speedups, and each
  method's fastest setting within one point of ``bert``'s accuracy;
- ``speed-accuracy-<dataset>.png``: accuracy (with its 95% interval) against FLOPs speedup, one
  curve per method;
- ``realised-speedup.png``: wall-clock speedup over the full-depth ``bert`` run against FLOPs
  speedup, at the profile's batch size.

A dynamic-exit method measured under several batching policies (``shrink``, ``regroup``:
geep.core.dynamic_exit) is one table row, curve and marker per policy, named ``fastbert (regroup)``
in the plots. With several seeds, a table cell averages the seeds' values and gives their standard
deviation; a plotted point is a setting's mean over the seeds.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from geep.common.errors import GeepError
from geep.common.storage import atomic_write_files, check_target
from geep.common.style import LINESTYLES, MARKERS, colours, outside_legend
from geep.core.dynamic_exit import BATCHINGS
from geep.core.registry import method_names, method_of
from geep.measure.latency import GPUS, Device, fit_device, load_calibration
from geep.measure.regime import has_regime, paper_regime, plot_regime, regime_section
from geep.measure.work import calls_from_rows
from geep.report.serving import plot_server_latency, serving_files, serving_section
from geep.reproduce.gpu_check import CHECK_FILE
from geep.reproduce.gpu_check import check_tables as gpu_tables
from geep.reproduce.gpu_check import plot_cells as plot_gpu_cells
from geep.reproduce.run_files import DamagedRunFile, read_run_file

CALIBRATION_FILE = "latency-calibration.json"  # benchmarks/test_latency_calibration.py
ENCODING_FILE = "encoding-memory.json"  # benchmarks/test_encoding_memory.py
TARGETS = (1.5, 2.0, 3.0)  # FLOPs speedups the tables match methods at
WITHIN = 0.01  # the accuracy a "fastest setting" may lose against bert
COLUMNS = [
    "dataset",
    "method",
    "seed",
    "setting",
    "batching",
    "speed_source",
    "speed",
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "macro_f1",
    "speedup",
    "speedup_full",
    "dev_speedup_full",
    "dev_target",
    "flops_fastbert",
    "flops_full",
    "avg_exit_layer",
    "flops_executed_full",
    "layer_batches",
    "mean_layer_batch_rows",
    "head_calls",
    "head_rows",
    "throughput",
    "wall_speedup",
    "modelled_seconds",
    "model_error",
    *(f"modelled_{gpu}_speedup" for gpu in GPUS),
    "latency_ms_p50",
    "latency_ms_p95",
    "gpu_util_percent",
    "gpu_memory_mib",
    "cpu_util_percent",
    "batch_size",
    "n",
    "train_samples",
    "profile",
    "config_hash",
    "device",
    "runtime",
    "exit_changed",
    "label_changed",
    "float32_accuracy",
    "git_commit",
]


def load_runs(results: str | Path) -> pd.DataFrame:
    """Every measured row under ``results/runs/``, one per (dataset, method, seed, setting,
    batching), with ``variant``: the method and its batching policy, the unit tables compare.

    Every run file is checked (:func:`geep.reproduce.run_files.read_run_file`): a damaged one, or
    one filed elsewhere than its dataset and name say, is a GeepError. All run files must come from
    one profile configuration (the same config hash): rows made with different settings are
    never put side by side.
    """
    files = sorted(Path(results).glob("runs/*/*.json"))
    if not files:
        raise GeepError(f"no run files under {results}/runs: run `pytest benchmarks/` first")
    records = []
    for path in files:
        try:
            run = read_run_file(path)
        except DamagedRunFile as damage:
            raise GeepError(f"{damage}; nothing was written") from None
        meta = run["provenance"]
        traits = method_traits(run["method"], meta.get("options") or {})
        for row in run["rows"]:
            records.append(
                {
                    **row,
                    **traits,
                    "inference": "dynamic" if row["batching"] else traits["inference"],
                    "variant": variant(run["method"], row["batching"]),
                    "dataset": run["dataset"],
                    "method": run["method"],
                    "seed": meta["seed"],
                    "profile": meta["profile"],
                    "config_hash": meta["config_hash"],
                    "device": meta["device"],
                    "runtime": _runtime_label(meta.get("runtime")),
                    "git_commit": meta.get("git_commit"),
                    **({"train_samples": meta["train_samples"]} if "train_samples" in meta else {}),
                }
            )
    frame = pd.DataFrame.from_records(records)
    hashes = sorted(frame["config_hash"].unique())
    if len(hashes) > 1:
        raise GeepError(
            f"{results} mixes runs of different configurations ({', '.join(hashes)}): "
            "re-run the stale ones or keep each configuration in its own folder"
        )
    order = ["dataset", "method", "batching", "seed", "speed_source", "speed"]
    return frame.sort_values(order, key=_method_order).reset_index(drop=True)


def _runtime_label(runtime: dict | None) -> str:
    """A run file's precision and graph mode as tables name it (geep.core.runtime); float32
    eager for a run file that records none."""
    runtime = runtime or {}
    graphs = "+ CUDA graphs" if runtime.get("graphs") else "eager"
    return f"{runtime.get('precision', 'float32')} {graphs}"


def method_traits(entry: str, options: dict) -> dict:
    """What the report and the regime model ask of the method a run file's ``entry`` names (a
    method or a profile's variant of it, :func:`geep.core.registry.method_of`), run with
    ``options``: ``inference`` without a batching policy, ``head_kind`` and ``reference``
    (:class:`geep.core.interface.Method`). A method that is not installed has none (NaN)."""
    cls = method_of(entry)
    if cls is None:
        return {"inference": np.nan, "head_kind": np.nan, "reference": False}
    try:
        inference = cls.inference_of(cls.options_class.from_dict(options))
    except GeepError:  # options of another version of the method: its defaults'
        inference = cls.inference_of(cls.options_class())
    return {"inference": inference, "head_kind": cls.head_kind, "reference": cls.reference}


def variant(method: str, batching: str | None) -> str:
    """A method's name in tables and plots, with its batching policy when it has one."""
    return method if batching is None else f"{method} ({batching})"


def _name_cells(name: str) -> list[str]:
    """A :func:`variant`'s two table cells: the method and its batching policy (or -)."""
    method, _, batching = name.partition(" (")
    return [f"`{method}`", batching.removesuffix(")") or "-"]


def _method_order(column: pd.Series) -> pd.Series:
    """Methods in the registry's order, each followed by its ablations (named ``<method>-...``,
    geep.reproduce.profiles.Ablation), unknown ones last; batching policies in
    :data:`~geep.core.dynamic_exit.BATCHINGS`' order; other columns as they are."""
    if column.name == "method":
        order = method_names()

        def rank(name: str) -> str:  # an ablation sorts after its method, then by its name
            cls = method_of(name)
            base = cls.name if cls is not None else None
            return f"{order.index(base) if base else len(order):04d}|{name != base:d}|{name}"

        return column.map(rank)
    if column.name == "batching":
        return column.map(lambda b: BATCHINGS.index(b) if b in BATCHINGS else len(BATCHINGS))
    return column


def _bert_of_the_same_run(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Each row's ``column`` in the full-depth ``bert`` run of its dataset and seed made by the
    same commit (NaN where there is none): times are compared only within one run, since a
    later run may land on a faster or slower machine."""
    commits = frame["git_commit"].fillna("")
    bert = frame[frame["reference"]].assign(git_commit=commits)
    reference = bert.set_index(["dataset", "seed", "git_commit"])[column]
    keys = pd.MultiIndex.from_frame(frame[["dataset", "seed"]].assign(git_commit=commits))
    return reference.reindex(keys).to_numpy()


def with_realised_speedup(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``wall_speedup``: throughput over that of the full-depth ``bert`` run on the same
    dataset and seed, measured by the same commit (NaN where there is none)."""
    out = frame.copy()
    out["wall_speedup"] = out["throughput"].to_numpy() / _bert_of_the_same_run(frame, "throughput")
    return out


def with_latency_model(frame: pd.DataFrame, results: Path) -> tuple[pd.DataFrame, Device | None]:
    """Add the latency model's predictions (geep.measure.latency), when the profile has a
    calibration run and the rows carry their calls:

    - ``modelled_seconds``: the time of the row's run predicted by the model fitted on the
      calibration run's ``bert`` points alone (the device the benchmarks ran on), and
      ``model_error``: that over the measured median run time, minus 1, for rows of the
      ``bert`` run's commit (the calibration runs beside it);
    - ``modelled_<gpu>_speedup``: the modelled GPU time of the full-depth ``bert`` run on the
      same dataset and seed over the row's (modelled, never measured).

    Returns the frame and the fitted device (None without a calibration run).
    """
    path = results / CALIBRATION_FILE
    if not path.is_file() or "calls" not in frame.columns:
        return frame, None
    try:
        points, header = load_calibration(path)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        what = type(err).__name__
        raise GeepError(f"{path} is not a calibration file ({what}): re-run it") from err
    device = fit_device(points, header["device"], overlap=header.get("backend") == "cuda")
    out = frame.copy()
    calls = [calls_from_rows(c) if isinstance(c, list) else None for c in out["calls"]]
    models = {"modelled_seconds": device} | {f"modelled_{g}_seconds": d for g, d in GPUS.items()}
    for column, model in models.items():
        out[column] = [
            np.nan if c is None else model.seconds(c, ops)
            for c, ops in zip(calls, out["operators"], strict=True)
        ]
    # the calibration run is the bert run's: other runs' times may come from another machine
    same_run = ~np.isnan(_bert_of_the_same_run(out, "round_seconds_median"))
    measured = out["round_seconds_median"].where(same_run)
    out["model_error"] = out["modelled_seconds"] / measured - 1
    keys = pd.MultiIndex.from_frame(out[["dataset", "seed"]])
    bert = out[out["reference"]].set_index(["dataset", "seed"])
    for gpu in GPUS:
        reference = bert[f"modelled_{gpu}_seconds"].reindex(keys).to_numpy()
        out[f"modelled_{gpu}_speedup"] = reference / out[f"modelled_{gpu}_seconds"].to_numpy()
    return out, device


def _mean_cell(picked: pd.DataFrame, speedups: tuple[str, ...] = ("speedup_full",)) -> str:
    """One table cell from one chosen row per seed: mean accuracy +- the mean half-width of its
    95% interval, the seeds' standard deviation when there are several, and mean speedups (with
    the wall clock's, the spread of its timed runs where there were several)."""
    accuracy = picked["accuracy"].mean()
    half = ((picked["accuracy_high"] - picked["accuracy_low"]) / 2).mean()
    text = f"{accuracy:.3f} ± {half:.3f}"
    if len(picked) > 1:
        text += f", sd {picked['accuracy'].std(ddof=1):.3f}"
    shown = [f"{picked[s].mean():.2f}x" for s in speedups if picked[s].notna().all()]
    timed = {"rounds", "round_spread"} <= set(picked.columns) and "wall_speedup" in speedups
    if timed and (picked["rounds"] > 1).all():  # the timed runs' (max - min) / median
        shown.append(f"spread {picked['round_spread'].mean():.0%}")
    return f"{text} ({', '.join(shown)})"


ALIKE = ("accuracy", "speedup_full", "exit_histogram")  # what policies that exit alike share


def exits_alike(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows an accuracy table lists: a method whose batching policies exit alike (every
    dataset, seed and setting with the same accuracy, FLOPs and exit histogram under each:
    shrinking and regrouped batches exit the same samples, geep.core.dynamic_exit) once, as
    ``method (shrink = regroup)``; a method whose policies differ once per policy."""
    if "batching" not in frame.columns:
        return frame
    keep = []
    for method, rows in frame.groupby("method", sort=False):
        policies = list(dict.fromkeys(rows["batching"].dropna()))
        if len(policies) < 2:
            keep.append(rows)
            continue
        keys, shared = ["dataset", "seed", "setting"], [c for c in ALIKE if c in rows]
        per_policy = [
            rows[rows["batching"] == p].set_index(keys)[shared].sort_index().astype(str)
            for p in policies
        ]
        if all(other.equals(per_policy[0]) for other in per_policy[1:]):
            first = rows[rows["batching"] == policies[0]].copy()
            first["variant"] = f"{method} ({' = '.join(policies)})"
            first["batching"] = None  # no one policy: drawn as a method without one
            keep.append(first)
        else:
            keep.append(rows)
    return pd.concat(keep).sort_index()  # in the frame's order


def matched_table(frame: pd.DataFrame, dataset: str) -> str:
    """Markdown: each method at full depth and at each target FLOPs speedup; batching policies
    that exit alike share one row (:func:`exits_alike`).

    At a target, each seed's slowest setting whose speedup (as printed, 2 decimals) reaches it
    is taken: chosen by FLOPs alone, never by test accuracy.
    """
    header = ["method", "batching", "full depth"] + [f">= {t:g}x" for t in TARGETS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    frame = exits_alike(frame)
    matched = [matched_settings(frame, dataset, target) for target in (0.0, *TARGETS)]
    for name in matched[0]:
        cells = _name_cells(name)
        cells += ["-" if m[name] is None else _mean_cell(m[name]) for m in matched]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def matched_settings(
    frame: pd.DataFrame, dataset: str, target: float
) -> dict[str, pd.DataFrame | None]:
    """Per :func:`variant`, each seed's slowest setting whose FLOPs speedup (as printed, 2
    decimals) reaches ``target`` (0: the slowest of all); None where a seed has none."""
    rows = frame[frame["dataset"] == dataset]
    out: dict[str, pd.DataFrame | None] = {}
    for name, group in rows.groupby("variant", sort=False):
        seeds = [runs for _, runs in group.groupby("seed")]
        reaching = [runs[runs["speedup_full"].round(2) >= target] for runs in seeds]
        out[name] = None if any(r.empty for r in reaching) else _slowest(reaching)
    return out


def _slowest(seeds: list[pd.DataFrame]) -> pd.DataFrame:
    """Each seed's row of the smallest FLOPs speedup."""
    return pd.DataFrame([runs.loc[runs["speedup_full"].idxmin()] for runs in seeds])


def fastest_table(frame: pd.DataFrame, dataset: str) -> str:
    """Markdown: each method's fastest setting within :data:`WITHIN` of ``bert``'s accuracy.

    Per seed, the setting with the largest FLOPs speedup whose accuracy is at least ``bert``'s
    (same seed) minus one point; its FLOPs and wall-clock speedups over ``bert``.
    """
    header = ["method", "batching", "accuracy (FLOPs, wall-clock speedup)", "settings"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, chosen in fastest_settings(frame, dataset).items():
        if chosen is None:
            cells = ["-", f"none within {WITHIN * 100:g} point"]
        else:
            settings = ", ".join(f"{s}" for s in chosen["setting"])
            cells = [_mean_cell(chosen, ("speedup_full", "wall_speedup")), settings]
        lines.append("| " + " | ".join(_name_cells(name) + cells) + " |")
    return "\n".join(lines)


def fastest_settings(frame: pd.DataFrame, dataset: str) -> dict[str, pd.DataFrame | None]:
    """Per :func:`variant`, each seed's setting of the largest FLOPs speedup whose accuracy is
    at least ``bert``'s (same seed) minus :data:`WITHIN`; None where a seed has none."""
    rows = frame[frame["dataset"] == dataset]
    bert = rows[rows["reference"]].set_index("seed")["accuracy"]
    out: dict[str, pd.DataFrame | None] = {}
    for name, group in rows.groupby("variant", sort=False):
        picked = []
        for seed, runs in group.groupby("seed"):
            good = runs[runs["accuracy"] >= bert.get(seed, np.nan) - WITHIN - 1e-9]
            if good.empty:
                break
            picked.append(good.loc[good["speedup_full"].idxmax()])
        out[name] = pd.DataFrame(picked) if len(picked) == group["seed"].nunique() else None
    return out


def work_table(frame: pd.DataFrame, dataset: str) -> str:
    """Markdown: the work each method issues (geep.measure.work) and its speedups, measured and
    modelled (seed means), at its fastest setting within :data:`WITHIN` of ``bert``'s accuracy
    and at the slowest setting reaching 2x FLOPs."""
    gpus = list(GPUS)
    header = [
        "method",
        "batching",
        "setting",
        "accuracy",
        "FLOPs speedup",
        "measured wall-clock speedup",
        "layer batches",
        "mean rows per layer batch",
        "head calls",
        "executed / useful FLOPs",
        *(f"modelled {g.upper()} speedup" for g in gpus),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    picks = {
        f"within {WITHIN * 100:g} point": fastest_settings(frame, dataset),
        ">= 2x FLOPs": matched_settings(frame, dataset, 2.0),
    }
    for name in picks[next(iter(picks))]:
        for pick, chosen in picks.items():
            lines.append(_work_row(name, pick, chosen[name], gpus, len(header)))
    return "\n".join(lines)


def _work_row(
    name: str, pick: str, chosen: pd.DataFrame | None, gpus: list[str], columns: int
) -> str:
    if chosen is None:
        cells = [*_name_cells(name), f"{pick}: none"]
        return "| " + " | ".join(cells) + " |" + " - |" * (columns - 3)
    mean = chosen.mean(numeric_only=True)
    settings = ", ".join(str(s) for s in chosen["setting"])
    cells = [
        *_name_cells(name),
        f"{pick}: {settings}",
        f"{mean['accuracy']:.3f}",
        f"{mean['speedup_full']:.2f}x",
        f"{mean['wall_speedup']:.2f}x" if chosen["wall_speedup"].notna().all() else "-",
        f"{mean['layer_batches']:.0f}",
        f"{mean['mean_layer_batch_rows']:.1f}",
        f"{mean['head_calls']:.0f}",
        f"{mean['flops_executed_full'] / mean['flops_full']:.2f}",
        *(f"{mean[f'modelled_{g}_speedup']:.2f}x" for g in gpus),
    ]
    return "| " + " | ".join(cells) + " |"


def model_section(frame: pd.DataFrame, device: Device) -> str:
    """Markdown: the fitted model and how well it predicts the measured time of every run that
    was not part of its fit (every method but ``bert``)."""
    others = frame[~frame["reference"] & frame["model_error"].notna()]
    error = others["model_error"].abs()
    per_method = others.assign(abs_error=error).groupby("variant", sort=False)["abs_error"]
    methods = ", ".join(f"`{m}` {e * 100:.1f}%" for m, e in per_method.median().items())
    gpus = "; ".join(f"{d.name}: {d.source}" for d in GPUS.values())
    return "\n".join(
        [
            "## Latency model",
            "",
            f"Fitted on the calibration run's full-depth `bert` points only ({device.source}): "
            f"{device.operator_seconds * 1e6:.1f} µs per dispatched operator, "
            f"{device.flops_per_second / 1e9:.1f} GFLOP/s, "
            f"{device.bytes_per_second / 1e9:.1f} GB/s. Predicting the measured time of the "
            f"other methods' {len(others)} runs: median error {error.median() * 100:.1f}%, "
            f"worst {error.max() * 100:.1f}% (per method and batching, median: {methods}).",
            "",
            f"GPU speedups are modelled, not measured ({gpus}; geep/measure/latency.py). "
            "The work each "
            f"method issues, at its fastest setting within {WITHIN * 100:g} point of `bert` "
            "and at the slowest setting reaching 2x FLOPs:",
        ]
    )


def precision_section(frame: pd.DataFrame) -> str | None:
    """What the profile's precision changed against float32 eager, per dataset, method and
    setting (seeds' means): accuracy either way and the share of test samples that exit at
    another layer or get another label (geep.pipeline.evaluate.precision_changes); None for a
    float32 run."""
    if "exit_changed" not in frame.columns or frame["exit_changed"].isna().all():
        return None
    keys = ["dataset", "variant", "setting"]
    means = frame.groupby(keys, sort=False)[
        ["accuracy", "float32_accuracy", "exit_changed", "label_changed"]
    ].mean()
    runtime = frame["runtime"].iloc[0]
    lines = [
        f"## What {runtime} changed against float32 eager",
        "",
        "The same checkpoints on the same test samples, a float32 eager copy run beside each "
        "unit: accuracy either way and the share of samples that exit at another layer or get "
        "another label.",
        "",
        f"| dataset | method | batching | setting | accuracy ({runtime}) | accuracy (float32) "
        "| exit changed | label changed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, name, setting), r in means.iterrows():
        cells = [dataset, *_name_cells(name), setting, f"{r.accuracy:.3f}"]
        cells += [f"{r.float32_accuracy:.3f}", f"{r.exit_changed:.1%}", f"{r.label_changed:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    worst = means.groupby(level="variant", sort=False)[["exit_changed", "label_changed"]].max()
    lines += [
        "",
        "At most, per method: "
        + "; ".join(
            f"`{v}` {r.exit_changed:.1%} of exits, {r.label_changed:.1%} of labels"
            for v, r in worst.iterrows()
        )
        + ".",
    ]
    return "\n".join(lines)


def encoding_section(results: Path) -> str | None:
    """Markdown: the large-split encoding benchmark's figures, when the profile ran it."""
    path = results / ENCODING_FILE
    if not path.is_file():
        return None
    try:
        e = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GeepError(f"{path} is unreadable ({type(err).__name__}): re-run it") from None
    rows = [
        (
            "tokenizing",
            f"{e['encode_rows_per_s']:,} samples/s ({e['encode_seconds']:g} s, "
            f"{e['encode_cpu_per_wall']:g} cores busy)",
            e["encode_peak_rss_mib"],
            e["libraries_rss_mib"],
        ),
        (
            "loading from the cache",
            f"{e['cached_load_seconds']:g} s",
            e["cached_peak_rss_mib"],
            e["cached_libraries_rss_mib"],
        ),
    ]
    lines = [
        "## Encoding a large split",
        "",
        f"{e['rows']:,} generated samples at length {e['seq_len']} "
        f"(benchmarks/test_encoding_memory.py) on {e['device']}, commit {e['git_commit']}. "
        f"The cache entry takes {e['cache_mib']:g} MiB on disk (the texts {e['text_mib']:g} MiB; "
        f"three int64 tensors would take {e['int64_tensors_mib']:,.0f} MiB). Peak resident "
        f"memory above the libraries and tokenizer must stay under "
        f"{e['bound_above_libraries_mib']:,} MiB; random batches of 32 from the cache: "
        f"{e['batches_per_s']:,} a second.",
        "",
        "| step | speed | peak resident MiB | of which libraries and tokenizer |",
        "|---|---|---|---|",
        *(
            f"| {step} | {speed} | {peak:,} | {libraries:,} |"
            for step, speed, peak, libraries in rows
        ),
    ]
    return "\n".join(lines)


def exit_rule_section(results: Path) -> str | None:
    """Markdown: the exit rules each GEEP run file compared on dev and the one it chose
    (:meth:`geep.methods.geep.Geep.choose_on_dev`, recorded as ``dev_sweep.choice``); None when no
    run file records a choice."""
    rows, first = [], None
    for path in sorted(results.glob("runs/*/*.json")):
        run = read_run_file(path)
        choice = run["provenance"].get("dev_sweep", {}).get("choice")
        if not choice:
            continue
        first = first or choice
        for r in choice["compared"]:
            chosen = " (chosen)" if r["rule"] == choice["chosen"] else ""
            cells = [run["dataset"], f"`{run['method']}`", str(run["provenance"]["seed"])]
            cells.append(f"`{r['rule']}`{chosen}")
            if r["reached"]:
                cells += [f"{r['dev_speedup_full']:.2f}x", f"{r['dev_accuracy']:.3f}"]
                cells += [f"{r[k]:.2f}" for k in ("exit_mae", "exit_too_early", "exit_too_late")]
            else:
                cells += ["not reached", "", "", "", ""]
            rows.append("| " + " | ".join(cells) + " |")
    if first is None:
        return None
    return "\n".join(
        [
            "## GEEP's exit rule, chosen on dev",
            "",
            f"On {first['samples']} dev samples, each rule runs at its slowest speed whose mean "
            f"dev FLOPs are at most 1/{first['target_speedup']:g} of full depth's; the rule with "
            "the best dev accuracy there is chosen (ties: the smaller exit MAE). Exit layers "
            "against the oracle, the students' own first confident layer: mean absolute error "
            "in layers, and the shares predicted too early and too late.",
            "",
            "| dataset | method | seed | rule | dev speedup | dev accuracy | exit MAE | too early "
            "| too late |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def by_value(frame: pd.DataFrame, column: str, label: str, by: str = "method") -> str:
    """``label`` and the column's value, or, where the rows differ, each value followed by the
    ``by`` values (methods, pieces) whose rows hold it: how a report says what it was made on."""
    groups = frame.groupby(frame[column].fillna("none"), sort=False)[by].unique()
    if len(groups) == 1:
        return f"{label} {groups.index[0]}"
    return "; ".join(f"{label} {value} ({', '.join(groups[value])})" for value in groups.index)


def tables_markdown(
    frame: pd.DataFrame,
    device: Device | None = None,
    encoding: str | None = None,
    serving: str | None = None,
    regime: str | None = None,
    rules: str | None = None,
    precision: str | None = None,
) -> str:
    """All datasets' tables, with how they were made."""
    first = frame.iloc[0]
    seeds = sorted(frame["seed"].unique())
    parts = [
        f"# Results: profile `{first['profile']}` (config {first['config_hash']})",
        "",
        f"{by_value(frame, 'device', 'Device:')}, {first['runtime']}; "
        f"{by_value(frame, 'git_commit', 'commit')}; "
        f"seeds {', '.join(str(s) for s in seeds)}. Accuracy on the test split, ± the "
        "half-width of its 95% bootstrap interval"
        + (", and the standard deviation across seeds" if len(seeds) > 1 else "")
        + ". Speedups are FLOPs at full depth over FLOPs at the setting (`full` convention, "
        "every head evaluated counted); wall-clock speedups are throughput over the full-depth "
        "`bert` run's of the same commit (none where `bert` ran at another), every method "
        "batching its samples in order of length.",
    ]
    for dataset in frame["dataset"].unique():
        n = int(frame[frame["dataset"] == dataset]["n"].iloc[0])
        parts += [
            "",
            f"## {dataset} ({n} test samples)",
            "",
            "At matched FLOPs speedups (per seed, the slowest setting reaching the speedup; in "
            "brackets its speedup):",
            "",
            matched_table(frame, dataset),
            "",
            f"Fastest setting within {WITHIN * 100:g} point of `bert`'s accuracy:",
            "",
            fastest_table(frame, dataset),
        ]
    if device is not None:
        parts += ["", model_section(frame, device)]
        for dataset in frame["dataset"].unique():
            parts += ["", f"### {dataset}", "", work_table(frame, dataset)]
    for section in (precision, rules, encoding, serving, regime):
        if section is not None:
            parts += ["", section]
    return "\n".join(parts) + "\n"


def setting_means(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, variant, setting): the seeds' mean accuracy, interval bounds and
    speedups."""
    columns = ["accuracy", "accuracy_low", "accuracy_high", "speedup_full", "wall_speedup"]
    present = [c for c in columns if c in frame.columns]
    keys = ["dataset", "variant", "setting"]
    return frame.groupby(keys, sort=False)[present].mean().reset_index()


def variant_styles(frame: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Each variant's colour (its method's, the same in every figure: geep.common.style, the
    registry's methods first), line style and marker (its batching policy's)."""
    names = method_names()
    palette = colours([*names, *(m for m in frame["method"].unique() if m not in names)])
    styles = {}
    for row in frame.drop_duplicates("variant").itertuples():
        batching = row.batching if isinstance(row.batching, str) else None
        styles[row.variant] = {
            "color": palette[row.method],
            "linestyle": LINESTYLES[batching],
            "marker": MARKERS[batching],
        }
    return styles


def accuracy_errorbar(
    ax: Axes, points: pd.DataFrame, x: str, label: str | None, style: dict
) -> None:
    """One method's accuracies against ``x``, in order of ``x``, with their 95% intervals as
    error bars (``label`` None: left out of the legend)."""
    points = points.sort_values(x)
    errors = [
        points["accuracy"] - points["accuracy_low"],
        points["accuracy_high"] - points["accuracy"],
    ]
    ax.errorbar(
        points[x],
        points["accuracy"],
        yerr=errors,
        markersize=3,
        capsize=2,
        linewidth=1,
        label=label,
        **style,
    )


def plot_speed_accuracy(frame: pd.DataFrame, dataset: str) -> Figure:
    """Accuracy against FLOPs speedup on one dataset, one curve per method (batching policies
    that exit alike as one, :func:`exits_alike`), with the accuracy's 95% bootstrap interval as
    error bars."""
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    rows = exits_alike(frame[frame["dataset"] == dataset])
    styles = variant_styles(rows)
    means = setting_means(rows)
    for name, group in means.groupby("variant", sort=False):
        accuracy_errorbar(ax, group, "speedup_full", name, styles[name])
    ax.set(xlabel="FLOPs speedup (full convention)", ylabel="test accuracy", title=dataset)
    ax.grid(alpha=0.3)
    outside_legend(fig)
    return fig


def plot_realised_speedup(frame: pd.DataFrame) -> Figure:
    """Wall-clock speedup over ``bert`` against FLOPs speedup, every dataset and method."""
    frame = with_realised_speedup(frame)
    fig = Figure(figsize=(7.5, 4), layout="constrained")
    ax = fig.subplots()
    styles = variant_styles(frame)
    for name, group in frame.groupby("variant", sort=False):
        style = styles[name]
        ax.scatter(
            group["speedup_full"],
            group["wall_speedup"],
            label=name,
            s=14,
            color=style["color"],
            marker=style["marker"],
        )
    top = max(frame["speedup_full"].max(), frame["wall_speedup"].max(skipna=True), 1.0)
    ax.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1, label="wall = FLOPs")
    batch = int(frame["batch_size"].iloc[0])
    ax.set(
        xlabel="FLOPs speedup",
        ylabel="wall-clock speedup over bert",
        title=f"realised vs theoretical speedup, batch {batch}",
    )
    ax.grid(alpha=0.3)
    outside_legend(fig)
    return fig


def plot_modelled_speedup(frame: pd.DataFrame, dataset: str) -> Figure:
    """FLOPs speedup against the measured CPU wall-clock speedup and the modelled H100 speedup
    on one dataset, one marker per method (seed means per setting)."""
    rows = frame[frame["dataset"] == dataset]
    columns = ["speedup_full", "wall_speedup", "modelled_h100_speedup"]
    means = rows.groupby(["variant", "setting"], sort=False)[columns].mean().reset_index()
    styles = variant_styles(rows)
    fig = Figure(figsize=(11.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    panels = [
        ("wall_speedup", "measured: CPU wall clock"),
        ("modelled_h100_speedup", "modelled: H100"),
    ]
    top = max(means[columns].max(skipna=True).max(), 1.0)
    for ax, (column, title) in zip(axes, panels, strict=True):
        for name, group in means.groupby("variant", sort=False):
            style = styles[name]
            ax.scatter(
                group["speedup_full"],
                group[column],
                s=18,
                color=style["color"],
                marker=style["marker"],
                label=name if ax is axes[0] else None,
            )
        ax.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1)
        ax.axhline(1.0, color="gray", linewidth=0.5)
        ax.set(xlabel="FLOPs speedup (full convention)", title=f"{dataset}, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speedup over full-depth bert")
    outside_legend(fig)
    return fig


def write_report(results: str | Path) -> list[Path]:
    """Write the CSV, the tables and the plots next to the run files; returns the paths.

    Every input is read and every output checked (an existing one is replaced only when
    ``geep report`` wrote it) before the work; the outputs are then written as one
    (:func:`geep.common.storage.atomic_write_files`): all of them, or, on a failure, none.
    """
    results = Path(results)
    if (results / CHECK_FILE).is_file() and not (results / "runs").exists():
        return _write_gpu_check_tables(results)
    frame, device = with_latency_model(with_realised_speedup(load_runs(results)), results)
    served = serving_files(results)
    encoding, serving = encoding_section(results), serving_section(served)
    regime = paper_regime(frame) if has_regime(frame) else None
    section = regime_section(frame, regime) if regime is not None else None
    datasets = frame["dataset"].unique()
    plots = [(f"speed-accuracy-{d}.png", plot_speed_accuracy, (frame, d)) for d in datasets]
    plots.append(("realised-speedup.png", plot_realised_speedup, (frame,)))
    if device is not None:
        plots += [
            (f"modelled-speedup-{d}.png", plot_modelled_speedup, (frame, d)) for d in datasets
        ]
    plots += [(f"serving-{d}.png", plot_server_latency, (doc,)) for d, doc in served.items()]
    if regime is not None:
        plots.append(("paper-regime.png", plot_regime, (regime, variant_styles(frame))))
    names = ["results.csv", "tables.md", *(name for name, _, _ in plots)]
    for name in names:
        check_target(results / name, "geep report's output", "file", _report_ownership)
    columns = [c for c in COLUMNS if c in frame.columns]
    outputs = {
        results / "results.csv": frame[columns].to_csv(index=False).encode(),
        results / "tables.md": tables_markdown(
            frame,
            device,
            encoding,
            serving,
            section,
            exit_rule_section(results),
            precision_section(frame),
        ).encode(),
    }
    outputs |= {results / name: figure_png(plot(*args)) for name, plot, args in plots}
    atomic_write_files(outputs)
    return list(outputs)


def _write_gpu_check_tables(results: Path) -> list[Path]:
    """A GPU check's folder (:mod:`geep.reproduce.gpu_check`): its tables, and for a check of
    several modes its plot, from its file."""
    document = json.loads((results / CHECK_FILE).read_text())
    outputs = {results / "tables.md": gpu_tables(document).encode()}
    if "batch_sizes" in document["size"]:
        outputs[results / "speedups.png"] = figure_png(plot_gpu_cells(document))
    for path in outputs:
        check_target(path, "geep report's output", "file", _report_ownership)
    atomic_write_files(outputs)
    return list(outputs)


SOFTWARE = "geep report"  # the PNGs' Software text: how a later report knows they are its own
SIGNATURES = {
    ".csv": ",".join(COLUMNS[:4]).encode(),
    ".md": b"# Results: profile",
    ".png": b"tEXtSoftware\0" + SOFTWARE.encode(),
}


def _report_ownership(path: Path) -> str | None:
    """None when ``path`` begins as ``geep report``'s outputs do (:data:`SIGNATURES`)."""
    signature = SIGNATURES.get(path.suffix)
    with open(path, "rb") as f:
        head = f.read(256)
    if signature is not None and signature in head:
        return None
    return "it is not an output of `geep report`"


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (no timestamp or version in the metadata, so re-runs are
    comparable; :data:`SOFTWARE` marks it as the report's)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, metadata={"Software": SOFTWARE})
    return buffer.getvalue()
