"""The work a run issues to the hardware, counted while it runs.

Every forward call that moves a batch through the model is recorded with the shape it really
ran at, padding included: the embeddings, each (layer, batch) call of an encoder layer, each
exit-head call, the rows a shrinking batch keeps after a layer, and GEEP's exit prediction. A
:class:`Call` carries the FLOPs it executes (the ``full`` convention of :mod:`geep.measure.flops`,
at the padded width) and the bytes it moves (:func:`matmul_bytes`).
:meth:`geep.core.interface.Method.run`
counts inside :func:`counting`; outside it, recording costs one context-variable lookup.

The counts a run reports (:func:`work_counts`), per (dataset, method, speed):

- ``flops_executed_full``: executed FLOPs per sample, padding included (next to ``flops_full``,
  the useful FLOPs at each sample's real length);
- ``layer_batches``: (layer, batch) forward calls, what kernel launches scale with;
- ``mean_layer_batch_rows``: the mean rows of those calls, the batch the hardware sees per layer;
- ``head_calls`` and ``head_rows``: exit-head calls and the rows they ran on, heads at layers
  where no sample exits included.

:mod:`geep.measure.latency` turns the calls into modelled time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import astuple, dataclass
from typing import Any, Literal

from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from geep.measure.flops import EncoderDims

Kind = Literal["embed", "layer", "head", "select", "exit_prediction"]
KINDS: tuple[Kind, ...] = ("embed", "layer", "head", "select", "exit_prediction")


@dataclass(frozen=True)
class Call:
    """One forward call: ``rows`` samples at a padded width of ``tokens``."""

    kind: Kind
    rows: int
    tokens: int
    flops: int  # executed, full convention, padding included
    bytes: int  # weights read once, each matmul's activation operands read and result written


_log: ContextVar[Counter[Call] | None] = ContextVar("geep_work", default=None)
_trace: ContextVar[list[Kind] | None] = ContextVar("geep_work_trace", default=None)


@contextmanager
def counting() -> Iterator[Counter[Call]]:
    """Record every call made inside the block; yields the calls with how often each ran."""
    calls: Counter[Call] = Counter()
    token = _log.set(calls)
    try:
        yield calls
    finally:
        _log.reset(token)


@contextmanager
def paused() -> Iterator[None]:
    """Count nothing inside the block (a CUDA graph's capture: its replays are counted)."""
    log, trace = _log.set(None), _trace.set(None)
    try:
        yield
    finally:
        _log.reset(log)
        _trace.reset(trace)


def replay(calls: Counter[Call]) -> None:
    """Count ``calls`` again, each as often as it ran: a replayed CUDA graph's work."""
    for call, count in calls.items():
        for _ in range(count):
            record(call.kind, call.rows, call.tokens, call.flops, call.bytes)


def recording() -> bool:
    """Whether calls are being counted (so a caller can skip computing one)."""
    return _log.get() is not None or _trace.get() is not None


def record(kind: Kind, rows: int, tokens: int, flops: int, bytes_moved: int) -> None:
    """Count one call (nothing happens outside :func:`counting`)."""
    calls = _log.get()
    if calls is not None:
        calls[Call(kind, int(rows), int(tokens), int(flops), int(bytes_moved))] += 1
    trace = _trace.get()
    if trace is not None:
        trace.append(kind)


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters: what one call reads from memory at least."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def matmul_bytes(shapes: Iterable[tuple[int, int, int, int]], itemsize: int) -> int:
    """Activation traffic of matmuls given as (count, m, k, n): each reads its m x k input and
    writes its m x n result once (weights are counted by :func:`parameter_bytes`; a matmul of
    two activations, such as attention's, also reads its k x n operand)."""
    return itemsize * sum(count * (m * k + m * n) for count, m, k, n in shapes)


def layer_activation_bytes(
    dims: EncoderDims, rows: int, tokens: int, active: int, itemsize: int
) -> int:
    """Activation bytes of one encoder layer on ``rows`` x ``tokens`` of which ``active`` are
    updated (all of them except under HashEE): keys and values for every token; queries,
    attention, output projection and FFN for the active ones."""
    hidden, heads = dims.hidden, dims.num_heads
    width = hidden // heads
    b = rows
    shapes = [
        (2 * b, tokens, hidden, hidden),  # keys, values
        (2 * b, active, hidden, hidden),  # queries, output projection
        (b * heads, active, width, tokens),  # scores Q K^T
        (b * heads, active, tokens, width),  # context A V
        (b, active, hidden, dims.intermediate),  # FFN in
        (b, active, dims.intermediate, hidden),  # FFN out
    ]
    # the attention matmuls also read K and V, one [tokens, width] block per (row, head)
    operands = 2 * b * heads * tokens * width * itemsize
    return matmul_bytes(shapes, itemsize) + operands


def embedding_bytes(rows: int, tokens: int, hidden: int, itemsize: int) -> int:
    """The embeddings: three lookups of [rows, tokens, hidden] summed and normalised (read three
    blocks, write one)."""
    return 4 * rows * tokens * hidden * itemsize


def copy_bytes(rows: int, tokens: int, hidden: int, itemsize: int) -> int:
    """Rows of hidden states [rows, tokens, hidden] copied into a new batch: read and written."""
    return 2 * rows * tokens * hidden * itemsize


def fastbert_head_shapes(
    rows: int, tokens: int, hidden: int, width: int, heads: int, labels: int
) -> list[tuple[int, int, int, int]]:
    """The matmuls of a FastBERT head on [rows, tokens, hidden], for :func:`matmul_bytes`."""
    return [
        (rows, tokens, hidden, width),  # narrow
        (4 * rows, tokens, width, width),  # query, key, value, output
        (rows * heads, tokens, width // heads, tokens),  # scores
        (rows * heads, tokens, tokens, width // heads),  # context
        (rows, 1, width, width),  # prelim
        (rows, 1, width, labels),  # final
    ]


def pooler_head_shapes(rows: int, hidden: int, labels: int) -> list[tuple[int, int, int, int]]:
    """The matmuls of a pooler and classifier on [rows, hidden] sentence vectors."""
    return [(rows, 1, hidden, hidden), (rows, 1, hidden, labels)]


def work_counts(calls: Counter[Call], samples: int) -> dict[str, float]:
    """The counts a run reports, from its calls, for a split of ``samples`` samples."""
    layers = [(c, n) for c, n in calls.items() if c.kind == "layer"]
    heads = [(c, n) for c, n in calls.items() if c.kind == "head"]
    layer_batches = sum(n for _, n in layers)
    return {
        "flops_executed_full": sum(c.flops * n for c, n in calls.items()) / max(samples, 1),
        "layer_batches": layer_batches,
        "mean_layer_batch_rows": sum(c.rows * n for c, n in layers) / max(layer_batches, 1),
        "head_calls": sum(n for _, n in heads),
        "head_rows": sum(c.rows * n for c, n in heads),
    }


def calls_to_rows(calls: Counter[Call]) -> list[list[int | str]]:
    """The calls as JSON rows [kind, rows, tokens, flops, bytes, count], in a fixed order."""
    rank = {kind: i for i, kind in enumerate(KINDS)}
    ordered = sorted(calls.items(), key=lambda item: (rank[item[0].kind], *astuple(item[0])[1:]))
    return [[c.kind, c.rows, c.tokens, c.flops, c.bytes, n] for c, n in ordered]


def calls_from_rows(rows: Iterable[list[int | str]]) -> Counter[Call]:
    """Inverse of :func:`calls_to_rows` (a run file's ``calls``)."""
    return Counter({Call(k, int(r), int(t), int(f), int(b)): int(n) for k, r, t, f, b, n in rows})


class _OperatorCounter(TorchDispatchMode):
    """Counts the operators torch dispatches (views excluded: they launch no kernel), each
    charged to the call recorded last."""

    def __init__(self, trace: list[Kind]) -> None:
        super().__init__()
        self.trace = trace
        self.counts: Counter[Kind] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not func.is_view and self.trace:
            self.counts[self.trace[-1]] += 1
        return func(*args, **(kwargs or {}))


def operators_per_call(run: Callable[[], object]) -> dict[str, float]:
    """The mean number of operators each kind of call dispatches while ``run()`` runs.

    Every operator is charged to the call recorded last before it, so the glue between calls
    (an exit rule, an argmax, the next batch's slicing) goes to the call it follows. On a GPU
    each of these operators is at least one kernel launch (:mod:`geep.measure.latency`).
    """
    trace: list[Kind] = []
    token = _trace.set(trace)
    try:
        with _OperatorCounter(trace) as counter:
            run()
    finally:
        _trace.reset(token)
    calls = Counter(trace)
    return {kind: counter.counts[kind] / calls[kind] for kind in KINDS if calls[kind]}
