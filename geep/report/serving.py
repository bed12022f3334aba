"""The serving benchmark's results (``<results>/serving/<dataset>.json``, written by
benchmarks/test_serving.py) as a table per dataset and a plot of p99 latency against the
offered rate, and its overload runs (``<results>/serving/overload/<dataset>.json``) as a table
beside them; :func:`geep.report.results.write_report` adds them to the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from geep.common.errors import GeepError
from geep.common.style import LINESTYLES, colours, outside_legend
from geep.core.registry import method_names, method_of

SERVING_FOLDER = "serving"
OVERLOAD_FOLDER = "overload"  # inside the serving folder


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
        document["rows"][0]["unit"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise GeepError(f"{path} is damaged ({type(err).__name__}): re-run it") from None
    return document


def serving_files(results: Path) -> dict[str, dict[str, Any]]:
    """Each dataset's serving file under ``results``, by dataset name (none: {}), with its
    overload file as ``"overload"`` where there is one."""
    found = {}
    folder = results / SERVING_FOLDER
    for path in sorted(folder.glob("*.json")):
        document = _read(path)
        overload = folder / OVERLOAD_FOLDER / path.name
        if overload.is_file():
            document["overload"] = _read(overload)
        found[document["dataset"]] = document
    return found


RUNTIMES = {"torch": "", "onnx": "ONNX Runtime", "onnx-pieces": "ONNX Runtime layer pieces"}


def _name(row: dict[str, Any]) -> str:
    """The unit's name: method, batching policy, runtime (torch unnamed), int8."""
    runtime = RUNTIMES[row.get("runtime", "torch")]  # files written before runtimes: torch
    parts = [f"`{row['method']}`", row["batching"], runtime, row["precision"] == "int8" and "int8"]
    return " ".join(p for p in parts if p)


def _reference(entry: str) -> bool:
    """Whether ``entry`` is the full-depth reference method (``Method.reference``)."""
    cls = method_of(entry)
    return cls is not None and cls.reference


