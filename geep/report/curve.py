"""A learning curve's report: ``geep report results/learning-curve`` on a folder whose subfolders
are the results of its pieces (profiles alike but for their training-set sizes,
geep.reproduce.profiles.CURVES).

A piece is finished when its run has measured every unit of its profile; an unfinished one (a run
stopped before its last unit, to be resumed) is left out and named. Each finished piece gets its
own report (:func:`geep.report.results.write_report`); the curve's folder gets

- ``tables.md``: per dataset, each method's test accuracy at full depth and at the setting chosen
  on dev for 2x FLOPs, one column per training-set size, then the gaps the README's claims rest
  on, per size;
- ``learning-curve-<dataset>.png``: the same accuracies against the training-set size, with
  their 95% intervals.

A cell averages the seeds (one trained model each) and gives the mean half-width of the
accuracy's bootstrap interval and the seeds' standard deviation; a gap is the mean over seeds of
the difference between two methods' accuracies on the same seed, with its standard deviation.
How a gap moves as the training set grows is the slope of the seeds' gaps against the logarithm
of the size, with its 95% interval (:func:`gap_trend`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from geep.common.errors import GeepError
from geep.common.storage import atomic_write_files, check_target
from geep.common.style import outside_legend
from geep.report.results import (
    _mean_cell,
    _name_cells,
    _report_ownership,
    accuracy_errorbar,
    by_value,
    figure_png,
    load_runs,
    variant_styles,
    write_report,
)
from geep.reproduce.profiles import Profile, get_profile
from geep.reproduce.run_files import read_run_file
from geep.reproduce.units import missing_units, units

TARGET = 2.0  # the dev-chosen FLOPs speedup the curve follows, beside full depth
TREND_LEVEL = 0.95  # the confidence of a gap trend's interval
TREND_NOTE = (
    "; last, the slope of the seeds' gaps per tenfold training set with its interval, and "
    "whether the gap grows, holds or closes as the training set grows"
)
GAPS = (  # the README's claims: (claim, method, the one it is compared with)
    ("one step of training is enough", "geep", "geep-two-step"),
    ("a teacher fed diverse outputs is better", "geep", "geep-teacher-last"),
    ("predicted exits are as good as dynamic ones", "geep", "fastbert"),
    ("predicted exits are as good as dynamic ones", "geep-two-step", "fastbert"),
)


def pieces(results: Path) -> list[Path]:
    """The subfolders of ``results`` that hold run files: a curve's pieces (none: not a curve)."""
    if (results / "runs").exists():
        return []
    return sorted(p for p in results.iterdir() if (p / "runs").is_dir())


def piece_profile(piece: Path) -> Profile:
    """The profile a piece was run under: the one its run files name. GeepError when they name
    none or several."""
    names = {read_run_file(p)["provenance"]["profile"] for p in (piece / "runs").glob("*/*.json")}
    if len(names) != 1:
        found = ", ".join(sorted(names)) or "none"
        raise GeepError(f"{piece}: its run files should name one profile, they name {found}")
    return get_profile(names.pop())


def _stale_run_files(piece: Path, profile: Profile) -> int:
    """How many of a piece's run files were made under another configuration of its profile:
    their units count as missing (:func:`geep.reproduce.units.missing_units`)."""
    files = (piece / "runs").glob("*/*.json")
    return sum(
        read_run_file(p)["provenance"]["config_hash"] != profile.config_hash() for p in files
    )


def finished(results: Path) -> tuple[list[Path], list[str]]:
    """The pieces whose runs have measured every unit of their profile
    (:func:`geep.reproduce.units.missing_units`), and a line for each of the others saying how
    far it got: a resumed run finishes it, and until then the curve leaves it out."""
    done, waiting = [], []
    for piece in pieces(results):
        profile = piece_profile(piece)
        total, left = len(units(profile)), len(missing_units(piece, profile))
        if left:
            line = f"`{piece.name}`: {total - left} of its {total} units measured"
            stale = _stale_run_files(piece, profile)
            if stale:
                line += (
                    f", {stale} of its run files made under another configuration of "
                    f"`{profile.name}` (a resumed run measures their units again)"
                )
            waiting.append(line)
        else:
            done.append(piece)
    if not done:
        raise GeepError(f"no piece of {results} has finished its run: {'; '.join(waiting)}")
    return done, waiting


