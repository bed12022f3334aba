"""The loaders: local files, pinned package archives, the hub; then one normalisation path.

Every source yields raw splits (texts, optional text pairs, labels as strings). Then, in order:

1. whitespace runs collapse to one space and texts are stripped; an example whose text (or text
   pair) is then empty is dropped;
2. exact duplicates go, within each source split: the same text (and pair) with the same label is
   kept once; the same text (and pair) under different labels is dropped entirely, since no label
   for it can be trusted;
3. labels are encoded (:func:`_encode_labels`); a registered dataset's source must hold exactly
   its classes, and a paper dataset's source one of its published splits (:func:`check_sizes`);
4. missing splits are carved out of train by :func:`stratified_split` (never select on
   test): 80/10/10 train/dev/test from a lone pool, or 10 % of train for a missing dev (or test).

A registered dataset is looked for first in ``$GEEP_DATA_DIR/<name>/`` (UER TSV files, read fresh
every call), then in the prepared-dataset cache, then fetched from its pinned archive or the hub and
saved to ``cache_root()/datasets/<name>-<hash>/``, the hash covering the spec and PREP_VERSION;
``$GEEP_HUB_<NAME>`` replaces its hub id. Local files given by path are never cached, nor checked
against a spec: they are read fresh every call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import load_dataset as hf_load_dataset
from datasets.exceptions import DatasetsError
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from geep.common.errors import GeepError
from geep.common.hub import hub_unavailable_reason
from geep.common.resources import format_size, require_memory
from geep.common.storage import atomic_directory, cache_root
from geep.data.archives import fetch_archive
from geep.data.formats import (
    FORMATS,
    RawData,
    RawSplit,
    csv_records,
    decode_utf8,
    jsonl_records,
    raw_split,
    tsv_records,
)
from geep.data.registry import (
    DATA_DIR_ENV,
    HUB_ID_ENV,
    OFFLINE_TIER,
    REGISTRY,
    DatasetSpec,
    HubSource,
    get_spec,
)

PREP_VERSION = 1
"""Bump when parsing, cleaning or splitting changes, so stale cache entries are not reused."""

HOLDOUT = 0.1
"""The fraction of a pool carved out for each missing split."""

SPLIT_SALT = "geep-split-v1"
LOCAL_FILE_MEMORY = 12
"""Peak memory of loading a local file, as a multiple of its size: a 50 MiB TSV peaked at 8.8x
(English) and 11.2x (Chinese: more characters per byte) its size on 2026-11-21."""
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INDEX = re.compile(r"[0-9]+")


# --- entry point -----------------------------------------------------------------------------


def load_dataset(name_or_path: str, carve: bool = True) -> DatasetDict:
    """Load a registered dataset by name, or local files by path, as train/dev/test splits.

    Columns: ``text``, ``text_pair`` (pair tasks only) and ``label``, a ClassLabel whose names are
    the label names. A registered name wins over a same-named path (write ``./weibo`` for the
    folder). Every problem with the input is a GeepError naming it and the fix. ``carve=False``
    leaves local files' missing splits uncarved: a single file is then one ``train`` split, in
    its own order (to evaluate it whole).
    """
    path = Path(name_or_path).expanduser()
    if name_or_path not in REGISTRY:
        if path.exists():
            return prepare(_read_local(path), None, carve)
        if "/" in name_or_path or os.sep in name_or_path or path.suffix.lower() in FORMATS:
            raise GeepError(f"no such file or directory: {name_or_path}; check the path")
    return _load_registered(get_spec(name_or_path))


def _load_registered(spec: DatasetSpec) -> DatasetDict:
    spec = _hub_override(spec)
    local = _data_dir(spec)
    if local is not None:
        return prepare(_read_local(local), spec)
    if spec.local_only:
        raise GeepError(
            f"dataset {spec.name!r} has no public download: it reads {spec.sources.local} "
            "(UER format: a header label<TAB>text_a, text_b for pairs)"
        )
    cached = cache_dir(spec)
    if not cached.exists():
        raw = _read_archive(spec) if spec.sources.archive else _read_hub(spec)
        prepared = prepare(raw, spec)
        with _quiet(), atomic_directory(cached) as tmp:
            prepared.save_to_disk(tmp)
    try:
        with _quiet():
            return DatasetDict.load_from_disk(cached)
    except (OSError, ValueError) as e:
        raise GeepError(
            f"the cached {spec.name} dataset at {cached} is unreadable ({type(e).__name__}); "
            "delete that folder and run again"
        ) from e


def cache_dir(spec: DatasetSpec) -> Path:
    """Where the prepared dataset is cached; the name's hash covers the spec (its
    ``cache_key()``) and PREP_VERSION."""
    blob = json.dumps([PREP_VERSION, spec.cache_key()], sort_keys=True).encode()
    return cache_root() / "datasets" / f"{spec.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


def _hub_override(spec: DatasetSpec) -> DatasetSpec:
    """The spec with its hub id replaced by ``$GEEP_HUB_<NAME>`` where that is set; the columns
    stay the spec's, so only a dataset with a hub source takes one."""
    var = HUB_ID_ENV.format(spec.name.upper().replace("-", "_"))
    override = os.environ.get(var, "").strip()
    if not override:
        return spec
    hub = spec.sources.hub
    if hub is None:
        raise GeepError(
            f"${var} is set but {spec.name!r} has no hub source whose id it could replace; "
            f"unset it and use local files: {spec.sources.local}"
        )
    return replace(spec, sources=replace(spec.sources, hub=replace(hub, id=override)))


