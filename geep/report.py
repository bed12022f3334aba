"""Turn a profile's run files into the paper-style outputs: a CSV, Markdown tables and plots.

``geep report results/quick`` (and ``notebooks/figures.ipynb``) read
``results/<profile>/runs/<dataset>/<method>.json`` (:mod:`geep.reproduce`) and write:

- ``results.csv``: one row per (dataset, method, speed);
- ``tables.md``: per dataset, every method at full depth and at matched FLOPs speedups (the most
  accurate setting reaching each target), in the form of the papers' tables;
- ``speed-accuracy-<dataset>.png``: accuracy against FLOPs speedup, one curve per method;
- ``realised-speedup.png``: wall-clock speedup over the full-depth ``bert`` run against FLOPs
  speedup, at the profile's batch size.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from geep.errors import GeepError
from geep.storage import atomic_write_bytes, atomic_write_text

METHOD_ORDER = ["bert", "geep", "fastbert", "deebert", "pabee", "hashee"]
TARGETS = (1.5, 2.0, 3.0)  # FLOPs speedups the tables match methods at
COLUMNS = [
    "dataset",
    "method",
    "speed",
    "accuracy",
    "macro_f1",
    "speedup",
    "speedup_full",
    "flops_fastbert",
    "flops_full",
    "avg_exit_layer",
    "throughput",
    "latency_ms_p50",
    "latency_ms_p95",
    "gpu_util_percent",
    "gpu_memory_mib",
    "cpu_util_percent",
    "batch_size",
    "n",
    "profile",
    "config_hash",
    "device",
    "git_commit",
]


def load_runs(results: str | Path) -> pd.DataFrame:
    """Every measured row under ``results/runs/``, one per (dataset, method, speed).

    All run files must come from one profile configuration (the same config hash): rows made
    with different settings are never put side by side.
    """
    files = sorted(Path(results).glob("runs/*/*.json"))
    if not files:
        raise GeepError(f"no run files under {results}/runs: run `pytest benchmarks/` first")
    records = []
    for path in files:
        try:
            run = json.loads(path.read_text())
            meta = run["provenance"]
            for row in run["rows"]:
                records.append(
                    {
                        **row,
                        "dataset": run["dataset"],
                        "method": run["method"],
                        "profile": meta["profile"],
                        "config_hash": meta["config_hash"],
                        "device": meta["device"],
                        "git_commit": meta["git_commit"],
                    }
                )
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise GeepError(f"{path} is not a run file ({type(err).__name__}): re-run it") from err
    frame = pd.DataFrame.from_records(records)
    hashes = sorted(frame["config_hash"].unique())
    if len(hashes) > 1:
        raise GeepError(
            f"{results} mixes runs of different configurations ({', '.join(hashes)}): "
            "re-run the stale ones or keep each configuration in its own folder"
        )
    return frame.sort_values(["dataset", "method", "speed"], key=_method_order).reset_index(
        drop=True
    )


def _method_order(column: pd.Series) -> pd.Series:
    if column.name == "method":
        return column.map(lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)
    return column


def with_realised_speedup(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``wall_speedup``: throughput over the full-depth ``bert`` run's on the same dataset
    (NaN where the profile has no ``bert`` run)."""
    full = frame[frame["method"] == "bert"].groupby("dataset")["throughput"].first()
    out = frame.copy()
    out["wall_speedup"] = out["throughput"] / out["dataset"].map(full)
    return out


def matched_table(frame: pd.DataFrame, dataset: str) -> str:
    """Markdown: each method's full-depth accuracy, then at each target FLOPs speedup the most
    accurate setting whose speedup reaches it (accuracy, speedup and the speed setting)."""
    rows = frame[frame["dataset"] == dataset]
    header = ["method", "full depth"] + [f">= {t:g}x" for t in TARGETS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, group in rows.groupby("method", sort=False):
        slowest = group.loc[group["speedup_full"].idxmin()]
        cells = [f"`{method}`", f"{slowest['accuracy']:.3f} ({slowest['speedup_full']:.2f}x)"]
        for target in TARGETS:
            reach = group[group["speedup_full"].round(2) >= target]  # as printed
            if reach.empty:
                cells.append("-")
                continue
            best = reach.loc[reach["accuracy"].idxmax()]
            cells.append(
                f"{best['accuracy']:.3f} ({best['speedup_full']:.2f}x, speed {best['speed']:g})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables_markdown(frame: pd.DataFrame) -> str:
    """All datasets' matched tables, with how they were made."""
    first = frame.iloc[0]
    parts = [
        f"# Results: profile `{first['profile']}` (config {first['config_hash']})",
        "",
        f"Device: {first['device']}; commit {first['git_commit']}. Accuracy on the test split; "
        "speedups are FLOPs at full depth over FLOPs at the setting (`full` convention, every "
        "head evaluated counted). In brackets: the speedup and the method's speed setting.",
    ]
    for dataset in frame["dataset"].unique():
        n = int(frame[frame["dataset"] == dataset]["n"].iloc[0])
        parts += ["", f"## {dataset} ({n} test samples)", "", matched_table(frame, dataset)]
    return "\n".join(parts) + "\n"


def plot_speed_accuracy(frame: pd.DataFrame, dataset: str) -> Figure:
    """Accuracy against FLOPs speedup on one dataset, one curve per method."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, group in frame[frame["dataset"] == dataset].groupby("method", sort=False):
        group = group.sort_values("speedup_full")
        ax.plot(group["speedup_full"], group["accuracy"], marker="o", label=method)
    ax.set(xlabel="FLOPs speedup (full convention)", ylabel="test accuracy", title=dataset)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_realised_speedup(frame: pd.DataFrame) -> Figure:
    """Wall-clock speedup over ``bert`` against FLOPs speedup, every dataset and method."""
    frame = with_realised_speedup(frame)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, group in frame.groupby("method", sort=False):
        ax.scatter(group["speedup_full"], group["wall_speedup"], label=method, s=18)
    top = max(frame["speedup_full"].max(), frame["wall_speedup"].max(skipna=True), 1.0)
    ax.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1, label="wall = FLOPs")
    batch = int(frame["batch_size"].iloc[0])
    ax.set(
        xlabel="FLOPs speedup",
        ylabel="wall-clock speedup over bert",
        title=f"realised vs theoretical speedup, batch {batch}",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def write_report(results: str | Path) -> list[Path]:
    """Write the CSV, the tables and the plots next to the run files; returns the paths."""
    results = Path(results)
    frame = with_realised_speedup(load_runs(results))
    written = [results / "results.csv", results / "tables.md"]
    columns = [c for c in [*COLUMNS, "wall_speedup"] if c in frame.columns]
    atomic_write_text(written[0], frame[columns].to_csv(index=False))
    atomic_write_text(written[1], tables_markdown(frame))
    figures = {
        f"speed-accuracy-{d}.png": plot_speed_accuracy(frame, d) for d in frame["dataset"].unique()
    }
    figures["realised-speedup.png"] = plot_realised_speedup(frame)
    for name, fig in figures.items():
        atomic_write_bytes(results / name, figure_png(fig))
        written.append(results / name)
    return written


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (no timestamp in the metadata, so re-runs are comparable)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, metadata={"Software": None})
    return buffer.getvalue()