def load_curve(done: list[Path]) -> pd.DataFrame:
    """The rows (:func:`load_runs`) of a curve's finished pieces (:func:`finished`) with
    ``train_samples``, the training-set size the row's model was trained on. GeepError when a
    run file does not say it, or when two pieces trained on one dataset with the same size."""
    frames = []
    for piece in done:
        frame = load_runs(piece).assign(piece=piece.name)
        if "train_samples" not in frame or frame["train_samples"].isna().any():
            raise GeepError(f"{piece}: a run file does not say how many samples it trained on")
        frames.append(frame)
    curve = pd.concat(frames, ignore_index=True)
    sizes = curve.groupby(["dataset", "train_samples"])["piece"].nunique()
    if (sizes > 1).any():
        (dataset, size), _ = next(iter(sizes[sizes > 1].items()))
        raise GeepError(f"two pieces of {done[0].parent} trained on {size:,} samples of {dataset}")
    curve["train_samples"] = curve["train_samples"].astype(int)
    return curve


def at_target(curve: pd.DataFrame, target: float) -> pd.DataFrame:
    """Each model's row at full depth (``target`` 0: its slowest setting) or at the setting its
    dev sweep chose for ``target``x FLOPs; a method without early exit (``bert``) keeps its
    full-depth row as the reference."""
    if target == 0:
        slowest = curve.groupby(["dataset", "variant", "seed", "train_samples"])["speedup_full"]
        return curve[curve["speedup_full"] == slowest.transform("min")]
    chosen = curve["dev_target"] == target if "dev_target" in curve else False
    return curve[chosen | curve["reference"]]