def serving_table(document: dict[str, Any]) -> str:
    """Markdown: one row per served unit, figures and their ratios to float32 ``bert``'s."""
    rows = document["rows"]
    base = next(
        (
            r
            for r in rows
            if _reference(r["method"])
            and r["precision"] == "fp32"
            and r.get("runtime", "torch") == "torch"
        ),
        None,
    )
    target = rows[0]["server_target_ms"]
    lines = [
        "| method | setting | accuracy | as float32 torch | single-stream p90 ms | "
        f"offline samples/s | server rate at p99 <= {target:g} ms |",
        "|---|---|---|---|---|---|---|",
    ]

    def ratio(value: float | None, reference: float | None, lower_is_better: bool) -> str:
        if value is None or not reference or base is None:
            return ""
        x = reference / value if lower_is_better else value / reference
        return f" ({x:.2f}x)"

    for r in rows:
        half = (r["accuracy_high"] - r["accuracy_low"]) / 2
        rate = r["server_rate"]
        cells = [
            _name(r) + (f" (best at {r['best_of']})" if r.get("best_of") else ""),
            r["setting"],
            f"{r['accuracy']:.3f} ± {half:.3f}",
            "" if r.get("fp32_agreement") is None else f"{r['fp32_agreement']:.1%}",
            f"{r['single_stream_p90_ms']:.1f}"
            + ratio(r["single_stream_p90_ms"], base and base["single_stream_p90_ms"], True),
            f"{r['offline_samples_per_s']:.0f}"
            + ratio(r["offline_samples_per_s"], base and base["offline_samples_per_s"], False),
            ("none met it" if rate is None else f"{rate:.0f}")
            + ratio(rate, base and base["server_rate"], False),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def serving_section(documents: dict[str, dict[str, Any]]) -> str | None:
    """Markdown: the serving benchmark's tables (``documents``: :func:`serving_files`) with how
    they were made; None without any."""
    if not documents:
        return None
    first = next(iter(documents.values()))
    settings, meta = first["settings"], first["provenance"]
    batcher, load = settings["batcher"], settings["loadgen"]
    parts = [
        "## Serving under load (MLPerf LoadGen)",
        "",
        f"Seed {meta['seed']}, commit {meta['git_commit']}, device {first['rows'][0]['device']}. "
        f"A dynamic batcher (batches of {batcher['max_batch']}, at most "
        f"{batcher['max_wait'] * 1000:g} ms of waiting, {batcher['max_dispatch']} requests a "
        f"dispatch; GEEP queues by predicted exit layer); LoadGen runs of at least "
        f"{load['min_duration']:g} s and {load['min_queries']} queries (the official minimum "
        "is 600 s). Single-stream at batch 1; the server rate is the highest Poisson rate "
        f"whose p99 latency met {load['target_latency'] * 1000:g} ms, searched by halving "
        "below the offline throughput. Settings chosen on dev: `matched`, FLOPs speedup closest "
        "to the plan's; `within`, the fastest within its accuracy drop of `bert`. In brackets: "
        "the ratio to float32 `bert` in torch measured in the same run. Accuracy: the labels "
        "served in LoadGen's accuracy mode, ± the half-width of the 95% bootstrap interval; as "
        "float32 torch: for a unit in int8 or in ONNX Runtime (float32 or dynamic int8: `bert` "
        "as one graph, an early-exit method as layer pieces driven by its own exit loop), the "
        "share of its served labels equal to the same method's in float32 torch.",
    ]
    for dataset, document in documents.items():
        parts += ["", f"### {dataset}", "", serving_table(document)]
        if "overload" in document:
            parts += ["", overload_section(document["overload"])]
    return "\n".join(parts)


def overload_section(document: dict[str, Any]) -> str:
    """Markdown: the overload runs (geep.serving.server.measure_overload) with how they were made,
    one row per (method, multiple of the highest rate it held)."""
    meta, settings = document["provenance"], document["settings"]
    lines = [
        f"Overload: Server runs at {', '.join(f'{m:g}x' for m in _multiples(document))} the "
        "highest rate the unit held in a rate search on the same machine just before (in "
        "brackets; the file keeps that search's runs, which need not be the table's above), "
        "behind a queue limit of "
        f"{settings['batcher']['max_queue']} waiting requests: a request past it is dropped "
        "(completed to LoadGen at once with no data, counted). Commit "
        f"{meta['git_commit']}, device {document['rows'][0]['device']}. Answered/s: answered "
        "queries over the run's wall time; p99 of the answered queries only, on the server's "
        "clock; peak RSS of the process, sampled every 5 ms during the run (its growth over the "
        "start in brackets); planned: the seconds LoadGen issues queries over.",
        "",
        "| method | setting | offered q/s | answered/s | dropped | p99 answered ms | peak queue "
        "| peak RSS MiB | planned s | run s | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in document["rows"]:
        for run in row["runs"]:
            p99, peak = run["answered_p99_ms"], run["rss_peak_mib"]
            memory = (
                "not measured"
                if peak is None
                else f"{peak:.0f} (+{peak - run['rss_start_mib']:.0f})"
            )
            cells = [
                f"`{row['method']}`",
                row["setting"],
                f"{run['offered_rate']:.0f} ({run['multiple']:g}x {row['reference_rate']:.0f})",
                f"{run['answered_per_s']:.0f}",
                f"{run['dropped']} of {run['issued']} ({run['dropped_share']:.0%})",
                "none" if p99 is None else f"{p99:.0f}",
                f"{run['peak_waiting']}",
                memory,
                f"{run['planned_s']:.1f}",
                f"{run['wall_s']:.1f}",
                run["verdict"],
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _multiples(document: dict[str, Any]) -> list[float]:
    return sorted({run["multiple"] for row in document["rows"] for run in row["runs"]})


SETTING_MARKERS = {"full": "o", "matched": "o", "within": "s"}


def plot_server_latency(document: dict[str, Any]) -> Figure:
    """p99 latency against the offered Poisson rate, one line per served unit: a colour per
    method, the line's style its batching policy (solid shrink, dashed regroup, dotted keep),
    the marker its setting (circle matched, square within), int8 in a thick line."""
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.subplots()
    names = method_names()
    served = [r["method"] for r in document["rows"]]
    palette = colours([*names, *(m for m in served if m not in names)])
    for r in document["rows"]:
        runs = sorted(r["server_runs"], key=lambda run: run["rate"])
        if not runs:
            continue
        int8 = r["precision"] == "int8"
        ax.plot(
            [x["rate"] for x in runs],
            [x["p99_ms"] for x in runs],
            color=palette[r["method"]],
            linestyle=LINESTYLES.get(r["batching"], "-"),
            marker=SETTING_MARKERS.get(r["setting"], "o"),
            linewidth=2.5 if int8 else 1.2,
            markersize=4,
            label=f"{_name(r).replace('`', '')} {r['setting']}",
        )
    target = document["rows"][0]["server_target_ms"]
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="p99 target")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (queries/s, Poisson)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"{document['dataset']}: serving under load (LoadGen Server scenario)")
    ax.grid(alpha=0.3)
    outside_legend(fig, ncol=2)
    return fig
