"""Exit rules shared by the early-exit methods, and dynamic exit with a shrinking batch.

- :func:`normalized_entropy`: FastBERT's "uncertainty", H(p) / log(C), in [0, 1]; :func:`entropy`:
  DeeBERT's raw entropy in nats; :class:`PatienceRule`: PABEE's patience counter.
- :func:`first_exit_layer`: the first layer whose uncertainty is below the speed, L if none
  (FastBERT's exit rule; GEEP's exit labels, docs/methods.md, "geep": exit labels).
- :func:`dynamic_exit`: run a batch layer by layer, evaluate a head after every layer and drop
  the samples that exit, as FastBERT does at inference (the batch shrinks).
- :class:`DynamicExitMethod`: the runner side of that for FastBERT, DeeBERT and PABEE: a method
  supplies its head, its exit rule and a head's FLOPs.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from geep import flops, work
from geep.backbone import Backbone
from geep.encoding import Batch, Encoded
from geep.runner import BatchResult, Method
from geep.sweeps import Calibration, gap_midpoints

# (layer, logits [b, C], running [b]) -> exits [b]: see dynamic_exit
ExitRule = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits [..., C] -> H(softmax) / log(C) [...], in [0, 1] (FastBERT's uncertainty)."""
    return entropy(logits) / math.log(logits.shape[-1])


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits [..., C] -> H(softmax) in nats [...] (DeeBERT's raw entropy, up to log C)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


class PatienceRule:
    """PABEE's exit rule for one batch of ``batch_size`` samples.

    After each layer a sample's counter grows by one when its prediction (argmax; the first
    class on ties) equals the previous layer's, and resets to 0 otherwise; it exits when the
    counter reaches ``patience``. State is kept per batch position (``running``).
    """

    def __init__(self, patience: int, batch_size: int, device: torch.device | str) -> None:
        self.patience = patience
        self.previous = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        self.count = torch.zeros(batch_size, dtype=torch.long, device=device)

    def __call__(self, layer: int, logits: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        prediction = logits.argmax(dim=-1)  # [b]
        same = prediction == self.previous[running]
        self.count[running] = torch.where(same, self.count[running] + 1, 0)
        self.previous[running] = prediction
        return self.count[running] >= self.patience


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
    head: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    exits: ExitRule,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``batch`` layer by layer, exiting samples as soon as ``exits`` says so.

    After layer k, ``head(k, hidden [b, T, H], attention_mask [b, T])`` gives logits [b, C] for
    the b samples still running and ``exits(k, logits, running)`` a bool [b]; those samples leave
    the batch. ``running`` [b] holds their positions in the batch, for rules that keep state per
    sample (PABEE's patience counter). Every sample still running at layer L exits there.
    Returns logits [B, C] and the exit layer [B] of every sample; a sample exiting at k had a
    head evaluated at each of layers 1..k.
    """
    num_layers = backbone.num_layers
    hidden, mask = backbone.embed(**batch.inputs())  # [B, T, H], [B, 1, T, T] or None
    attention_mask = batch.attention_mask  # [b, T] of the running samples
    running = torch.arange(hidden.shape[0], device=hidden.device)  # [b] positions in the batch
    out_logits: torch.Tensor | None = None
    out_layers = torch.full_like(running, num_layers)
    for layer in range(1, num_layers + 1):
        hidden = backbone.run_layers(hidden, mask, layer - 1, layer)
        logits = head(layer, hidden, attention_mask)  # [b, C]
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
        work.record("select", rows, tokens, 0, 2 * rows * tokens * width * hidden.element_size())
        running, hidden, attention_mask = running[keep], hidden[keep], attention_mask[keep]
        mask = mask[keep] if mask is not None else None
    assert out_logits is not None
    return out_logits, out_layers


class DynamicExitMethod(Method):
    """A method whose samples exit one by one after any layer while the batch shrinks.

    Subclasses give the FLOPs of one head evaluation (:meth:`head_flops`), the head after each
    layer when it is not the model's ``head`` (:meth:`exit_head`), and the exit rule: a
    threshold rule by default, exiting a sample once :meth:`exit_statistic` of its head's logits
    is below the speed (such methods set ``dev_sweep``), or their own :meth:`exit_rule`. FLOPs
    count every layer a sample ran and a head after each.
    """

    def exit_head(
        self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits [b, C] of the head after ``layer`` from h_layer [b, T, H] (the model's own
        ``head`` unless a method says otherwise)."""
        return self.model.head(layer, hidden, attention_mask)

    def exit_statistic(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [b, C] -> the value [b] that exits a sample when below the speed (threshold
        rules only)."""
        raise NotImplementedError(f"{self.name}'s exit rule compares no value with a threshold")

    def exit_rule(self, speed: float, batch_size: int) -> ExitRule:
        """The rule deciding, after each layer, which running samples exit (one per batch):
        :meth:`exit_statistic` below ``speed``."""
        return lambda layer, logits, running: self.exit_statistic(logits) < speed

    @abstractmethod
    def head_flops(self, lengths: np.ndarray, convention: str) -> np.ndarray | int:
        """FLOPs of one head evaluation per sample of real length ``lengths`` ([N] or constant)."""

    @torch.inference_mode()
    def exit_statistics(self, data: Encoded, batch_size: int = 64) -> torch.Tensor:
        """:meth:`exit_statistic` [N, L-1] of the head after every layer below L on every sample:
        one pass through all layers in batches of similar length, nobody exits."""
        self.model.eval()
        out = torch.empty(len(data), self.num_layers - 1)
        for index in torch.argsort(data.lengths, stable=True).split(batch_size):
            batch = data.batch(index).to(self.device)
            hidden, mask = self.backbone.embed(**batch.inputs())
            for layer in range(1, self.num_layers):
                hidden = self.backbone.run_layers(hidden, mask, layer - 1, layer)
                logits = self.exit_head(layer, hidden, batch.attention_mask)
                out[index, layer - 1] = self.exit_statistic(logits).float().cpu()
        return out

    def calibrate(self, dev: Encoded) -> Calibration | None:
        """The dev FLOPs of the threshold rule at any speed, from one pass over ``dev``: a
        sample exits at its first layer whose statistic is below the speed."""
        if not self.dev_sweep:
            return None
        statistics = self.exit_statistics(dev)  # [N, L-1]
        lengths = dev.lengths.numpy()
        # entropies peak at the uniform distribution: no statistic exceeds this one
        ceiling = float(self.exit_statistic(torch.zeros(1, self.info.num_labels))[0])

        def flops_at(speed: float) -> float:
            layers = first_exit_layer(statistics, speed).numpy()
            return float(self.sample_flops(lengths, layers, layers, "full").mean())

        return Calibration(gap_midpoints(statistics, ceiling), flops_at)

    def predict_batches(
        self, data: Encoded, speed: float, batch_size: int
    ) -> Iterator[BatchResult]:
        return self.dynamic_batches(data, speed, batch_size)

    def dynamic_batches(
        self, data: Encoded, speed: float, batch_size: int
    ) -> Iterator[BatchResult]:
        """Consecutive batches of ``data``, each run by :func:`dynamic_exit`."""
        for batch in data.batches(batch_size):
            rule = self.exit_rule(speed, len(batch.index))
            batch = batch.to(self.device)
            logits, layers = dynamic_exit(self.backbone, batch, self.exit_head, rule)
            ran = layers.cpu().numpy()
            yield self.batch_result(batch.index.cpu(), logits, ran, heads=ran, data=data)

    def batch_result(
        self,
        index: torch.Tensor,
        logits: torch.Tensor,
        layers: np.ndarray,
        heads: np.ndarray | int,
        data: Encoded,
    ) -> BatchResult:
        """Labels and per-sample FLOPs: ``layers`` encoder layers and ``heads`` exit heads ran."""
        lengths = data.lengths[index].numpy()
        per_conv = {
            conv: self.sample_flops(lengths, layers, heads, conv) for conv in flops.CONVENTIONS
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
