"""Analytic FLOPs per component, at a sample's real length, in two conventions (docs/methods.md).

- ``fastbert``: 2 x multiply-adds of linear layers only (the thop convention FastBERT reports;
  attention scores QK^T and context AV are not counted).
- ``full``: 2 x multiply-adds of every matmul, attention scores and context included; it agrees
  with ``torch.utils.flop_counter.FlopCounterMode`` on a real forward (tests/measure/test_flops.py).

Embedding lookups, layer norms, softmax, activations and dropout are not matmuls and count 0 in
both conventions (as in FlopCounterMode). Everything here is per sample (batch size 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from geep.common.errors import GeepError
from geep.common.schema import document, first_problem, maybe, whole

if TYPE_CHECKING:
    from transformers import PretrainedConfig

Convention = Literal["fastbert", "full"]
CONVENTIONS: tuple[Convention, ...] = ("fastbert", "full")

# The FastBERT classifier: Linear(H -> 128), 2-head self-attention at width 128 (docs/methods.md).
FASTBERT_HEAD_WIDTH = 128
FASTBERT_HEAD_HEADS = 2


@dataclass(frozen=True)
class EncoderDims:
    """The shape of a BERT-family encoder, all FLOPs depend on."""

    hidden: int
    num_layers: int
    num_heads: int
    intermediate: int

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> EncoderDims:
        return cls(
            hidden=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            intermediate=config.intermediate_size,
        )


# Shapes of the named encoders (their config.json files): no download needed to count FLOPs.
NAMED_DIMS = {
    "bert-base": EncoderDims(hidden=768, num_layers=12, num_heads=12, intermediate=3072),
    "bert-base-uncased": EncoderDims(hidden=768, num_layers=12, num_heads=12, intermediate=3072),
    "bert-base-chinese": EncoderDims(hidden=768, num_layers=12, num_heads=12, intermediate=3072),
    "minilm-l6": EncoderDims(hidden=384, num_layers=6, num_heads=12, intermediate=1536),
}


CONFIG_FIELDS = document(
    {
        "hidden_size": whole(1),
        "num_hidden_layers": whole(1),
        "num_attention_heads": whole(1),
        "intermediate_size": whole(1),
        "max_position_embeddings": maybe(whole(1)),
    }
)
"""What a BERT config.json must hold for its FLOPs to be counted (geep.common.schema)."""


def dims_for(config: str, seq_len: int | None = None) -> EncoderDims:
    """Dims of a named encoder, a config.json file, or a model folder holding one.

    A file's fields are checked before anything is computed: each a whole number >= 1, the
    hidden size divisible by the number of heads and, when the file gives its positions and
    ``seq_len`` is given, ``seq_len`` within them. GeepError (one line naming the file and the
    first bad field) otherwise."""
    if config in NAMED_DIMS:
        return NAMED_DIMS[config]
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise GeepError(
            f"unknown config '{config}': use {', '.join(NAMED_DIMS)} or a path to a "
            "config.json or a model folder"
        )
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GeepError(f"{path} is not a BERT config.json (not JSON)") from err
    if problem := first_problem(raw, CONFIG_FIELDS):
        raise GeepError(f"{path} is not a BERT config.json: {problem}")
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    if hidden % heads:
        raise GeepError(
            f"{path} is not a BERT config.json: hidden_size {hidden} must be divisible by "
            f"num_attention_heads {heads}"
        )
    positions = raw.get("max_position_embeddings")
    if seq_len is not None and positions is not None and seq_len > positions:
        raise GeepError(
            f"--seq-len {seq_len} is longer than {path}'s max_position_embeddings {positions}"
        )
    return EncoderDims(
        hidden=hidden,
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        intermediate=raw["intermediate_size"],
    )


def linear(tokens: int, d_in: int, d_out: int) -> int:
    """One nn.Linear applied to ``tokens`` positions: 2 x tokens x d_in x d_out."""
    return 2 * tokens * d_in * d_out


def attention_matmuls(queries: int, keys: int, width: int, convention: Convention) -> int:
    """Scores (QK^T) plus context (AV), summed over heads of total ``width``; 0 for ``fastbert``."""
    return 0 if convention == "fastbert" else 2 * (2 * queries * keys * width)


def encoder_layer(dims: EncoderDims, n: int, convention: Convention) -> int:
    """One Transformer layer on ``n`` tokens: Q, K, V, output projection, FFN in and out."""
    return token_exit_layer(dims, n, n, convention)


def token_exit_layer(dims: EncoderDims, n: int, active: int, convention: Convention) -> int:
    """One layer in which only ``active`` of the ``n`` tokens are updated (HashEE).

    Keys and values are projected for all ``n`` tokens; queries, attention, the output
    projection and the FFN run for the ``active`` ones only.
    """
    h, f = dims.hidden, dims.intermediate
    keys_values = 2 * linear(n, h, h)
    queries_output = 2 * linear(active, h, h)
    ffn = linear(active, h, f) + linear(active, f, h)
    return keys_values + queries_output + ffn + attention_matmuls(active, n, h, convention)


def fastbert_head(hidden: int, n: int, num_labels: int, convention: Convention) -> int:
    """FastBERT classifier on ``n`` tokens: narrow, self-attention (all positions), [CLS] MLP."""
    w = FASTBERT_HEAD_WIDTH
    narrow = linear(n, hidden, w)
    attention = 4 * linear(n, w, w) + attention_matmuls(n, n, w, convention)
    cls_mlp = linear(1, w, w) + linear(1, w, num_labels)
    return narrow + attention + cls_mlp


def pooler_classifier(hidden: int, num_labels: int) -> int:
    """BERT pooler (Linear(H, H) on [CLS]) + Linear(H, C); also a DeeBERT highway or PABEE exit."""
    return linear(1, hidden, hidden) + linear(1, hidden, num_labels)


def breakdown(dims: EncoderDims, n: int, num_labels: int, convention: Convention) -> dict[str, int]:
    """Per-component FLOPs of a full-depth forward with one FastBERT-style head (``geep flops``)."""
    h, f = dims.hidden, dims.intermediate
    per_layer = {
        "attention.qkv": 3 * linear(n, h, h),
        "attention.scores+context": attention_matmuls(n, n, h, convention),
        "attention.output": linear(n, h, h),
        "ffn": linear(n, h, f) + linear(n, f, h),
    }
    rows = {"embeddings": 0}
    rows.update(
        {f"layer.{k} (x{dims.num_layers})": dims.num_layers * v for k, v in per_layer.items()}
    )
    rows["fastbert_head"] = fastbert_head(h, n, num_labels, convention)
    rows["total"] = sum(rows.values())
    return rows
