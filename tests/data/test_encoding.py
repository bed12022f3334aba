"""The compact encoding: ids in the vocabulary's dtype, batches equal to the tokenizer's padded
int64 output, and the cache (hit, missed on a change, never read half-written)."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from geep.common.errors import GeepError
from geep.common.storage import cache_root
from geep.data import encoding
from geep.data.encoding import Encoded, encode_split, encode_texts, id_dtype
from geep.model.backbone import resolve_model_dir

TEXTS = [
    "good film",
    "the plot was very boring and the film was not good at all it is the worst of the worst",
    "a",
    "love it",
    "this movie is the best film of the best",
]
PAIRS = ["bad", "great movie", "the film was a very very good film and the plot was fine", "", "x"]
LABELS = [0, 1, 1, 0, 1]
SEQ_LEN = 12  # the second text is cut; in pairs, the longer segment is cut first


@pytest.fixture
def tokenizer(tiny_model: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model)


def word_level_tokenizer(size: int) -> PreTrainedTokenizerFast:
    """A fast tokenizer of ``size`` ids: [PAD], [UNK], [CLS], [SEP], then words w0, w1, ..."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    vocab |= {f"w{i}": i + 4 for i in range(size - 4)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def expected_batch(
    tokenizer: PreTrainedTokenizerBase, pairs: list[str] | None, index: torch.Tensor
) -> dict[str, torch.Tensor]:
    """What the old encoding gave: the tokenizer's int64 [N, SEQ_LEN] output, rows at ``index``
    cut to the longest of them."""
    full = tokenizer(
        TEXTS,
        pairs,
        truncation=True,
        max_length=SEQ_LEN,
        padding="max_length",
        return_tensors="pt",
        return_token_type_ids=True,
    )
    width = int(full["attention_mask"][index].sum(1).max())
    return {name: full[name][index, :width] for name in full}


def assert_batch_is(batch: encoding.Batch, expected: dict[str, torch.Tensor]) -> None:
    for name, tensor in expected.items():
        got = getattr(batch, name)
        assert got.dtype == torch.int64 and torch.equal(got, tensor), name


def test_ids_take_the_smallest_dtype_that_holds_the_vocabulary() -> None:
    assert id_dtype(21128) == id_dtype(30522) == id_dtype(32767) == np.int16
    assert id_dtype(32768) == id_dtype(65535) == np.uint16
    assert id_dtype(65536) == id_dtype(250002) == np.int32


def test_large_ids_survive_the_compact_dtype() -> None:
    tokenizer = word_level_tokenizer(40004)  # above int16: ids up to 40003 in uint16
    data = encode_texts(tokenizer, ["w39999 w0", "w1"], 8)
    assert data.token_ids.dtype == np.uint16
    assert data.batch(torch.tensor([0, 1])).input_ids.tolist() == [[2, 40003, 4, 3], [2, 5, 3, 0]]


@pytest.mark.parametrize("pairs", [None, PAIRS], ids=["single", "pair"])
def test_batches_equal_the_tokenizers_padded_output(
    tokenizer, pairs, private_cache, monkeypatch
) -> None:
    monkeypatch.setattr(encoding, "CHUNK", 2)  # several chunks, the last one short
    index = torch.tensor([3, 1, 0])
    expected = expected_batch(tokenizer, pairs, index)
    in_memory = encode_texts(tokenizer, TEXTS, SEQ_LEN, pairs, LABELS)
    columns = {"text": TEXTS, "label": LABELS} | ({"text_pair": pairs} if pairs else {})
    cached = encode_split(tokenizer, Dataset.from_dict(columns), SEQ_LEN)
    assert in_memory.token_ids.dtype == cached.token_ids.dtype == np.int16
    assert isinstance(cached.token_ids, np.memmap)  # read from the cache, not held in memory
    for data in (in_memory, cached, cached.select(torch.arange(len(TEXTS)))):
        assert_batch_is(data.batch(index), expected)
        assert data.batch(index).labels.tolist() == [LABELS[i] for i in index]
    assert in_memory.sha256() == cached.sha256()
    assert bool(in_memory.batch(index).token_type_ids.any()) == (pairs is not None)


def test_a_tokenizer_that_pads_on_the_left_is_rejected(tokenizer, private_cache) -> None:
    tokenizer.padding_side = "left"
    with pytest.raises(GeepError, match=r"pads on the right \(padding_side='right'\)"):
        encode_texts(tokenizer, TEXTS, SEQ_LEN)
    with pytest.raises(GeepError, match="pads on the right"):
        encode_split(tokenizer, Dataset.from_dict({"text": TEXTS, "label": LABELS}), SEQ_LEN)
    assert entries() == []  # nothing written, no temporary left


