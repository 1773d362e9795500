"""Reading the user's data files: plain text, JSONL and CSV.

Schemas:
- text:    a ``.txt`` file (one text per line), or JSONL/CSV records with a ``text`` field;
- labeled: JSONL/CSV records with ``text`` and ``label`` (a label name or an integer id);
- pairs:   JSONL/CSV records with ``query`` and ``doc`` (one relevant doc per query).
Every error names the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edgekit.errors import DataError

SAMPLE_TEXTS = "pydoc_sentences.txt"
SAMPLE_PAIRS = "pydoc_pairs.jsonl"


def shipped(name: str) -> Path:
    """Path of a data file shipped in the package (real text, see bench/data/)."""
    return Path(str(resources.files("edgekit") / "data" / name))


def sample_texts() -> list[str]:
    """Real English sentences shipped with edgekit (Python reference prose)."""
    return read_texts(shipped(SAMPLE_TEXTS))


def _records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for every row of a JSONL or CSV file."""
    if not path.exists():
        raise DataError(
            f"{path}: no such data file", hint="check the path (a file read by --data, --eval, --unlabeled or an option such as data=)"
        )
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file", hint="pass a .jsonl, .csv or .txt file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate Excel's BOM
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read as UTF-8 text ({err})", hint="pass a UTF-8 .jsonl, .csv or .txt file") from err
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            for row in reader:
                if None in row:
                    raise DataError(
                        f"{path}:{reader.line_num}: more values than the header has columns ({len(reader.fieldnames or [])})",
                        hint="quote fields that contain commas",
                    )
                rows.append((reader.line_num, row))
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({err})", hint="check the quoting") from err
        return rows
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err.msg})", hint="JSONL needs one JSON object per line") from err
        except (ValueError, RecursionError) as err:  # integers past Python's digit limit, nesting past the recursion limit
            raise DataError(f"{path}:{n}: JSON too large or too deeply nested to read", hint="one flat JSON object per line") from err
        if not isinstance(record, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}", hint="JSONL needs one JSON object per line")
        rows.append((n, record))
    return rows


def _field(path: Path, n: int, record: dict, name: str) -> str:
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path}:{n}: missing field {name!r} (has: {', '.join(record) or 'nothing'})", hint=f"each record needs {name!r}")
    return value if isinstance(value, str) else str(value)


def _nonempty(path: Path, items: list) -> list:
    if not items:
        raise DataError(f"{path}: no records", hint="the data file is empty")
    return items


def read_texts(path: str | Path) -> list[str]:
    """Texts from a .txt file (one per line) or JSONL/CSV ``text`` field."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json", ".csv"):
        return _nonempty(path, [_field(path, n, r, "text") for n, r in _records(path)])
    if not path.exists():
        raise DataError(f"{path}: no such data file", hint="check the path")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read as UTF-8 text ({err})", hint="pass a UTF-8 text file, one text per line") from err
    return _nonempty(path, [line.strip() for line in lines if line.strip()])


@dataclass
class Labeled:
    texts: list[str]
    labels: list[int]


def read_labeled(path: str | Path, label_names: list[str]) -> Labeled:
    """Texts and label ids; labels may be names from the model's config or integer ids."""
    path = Path(path)
    by_name = {name: i for i, name in enumerate(label_names)}
    texts, labels = [], []
    for n, record in _records(path):
        texts.append(_field(path, n, record, "text"))
        raw = _field(path, n, record, "label")
        if raw in by_name:
            labels.append(by_name[raw])
        elif re.fullmatch(r"[0-9]{1,9}", raw) and int(raw) < len(label_names):  # an id; ASCII digits only
            labels.append(int(raw))
        else:
            raise DataError(
                f"{path}:{n}: label {raw!r} is not one of the model's labels",
                hint=f"use one of: {', '.join(label_names)} (or 0..{len(label_names) - 1})",
            )
    _nonempty(path, texts)
    return Labeled(texts, labels)


def read_field(path: str | Path, name: str) -> list[str]:
    """The ``name`` field of every record of a JSONL/CSV file, in the order :func:`read_texts` and
    :func:`read_labeled` read them (e.g. a group id: the source a row came from)."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise DataError(f"{path}: a plain text file has no fields (asked for {name!r})", hint="use a JSONL or CSV file with that field")
    return _nonempty(path, [_field(path, n, r, name) for n, r in _records(path)])


def read_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """(queries, docs): docs[i] is the relevant document of queries[i]."""
    path = Path(path)
    rows = _nonempty(path, _records(path))
    return [_field(path, n, r, "query") for n, r in rows], [_field(path, n, r, "doc") for n, r in rows]


def kind(path: str | Path) -> str:
    """'pairs', 'labeled' or 'text', from the first record's fields."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        return "text"
    rows = _nonempty(path, _records(path))
    first = rows[0][1]
    if "query" in first and "doc" in first:
        return "pairs"
    if "label" in first:
        return "labeled"
    if "text" in first:
        return "text"
    raise DataError(
        f"{path}:{rows[0][0]}: records need 'text' (+ 'label'), or 'query' and 'doc' (has: {', '.join(first)})",
        hint="see 'edgekit eval --help' for the schemas",
    )
