"""HashEE (Sun et al., "A Simple Hash-Based Early Exiting Approach for Language Understanding
and Generation", Findings of ACL 2022), ``--method hashee``. docs/methods.md.

- No internal classifiers and no learned exit decision: every TOKEN gets a fixed exit layer
  from a hash of its id. The "frequency hash": the training split's vocabulary, sorted from the
  most to the least frequent token, is cut into B buckets of equal size; more frequent buckets
  exit earlier. Special tokens ([CLS], [SEP], ...) and tokens unseen in training go to the top
  layer L (:func:`frequency_hash`).
- Inference: a token that has exited keeps its hidden state, copied forward unchanged. At each
  layer only the tokens still active compute queries, attention and the FFN; keys and values
  come from all tokens (:meth:`~geep.model.backbone.Backbone.run_layer_on_tokens`). The prediction
  is BERT's classifier (pooler + linear) on the top layer's sentence vector. Every sample of a
  batch runs (the batch never shrinks); only its active tokens are updated.
- Training: ordinary fine-tuning with cross-entropy, with the hashed exits applied.
- FLOPs are counted per token per layer (:func:`~geep.measure.flops.token_exit_layer`); a sample's
  exit layer is the mean of its real tokens' exit layers.
- Speed knob: how many layers below the top the most frequent bucket exits. At speed s the
  buckets are spread evenly over layers L-s .. L, most frequent first, one bucket per layer
  unless ``buckets`` says otherwise; 0 is full depth, L-1 lets the most frequent tokens leave
  after layer 1. Default sweep: 0 .. L-1.
- Options (training): ``train_speed``, the hash the model is fine-tuned with (-1 means L-1:
  one bucket per layer 1..L, the reference run's setting of 6 buckets on 6 layers), and
  ``buckets`` (0 = one per layer in the range). The paper fine-tunes one model per setting;
  ``geep evaluate`` can run a checkpoint at any speed, and rows at a speed other than the
  trained one (``train_speed`` in its diagnostics) use a hash the model was not trained with.

Deviations from the reference code (txsun1997/HashEE):
- Padding is masked in attention (the reference attends to padding).
- Token frequencies come from the training split only (the reference also counts the dev
  split); model selection never looks at the test split (the reference selects on it).
- Bucket b of B lands on layer L-s + floor(b (s+1) / B), so the buckets always reach the top
  layer; the reference's integer layer interval can leave the top layers unused.
- The sentence vector is the backbone's (:meth:`Backbone.sentence_vector`): [CLS] for BERT
  checkpoints, the token mean for the embedded MiniLM (README, "A first result").
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from geep.baselines.bert import Bert, FullDepthClassifier
from geep.common.config import MethodOptions
from geep.common.errors import GeepError
from geep.core.interface import BatchResult, Inference, Predictions
from geep.core.registry import register
from geep.data.encoding import Batch, Encoded
from geep.measure import flops
from geep.model.backbone import Backbone

COUNTS = "train_token_counts"  # the extras entry: occurrences of each token id in training


@dataclass(frozen=True)
class HashEEOptions(MethodOptions):
    """HashEE's switches; the defaults follow the reference run script."""

    train_speed: int = -1
    buckets: int = 0

    def __post_init__(self) -> None:
        if self.train_speed < -1:
            raise GeepError(
                f"option train_speed must be -1 or a speed >= 0, got {self.train_speed}"
            )
        if self.buckets < 0:
            raise GeepError(f"option buckets must be >= 0, got {self.buckets}")


def token_counts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Sequence[int], vocab: int
) -> torch.Tensor:
    """Occurrences [vocab] of each token id among the real, non-special tokens of [N, T] ids."""
    real = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(list(special_ids)))
    return torch.bincount(input_ids[real], minlength=vocab)


def frequency_hash(counts: torch.Tensor, num_layers: int, speed: int, buckets: int) -> torch.Tensor:
    """The exit layer [vocab] of every token id under the frequency hash at ``speed``.

    Seen tokens (count > 0), most frequent first (ties: smaller id first), are cut into
    ``buckets`` (0: speed + 1) equal parts; bucket b exits at layer
    L - speed + floor(b (speed + 1) / buckets). Unseen and special tokens (count 0) exit at L.
    """
    layers = torch.full_like(counts, num_layers)
    seen = torch.nonzero(counts > 0).squeeze(1)  # ascending ids
    if speed == 0 or len(seen) == 0:
        return layers
    ranked = seen[torch.argsort(counts[seen], descending=True, stable=True)]
    span = speed + 1
    buckets = buckets or span
    bucket = torch.arange(len(ranked)) * buckets // len(ranked)  # equal parts, 0 = most frequent
    layers[ranked] = num_layers - speed + bucket * span // buckets
    return layers


class TokenExitClassifier(FullDepthClassifier):
    """BERT's classifier on an encoder whose tokens exit at the layers of a hash table."""

    def __init__(self, backbone: Backbone, num_labels: int) -> None:
        super().__init__(backbone, num_labels)
        vocab = backbone.config.vocab_size
        # exit layer of each token id; set by HashEE for the speed in use (not saved)
        self.register_buffer(
            "exit_layer_of_token",
            torch.full((vocab,), backbone.num_layers, dtype=torch.long),
            persistent=False,
        )

    def token_exit_layers(self, batch: Batch) -> torch.Tensor:
        """Exit layer [B, T] of every token of the batch (padding: 0, never active)."""
        return self.exit_layer_of_token[batch.input_ids] * batch.attention_mask

    def logits(self, batch: Batch) -> torch.Tensor:
        """[B, T] inputs -> [B, C]: layer i updates only the tokens whose exit layer is >= i."""
        hidden, _ = self.backbone.embed(**batch.inputs())  # [B, T, H]
        exits = self.token_exit_layers(batch)  # [B, T]
        for layer in range(1, self.backbone.num_layers + 1):
            hidden = self.backbone.run_layer_on_tokens(
                layer, hidden, batch.attention_mask, active=exits >= layer
            )
        return self.classifier(self.backbone.sentence_vector(hidden, batch.attention_mask))


