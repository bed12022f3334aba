"""Tokenize a split once, then cut batches padded only to their longest real sample.

FLOPs are counted at each sample's real length (docs/methods.md, "FLOPs"), and a batch
is padded to its own longest sample rather than to ``seq_len``, so compute follows real lengths.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from geep.errors import GeepError
from geep.resources import require_memory

CHUNK = 8192
"""Texts per tokenizer call."""


@dataclass
class Batch:
    """One model input. All tensors [B, T] except ``labels`` [B] and ``index`` [B]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor  # positions of these samples in the encoded split

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                t.to(device)
                for t in (
                    self.input_ids,
                    self.attention_mask,
                    self.token_type_ids,
                    self.labels,
                    self.index,
                )
            )
        )

    def inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for :meth:`geep.backbone.Backbone.embed`."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


@dataclass
class Encoded:
    """A tokenized split: [N, seq_len] tensors padded with the pad id, and real lengths [N]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.lengths)

    def select(self, index: torch.Tensor) -> Encoded:
        """A new Encoded holding the samples at ``index``, in that order."""
        return Encoded(
            self.input_ids[index],
            self.attention_mask[index],
            self.token_type_ids[index],
            self.labels[index],
            self.lengths[index],
        )

    def sha256(self) -> str:
        """A digest of the token ids, token types and labels: the data this split holds."""
        digest = hashlib.sha256()
        for t in (self.input_ids, self.token_type_ids, self.labels):
            digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def batch(self, index: torch.Tensor) -> Batch:
        """The samples at ``index`` [B], trimmed to the longest of them."""
        width = int(self.lengths[index].max())
        return Batch(
            input_ids=self.input_ids[index, :width],
            attention_mask=self.attention_mask[index, :width],
            token_type_ids=self.token_type_ids[index, :width],
            labels=self.labels[index],
            index=index,
        )

    def batches(self, batch_size: int) -> list[Batch]:
        """Consecutive batches of ``batch_size`` in the split's order."""
        order = torch.arange(len(self))
        return [self.batch(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    seq_len: int,
    text_pairs: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
) -> Encoded:
    """Tokenize texts (and pairs), truncated to ``seq_len`` tokens including [CLS]/[SEP].

    Texts go through the tokenizer ``CHUNK`` at a time into preallocated tensors, so memory
    stays near the tensors' own size; a split whose tensors would not fit fails first.
    """
    if seq_len < 8:
        raise GeepError(f"--seq-len {seq_len} is too short: use at least 8 tokens")
    if len(texts) == 0:
        raise GeepError("nothing to encode: the split is empty")
    texts = list(texts)
    pairs = list(text_pairs) if text_pairs is not None else None
    n = len(texts)
    require_memory(
        3 * n * seq_len * 8,  # ids, mask and token types: int64 [N, seq_len] each
        f"tokenizing {n} samples at --seq-len {seq_len}",
        "lower --max-train, --max-eval or --seq-len",
    )
    input_ids, mask, type_ids = (torch.empty(n, seq_len, dtype=torch.long) for _ in range(3))
    starts = range(0, n, CHUNK)
    for start in tqdm(starts, desc="tokenize", unit="chunk", disable=len(starts) < 4):
        stop = min(start + CHUNK, n)
        enc = tokenizer(
            texts[start:stop],
            pairs[start:stop] if pairs is not None else None,
            truncation=True,
            max_length=seq_len,
            padding="max_length",
            return_tensors="pt",
            return_token_type_ids=True,
        )
        input_ids[start:stop] = enc["input_ids"]
        mask[start:stop] = enc["attention_mask"]
        type_ids[start:stop] = enc["token_type_ids"]
    label_tensor = torch.tensor(list(labels) if labels is not None else [-1] * n)
    return Encoded(
        input_ids=input_ids,
        attention_mask=mask,
        token_type_ids=type_ids,
        labels=label_tensor,
        lengths=mask.sum(dim=1),
    )


def encode_split(tokenizer: PreTrainedTokenizerBase, split: Dataset, seq_len: int) -> Encoded:
    """Encode a split with columns ``text``, optional ``text_pair``, and ``label``."""
    pairs = split["text_pair"] if "text_pair" in split.column_names else None
    return encode_texts(tokenizer, split["text"], seq_len, pairs, split["label"])