def test_token_types_that_are_not_bert_segments_are_rejected() -> None:
    ids = torch.tensor([[2, 7, 3, 8, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    with pytest.raises(GeepError, match="BERT-style segments"):
        Encoded.from_padded(ids, mask, torch.tensor([[0, 1, 0, 1, 1, 0]]), torch.tensor([0]))
    data = Encoded.from_padded(ids, mask, torch.tensor([[0, 0, 0, 1, 1, 0]]), torch.tensor([0]))
    assert (data.lengths.tolist(), data.second_start.tolist()) == ([5], [3])


class CountingCalls:
    """Counts the calls of a tokenizer class's ``__call__``; ``fail_at`` raises on that call,
    ``delay`` seconds make each call slow."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, fail_at: int | None, delay: float
    ) -> None:
        self.original, self.fail_at, self.delay = type(tokenizer).__call__, fail_at, delay
        self.calls = 0

    def __call__(self, tokenizer: PreTrainedTokenizerBase, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt  # as if the process were stopped mid-split
        time.sleep(self.delay)
        return self.original(tokenizer, *args, **kwargs)


def spy(tokenizer, monkeypatch, fail_at: int | None = None, delay: float = 0) -> CountingCalls:
    calls = CountingCalls(tokenizer, fail_at, delay)
    monkeypatch.setattr(type(tokenizer), "__call__", lambda *a, **k: calls(*a, **k))
    return calls


def entries() -> list[Path]:
    """The cache's entries and temporaries (folders; not the entries' lock files)."""
    return sorted(p for p in (cache_root() / "encoded").iterdir() if p.is_dir())


def test_the_cache_is_hit_for_the_same_split_and_missed_on_any_change(
    tokenizer, private_cache, monkeypatch
) -> None:
    split = Dataset.from_dict({"text": TEXTS, "label": LABELS})
    first = encode_split(tokenizer, split, SEQ_LEN)
    calls = spy(tokenizer, monkeypatch)
    again = encode_split(tokenizer, Dataset.from_dict({"text": TEXTS, "label": LABELS}), SEQ_LEN)
    assert calls.calls == 0 and again.sha256() == first.sha256() and len(entries()) == 1

    longer = encode_split(tokenizer, split, SEQ_LEN + 4)
    assert calls.calls == 1 and longer.seq_len == SEQ_LEN + 4 and len(entries()) == 2
    edited = Dataset.from_dict({"text": [*TEXTS[:-1], TEXTS[-1] + " film"], "label": LABELS})
    changed = encode_split(tokenizer, edited, SEQ_LEN)
    assert calls.calls == 2 and len(entries()) == 3
    assert changed.lengths[-1] == first.lengths[-1] + 1
    relabelled = Dataset.from_dict({"text": TEXTS, "label": [1 - y for y in LABELS]})
    assert encode_split(tokenizer, relabelled, SEQ_LEN).labels.tolist() == [1, 0, 0, 1, 0]
    assert calls.calls == 3 and len(entries()) == 4


def test_a_split_interrupted_while_encoding_leaves_no_entry(
    tokenizer, private_cache, monkeypatch
) -> None:
    monkeypatch.setattr(encoding, "CHUNK", 2)
    split = Dataset.from_dict({"text": TEXTS, "label": LABELS})
    calls = spy(tokenizer, monkeypatch, fail_at=2)  # the second of three chunks
    with pytest.raises(KeyboardInterrupt):
        encode_split(tokenizer, split, SEQ_LEN)
    assert entries() == []
    data = encode_split(tokenizer, split, SEQ_LEN)
    assert calls.calls == 2 + 3  # encoded again from the start, whole
    assert_batch_is(data.batch(torch.arange(5)), expected_batch(tokenizer, None, torch.arange(5)))


def test_a_killed_writers_temporary_is_never_read(tokenizer, private_cache, monkeypatch) -> None:
    split = Dataset.from_dict({"text": TEXTS, "label": LABELS})
    encode_split(tokenizer, split, SEQ_LEN)
    [entry] = entries()
    pid = int(subprocess.check_output([sys.executable, "-c", "import os; print(os.getpid())"]))
    # a writer killed just before its rename: a complete-looking entry, but only a temporary
    stale = entry.with_name(f".{entry.name}.{pid}.x1y2.tmp")
    entry.rename(stale)
    np.save(stale / "labels.npy", np.full(len(TEXTS), 7))
    calls = spy(tokenizer, monkeypatch)
    data = encode_split(tokenizer, split, SEQ_LEN)
    assert calls.calls == 1 and data.labels.tolist() == LABELS
    assert entries() == [entry]  # the temporary of the dead writer is gone


def test_an_entry_without_its_last_file_is_written_again(
    tokenizer, private_cache, monkeypatch
) -> None:
    split = Dataset.from_dict({"text": TEXTS, "label": LABELS})
    expected = encode_split(tokenizer, split, SEQ_LEN).sha256()
    [entry] = entries()
    (entry / "meta.json").unlink()  # written last: without it the entry is not complete
    calls = spy(tokenizer, monkeypatch)
    assert encode_split(tokenizer, split, SEQ_LEN).sha256() == expected and calls.calls == 1
    assert (entry / "meta.json").is_file()


def test_two_encoders_of_one_split_at_once_tokenize_it_once(
    tiny_model, private_cache, monkeypatch
) -> None:
    """As ``accelerate launch`` does: the second waits on the entry's lock, then loads it."""
    monkeypatch.setattr(encoding, "CHUNK", 2)
    tokenizers = [AutoTokenizer.from_pretrained(tiny_model) for _ in range(2)]
    calls = spy(tokenizers[0], monkeypatch, delay=0.2)  # both are BertTokenizers

    def encode(tokenizer: PreTrainedTokenizerBase) -> Encoded:
        return encode_split(tokenizer, Dataset.from_dict({"text": TEXTS, "label": LABELS}), SEQ_LEN)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(encode, tokenizers)
    assert calls.calls == 3 and len(entries()) == 1  # 3 chunks, tokenized once
    assert first.sha256() == second.sha256()


@pytest.mark.slow
def test_the_embedded_tokenizer_is_fast_and_its_pairs_encode_as_before(
    tmp_path, monkeypatch
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("minilm-l6"))
    monkeypatch.setenv("GEEP_CACHE", str(tmp_path))  # after the model: it stays in the cache
    assert tokenizer.is_fast and len(tokenizer) == 30522
    data = encode_split(
        tokenizer, Dataset.from_dict({"text": TEXTS, "text_pair": PAIRS, "label": LABELS}), SEQ_LEN
    )
    assert data.token_ids.dtype == np.int16
    index = torch.arange(len(TEXTS))
    assert_batch_is(data.batch(index), expected_batch(tokenizer, PAIRS, index))
