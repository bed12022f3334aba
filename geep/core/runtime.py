"""How inference runs on the hardware: the precision of its arithmetic, and whether its layer
calls replay captured CUDA graphs (docs/gpu.md, "Precision and CUDA graphs").

Precision (:data:`PRECISIONS`), set by :meth:`geep.core.interface.Method.use_runtime`:

- ``float32``: torch's default; on a GPU, matrix products in true float32 (TF32 off);
- ``tf32``: float32 weights and activations, matrix products in TensorFloat-32 on an Ampere or
  newer GPU (``torch.backends.cuda.matmul.allow_tf32``, cuDNN's too); a CUDA setting only;
- ``bfloat16``, ``float16``: the model's weights cast to that type, so every layer, head and
  activation runs in it; attention through PyTorch's SDPA, the encoder's default. Exit
  statistics (entropies) are computed from the logits in float32.

CUDA graphs (:class:`GraphRunner`): a call that moves a batch through the model (an embedding,
a layer and its exit head, a whole forward) is captured once per shape and replayed after.
The shapes are bucketed so that few graphs serve every batch, as vLLM does for decoding: a
call's rows are padded up to the next power of two (1, 2, 4, 8, ...) by repeating its last row,
its tokens up to the next multiple of :data:`TOKEN_STEP` with padding (masked). The work
counters (:mod:`geep.measure.work`) count each replay at the padded shape, so the executed FLOPs
and the rows per call include the padding. Which calls a method graphs is its own choice
(``key`` below): full-depth ``bert`` one graph per bucket for the whole forward, GEEP one per
(predicted depth, bucket), dynamic exit one per (layer, bucket) for a layer and its exit head.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from geep.common.config import PRECISIONS, Precision
from geep.common.errors import GeepError
from geep.measure import work

DTYPES: dict[Precision, torch.dtype] = {
    "float32": torch.float32,
    "tf32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

TOKEN_STEP = 16
"""A graphed call's tokens are padded up to a multiple of this (at most the input's own
width rounded up)."""


@dataclass(frozen=True)
class Runtime:
    """A precision and a graph mode: how a method's inference runs (module docstring)."""

    precision: Precision = "float32"
    graphs: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise GeepError(
                f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )

    @property
    def dtype(self) -> torch.dtype:
        """The type the model's weights are cast to."""
        return DTYPES[self.precision]

    @property
    def label(self) -> str:
        """``float32 eager``, ``bfloat16 + CUDA graphs``, ...: for tables and ``--dry-run``."""
        return f"{self.precision} {'+ CUDA graphs' if self.graphs else 'eager'}"

    def to_dict(self) -> dict[str, str | bool]:
        return {"precision": self.precision, "graphs": self.graphs}

    @contextlib.contextmanager
    def matmul_settings(self) -> Iterator[None]:
        """TF32 on for the block under ``tf32``, off under every other precision (torch's
        default), and restored afterwards."""
        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
        matmul.allow_tf32 = cudnn.allow_tf32 = self.precision == "tf32"
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved


DEFAULT_RUNTIME = Runtime()
"""torch's default, and every run's unless told otherwise: float32, eager."""


def check_runtime(runtime: Runtime, device: torch.device, graphs_unsupported: str | None) -> None:
    """GeepError when ``runtime`` cannot run on ``device`` or for a method whose calls cannot be
    captured (``graphs_unsupported``: the method's reason, None when they can)."""
    if runtime.precision == "tf32" and device.type != "cuda":
        raise GeepError(f"precision tf32 is a CUDA setting: the model is on {device}")
    if runtime.graphs and graphs_unsupported:
        raise GeepError(f"CUDA graphs cannot run this method: {graphs_unsupported}")


# --- CUDA graphs ----------------------------------------------------------------------------------


class GraphBackend(Protocol):
    """Captures ``run`` (which reads and writes only tensors it was given or made) and returns
    a function that replays it, and the outputs the replays write into."""

    def capture(
        self, run: Callable[[], tuple[torch.Tensor, ...]]
    ) -> tuple[Callable[[], None], tuple[torch.Tensor, ...]]: ...