def _data_dir(spec: DatasetSpec) -> Path | None:
    root = os.environ.get(DATA_DIR_ENV)
    folder = Path(root).expanduser() / spec.name if root else None
    return folder if folder is not None and folder.is_dir() else None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ``datasets`` progress bars for the block, restoring the caller's setting after."""
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


# --- normalisation ---------------------------------------------------------------------------


def prepare(raw: RawData, spec: DatasetSpec | None, carve: bool = True) -> DatasetDict:
    """Clean, deduplicate, encode labels and carve missing splits (module docstring, steps 1-4;
    ``carve=False``: only steps 1-3, the splits there are)."""
    splits = {name: deduplicate(clean(split)) for name, split in raw.splits.items()}
    for name, split in splits.items():
        if not split.text:
            raise GeepError(f"{raw.where}: the {name} split has no examples with non-empty text")
    is_pair = splits["train"].pair is not None
    if spec is not None and is_pair != (spec.task == "pair"):
        want = "label, text_a and text_b" if spec.task == "pair" else "label and text_a"
        raise GeepError(
            f"{raw.where}: {spec.name} is a {spec.task}-text task; give its files columns {want}"
        )
    names, ids = _encode_labels(raw, splits, spec)
    if spec is not None:
        check_sizes(raw, spec)
    pool = len(splits["train"].text)
    missing = {name: HOLDOUT for name in ("dev", "test") if name not in splits and carve}
    if missing:
        parts = stratified_split(splits["train"].keys(), ids["train"], missing)
        train, train_ids = splits["train"], ids["train"]
        splits = splits | {name: train.take(idx) for name, idx in parts.items()}
        ids = ids | {name: [train_ids[i] for i in idx] for name, idx in parts.items()}
    for name in ("train", "dev", "test") if carve else ():
        if not splits[name].text:
            raise GeepError(
                f"{raw.where}: too few examples ({pool}) to carve a {name} split; "
                f"give more data or a {name} file"
            )
    features = Features(
        {"text": Value("string")}
        | ({"text_pair": Value("string")} if is_pair else {})
        | {"label": ClassLabel(names=list(names))}
    )
    return DatasetDict(
        {
            name: Dataset.from_dict(_columns(splits[name], ids[name]), features=features)
            for name in ("train", "dev", "test")
            if name in splits
        }
    )


