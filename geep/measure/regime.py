"""The paper's regime, modelled: BERT-base at length 128, batch sizes 1 to 256.

The suite measures on a 6-layer MiniLM at batch 32. For each measured row (a method's setting on
a dataset and seed) this module builds the calls (:mod:`geep.measure.work`) the method's batching
would
issue on ``N`` samples of one length for the exit layers that row measured, at another encoder's
shape, and costs them with the latency model (:mod:`geep.measure.latency`). Everything it gives is
*modelled*.

- **Exit layers.** A row's exit histogram over L layers is scaled to ``N`` samples; on an encoder
  of L' layers a sample that exited at layer k exits at k L' / L, rounded (the same share of the
  depth: 2k from the 6-layer MiniLM to BERT-base's 12).
- **Calls.** ``bert``: per batch the embeddings, L' layers and one classifier. GEEP's predicted
  exits: one exit-table lookup for the run, then per batch of one predicted layer k the
  embeddings, k layers and one head. Dynamic exits, ``shrink``: per batch (samples assigned to
  batches at random), each layer and head on the rows still running, and the copy of the rows
  that go on. ``regroup``: layer l runs ceil(n_l / B) calls, all full but one (n_l samples reach
  it), each with its head and copy. HashEE: every layer on every row, its active tokens the share
  of samples that have not exited (its per-token exits approximated per sample).
- **Cost.** Calls carry FLOPs (``full`` convention, :mod:`geep.measure.flops`) and bytes (weights
  once per
  call, activations as :func:`geep.measure.work.layer_activation_bytes`) in float32, which the GPU
  devices scale to BF16; each call dispatches the operators the measured row counted for its
  kind. A GPU's time per operator is the knob: 5 µs (the model's default launch cost), the
  33-59 µs eager PyTorch spent per operator on an H200 (docs/gpu.md), and 1 µs for CUDA graphs
  (a lower cost per launch: on the H200 graphs took full-depth BERT-base at batch 1 from 5.1 ms
  to 1.7 ms, about 8 µs per operator with the kernels' own execution included).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from geep.common.style import outside_legend
from geep.measure import flops
from geep.measure.flops import NAMED_DIMS, EncoderDims
from geep.measure.latency import GPUS, SUSTAINED_COMPUTE, Device
from geep.measure.work import (
    Call,
    copy_bytes,
    embedding_bytes,
    fastbert_head_shapes,
    layer_activation_bytes,
    matmul_bytes,
    pooler_head_shapes,
)

SAMPLES = 4096
LENGTH = 128
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ITEMSIZE = 4  # float32, as the suite counts; GPU devices scale bytes to their element size
LAUNCH_COSTS = {  # seconds per dispatched operator (module docstring)
    "CUDA graphs (1 µs)": 1e-6,
    "eager, datasheet (5 µs)": 5e-6,
    "eager, as measured (35 µs)": 35e-6,
}
SENSITIVITY_LAUNCH = (0.5e-6, 1e-6, 2e-6, 5e-6, 10e-6, 20e-6, 35e-6, 60e-6)
SENSITIVITY_COMPUTE = (0.3, 0.6, 0.9)


@dataclass(frozen=True)
class Pattern:
    """What one measured row does: how its inference issues layer calls, how it batches, what
    its heads compute and where its samples exit. The report takes ``inference`` and ``head``
    from the row's method (:meth:`geep.core.interface.Method.inference_of`, ``head_kind``)."""

    inference: str  # "full-depth", "predicted", "dynamic" or "token-exit"
    batching: str | None  # "shrink", "regroup" (dynamic exits), None
    head: str  # "pooler" (pooler and classifier on [CLS]) or "fastbert" (on every token)
    exits: np.ndarray  # [N] exit layer of each sample on the target encoder, 1..L'
    num_labels: int = 2  # the heads' classes (their cost barely depends on it)


def scaled_exits(histogram: Iterable[int], num_layers: int, samples: int = SAMPLES) -> np.ndarray:
    """A row's exit histogram over L layers as ``samples`` exit layers on ``num_layers`` layers,
    at the same share of the depth (layer k -> round(k num_layers / L); 2k from 6 to 12), in a
    fixed random order."""
    counts = np.asarray(list(histogram), dtype=float)
    depth = len(counts)
    per_layer = np.floor(counts / counts.sum() * samples).astype(int)
    per_layer[np.argmax(counts)] += samples - per_layer.sum()  # round to exactly `samples`
    target = np.maximum(1, np.rint(np.arange(1, depth + 1) * num_layers / depth)).astype(int)
    layers = np.repeat(target, per_layer)
    return np.random.default_rng(0).permutation(layers)


