"""Tokenize a split once into compact arrays, then cut batches padded only to their longest sample.

FLOPs are counted at each sample's real length (docs/methods.md, "FLOPs"), and a batch
is padded to its own longest sample rather than to ``seq_len``, so compute follows real lengths.

An encoded split keeps only its token ids, in the smallest integer dtype that holds the
vocabulary (int16 for BERT's 30,522 ids: 1M samples at length 128 take 244 MiB, not the
2.9 GiB of three int64 tensors), with each sample's length, where its second segment starts and
its label. The attention mask and token types follow from those and are derived per batch. A
``datasets.Dataset`` split is encoded once into ``$GEEP_CACHE/encoded/<key>``, the key a digest
of its texts, labels, the tokenizer and ``seq_len``, and memory-mapped from there afterwards.

Parallelism: each chunk of :data:`CHUNK` texts goes through the fast (Rust) tokenizer's batch
call, which encodes the texts on all cores (rayon threads; ``TOKENIZERS_PARALLELISM=false``
turns that off, and the tokenizers library turns it off itself in a process forked after it
has run). Reading the texts, checking the output and writing it run in the calling thread.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from geep.common.errors import GeepError
from geep.common.resources import require_memory
from geep.common.storage import atomic_directory, cache_root, exclusive

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

CHUNK = 2048
"""Texts per tokenizer call, and rows per write to the cache: the tokenizer's output for 2048
texts of up to 128 tokens takes about 100 MB (8192: 370 MB), at the same speed."""

FORMAT = 1
"""Version of the cache entries' layout; part of every key, so a new layout never reads an old
entry."""

ROW_ARRAYS = ("lengths", "second_start", "labels")
"""The per-sample int64 arrays [N] beside the token ids, in the cache and in memory."""

Chunk = tuple[list[str], list[str] | None, list[int]]
"""Texts, their pairs (None for single texts) and labels of up to :data:`CHUNK` samples."""


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
        """Keyword arguments for :meth:`geep.model.backbone.Backbone.embed`."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer dtype for token ids below ``vocab_size``: int16 up to 32,767 ids
    (BERT's 30,522, bert-base-chinese's 21,128), uint16 up to 65,535, else int32."""
    if vocab_size <= 32767:
        return np.dtype(np.int16)
    if vocab_size <= 65535:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


@dataclass
class Encoded:
    """A tokenized split in compact form, from which batches are cut on demand.

    ``token_ids`` [N, seq_len] is a numpy array of :func:`id_dtype` (memory-mapped when it comes
    from the cache), right-padded with the pad id. ``lengths`` [N] counts each sample's real
    tokens ([CLS] and [SEP] included), ``second_start`` [N] is where a pair's second segment
    starts (its length for a single text), ``labels`` [N] (-1: none); all three int64. A
    sample's attention mask is ``position < length`` and its token types are 1 where
    ``second_start <= position < length``.
    """

    token_ids: np.ndarray
    lengths: torch.Tensor
    second_start: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_padded(
        cls,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        labels: torch.Tensor,
    ) -> Encoded:
        """From right-padded [N, T] tensors, as a tokenizer returns them, and labels [N]."""
        ids = input_ids.numpy()
        token_ids, lengths, second_start = compact(
            ids, attention_mask.numpy(), token_type_ids.numpy(), id_dtype(int(ids.max()) + 1)
        )
        return cls(
            token_ids, torch.from_numpy(lengths), torch.from_numpy(second_start), labels.long()
        )

    @property
    def seq_len(self) -> int:
        """The length samples were truncated and padded to."""
        return self.token_ids.shape[1]

    def __len__(self) -> int:
        return len(self.lengths)

    def select(self, index: torch.Tensor) -> Encoded:
        """A new Encoded holding the samples at ``index``, in that order (read into memory)."""
        return Encoded(
            self.token_ids[index.numpy()],
            self.lengths[index],
            self.second_start[index],
            self.labels[index],
        )

    def sha256(self) -> str:
        """A digest of the token ids, lengths, segments and labels: the data this split holds."""
        digest = hashlib.sha256()
        for start in range(0, len(self), CHUNK):
            digest.update(np.ascontiguousarray(self.token_ids[start : start + CHUNK]))
        for t in (self.lengths, self.second_start, self.labels):
            digest.update(t.numpy().tobytes())
        return digest.hexdigest()

    def batch(self, index: torch.Tensor) -> Batch:
        """The samples at ``index`` [B] as int64 tensors [B, T], T the longest of them."""
        lengths, second_start = self.lengths[index], self.second_start[index]  # [B], [B]
        width = int(lengths.max())
        position = torch.arange(width)  # [T]
        real = position < lengths.unsqueeze(1)  # [B, T]
        return Batch(
            input_ids=torch.from_numpy(self.token_ids[index.numpy(), :width].astype(np.int64)),
            attention_mask=real.long(),
            token_type_ids=(real & (position >= second_start.unsqueeze(1))).long(),
            labels=self.labels[index],
            index=index,
        )

    def batches(self, batch_size: int) -> list[Batch]:
        """Consecutive batches of ``batch_size`` in the split's order."""
        order = torch.arange(len(self))
        return [self.batch(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]

    def padded(self) -> Batch:
        """The whole split as one Batch [N, T], T its longest sample: for the few steps that need
        every sample at once (HashEE's token counts, GEEP's table keys)."""
        return self.batch(torch.arange(len(self)))


def compact(
    input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded [n, T] arrays -> token ids [n, T] as ``dtype``, lengths [n], second starts [n].

    Raises GeepError unless the mask and token types are exactly those the lengths and second
    starts give (right padding, BERT segments), so that deriving them later loses nothing.
    """
    lengths = attention_mask.sum(axis=1, dtype=np.int64)  # [n]
    second = token_type_ids.astype(bool)  # [n, T]
    second_start = np.where(second.any(axis=1), second.argmax(axis=1), lengths)  # [n]
    position = np.arange(input_ids.shape[1])  # [T]
    real = position < lengths[:, None]  # [n, T]
    if not np.array_equal(attention_mask != 0, real):
        raise GeepError(
            "the attention mask is not 1 over each sample's first tokens and 0 after them: "
            "geep needs a tokenizer that pads on the right (padding_side='right')"
        )
    if not np.array_equal(second, real & (position >= second_start[:, None])):
        raise GeepError(
            "the token types are not 0 over the first segment, 1 over the second and 0 over "
            "padding: geep needs a tokenizer with BERT-style segments"
        )
    limits = np.iinfo(dtype)
    if input_ids.min() < limits.min or input_ids.max() > limits.max:
        raise GeepError(f"token ids outside {limits.min}..{limits.max} do not fit {dtype}")
    return input_ids.astype(dtype), lengths, second_start.astype(np.int64)


def encoded_chunks(
    tokenizer: PreTrainedTokenizerBase, chunks: Iterator[Chunk], n: int, seq_len: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Tokenize ``n`` samples chunk by chunk, truncated to ``seq_len`` tokens including
    [CLS]/[SEP]: per chunk its token ids [c, seq_len], lengths, second starts and labels [c].

    Fails first when the split is empty, ``seq_len`` too short, or the compact split would not
    fit in memory (a memory-mapped one is read on every epoch, so it should stay in memory too).
    """
    if seq_len < 8:
        raise GeepError(f"--seq-len {seq_len} is too short: use at least 8 tokens")
    if n == 0:
        raise GeepError("nothing to encode: the split is empty")
    dtype = id_dtype(len(tokenizer))
    require_memory(
        n * (seq_len * dtype.itemsize + 8 * len(ROW_ARRAYS)),
        f"tokenizing {n} samples at --seq-len {seq_len}",
        "lower --max-train, --max-eval or --seq-len",
    )
    bar = tqdm(total=n, desc="tokenize", unit="sample", disable=n < 32768)  # smaller: seconds
    with bar:
        for texts, pairs, labels in chunks:
            enc = tokenizer(
                texts,
                pairs,
                truncation=True,
                max_length=seq_len,
                padding="max_length",
                return_tensors="np",
                return_attention_mask=True,
                return_token_type_ids=True,
            )
            ids, lengths, second_start = compact(
                enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], dtype
            )
            yield ids, lengths, second_start, np.asarray(labels, dtype=np.int64)
            bar.update(len(texts))


def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    seq_len: int,
    text_pairs: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
) -> Encoded:
    """Tokenize texts (and pairs) in memory, truncated to ``seq_len`` tokens including
    [CLS]/[SEP]; labels default to -1."""
    texts = list(texts)
    pairs = list(text_pairs) if text_pairs is not None else None
    labels = list(labels) if labels is not None else [-1] * len(texts)
    chunks = (
        (
            texts[start : start + CHUNK],
            pairs[start : start + CHUNK] if pairs is not None else None,
            labels[start : start + CHUNK],
        )
        for start in range(0, len(texts), CHUNK)
    )
    parts = list(zip(*encoded_chunks(tokenizer, chunks, len(texts), seq_len), strict=True))
    ids, *rows = (np.concatenate(part) for part in parts)
    return Encoded(ids, *(torch.from_numpy(row) for row in rows))