def _columns(split: RawSplit, ids: list[int]) -> dict[str, list]:
    pair = {} if split.pair is None else {"text_pair": split.pair}
    return {"text": split.text} | pair | {"label": ids}


def _normalise(text: str) -> str:
    return " ".join(text.split())


def clean(split: RawSplit) -> RawSplit:
    """Collapse whitespace and strip; drop examples whose text (or pair) is then empty."""
    text = [_normalise(t) for t in split.text]
    pair = None if split.pair is None else [_normalise(p) for p in split.pair]
    cleaned = RawSplit(text, split.label, pair)
    return cleaned.take([i for i, t in enumerate(text) if t and (pair is None or pair[i])])


def deduplicate(split: RawSplit) -> RawSplit:
    """Keep one copy of each exact duplicate; drop every copy of a text with conflicting labels.

    Duplicates are the same text (and text pair) with the same label: the first is kept. The same
    text (and pair) under two or more different labels is ambiguous, so all its copies go.
    """
    first: dict[str, int] = {}
    labels: dict[str, set[str]] = {}
    for i, key in enumerate(split.keys()):
        first.setdefault(key, i)
        labels.setdefault(key, set()).add(split.label[i])
    return split.take(sorted(i for key, i in first.items() if len(labels[key]) == 1))


def _encode_labels(
    raw: RawData, splits: Mapping[str, RawSplit], spec: DatasetSpec | None
) -> tuple[tuple[str, ...], dict[str, list[int]]]:
    """Label names, and each split's labels as class indices.

    Labels that all look numeric are class indices (:func:`_label_index`). For unregistered files
    they must be 0..C-1 for their C distinct values (so 1-based labels are an error). Their names
    are the spec's, else the source's, else the digits. Otherwise labels are names: the spec's
    names when it has them, else the sorted distinct strings. A registered dataset's source must
    hold exactly its classes, over all its splits: every index 0..C-1 or every name, nothing else,
    and as many names as the spec where the source names its integer labels itself.
    """
    values = {v for split in splits.values() for v in split.label}
    if all(_NUMBER.fullmatch(v) for v in values):
        mapping = {v: _label_index(v, raw.where) for v in values}
        found = sorted(set(mapping.values()))
        if spec is None and found != list(range(len(found))):
            raise GeepError(
                f"{raw.where}: integer labels must be 0..{len(found) - 1}, found "
                f"{_listing(found)}; renumber them from 0 (or use class names as labels)"
            )
        count = spec.num_classes if spec else len(found)
        if spec is not None and found != list(range(count)):
            raise _classes_differ(raw.where, spec, found)
        if spec is not None and raw.label_names and len(raw.label_names) != count:
            raise _classes_differ(raw.where, spec, raw.label_names)
        names = (spec.label_names if spec else None) or raw.label_names
        names = names or tuple(str(i) for i in range(count))
    elif spec is not None and spec.label_names:
        names = spec.label_names
        if values != set(names):
            raise _classes_differ(raw.where, spec, sorted(values))
        mapping = {name: i for i, name in enumerate(names)}
    else:
        names = tuple(sorted(values))
        mapping = {name: i for i, name in enumerate(names)}
        if spec is not None and len(names) != spec.num_classes:
            raise _classes_differ(raw.where, spec, names)
    return names, {name: [mapping[v] for v in split.label] for name, split in splits.items()}


def _classes_differ(where: str, spec: DatasetSpec, found: Sequence[object]) -> GeepError:
    """One line naming both class sets: the source's and the spec's."""
    ours = spec.label_names or tuple(str(i) for i in range(spec.num_classes))
    return GeepError(
        f"{where}: its classes [{_listing(found)}] are not {spec.name}'s {spec.num_classes} "
        f"classes [{_listing(ours)}] or their indices 0..{spec.num_classes - 1}; check that this "
        "is the right copy (files of your own go by --dataset PATH)"
    )


def _listing(values: Sequence[object], limit: int = 12) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (", ..." if len(values) > limit else "")