@register
class HashEE(Bert):
    """BERT fine-tuning and inference with hashed token exits (full-depth FLOPs as ``bert``)."""

    name = "hashee"
    speed_help = (
        "how many layers below the top the most frequent tokens exit: token exit layers are "
        "spread over layers L-speed..L by training frequency; whole numbers 0..L-1; 0 = full depth"
    )
    speed_bounds = (0.0, math.inf)
    whole_speeds = True
    options_class = HashEEOptions
    reference = False
    speed_reads = "depth"
    graphs_unsupported = (
        "HashEE's layers run on each row's tokens that have not exited, a width read on the host "
        "after every layer, so no layer call has a shape fixed before it runs; run it eager"
    )

    @classmethod
    def inference_of(cls, options: HashEEOptions) -> Inference:
        """Every layer runs on every sample; a token stops being updated at its exit layer."""
        return "token-exit"

    @classmethod
    def build_model(cls, backbone: Backbone, num_labels: int, options: Any) -> nn.Module:
        if options.train_speed > backbone.num_layers - 1:
            raise GeepError(
                f"option train_speed={options.train_speed} exceeds {backbone.num_layers - 1}, "
                f"the most a {backbone.num_layers}-layer model allows"
            )
        return TokenExitClassifier(backbone, num_labels)

    @property
    def train_speed(self) -> int:
        """The speed whose hash the model was fine-tuned with."""
        speed = self.options.train_speed
        return self.num_layers - 1 if speed == -1 else speed

    def fit(self, train: Encoded) -> None:
        """Count the training tokens, then fine-tune with the hash at ``train_speed`` applied."""
        self.keep_statistics(train)
        self.prepare(self.train_speed)
        super().fit(train)

    def keep_statistics(self, train: Encoded, exit_layers: torch.Tensor | None = None) -> None:
        """The occurrences of every token id in ``train`` (its real, non-special tokens), which
        the frequency hash ranks; they do not depend on any exit."""
        whole = train.padded()
        self.extras[COUNTS] = token_counts(
            whole.input_ids,
            whole.attention_mask,
            self.tokenizer.all_special_ids,
            self.backbone.config.vocab_size,
        )

    def check_speed(self, speed: float) -> None:
        super().check_speed(speed)
        if speed > self.num_layers - 1:
            raise GeepError(
                f"speed {speed:g} is out of range for hashee on {self.num_layers} layers: "
                f"use 0..{self.num_layers - 1} ({self.speed_help})"
            )

    def prepare(self, speed: float) -> None:
        """Load the exit layer of every token id at ``speed`` into the model."""
        if COUNTS not in self.extras:
            raise GeepError("hashee has no token counts: train it (`geep train`) first")
        table = frequency_hash(
            self.extras[COUNTS], self.num_layers, int(speed), self.options.buckets
        )
        self.model.exit_layer_of_token.copy_(table)

    def predict_batches(
        self, data: Encoded, speed: float, batch_size: int
    ) -> Iterator[BatchResult]:
        """Consecutive batches; every sample runs, its exited tokens frozen."""
        for batch in data.batches(batch_size):
            batch = batch.to(self.device)
            logits = self.model.logits(batch)
            exits = self.model.token_exit_layers(batch).cpu()  # [B, T]
            lengths = batch.attention_mask.sum(dim=1).cpu()  # [B]
            per_conv = {conv: self.sample_flops(exits, conv) for conv in flops.CONVENTIONS}
            yield BatchResult(
                index=batch.index.cpu(),
                labels=logits.argmax(dim=-1).cpu(),
                exit_layers=exits.sum(dim=1) / lengths,  # mean over real tokens
                flops_fastbert=torch.from_numpy(per_conv["fastbert"]),
                flops_full=torch.from_numpy(per_conv["full"]),
            )

    def sample_flops(self, exits: torch.Tensor, convention: str) -> np.ndarray:
        """FLOPs [B] from token exit layers [B, T] (0 = padding): per token, per layer."""
        exits = exits.numpy()
        lengths = (exits > 0).sum(axis=1).astype(np.int64)
        total = flops.pooler_classifier(self.dims.hidden, self.info.num_labels)
        for layer in range(1, self.num_layers + 1):
            active = (exits >= layer).sum(axis=1).astype(np.int64)
            total = total + flops.token_exit_layer(self.dims, lengths, active, convention)
        return total

    @classmethod
    def speed_grid(cls, num_layers: int, num_labels: int) -> list[float]:
        return [float(s) for s in range(num_layers)]

    def diagnostics(self, data: Encoded, speed: float, out: Predictions) -> dict[str, float]:
        """The trained hash's speed, and the shares of real tokens that run to the top layer
        because they are special ([CLS], [SEP], [UNK], ...) or unseen in training."""
        whole = data.padded()
        real = whole.attention_mask.bool()
        special = torch.isin(whole.input_ids, torch.tensor(self.tokenizer.all_special_ids)) & real
        unseen = (self.extras[COUNTS][whole.input_ids] == 0) & real & ~special
        tokens = real.sum()
        return {
            "train_speed": float(self.train_speed),
            "special_token_share": float(special.sum() / tokens),
            "unseen_token_share": float(unseen.sum() / tokens),
        }
