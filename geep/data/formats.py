"""Raw splits as sources give them, and the file formats they are read from: UER TSV, CSV and
JSONL (the local-file route) and the line and CSV helpers the archive readers use."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from geep.common.errors import GeepError

FORMATS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
TEXT_COLUMNS = ("text_a", "text")
PAIR_COLUMNS = ("text_b", "text_pair")

Record = tuple[int, dict[str, str | None]]  # (line number, column -> value)


@dataclass(frozen=True)
class RawSplit:
    """One split as a source gives it: texts, optional text pairs, labels as strings."""

    text: list[str]
    label: list[str]
    pair: list[str] | None = None

    def take(self, idx: Sequence[int]) -> RawSplit:
        pair = None if self.pair is None else [self.pair[i] for i in idx]
        return RawSplit([self.text[i] for i in idx], [self.label[i] for i in idx], pair)

    def keys(self) -> list[str]:
        """One string per example, its identity for deduplication and splitting."""
        if self.pair is None:
            return self.text
        return [f"{t}\t{p}" for t, p in zip(self.text, self.pair, strict=True)]


@dataclass(frozen=True)
class RawData:
    """A source's splits (``train`` always, ``dev``/``test`` when it has them).

    ``where`` names the source in messages; ``label_names`` are names the source itself attaches
    to integer labels (a hub ClassLabel), used when the spec has none.
    """

    splits: dict[str, RawSplit]
    where: str
    label_names: tuple[str, ...] | None = None


def decode_utf8(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise GeepError(
            f"{path} is not valid UTF-8 (byte 0x{data[e.start]:02x} on line {line}); "
            "re-save it as UTF-8"
        ) from None


def lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines, split on newlines only (texts may hold other separators)."""
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield n, line


def tsv_records(text: str, path: Path) -> tuple[list[str], list[Record]]:
    """UER TSV: a header line (``label<TAB>text_a[<TAB>text_b]``), then one example per line."""
    numbered = lines(text)
    _, first = next(numbered)
    header = [h.strip() for h in first.split("\t")]
    records = []
    for n, line in numbered:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise GeepError(
                f"{path} line {n} has {len(fields)} tab-separated fields but the header has "
                f"{len(header)}; remove tabs inside texts"
            )
        records.append((n, dict(zip(header, fields, strict=True))))
    return header, records


def csv_records(text: str, path: Path | str) -> tuple[list[str], list[Record]]:
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(rows)]
        records = []
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise GeepError(
                    f"{path} line {rows.line_num} has {len(row)} fields but the header has "
                    f"{len(header)}; quote fields that contain commas"
                )
            records.append((rows.line_num, dict(zip(header, row, strict=True))))
    except csv.Error as e:
        raise GeepError(f"{path} line {rows.line_num} is not valid CSV ({e}); fix it") from e
    return header, records


def jsonl_records(text: str, path: Path) -> tuple[list[str], list[Record]]:
    header: dict[str, None] = {}
    records = []
    for n, line in lines(text):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise GeepError(
                f"{path} line {n} is not JSON ({e.msg}); write one JSON object per line"
            ) from None
        if not isinstance(obj, dict):
            raise GeepError(f"{path} line {n} is not a JSON object; write one object per line")
        header |= dict.fromkeys(obj)
        records.append((n, {k: None if v is None else str(v) for k, v in obj.items()}))
    return list(header), records


def raw_split(header: Sequence[str], records: Sequence[Record], path: Path) -> RawSplit:
    """Pick the label, text and optional pair columns by name and gather them."""
    text_col = next((c for c in TEXT_COLUMNS if c in header), None)
    pair_col = next((c for c in PAIR_COLUMNS if c in header), None)
    if "label" not in header or text_col is None:
        what = "label" if "label" not in header else "text_a (or text)"
        raise GeepError(
            f"{path} has no {what} column (columns: {', '.join(header) or 'none'}); the first "
            "line must name the columns, e.g. label<TAB>text_a (text_b for pairs)"
        )
    if not records:
        raise GeepError(f"{path} has a header but no examples; add one example per line")
    labels = []
    for n, fields in records:
        label = (fields.get("label") or "").strip()
        if not label:
            raise GeepError(f"{path} line {n} has no label; give every example a label")
        labels.append(label)
    texts = [fields.get(text_col) or "" for _, fields in records]
    if pair_col is None:
        return RawSplit(texts, labels)
    pairs = [fields.get(pair_col) or "" for _, fields in records]
    if not any(p.strip() for p in pairs):
        raise GeepError(
            f"{path}: the {pair_col} column is empty; fill it for sentence pairs, "
            "or remove the column for single texts"
        )
    return RawSplit(texts, labels, pairs)


def utf8_or_latin1(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