def _label_index(value: str, where: str) -> int:
    """A numeric label as a class index: an integer, or a whole float (1.0 is class 1: a label
    column may be a float similarity ``score``, as C-MTEB/LCQMC names it); nothing negative."""
    if _INDEX.fullmatch(value):
        return int(value)
    number = float(value)
    if not number.is_integer() or value.startswith("-"):
        raise GeepError(
            f"{where}: label {value!r} is not a non-negative integer; integer labels (or whole "
            "floats such as 1.0) must be 0..C-1 (or use class names as labels)"
        )
    return int(number)


def check_sizes(raw: RawData, spec: DatasetSpec) -> None:
    """A paper dataset's source must hold one of its published splits, exactly.

    Each split's examples as the files have them (before cleaning and deduplication) must be
    ``spec.sizes`` or one of ``spec.also_published``, and a split that the published one lacks
    (ag-news' dev) must be missing too: a copy of a published split has its counts to the row.
    Unknown sizes are not checked, nor the offline tier's (theirs are what preparation gives).
    """
    if not spec.paper or spec.sizes is None:
        return
    found = tuple(
        len(raw.splits[name].text) if name in raw.splits else None
        for name in ("train", "dev", "test")
    )
    published = (spec.sizes, *spec.also_published)
    if found not in published:
        raise GeepError(
            f"{raw.where}: its train/dev/test splits have {_sizes(found)} examples but "
            f"{spec.name}'s published split has {' or '.join(map(_sizes, published))}; "
            "use a copy of the published split (files of your own go by --dataset PATH)"
        )


def _sizes(sizes: Sequence[int | None]) -> str:
    return " / ".join("-" if n is None else f"{n:,}" for n in sizes)


def stratified_split(
    keys: Sequence[str], labels: Sequence[int], fractions: Mapping[str, float]
) -> dict[str, list[int]]:
    """Split example indices into the named ``fractions`` plus ``train`` (the rest), per class.

    Each example is ranked by a salted blake2b hash of its key (its text), so the split depends on
    nothing but the content: the same on every run, machine and library version. Within each
    class, examples in rank order fill each fraction in turn (``round(n * fraction)`` of them) and
    the rest go to train. Each part lists its indices in rank order: shuffled, classes mixed.
    """

    def rank(i: int) -> bytes:
        return hashlib.blake2b(f"{SPLIT_SALT}\0{keys[i]}".encode(), digest_size=16).digest()

    order = sorted(range(len(keys)), key=rank)
    by_class: dict[int, list[int]] = {}
    for i in order:
        by_class.setdefault(labels[i], []).append(i)
    parts: dict[str, list[int]] = {name: [] for name in fractions} | {"train": []}
    for members in by_class.values():
        start = 0
        for name, fraction in fractions.items():
            count = int(len(members) * fraction + 0.5)
            parts[name] += members[start : start + count]
            start += count
        parts["train"] += members[start:]
    position = {i: n for n, i in enumerate(order)}
    return {name: sorted(idx, key=position.__getitem__) for name, idx in parts.items()}


# --- local files -----------------------------------------------------------------------------


def _read_local(path: Path) -> RawData:
    """A file (one pool) or a directory of train/dev/test files (missing dev/test are carved)."""
    if not path.is_dir():
        return RawData({"train": _read_file(path)}, str(path))
    files: dict[str, Path] = {}
    for split in ("train", "dev", "test"):
        found = [path / f"{split}{ext}" for ext in FORMATS if (path / f"{split}{ext}").is_file()]
        if len(found) > 1:
            raise GeepError(f"{path} has several {split} files ({found[0].name}, ...); keep one")
        files |= {split: found[0]} if found else {}
    if "train" not in files:
        raise GeepError(
            f"{path} has no train file; add train.tsv (or train.csv / train.jsonl), "
            "with dev and test files optional"
        )
    splits = {split: _read_file(file) for split, file in files.items()}
    if len({split.pair is None for split in splits.values()}) > 1:
        raise GeepError(
            f"{path}: some files have a text_b/text_pair column and some do not; make them agree"
        )
    return RawData(splits, str(path))