def accuracy_table(rows: pd.DataFrame, sizes: list[int]) -> str:
    """Markdown: a row per method, a column per training-set size."""
    header = ["method", "batching", *(f"{n:,}" for n in sizes)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, group in rows.groupby("variant", sort=False):
        cells = []
        for size in sizes:
            picked = group[group["train_samples"] == size]
            cells.append(_mean_cell(picked) if len(picked) else "-")
        lines.append("| " + " | ".join(_name_cells(name) + cells) + " |")
    return "\n".join(lines)


def gaps_table(rows: pd.DataFrame, sizes: list[int]) -> str:
    """Markdown: per claim of :data:`GAPS`, the first method's accuracy less the second's, seed
    by seed, as mean and standard deviation over the seeds, per training-set size; with more
    than one size, how it moves as the size grows (:func:`gap_trend`)."""
    header = ["claim", "gap", *(f"{n:,}" for n in sizes)]
    if len(sizes) > 1:
        header.append(f"per 10x samples [{TREND_LEVEL:.0%}]")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_method = rows.groupby("method")
    for claim, first, second in GAPS:
        if first not in by_method.groups or second not in by_method.groups:
            continue
        keys = ["train_samples", "seed"]
        one = by_method.get_group(first).set_index(keys)["accuracy"]
        other = by_method.get_group(second).set_index(keys)["accuracy"]
        gap = (one - other).dropna()
        cells = []
        for size in sizes:
            seeds = gap[gap.index.get_level_values(0) == size]
            cells.append(_gap_cell(seeds.to_numpy()))
        if len(sizes) > 1:
            cells.append(_trend_cell(gap_trend(gap)))
        lines.append(f"| {claim} | `{first}` - `{second}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gap_trend(gap: pd.Series) -> dict[str, float | str] | None:
    """How a gap (indexed by training-set size and seed) moves as the training set grows: the
    least-squares slope of the seeds' gaps against log10 of the size, per tenfold size, with its
    :data:`TREND_LEVEL` t interval (``scipy.stats.linregress``). It ``"grows"`` when the
    interval excludes zero and the slope leads away from zero from where the gap starts (its mean
    at the smallest size; from exactly zero any slope does), ``"closes"`` when it leads towards
    zero, else it ``"holds"``. None with fewer than two sizes or three gaps."""
    sizes = gap.index.get_level_values(0).to_numpy(dtype=float)
    if len(np.unique(sizes)) < 2 or len(gap) < 3:
        return None
    fit = stats.linregress(np.log10(sizes), gap.to_numpy(dtype=float))
    half = stats.t.ppf(0.5 + TREND_LEVEL / 2, len(gap) - 2) * fit.stderr
    low, high = fit.slope - half, fit.slope + half
    start = gap[sizes == sizes.min()].mean()
    if low <= 0 <= high:
        verdict = "holds"
    elif start == 0 or np.sign(fit.slope) == np.sign(start):
        verdict = "grows"
    else:
        verdict = "closes"
    return {"slope": fit.slope, "low": low, "high": high, "trend": verdict}


def _trend_cell(trend: dict[str, float | str] | None) -> str:
    if trend is None:
        return "-"
    return f"{trend['trend']}: {trend['slope']:+.3f} [{trend['low']:+.3f}, {trend['high']:+.3f}]"


def _gap_cell(gaps: np.ndarray) -> str:
    if len(gaps) == 0:
        return "-"
    text = f"{gaps.mean():+.3f}"
    return f"{text}, sd {gaps.std(ddof=1):.3f}" if len(gaps) > 1 else text


def curve_markdown(curve: pd.DataFrame, waiting: list[str] = ()) -> str:
    """The curve's tables, with how they were made; ``waiting``: the unfinished pieces left
    out (:func:`finished`)."""
    profiles = ", ".join(f"`{p}`" for p in curve["piece"].unique())
    seeds = sorted(curve["seed"].unique())
    devices = by_value(curve, "device", "device:", by="piece")
    parts = [
        f"# Results: profiles {profiles} as a learning curve",
        "",
        f"Each piece's own tables are in its folder; {devices}; "
        f"seeds {', '.join(str(s) for s in seeds)}. Test accuracy ± the mean half-width of its "
        "95% bootstrap interval, the standard deviation across seeds, and in brackets the FLOPs "
        f"speedup reached on test; at {TARGET:g}x, each model's setting chosen on dev for "
        f"{TARGET:g}x FLOPs (`bert`: full depth, the reference). Columns: training samples.",
    ]
    if waiting:
        parts += ["", f"Left out until their runs finish: {'; '.join(waiting)}."]
    for dataset in curve["dataset"].unique():
        rows = curve[curve["dataset"] == dataset]
        sizes = sorted(rows["train_samples"].unique())
        n = int(rows["n"].iloc[0])
        full, target = at_target(rows, 0), at_target(rows, TARGET)
        parts += [
            "",
            f"## {dataset} ({n} test samples)",
            "",
            "At full depth:",
            "",
            accuracy_table(full, sizes),
            "",
            f"At the setting chosen on dev for {TARGET:g}x FLOPs:",
            "",
            accuracy_table(target, sizes),
            "",
            f"Gaps at {TARGET:g}x (test accuracy, seed by seed; positive: the first is ahead"
            + (TREND_NOTE if len(sizes) > 1 else "")
            + "):",
            "",
            gaps_table(target[~target["reference"]], sizes),
            "",
            "Gaps at full depth (the same models without early exit):",
            "",
            gaps_table(full, sizes),
        ]
    return "\n".join(parts) + "\n"


def plot_curve(curve: pd.DataFrame, dataset: str) -> Figure:
    """Accuracy against training-set size on one dataset, at full depth and at the dev-chosen
    2x setting, one line per method, with the mean 95% interval as error bars."""
    rows = curve[curve["dataset"] == dataset]
    styles = variant_styles(rows)
    fig = Figure(figsize=(11.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    panels = [(0.0, "full depth"), (TARGET, f"setting chosen on dev for {TARGET:g}x FLOPs")]
    for ax, (target, title) in zip(axes, panels, strict=True):
        picked = at_target(rows, target)
        columns = ["accuracy", "accuracy_low", "accuracy_high"]
        means = picked.groupby(["variant", "train_samples"], sort=False)[columns].mean()
        for name, group in means.reset_index().groupby("variant", sort=False):
            label = name if ax is axes[0] else None  # one legend for both panels
            accuracy_errorbar(ax, group, "train_samples", label, styles[name])
        ax.set_xscale("log")
        ax.set(xlabel="training samples", title=f"{dataset}, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    outside_legend(fig)
    return fig


def write_curve_report(results: Path) -> list[Path]:
    """Each piece's report, then the curve's tables and plots in ``results``; every input is
    read and every output checked before anything is written."""
    done, waiting = finished(results)
    curve = load_curve(done)
    outputs = {results / "tables.md": curve_markdown(curve, waiting).encode()}
    for dataset in curve["dataset"].unique():
        outputs[results / f"learning-curve-{dataset}.png"] = figure_png(plot_curve(curve, dataset))
    for path in outputs:
        check_target(path, "geep report's output", "file", _report_ownership)
    written = [path for piece in done for path in write_report(piece)]
    atomic_write_files(outputs)
    return written + list(outputs)