def layer_call(dims: EncoderDims, rows: int, tokens: int, active: int | None = None) -> Call:
    """One encoder layer on ``rows`` x ``tokens``, ``active`` tokens updated (all by default)."""
    active = tokens if active is None else active
    h, f = dims.hidden, dims.intermediate
    weights = ITEMSIZE * (4 * h * h + 2 * h * f + 9 * h + f)  # projections, FFN, norms, biases
    moved = weights + layer_activation_bytes(dims, rows, tokens, active, ITEMSIZE)
    executed = rows * flops.token_exit_layer(dims, tokens, active, "full")
    return Call("layer", rows, tokens, executed, moved)


def head_call(dims: EncoderDims, rows: int, tokens: int, kind: str, num_labels: int) -> Call:
    """One exit head: a pooler and classifier on [CLS], or a FastBERT head on every token."""
    h, c, w = dims.hidden, num_labels, flops.FASTBERT_HEAD_WIDTH
    if kind == "pooler":
        weights = ITEMSIZE * (h * h + h + h * c + c)
        shapes = pooler_head_shapes(rows, h, c)
        executed = rows * flops.pooler_classifier(h, c)
    else:
        weights = ITEMSIZE * (h * w + 5 * (w * w + w) + w * c + c)
        shapes = fastbert_head_shapes(rows, tokens, h, w, flops.FASTBERT_HEAD_HEADS, c)
        executed = rows * flops.fastbert_head(h, tokens, c, "full")
    return Call(
        "head",
        rows,
        1 if kind == "pooler" else tokens,
        executed,
        weights + matmul_bytes(shapes, ITEMSIZE),
    )


def embed_call(dims: EncoderDims, rows: int, tokens: int) -> Call:
    return Call("embed", rows, tokens, 0, embedding_bytes(rows, tokens, dims.hidden, ITEMSIZE))


def select_call(dims: EncoderDims, rows: int, tokens: int) -> Call:
    return Call("select", rows, tokens, 0, copy_bytes(rows, tokens, dims.hidden, ITEMSIZE))


