"""Reading local text files (JSONL, JSON, CSV, TSV, TXT) and choosing their text and label columns.

Texts are kept byte-for-byte: nothing is stripped (SST-2 keeps its trailing space), and lines are
split on ``"\\n"`` only, never with ``str.splitlines()``, which would also split on U+0085 and
other characters that occur inside Rotten Tomatoes texts.
"""

from __future__ import annotations

import csv
import io
import json
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError

# Column names that are taken as the text column without looking at the values, in this order.
TEXT_FIELD_NAMES = ("text", "sentence", "content", "message", "body")
LABEL_FIELD_NAMES = ("label", "labels")
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt")
_HINT = "pass --text-field NAME (text_field=...)"

Row = Mapping[str, Any]


def read_rows(path: Path) -> list[Row]:
    """Returns the rows of a JSONL, JSON, CSV or TSV file, or ``{"text": line}`` rows for TXT.

    Raises:
        GradleakError: The suffix is unsupported or a line is not a JSON object.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise GradleakError(
            f"Cannot read {str(path)!r}: supported file types are {', '.join(SUFFIXES)}."
        )
    data = path.read_bytes().decode("utf-8-sig")
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(data, path)
    if suffix == ".json":
        rows = json.loads(data)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise GradleakError(f"{str(path)!r} must hold a JSON list of objects, one per text.")
        return rows
    if suffix in (".csv", ".tsv"):
        tsv = suffix == ".tsv"
        # GLUE-style TSV files contain bare quote characters, so TSV is read without quoting.
        reader = csv.DictReader(
            io.StringIO(data, newline=""),
            delimiter="\t" if tsv else ",",
            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
        )
        return list(reader)
    lines = (line[:-1] if line.endswith("\r") else line for line in data.split("\n"))
    return [{"text": line} for line in lines if line.strip(" \t")]


def _jsonl_rows(data: str, path: Path) -> list[Row]:
    """Returns one dict per non-blank ``"\\n"``-separated line of a JSONL document."""
    rows = []
    for number, line in enumerate(data.split("\n"), start=1):
        if not line.strip(" \t\r"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GradleakError(
                f"{str(path)!r} line {number} is not valid JSON ({exc.msg}); "
                "JSONL files need one JSON object per line."
            ) from exc
        if not isinstance(row, dict):
            raise GradleakError(f"{str(path)!r} line {number} is not a JSON object.")
        rows.append(row)
    return rows


def columns_of(rows: Sequence[Row]) -> list[str]:
    """Returns the column names of ``rows`` in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def guess_text_field(rows: Sequence[Row], *, what: str) -> str:
    """Returns the one obvious text column of ``rows``.

    A column named ``text``, ``sentence``, ``content``, ``message`` or ``body`` wins; otherwise the
    only column whose values are non-numeric strings.

    Raises:
        GradleakError: No column or more than one column qualifies; the message lists the columns.
    """
    columns = columns_of(rows)
    named = [c for c in columns if c.lower() in TEXT_FIELD_NAMES]
    candidates = named or [c for c in columns if _is_text_column(rows, c)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        problem = "has no text column"
    else:
        problem = f"has several possible text columns ({', '.join(candidates)})"
    raise GradleakError(f"{what} {problem} among its columns {columns}; {_HINT}.")


def _is_text_column(rows: Sequence[Row], column: str) -> bool:
    """Returns whether every value of ``column`` is a string and some are not numbers."""
    values = [row.get(column) for row in rows]
    if not values or not all(isinstance(v, str) for v in values):
        return False
    return not all(_is_number(v) for v in values)


def _is_number(value: str) -> bool:
    """Returns whether ``value`` parses as a float (empty strings count as numbers)."""
    try:
        float(value or "0")
    except ValueError:
        return False
    return True


def texts_from_rows(rows: Sequence[Row], field: str, *, what: str) -> tuple[str, ...]:
    """Returns the ``field`` value of every row, unchanged.

    Raises:
        GradleakError: A row lacks the field or its value is not a string.
    """
    texts = []
    for number, row in enumerate(rows, start=1):
        value = row.get(field)
        if not isinstance(value, str):
            issue = "has no" if field not in row else "has a non-string"
            columns = columns_of(rows)
            raise GradleakError(
                f"{what} row {number} {issue} field {field!r} (columns: {columns}); {_HINT}."
            )
        texts.append(value)
    return tuple(texts)


def labels_from_rows(
    rows: Sequence[Row], field: str | None, *, what: str
) -> tuple[int, ...] | None:
    """Returns integer labels from ``field``, or from a ``label`` column when ``field`` is None.

    A guessed label column that holds anything but integers is ignored (labels None); an explicit
    ``field`` must hold integers in every row.

    Raises:
        GradleakError: The explicit ``field`` is missing or not an integer in some row.
    """
    explicit = field is not None
    if field is None:
        columns = columns_of(rows)
        field = next((c for c in columns if c.lower() in LABEL_FIELD_NAMES), None)
        if field is None:
            return None
    labels = []
    for number, row in enumerate(rows, start=1):
        label = _as_int(row.get(field))
        if label is None:
            if not explicit:
                return None
            raise GradleakError(
                f"{what} row {number} has no integer label in field {field!r}; "
                "pass --label-field NAME or leave labels out."
            )
        labels.append(label)
    return tuple(labels)


def _as_int(value: Any) -> int | None:
    """Returns ``value`` as an int when it is an integer or an integer string, else None."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    try:
        return operator.index(value)
    except TypeError:
        return None