def _read_file(path: Path) -> RawSplit:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise GeepError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
            "use .tsv/.txt (UER), .csv or .jsonl/.json"
        )
    try:
        size = path.stat().st_size
        require_memory(
            LOCAL_FILE_MEMORY * size,
            f"loading {path} ({format_size(size)})",
            "split it, or keep a sample of it (e.g. with `shuf -n`), and load that",
        )
        data = path.read_bytes()
    except OSError as e:
        raise GeepError(f"cannot read {path} ({e.strerror}); check the path and permissions") from e
    if not data.strip():
        raise GeepError(f"{path} is empty; give a header line and at least one example")
    text = decode_utf8(data, path)
    reader = {"tsv": tsv_records, "csv": csv_records, "jsonl": jsonl_records}[fmt]
    header, records = reader(text, path)
    return raw_split(header, records, path)


# --- pinned archives (the offline tier) --------------------------------------------------------


def _read_archive(spec: DatasetSpec) -> RawData:
    """The spec's reader on its pinned archive: one pool, split later."""
    archive, reader = spec.sources.archive, spec.sources.reader
    assert archive is not None and reader is not None
    return RawData({"train": reader(fetch_archive(archive), spec)}, archive.filename)


# --- the hub ---------------------------------------------------------------------------------

_HUB_SPLITS = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}


def _read_hub(spec: DatasetSpec) -> RawData:
    hub = spec.sources.hub
    assert hub is not None
    reason = hub_unavailable_reason()
    if reason is not None:
        raise GeepError(
            f"dataset {spec.name!r} needs the Hugging Face hub ({hub.id}) but the hub is "
            f"unreachable ({reason}); use an offline dataset ({', '.join(OFFLINE_TIER)}), "
            f"put its files in ${DATA_DIR_ENV}/{spec.name}/, or pass --dataset PATH"
        )
    try:
        loaded = _hub_load(hub)
    except (OSError, RuntimeError, ValueError, DatasetsError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GeepError(
            f"could not load {spec.name!r} from the hub ({hub.id}): {detail}; "
            f"put its files in ${DATA_DIR_ENV}/{spec.name}/ or pass --dataset PATH"
        ) from e
    return raw_from_hub(loaded, hub)


def _hub_load(hub: HubSource) -> DatasetDict:
    """``datasets.load_dataset`` for a hub source (the one call that touches the network)."""
    return hf_load_dataset(hub.id)


def raw_from_hub(loaded: DatasetDict, hub: HubSource) -> RawData:
    """Map a hub DatasetDict's columns onto raw splits (``validation`` becomes ``dev``).

    ``hub.text`` columns are joined with a space, empty ones skipped (DBpedia: title + content;
    Yahoo: title + question + best answer). A ClassLabel's names travel with the labels.
    """
    wanted = [*hub.text, *([hub.pair] if hub.pair else []), hub.label]
    splits, names = {}, None
    for hub_split, ours in _HUB_SPLITS.items():
        if hub_split not in loaded:
            continue
        data = loaded[hub_split]
        missing = [c for c in wanted if c not in data.column_names]
        if missing:
            raise GeepError(
                f"{hub.id} ({hub_split}) has no column {missing[0]!r} (columns: "
                f"{', '.join(data.column_names)}); the hub dataset changed, use local files"
            )
        columns = data.select_columns(wanted).to_dict()
        texts = [
            " ".join(str(v) for v in values if v)
            for values in zip(*(columns[c] for c in hub.text), strict=True)
        ]
        pair = [str(v or "") for v in columns[hub.pair]] if hub.pair else None
        splits[ours] = RawSplit(texts, [str(v) for v in columns[hub.label]], pair)
        feature = data.features[hub.label]
        names = tuple(feature.names) if isinstance(feature, ClassLabel) else names
    if "train" not in splits:
        raise GeepError(f"{hub.id} has no train split (splits: {', '.join(loaded)}); use files")
    return RawData(splits, hub.id, names)