def pattern_calls(
    pattern: Pattern, dims: EncoderDims, batch: int, tokens: int = LENGTH
) -> Counter[Call]:
    """The calls a method with ``pattern`` issues on its samples at ``batch`` and ``tokens``."""
    exits, depth, n = pattern.exits, dims.num_layers, len(pattern.exits)
    calls: Counter[Call] = Counter()

    def add(make: Callable[[int], Call], rows: Iterable[int]) -> None:
        """One call of ``make(r)`` for every r in ``rows`` that is not 0."""
        for r, times in Counter(int(r) for r in rows).items():
            if r > 0:
                calls[make(r)] += times

    def batches(count: int) -> list[int]:  # the rows of each batch of ``count`` samples
        return [batch] * (count // batch) + ([count % batch] if count % batch else [])

    embed = partial(embed_call, dims, tokens=tokens)
    layer = partial(layer_call, dims, tokens=tokens)
    head = partial(head_call, dims, tokens=tokens, kind=pattern.head, num_labels=pattern.num_labels)
    select = partial(select_call, dims, tokens=tokens)
    if pattern.inference == "predicted":
        calls[Call("exit_prediction", n, tokens, 0, n * tokens * (8 + 4 * depth))] += 1
        for exit_layer, group in zip(*np.unique(exits, return_counts=True), strict=True):
            rows = batches(int(group))
            add(embed, rows)
            add(head, rows)
            for _ in range(int(exit_layer)):
                add(layer, rows)
        return calls
    if pattern.batching is None:  # full depth, or HashEE's token exits
        rows = batches(n)
        add(embed, rows)
        add(head, rows)
        for k in range(1, depth + 1):
            share = float((exits >= k).mean()) if pattern.inference == "token-exit" else 1.0
            active = max(1, round(tokens * share))
            add(partial(layer_call, dims, tokens=tokens, active=active), rows)
        return calls
    reach = [int((exits >= k).sum()) for k in range(1, depth + 2)]  # n_1 .. n_L+1
    if pattern.batching == "regroup":
        add(embed, batches(n))
        for k in range(1, depth + 1):
            rows = batches(reach[k - 1])
            add(layer, rows)
            add(head, rows)
            add(select, [round(r * reach[k] / reach[k - 1]) for r in rows])
        return calls
    # shrink: the rows of each batch still running at layers 1 .. L+1 [batches, L+1]
    padded = np.concatenate([exits, np.zeros(-n % batch, dtype=exits.dtype)])
    running = (padded.reshape(-1, batch)[:, :, None] >= np.arange(1, depth + 2)).sum(axis=1)
    add(embed, running[:, 0])
    for k in range(1, depth + 1):
        add(layer, running[:, k - 1])
        add(head, running[:, k - 1])
        add(select, running[:, k])
    return calls


def gpu(name: str, launch: float, compute_share: float = SUSTAINED_COMPUTE) -> Device:
    """The GPU ``name`` of :data:`geep.measure.latency.GPUS` at another cost per operator and share
    of its compute peak."""
    base = GPUS[name]
    peak = base.flops_per_second / SUSTAINED_COMPUTE
    return replace(base, operator_seconds=launch, flops_per_second=compute_share * peak)


def nearest_2x(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, variant, seed) the measured row whose FLOPs speedup is nearest 2x (the
    first of the frame's order on a tie), in the frame's order: no sort decides between ties."""
    distance = (frame["speedup_full"] - 2.0).abs()
    nearest = distance.groupby([frame["dataset"], frame["variant"], frame["seed"]]).idxmin()
    return frame[frame.index.isin(nearest)]


def regime_frame(
    frame: pd.DataFrame,
    model: str = "bert-base",
    devices: Mapping[str, Device] | None = None,
    batch_sizes: Iterable[int] = BATCH_SIZES,
) -> pd.DataFrame:
    """The modelled speedup over ``bert`` (same dataset and seed) of every row of ``frame`` (the
    report's measured rows) on ``model``'s shape at :data:`LENGTH`, per batch size and device
    (default: :data:`DEVICES`, every GPU of :data:`geep.measure.latency.GPUS` at every launch
    cost)."""
    dims = NAMED_DIMS[model]
    devices = DEVICES if devices is None else devices
    records = []
    for (dataset, seed), group in frame.groupby(["dataset", "seed"]):
        full = group[group["reference"]].iloc[0]
        exits = scaled_exits(full["exit_histogram"], dims.num_layers)
        bert = Pattern("full-depth", None, full["head_kind"], exits)
        for batch in batch_sizes:
            reference = pattern_calls(bert, dims, batch)
            base = {
                d: device.seconds(reference, full["operators"]) for d, device in devices.items()
            }
            for _, row in group.iterrows():
                exits = scaled_exits(row["exit_histogram"], dims.num_layers)
                batching = row["batching"] if isinstance(row["batching"], str) else None  # NaN
                pattern = Pattern(row["inference"], batching, row["head_kind"], exits)
                calls = pattern_calls(pattern, dims, batch)
                for d, device in devices.items():
                    records.append(
                        {
                            "dataset": dataset,
                            "seed": seed,
                            "variant": row["variant"],
                            "method": row["method"],
                            "inference": row["inference"],
                            "setting": row["setting"],
                            "speedup_full": row["speedup_full"],
                            "model": model,
                            "batch_size": batch,
                            "device": d,
                            "modelled_speedup": base[d] / device.seconds(calls, row["operators"]),
                        }
                    )
    return pd.DataFrame.from_records(records)


# --- the report's section and plot --------------------------------------------------------------

TABLE_BATCHES = (1, 4, 16, 32, 64, 128, 256)


def _means(regime: pd.DataFrame) -> pd.DataFrame:
    """Seed means of the modelled speedup: [dataset, variant, device] x batch size."""
    keys = ["dataset", "variant", "device", "batch_size"]
    return regime.groupby(keys, sort=False)["modelled_speedup"].mean().unstack("batch_size")


def _crossing(speedups: pd.Series) -> str:
    """The smallest batch size from which the speedup stays at or above 1x, or "never"."""
    above = speedups >= 1.0
    for batch in speedups.index:
        if above.loc[batch:].all():
            return str(batch)
    return "never"


def lead_over_dynamic(means: pd.DataFrame, inference: Mapping[str, str]) -> pd.DataFrame:
    """The modelled speedup of each variant whose exits are predicted (GEEP and its ablations)
    over that of the fastest dynamic-exit variant, per (variant, dataset, device) and batch
    size (>1: it leads); ``inference``: each variant's (:class:`Pattern`)."""
    kinds = means.index.get_level_values("variant").map(inference)
    dynamic = means[kinds == "dynamic"].groupby(["dataset", "device"]).max()
    predicted = means[kinds == "predicted"].index.get_level_values("variant").unique()
    leads = {v: means.xs(v, level="variant") / dynamic for v in predicted}
    return pd.concat(leads, names=["variant"])


def inference_of(regime: pd.DataFrame) -> dict[str, str]:
    """Each variant of a :func:`regime_frame` and how its inference runs."""
    return dict(zip(regime["variant"], regime["inference"], strict=True))


DEVICES = {
    f"{name.upper()}, {launch}": gpu(name, cost)
    for name in GPUS
    for launch, cost in LAUNCH_COSTS.items()
}
"""Every GPU of :data:`geep.measure.latency.GPUS` at every cost of :data:`LAUNCH_COSTS`."""


def paper_regime(frame: pd.DataFrame) -> pd.DataFrame:
    """The report's regime: :func:`regime_frame` of the settings nearest 2x FLOPs on BERT-base,
    every batch size, on :data:`DEVICES`; the section and the plot both read it."""
    return regime_frame(nearest_2x(frame), devices=DEVICES)


def regime_section(frame: pd.DataFrame, regime: pd.DataFrame) -> str:
    """The report's section from ``regime`` (:func:`paper_regime` of ``frame``): modelled speedups
    of the settings nearest 2x FLOPs on BERT-base at length 128 for every batch size and cost per
    operator, where each crosses 1x, GEEP's lead, the embedded MiniLM for comparison and a
    sensitivity sweep."""
    picked = nearest_2x(frame)
    flops_speedup = picked.groupby(["dataset", "variant"], sort=False)["speedup_full"].mean()
    means = _means(regime)
    minilm = _means(regime_frame(picked, "minilm-l6", DEVICES))
    parts = [
        "## The paper's regime, modelled",
        "",
        "Every number in this section is **modelled** (geep/measure/regime.py): BERT-base "
        f"(12 layers, hidden 768) at length {LENGTH}, {SAMPLES} samples, on an H100 and an A100 "
        "(datasheet BF16 compute and bandwidth at the sustained shares of "
        "geep/measure/latency.py; the tables per method are the H100's). Each method runs the "
        "setting nearest 2x FLOPs of each seed (the mean of the seeds is shown), with the exit "
        "layers it measured mapped to twice the depth (layer k of 6 -> layer 2k of 12), and the "
        "operators per call it measured. The cost per dispatched operator: 1 µs for CUDA "
        "graphs, the model's default 5 µs, and 35 µs, what eager PyTorch spent on an H200 "
        "(docs/gpu.md). Cells: modelled speedup over full-depth `bert` at each batch size; "
        "'>= 1x from': the batch size from which it stays at or above 1x.",
    ]
    header = (
        "| variant | FLOPs | " + " | ".join(f"batch {b}" for b in TABLE_BATCHES) + " | >= 1x from |"
    )
    rule = "|---|---|" + "---|" * len(TABLE_BATCHES) + "---|"
    for dataset in means.index.get_level_values("dataset").unique():
        for launch in LAUNCH_COSTS:
            parts += ["", f"**{dataset}, {launch}**", "", header, rule]
            for variant in means.xs(dataset).index.get_level_values("variant").unique():
                row = means.loc[(dataset, variant, f"H100, {launch}")]
                cells = [f"{row[b]:.2f}x" for b in TABLE_BATCHES]
                flops_x = flops_speedup[(dataset, variant)]
                parts.append(
                    f"| `{variant}` | {flops_x:.2f}x | "
                    + " | ".join(cells)
                    + f" | {_crossing(row)} |"
                )
    kinds = inference_of(regime)
    if "predicted" not in kinds.values() or "dynamic" not in kinds.values():
        return "\n".join(parts)
    lead = lead_over_dynamic(means, kinds)
    small = lead_over_dynamic(minilm, kinds)
    parts += [
        "",
        "The modelled speedup of each variant with predicted exits (GEEP and its ablations) over "
        "the fastest dynamic-exit variant's (>1: it leads) on an H100 and an A100, BERT-base "
        "and, for comparison, the embedded 6-layer MiniLM (hidden 384, exit layers as "
        "measured) at the same length:",
        "",
        "| variant | dataset | GPU, cost per operator | model | "
        + " | ".join(f"batch {b}" for b in TABLE_BATCHES)
        + " |",
        "|---|---|---|---|" + "---|" * len(TABLE_BATCHES),
    ]
    for name, table in (("bert-base", lead), ("minilm-l6", small)):
        for (variant, dataset, launch), row in table.iterrows():
            parts.append(
                f"| `{variant}` | {dataset} | {launch} | {name} | "
                + " | ".join(f"{row[b]:.2f}" for b in TABLE_BATCHES)
                + " |"
            )
    parts += ["", sensitivity_table(picked)]
    return "\n".join(parts)


def sensitivity_table(picked: pd.DataFrame) -> str:
    """GEEP's lead over the fastest dynamic exit, and that exit's own modelled speedup, at batch
    32 and 128 on an H100, over the cost per operator and the sustained share of compute."""
    devices = {
        f"{launch * 1e6:g} µs|{share:g}": gpu("h100", launch, share)
        for launch in SENSITIVITY_LAUNCH
        for share in SENSITIVITY_COMPUTE
    }
    regime = regime_frame(picked, devices=devices, batch_sizes=(32, 128))
    means, kinds = _means(regime), inference_of(regime)
    first = next(v for v in means.index.get_level_values("variant") if kinds[v] == "predicted")
    leads = lead_over_dynamic(means, kinds)
    lead = leads.xs(first, level="variant").groupby("device").mean()  # mean over datasets
    variants = means.index.get_level_values("variant")
    best = means[variants.map(kinds) == "dynamic"].groupby(["dataset", "device"]).max()
    best = best.groupby("device").mean()
    lines = [
        f"Sensitivity (modelled, H100, mean of the two datasets): `{first}`'s lead over the "
        "fastest dynamic exit / that dynamic exit's speedup over `bert`, at batch 32 and 128, "
        "for each cost per operator (rows) and sustained share of the BF16 peak (columns):",
        "",
        "| cost per operator | "
        + " | ".join(f"{s:g} of peak, batch {b}" for s in SENSITIVITY_COMPUTE for b in (32, 128))
        + " |",
        "|---|" + "---|" * (2 * len(SENSITIVITY_COMPUTE)),
    ]
    for launch in SENSITIVITY_LAUNCH:
        cells = []
        for share in SENSITIVITY_COMPUTE:
            key = f"{launch * 1e6:g} µs|{share:g}"
            cells += [f"{lead.loc[key, b]:.2f} / {best.loc[key, b]:.2f}x" for b in (32, 128)]
        lines.append(f"| {launch * 1e6:g} µs | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_regime(regime: pd.DataFrame, styles: dict[str, dict[str, str]] | None = None) -> Figure:
    """Modelled speedup over `bert` against batch size on BERT-base at length 128 on the H100, one
    panel per cost per operator, one line per variant (``regime``: :func:`paper_regime`; seed
    and dataset means), drawn in ``styles`` (per variant: colour, line style and marker, as
    geep.report.results.variant_styles gives them; default matplotlib's)."""
    means = regime.groupby(["device", "variant", "batch_size"], sort=False)[
        "modelled_speedup"
    ].mean()
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, len(LAUNCH_COSTS), sharey=True)
    for ax, launch in zip(axes, LAUNCH_COSTS, strict=True):
        for variant, line in means.xs(f"H100, {launch}").groupby(level="variant", sort=False):
            ax.plot(
                line.index.get_level_values("batch_size"),
                line.values,
                markersize=3,
                label=variant if ax is axes[0] else None,
                **(styles or {}).get(variant, {"marker": "o"}),
            )
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set(xscale="log", xlabel="batch size", title=f"modelled, H100, {launch}")
        ax.set_xticks(list(BATCH_SIZES), [str(b) for b in BATCH_SIZES])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("modelled speedup over bert (BERT-base, length 128)")
    outside_legend(fig)
    return fig


def has_regime(frame: pd.DataFrame) -> bool:
    """Whether the report's rows can be modelled: a ``bert`` row for every (dataset, seed) and the
    exit histograms and operators of every row (runs made before work counting have none)."""
    if "operators" not in frame.columns or frame["operators"].isna().any():
        return False
    if frame["inference"].isna().any():  # a method that is not installed: no traits to model
        return False
    with_bert = frame[frame["reference"]][["dataset", "seed"]].drop_duplicates()
    return len(with_bert) == len(frame[["dataset", "seed"]].drop_duplicates())