def encode_split(tokenizer: PreTrainedTokenizerBase, split: Dataset, seq_len: int) -> Encoded:
    """Encode a split with columns ``text``, optional ``text_pair``, and ``label``, through the
    cache: the first call tokenizes it into ``$GEEP_CACHE/encoded/<key>``, every call
    memory-maps the token ids from there. The texts are read :data:`CHUNK` rows at a time.

    Processes that encode the same split at once (``accelerate launch``, benchmark workers) take
    turns on the entry's lock file: the first writes it, the others load what it wrote.
    """
    if not tokenizer.is_fast:
        raise GeepError(
            f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer; geep encodes datasets "
            "with one: give the model folder a tokenizer.json"
        )
    pair = "text_pair" in split.column_names
    split = split.select_columns(["text", "text_pair", "label"] if pair else ["text", "label"])
    key = split_key(tokenizer, split, seq_len)
    path = cache_root() / "encoded" / key
    with exclusive(path.with_name(f"{key}.lock")):
        encoded = load_cached(path)
        if encoded is None:
            write_cache(path, tokenizer, split, seq_len)
            encoded = load_cached(path)
    return encoded


def split_chunks(split: Dataset) -> Iterator[Chunk]:
    """The split's texts, pairs and labels, :data:`CHUNK` rows at a time."""
    for rows in split.iter(batch_size=CHUNK):
        yield rows["text"], rows.get("text_pair"), rows["label"]


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> dict:
    """What decides a fast tokenizer's output: its pipeline and vocabulary (without the padding
    and truncation a call last set), special tokens, sides and the libraries' versions."""
    import tokenizers
    import transformers

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    del state["padding"], state["truncation"]
    pipeline = json.dumps(state, sort_keys=True, ensure_ascii=False).encode()
    return {
        "class": type(tokenizer).__name__,
        "pipeline_sha256": hashlib.sha256(pipeline).hexdigest(),
        "size": len(tokenizer),
        "special_ids": tokenizer.all_special_ids,
        "pad_id": tokenizer.pad_token_id,
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def split_key(tokenizer: PreTrainedTokenizerBase, split: Dataset, seq_len: int) -> str:
    """The cache key of ``split`` encoded by ``tokenizer`` at ``seq_len``: a sha256 streamed over
    its texts, pairs and labels chunk by chunk (so :data:`CHUNK` is part of it too), with the
    tokenizer's identity, ``seq_len`` and :data:`FORMAT`."""
    head = {"format": FORMAT, "seq_len": seq_len, "tokenizer": tokenizer_identity(tokenizer)}
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for chunk in split_chunks(split):
        digest.update(json.dumps(chunk, ensure_ascii=False).encode())
    return digest.hexdigest()[:32]


def write_cache(
    path: Path, tokenizer: PreTrainedTokenizerBase, split: Dataset, seq_len: int
) -> None:
    """Tokenize ``split`` into the cache entry ``path``, whole or not at all.

    The token ids are appended to ``token_ids.npy`` chunk by chunk with plain writes, so memory
    holds one chunk at a time; ``meta.json`` is written last.
    """
    n = len(split)
    dtype = id_dtype(len(tokenizer))
    rows: list[tuple[np.ndarray, ...]] = []
    with atomic_directory(path) as tmp:
        with open(tmp / "token_ids.npy", "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
            np.lib.format.write_array_header_1_0(f, {**header, "shape": (n, seq_len)})
            for ids, *row in encoded_chunks(tokenizer, split_chunks(split), n, seq_len):
                f.write(ids.tobytes())
                rows.append(tuple(row))
        for name, parts in zip(ROW_ARRAYS, zip(*rows, strict=True), strict=True):
            np.save(tmp / f"{name}.npy", np.concatenate(parts))
        meta = {"format": FORMAT, "rows": n, "seq_len": seq_len, "dtype": dtype.name}
        (tmp / "meta.json").write_text(json.dumps(meta))


def load_cached(path: Path) -> Encoded | None:
    """The cache entry at ``path``, its token ids memory-mapped; None when there is no complete
    entry there (``meta.json`` is written last, and :func:`write_cache` writes a whole entry or
    none)."""
    if not (path / "meta.json").is_file():
        return None
    token_ids = np.load(path / "token_ids.npy", mmap_mode="r")
    rows = (torch.from_numpy(np.load(path / f"{name}.npy")) for name in ROW_ARRAYS)
    return Encoded(token_ids, *rows)
