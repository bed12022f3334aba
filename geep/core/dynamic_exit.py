"""What every dynamic-exit method shares: the exit loop, batched three ways, and its runner.

Each method's own exit rule lives in its file (FastBERT's normalized entropy in
``baselines/fastbert.py``, DeeBERT's raw entropy, PABEE's patience counter); this module holds
what they all use:

- :func:`entropy`: the entropy of a head's distribution in nats, which FastBERT (normalised)
  and DeeBERT threshold;
- :func:`first_exit_layer`: the first layer whose uncertainty is below the speed, L if none
  (FastBERT's exit rule; GEEP's exit labels, docs/methods.md, "geep": exit labels).
- Dynamic exit, three ways to batch it (the ``batching`` option, :class:`DynamicExitOptions`);
  a sample's exit layer and answer are the same under all three:

  - :func:`dynamic_exit` (``shrink``): run a batch layer by layer, evaluate a head after every
    layer and drop the samples that exit, as FastBERT does at inference (the batch shrinks);
  - :func:`regrouped_exit` (``regroup``): the rows that go on after layer k, from any number of
    batches, wait in a pool for layer k+1, which runs once its pool holds a full batch (the
    batching FastBERT's issue tracker asks for, and what DREX and E3 do in serving);
  - :func:`kept_exit` (``keep``): no row leaves its batch; a sample's answer is taken at its
    exit and the batch runs to its deepest exit (Apparate's way: it saves latency, not work).

- :class:`DynamicExitMethod`: the runner side of that for FastBERT, DeeBERT, PABEE and GEEP's
  ``mode=dynamic``: a method supplies its head, its exit rule and a head's FLOPs.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from geep.common.config import MethodOptions, inference_option
from geep.core.interface import BatchResult, Method
from geep.core.sweeps import Calibration, gap_midpoints
from geep.data.encoding import Batch, Encoded
from geep.measure import flops, work
from geep.model.backbone import Backbone

# (layer, logits [b, C], running [b]) -> exits [b]: see dynamic_exit
ExitDecision = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


# (layer, hidden [b, T, H], attention_mask [b, T]) -> logits [b, C] of the head after a layer,
# None where a layer below L has none (GEEP's exit_num)
LayerHead = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None]


# Method.call: (key, fn, *inputs) -> fn(*inputs) as a tuple, replayed from a CUDA graph
GraphCall = Callable[..., tuple[torch.Tensor, ...]]


@dataclass
class LayerCalls:
    """The calls the exit loops make: the embeddings, and one layer followed by its exit head.
    Run as they are, or, given ``call`` (:meth:`Method.call` under CUDA graphs), as one graph
    per (layer, bucket) whose layer mask is built inside it (geep.core.runtime; transformers'
    mask reads no value on the host while a graph is captured)."""

    backbone: Backbone
    head: LayerHead
    call: GraphCall | None = None

    def embed(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h_0 [B, T, H] and the layer mask (None under graphs: each step builds its own)."""
        if self.call is None:
            return self.backbone.embed(**batch.inputs())
        (hidden,) = self.call(("embed",), self._embed, *batch.inputs().values())
        return hidden, None

    def mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """The layer mask for a new batch of rows (None under graphs, as for :meth:`embed`)."""
        return self.backbone.layer_mask(hidden, attention_mask) if self.call is None else None

    def step(
        self,
        layer: int,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h_layer [b, T, H] from h_{layer-1}, and the logits [b, C] of the head after it (None
        where there is none)."""
        if self.call is None:
            out = self._step(layer, hidden, attention_mask, mask)
        else:
            out = self.call(("layer", layer), partial(self._step, layer), hidden, attention_mask)
        return out[0], out[1] if len(out) > 1 else None

    def _embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.backbone.embed(input_ids, attention_mask, token_type_ids)[0]

    def _step(
        self,
        layer: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        if mask is None and self.call is not None:
            mask = self.backbone.layer_mask(hidden, attention_mask)
        hidden = self.backbone.run_layers(hidden, mask, layer - 1, layer)
        logits = self.head(layer, hidden, attention_mask)
        return (hidden,) if logits is None else (hidden, logits)


Batching = Literal["shrink", "regroup", "keep"]


BATCHINGS: tuple[Batching, ...] = get_args(Batching)


@dataclass(frozen=True)
class DynamicExitOptions(MethodOptions):
    """How a dynamic-exit method batches its exits (module docstring); ``shrink`` by default."""

    batching: Batching = inference_option("shrink")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits [..., C] -> H(softmax) in nats [...] (DeeBERT's raw entropy, up to log C)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def first_exit_layer(uncertainty: torch.Tensor, speed: float) -> torch.Tensor:
    """uncertainty [N, L-1] of the students at layers 1..L-1 -> exit layer [N] in 1..L.

    A sample exits at the first layer whose uncertainty is below ``speed``; L if there is none,
    so speed 0 sends every sample through all layers.
    """
    confident = torch.cat(
        [uncertainty < speed, torch.ones_like(uncertainty[:, :1], dtype=torch.bool)], dim=1
    )  # [N, L]: layer L always accepts
    return confident.int().argmax(dim=1) + 1  # argmax returns the first maximum


def dynamic_exit(
    backbone: Backbone,
    batch: Batch,
    head: LayerHead,
    exits: ExitDecision,
    call: GraphCall | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``batch`` layer by layer, exiting samples as soon as ``exits`` says so.

    After layer k, ``head(k, hidden [b, T, H], attention_mask [b, T])`` gives logits [b, C] for
    the b samples still running and ``exits(k, logits, running)`` a bool [b]; those samples leave
    the batch. ``running`` [b] holds their positions in the batch, for rules that keep state per
    sample (PABEE's patience counter). Every sample still running at layer L exits there.
    Returns logits [B, C] and the exit layer [B] of every sample; a sample exiting at k had a
    head evaluated at each of layers 1..k. ``call``: the layer calls' CUDA graphs
    (:class:`LayerCalls`).
    """
    num_layers = backbone.num_layers
    calls = LayerCalls(backbone, head, call)
    hidden, mask = calls.embed(batch)  # [B, T, H], [B, 1, T, T] or None
    attention_mask = batch.attention_mask  # [b, T] of the running samples
    running = torch.arange(hidden.shape[0], device=hidden.device)  # [b] positions in the batch
    out_logits: torch.Tensor | None = None
    out_layers = torch.full_like(running, num_layers)
    for layer in range(1, num_layers + 1):
        hidden, logits = calls.step(layer, hidden, mask, attention_mask)  # logits [b, C]
        if logits is None:  # no head after this layer: nobody exits
            continue
        if out_logits is None:
            out_logits = logits.new_empty(len(running), logits.shape[1])
        last = layer == num_layers
        done = torch.ones_like(running, dtype=bool) if last else exits(layer, logits, running)
        out_logits[running[done]] = logits[done]
        out_layers[running[done]] = layer
        keep = ~done
        if not keep.any():
            break
        # the rows that go on are copied into a smaller batch: read and written once
        rows, tokens, width = int(keep.sum()), hidden.shape[1], hidden.shape[2]
        work.record(
            "select", rows, tokens, 0, work.copy_bytes(rows, tokens, width, hidden.element_size())
        )
        running, hidden, attention_mask = running[keep], hidden[keep], attention_mask[keep]
        mask = mask[keep] if mask is not None else None
    assert out_logits is not None
    return out_logits, out_layers


def kept_exit(
    backbone: Backbone,
    batch: Batch,
    head: LayerHead,
    exits: ExitDecision,
    call: GraphCall | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run all of ``batch`` layer by layer until its last sample has exited (``keep``).

    ``head`` runs on every row after each layer; ``exits`` decides for the rows that have not
    exited (``running``: their positions in the batch), as in :func:`dynamic_exit`. Returns the
    logits [B, C] and exit layer [B] of every sample, taken at its exit, and the deepest exit:
    every row ran that many layers and heads. ``call``: as for :func:`dynamic_exit`.
    """
    num_layers = backbone.num_layers
    calls = LayerCalls(backbone, head, call)
    hidden, mask = calls.embed(batch)  # [B, T, H]
    running = torch.arange(hidden.shape[0], device=hidden.device)  # [b] not exited yet
    out_logits: torch.Tensor | None = None
    out_layers = torch.full_like(running, num_layers)
    for layer in range(1, num_layers + 1):
        hidden, logits = calls.step(layer, hidden, mask, batch.attention_mask)  # [B, C]: all
        if logits is None:  # no head after this layer: nobody exits
            continue
        if out_logits is None:
            out_logits = logits.new_empty(logits.shape)
        last = layer == num_layers
        done = (
            torch.ones_like(running, dtype=bool) if last else exits(layer, logits[running], running)
        )
        out_logits[running[done]] = logits[running[done]]
        out_layers[running[done]] = layer
        running = running[~done]
        if len(running) == 0:
            assert out_logits is not None
            return out_logits, out_layers, layer
    raise AssertionError("layer L exits every sample")


@dataclass
class _Rows:
    """Rows waiting in a pool: their positions in the data [r], h_k [r, T, H], masks [r, T]."""

    index: torch.Tensor
    hidden: torch.Tensor
    attention_mask: torch.Tensor

    def __getitem__(self, which: slice | torch.Tensor) -> _Rows:
        return _Rows(self.index[which], self.hidden[which], self.attention_mask[which])


def _take(pool: list[_Rows], count: int) -> _Rows:
    """The first ``count`` rows of ``pool`` (removed from it), padded to the widest of them."""
    taken: list[_Rows] = []
    while count > 0:
        rows = pool[0]
        if len(rows.index) <= count:
            taken.append(pool.pop(0))
        else:
            taken.append(rows[:count])
            pool[0] = rows[count:]
        count -= len(taken[-1].index)
    width = int(max(int(r.attention_mask.sum(dim=1).max()) for r in taken))  # trim padding
    if len(taken) == 1 and taken[0].hidden.shape[1] == width:
        return taken[0]

    def padded(t: torch.Tensor) -> torch.Tensor:  # [r, T, ...] -> [r, width, ...]
        t = t[:, :width]
        pad = [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]
        return F.pad(t, pad)

    rows = _Rows(
        torch.cat([r.index for r in taken]),
        torch.cat([padded(r.hidden) for r in taken]),
        torch.cat([padded(r.attention_mask) for r in taken]),
    )
    _record_copy(rows.hidden)
    return rows


def _record_copy(hidden: torch.Tensor) -> None:
    """Count a copy of hidden [r, T, H] into a new batch: read and written once."""
    rows, tokens, width = hidden.shape
    work.record(
        "select", rows, tokens, 0, work.copy_bytes(rows, tokens, width, hidden.element_size())
    )


def regrouped_exit(
    backbone: Backbone,
    batches: Iterable[Batch],
    head: LayerHead,
    exits: ExitDecision,
    batch_size: int,
    call: GraphCall | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Dynamic exit over a stream of batches whose layer calls stay full (``regroup``).

    Pool k holds the rows that have run k layers and wait for layer k+1. The deepest pool
    holding ``batch_size`` rows runs first (its oldest rows; rows of different batches are
    padded to the widest); when none is full the next batch is embedded into pool 0, and when
    the batches are spent the shallowest pool runs whatever it holds, so its survivors fill the
    deeper ones. After each layer call, ``head`` and ``exits`` decide as in
    :func:`dynamic_exit`, with ``running`` the rows' positions in the data (``Batch.index``):
    a rule that keeps state per sample (PABEE's counter) must be made for the whole data.

    Yields (positions [n], logits [n, C], exit layers [n]) of the samples that exited since the
    previous yield, once before each new batch is embedded and once at the end. ``call``: as
    for :func:`dynamic_exit`.
    """
    num_layers = backbone.num_layers
    calls = LayerCalls(backbone, head, call)
    pools: list[list[_Rows]] = [[] for _ in range(num_layers)]
    finished: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    inputs = iter(batches)
    spent = False
    while True:
        sizes = [sum(len(r.index) for r in pool) for pool in pools]
        full = [k for k, size in enumerate(sizes) if size >= batch_size]
        if full:
            k, count = max(full), batch_size
        elif not spent:
            if finished:
                yield _joined(finished)
                finished = []
            batch = next(inputs, None)
            if batch is None:
                spent = True
            else:
                hidden, _ = calls.embed(batch)  # [B, T, H]
                pools[0].append(_Rows(batch.index.to(hidden.device), hidden, batch.attention_mask))
            continue
        elif any(sizes):
            k = next(k for k, size in enumerate(sizes) if size)
            count = sizes[k]
        else:
            break
        rows = _take(pools[k], count)
        layer = k + 1
        mask = calls.mask(rows.hidden, rows.attention_mask)
        hidden, logits = calls.step(layer, rows.hidden, mask, rows.attention_mask)  # [b, C]
        if logits is None:  # no head after this layer: every row goes on, as it is
            pools[layer].append(_Rows(rows.index, hidden, rows.attention_mask))
            continue
        last = layer == num_layers
        done = torch.ones_like(rows.index, dtype=bool) if last else exits(layer, logits, rows.index)
        finished.append((rows.index[done], logits[done], torch.full_like(rows.index[done], layer)))
        keep = ~done
        if keep.any():
            pools[layer].append(_Rows(rows.index, hidden, rows.attention_mask)[keep])
            _record_copy(pools[layer][-1].hidden)
    if finished:
        yield _joined(finished)


def _joined(
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]


class DynamicExitMethod(Method):
    """A method whose samples exit one by one after any layer, batched as its ``batching``
    option says (:class:`DynamicExitOptions`).

    Subclasses give the FLOPs of one head evaluation (:meth:`head_flops`), the head after each
    layer when it is not the model's ``head`` (:meth:`exit_head`), and the exit rule: a
    threshold rule by default, exiting a sample once :meth:`exit_statistic` of its head's logits
    is below the speed (such methods set ``calibrates``), or their own :meth:`exit_rule`. FLOPs
    count every layer a sample ran and the heads after them (:meth:`heads_through`).
    """

    options_class = DynamicExitOptions
    dynamic_settings = ()  # the batching option alone picks the policy

    @classmethod
    def batching_of(cls, options: DynamicExitOptions) -> str | None:
        return options.batching

    def exit_head(
        self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | None:
        """Logits [b, C] of the head after ``layer`` from h_layer [b, T, H] (the model's own
        ``head`` unless a method says otherwise); None after a layer without a head."""
        return self.model.head(layer, hidden, attention_mask)

    def heads_through(self, layers: np.ndarray) -> np.ndarray:
        """Heads a sample evaluates on its way to ``layers`` [N]: one after every layer."""
        return layers

    def exit_statistic(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [b, C] -> the value [b] that exits a sample when below the speed (threshold
        rules only)."""
        raise NotImplementedError(f"{self.name}'s exit rule compares no value with a threshold")

    def exit_rule(self, speed: float, samples: int) -> ExitDecision:
        """The rule deciding, after each layer, which running samples exit, made for
        ``samples`` samples (a batch, or the whole data under ``regroup``):
        :meth:`exit_statistic` below ``speed``."""
        return lambda layer, logits, running: self.exit_statistic(logits) < speed

    @abstractmethod
    def head_flops(self, lengths: np.ndarray, convention: str) -> np.ndarray | int:
        """FLOPs of one head evaluation per sample of real length ``lengths`` ([N] or constant)."""

    @torch.inference_mode()
    def exit_statistics(self, data: Encoded, batch_size: int = 64) -> torch.Tensor:
        """:meth:`exit_statistic` [N, L-1] of the head after every layer below L on every sample
        (+inf, never below a speed, after the layers without one): one pass through the layers
        in batches of similar length, nobody exits."""
        self.model.eval()
        out = torch.full((len(data), self.num_layers - 1), torch.inf)
        for index in torch.argsort(data.lengths, stable=True).split(batch_size):
            batch = data.batch(index).to(self.device)
            hidden, mask = self.backbone.embed(**batch.inputs())
            for layer in range(1, self.num_layers):
                hidden = self.backbone.run_layers(hidden, mask, layer - 1, layer)
                logits = self.exit_head(layer, hidden, batch.attention_mask)
                if logits is not None:
                    out[index, layer - 1] = self.exit_statistic(logits).float().cpu()
        return out

    def calibrate(self, dev: Encoded) -> Calibration | None:
        """The dev FLOPs of the threshold rule at any speed, from one pass over ``dev``: a
        sample exits at its first layer whose statistic is below the speed."""
        if not self.calibrates:
            return None
        statistics = self.exit_statistics(dev)  # [N, L-1]
        lengths = dev.lengths.numpy()
        # entropies peak at the uniform distribution: no statistic exceeds this one
        ceiling = float(self.exit_statistic(torch.zeros(1, self.info.num_labels))[0])

        def flops_at(speed: float) -> float:
            layers = first_exit_layer(statistics, speed).numpy()
            heads = self.heads_through(layers)
            return float(self.sample_flops(lengths, layers, heads, "full").mean())

        return Calibration(gap_midpoints(statistics, ceiling), flops_at)

    def predict_batches(
        self, data: Encoded, speed: float, batch_size: int
    ) -> Iterator[BatchResult]:
        return self.dynamic_batches(data, speed, batch_size)

    def dynamic_batches(
        self, data: Encoded, speed: float, batch_size: int
    ) -> Iterator[BatchResult]:
        """``data`` in consecutive batches, run by dynamic exit as the ``batching`` option says
        (module docstring). FLOPs count the layers and heads each sample ran: to its exit, or
        under ``keep`` to its batch's deepest exit."""
        batching = self.options.batching
        call = self.call if self.graphs is not None else None  # one graph per layer call
        if batching == "regroup":
            rule = self.exit_rule(speed, len(data))  # keyed by position in the data
            batches = (batch.to(self.device) for batch in data.batches(batch_size))
            for index, logits, layers in regrouped_exit(
                self.backbone, batches, self.exit_head, rule, batch_size, call
            ):
                ran = layers.cpu().numpy()
                heads = self.heads_through(ran)
                yield self.batch_result(index.cpu(), logits, ran, heads=heads, data=data)
            return
        for batch in data.batches(batch_size):
            rule = self.exit_rule(speed, len(batch.index))
            batch = batch.to(self.device)
            if batching == "keep":
                logits, layers, deepest = kept_exit(
                    self.backbone, batch, self.exit_head, rule, call
                )
                exits, ran = layers.cpu().numpy(), np.full(len(layers), deepest)
                heads = self.heads_through(ran)
                yield self.batch_result(batch.index.cpu(), logits, exits, heads, data, ran=ran)
            else:
                logits, layers = dynamic_exit(self.backbone, batch, self.exit_head, rule, call)
                ran = layers.cpu().numpy()
                heads = self.heads_through(ran)
                yield self.batch_result(batch.index.cpu(), logits, ran, heads=heads, data=data)

    def batch_result(
        self,
        index: torch.Tensor,
        logits: torch.Tensor,
        layers: np.ndarray,
        heads: np.ndarray | int,
        data: Encoded,
        ran: np.ndarray | None = None,
    ) -> BatchResult:
        """Labels and per-sample FLOPs: samples that exit at ``layers`` and ran ``ran`` encoder
        layers (``layers`` unless given) and ``heads`` exit heads."""
        ran = layers if ran is None else ran
        lengths = data.lengths[index].numpy()
        per_conv = {
            conv: self.sample_flops(lengths, ran, heads, conv) for conv in flops.CONVENTIONS
        }
        return BatchResult(
            index=index,
            labels=logits.argmax(dim=-1).cpu(),
            exit_layers=torch.from_numpy(layers.astype(np.float64)),
            flops_fastbert=torch.from_numpy(per_conv["fastbert"]),
            flops_full=torch.from_numpy(per_conv["full"]),
        )

    def sample_flops(
        self, lengths: np.ndarray, layers: np.ndarray, heads: np.ndarray | int, convention: str
    ) -> np.ndarray:
        """FLOPs [N] of samples of real ``lengths`` that ran ``layers`` encoder layers and
        ``heads`` exit heads."""
        lengths = lengths.astype(np.int64)
        return layers * flops.encoder_layer(self.dims, lengths, convention) + heads * (
            self.head_flops(lengths, convention)
        )

    def full_depth_flops(self, lengths: np.ndarray, convention: str) -> np.ndarray:
        """All L layers and the final head."""
        return self.sample_flops(lengths, self.num_layers, 1, convention)