class CudaGraphs:
    """:class:`GraphBackend` on the current CUDA device: warm-up on a side stream, as
    ``torch.cuda.graphs`` asks, then one ``torch.cuda.CUDAGraph`` per capture."""

    def capture(
        self, run: Callable[[], tuple[torch.Tensor, ...]]
    ) -> tuple[Callable[[], None], tuple[torch.Tensor, ...]]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = run()
        return graph.replay, outputs


def row_bucket(rows: int) -> int:
    """The rows a graphed call runs at: the next power of two."""
    return 1 << max(rows - 1, 0).bit_length()


def token_bucket(tokens: int) -> int:
    """The tokens a graphed call runs at: the next multiple of :data:`TOKEN_STEP`."""
    return -(-tokens // TOKEN_STEP) * TOKEN_STEP


def _padded(tensor: torch.Tensor, rows: int, tokens: int) -> torch.Tensor:
    """[r, t, ...] -> [rows, tokens, ...]: the last row repeated, the tokens padded with 0 (a
    mask's 0 is padding; padded hidden states are masked). A 1-d tensor has rows only."""
    r = tensor.shape[0]
    if rows > r:
        tensor = torch.cat([tensor, tensor[-1:].expand(rows - r, *tensor.shape[1:])])
    if tensor.dim() >= 2 and tokens > tensor.shape[1]:
        pad = [0, 0] * (tensor.dim() - 2) + [0, tokens - tensor.shape[1]]
        tensor = F.pad(tensor, pad)
    return tensor


@dataclass
class _Graph:
    inputs: tuple[torch.Tensor, ...]  # the static buffers a replay reads
    replay: Callable[[], None]
    outputs: tuple[torch.Tensor, ...]  # what a replay writes
    calls: Counter[work.Call]  # the work of one call, counted once at capture


@dataclass
class GraphRunner:
    """Runs calls as replays of graphs captured per (key, bucketed shape) (module docstring).

    ``runner(key, fn, *inputs)`` returns ``fn(*inputs)`` as a tuple: the inputs ([r, t, ...], all
    of ``r`` rows; those of 2 or more dimensions have tokens second) are padded to the buckets
    and copied into the graph's static inputs, the graph is replayed, and its outputs come back
    cut to the real rows (and, for outputs of 3 or more dimensions, tokens), as copies: a
    replay overwrites the static outputs. ``fn`` must issue no host synchronisation (no
    ``.item()``, no boolean indexing).
    """

    backend: GraphBackend = field(default_factory=CudaGraphs)
    graphs: dict[Hashable, _Graph] = field(default_factory=dict)

    def __call__(
        self,
        key: Hashable,
        fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
        *inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        rows = inputs[0].shape[0]
        tokens = next((x.shape[1] for x in inputs if x.dim() >= 2), 0)
        b, t = row_bucket(rows), token_bucket(tokens)
        padded = [_padded(x, b, t) for x in inputs]
        shape = (key, b, t, tuple((x.dtype, tuple(x.shape[2:])) for x in padded))
        graph = self.graphs.get(shape)
        if graph is None:
            graph = self.graphs[shape] = self._capture(fn, [x.clone() for x in padded])
        for static, x in zip(graph.inputs, padded, strict=True):
            static.copy_(x)
        graph.replay()
        work.replay(graph.calls)
        return tuple(
            (o[:rows, :tokens] if o.dim() >= 3 else o[:rows]).clone() for o in graph.outputs
        )

    def _capture(self, fn: Callable[..., object], inputs: list[torch.Tensor]) -> _Graph:
        """One counted eager call (its work: what each replay re-counts), then the capture,
        uncounted."""

        def run() -> tuple[torch.Tensor, ...]:
            out = fn(*inputs)
            return out if isinstance(out, tuple) else (out,)

        with work.counting() as calls:
            run()
        with work.paused():
            replay, outputs = self.backend.capture(run)
        return _Graph(tuple(inputs), replay, outputs, calls)

    @property
    def captures(self) -> int:
        """How many graphs have been captured."""
        return len(self.graphs)
