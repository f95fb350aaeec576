"""Labelled examples from JSONL, CSV or TSV files, with errors that name the file, the line and the field.

Each format is read as it is defined, on the open file: JSONL is one JSON object per "\\n"-terminated
line (a raw U+2028 inside a string is JSON, not a line break); CSV is RFC 4180 (a quoted field may hold
commas, quotes and line breaks); TSV is read as GLUE ships it, with no quoting at all (a ``"`` is an
ordinary character), or with CSV's quoting on request. A record's ``_line`` is the physical line where
it starts.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

from lit_ptm.data.corpus import CorpusError, json_record
from lit_ptm.errors import ConfigError

Format = Literal["auto", "jsonl", "csv", "tsv"]
TsvQuoting = Literal["none", "csv"]
EmptyTexts = Literal["fail", "skip"]


def check_choice(key: str, value, choices) -> None:
    """``data.<key>`` must be one of a Literal's values (jsonargparse checks the command line; this, Python callers)."""
    if value not in get_args(choices):
        raise ConfigError(f"data.{key}={value!r} is not one of {', '.join(get_args(choices))}")


def file_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        check_choice("format", fmt, Format)
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if suffix in ("csv", "tsv"):
        return suffix
    raise ConfigError(f"cannot tell the format of {path} from its suffix: name it .jsonl, .csv or .tsv, or set data.format")


def read_records(path: str | Path, fmt: str = "auto", tsv_quoting: str = "none") -> list[dict]:
    """All records of a file as dicts, in file order, each with its first line as ``_line``.
    CSV/TSV: the first row names the fields, and every row must have as many. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"data file {path} does not exist")
    fmt = file_format(path, fmt)
    check_choice("tsv_quoting", tsv_quoting, TsvQuoting)
    try:
        if fmt == "jsonl":
            with open(path, encoding="utf-8-sig", newline="\n") as f:  # lines end at "\n" only; a leading BOM is dropped
                records = list(_jsonl_records(path, f))
        else:
            with open(path, encoding="utf-8-sig", newline="") as f:  # the csv module reads the line breaks itself
                records = list(_table_records(path, f, fmt, tsv_quoting))
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    if not records:
        raise CorpusError(f"data file {path} holds no records")
    return records


def _not_utf8(path: Path) -> CorpusError:
    data = path.read_bytes()  # the decoder's own offset counts from its chunk: find the byte in the file
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return CorpusError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})")
    return CorpusError(f"{path}: not UTF-8")


def _jsonl_records(path: Path, lines) -> Iterator[dict]:
    for n, line in enumerate(lines, 1):
        line = line.removesuffix("\n").removesuffix("\r")  # CRLF files too
        if not line.strip():
            continue
        record = json_record(path, n, line)
        record["_line"] = n
        yield record


def _table_records(path: Path, f, fmt: str, tsv_quoting: str) -> Iterator[dict]:
    quoted = fmt == "csv" or tsv_quoting == "csv"
    hint = ""
    if fmt == "tsv" and quoted:
        hint = '; data.tsv_quoting=none reads " as an ordinary character, as GLUE-style TSV files need'
    reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t", quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE, strict=True)
    header = None
    while True:
        start = reader.line_num + 1  # the record's first physical line, also after quoted line breaks
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise CorpusError(f"{path}:{start}: not valid {fmt.upper()} ({e}, at line {reader.line_num}){hint}") from None
        # A blank line; but in a one-column file a blank row is a record with an empty text (counted as such).
        if not row or (len(row) == 1 and not row[0].strip() and (header is None or len(header) > 1)):
            continue
        if header is None:
            header = row
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:
                raise CorpusError(f"{path}:{start}: the header names {', '.join(map(repr, twice))} more than once")
            continue
        if len(row) != len(header):
            spans = f" (the record runs to line {reader.line_num}: a quoted field holds line breaks)" if reader.line_num > start else ""
            advice = ' (quote a field that holds a comma: "a, b")' if fmt == "csv" and len(row) > len(header) else ""
            raise CorpusError(f"{path}:{start}: has {len(row)} fields, the header has {len(header)}{spans}{advice}{hint}")
        record = dict(zip(header, row))
        record["_line"] = start
        yield record


def field(record: dict, name: str, path, kind: type | tuple = object):
    """``record[name]``, or an error naming the file, the line and the field (and the flag that sets it)."""
    if name not in record or record[name] is None:
        keys = ", ".join(k for k in record if k != "_line")
        raise CorpusError(f"{path}:{record.get('_line', '?')}: no field {name!r} (fields: {keys}); set the data.*_field flags")
    value = record[name]
    if not isinstance(value, kind):
        raise CorpusError(f"{path}:{record.get('_line', '?')}: field {name!r} should be {kind}, got {type(value).__name__}")
    return value


def label_text(value, path, line, name: str) -> str:
    """A class label or tag as the string that names it: strings and integers alike (JSON ``1`` and
    CSV's ``"1"`` are one class). Anything else is refused, naming ``file:line: field``: lists, dicts,
    None, floats (NaN included) and booleans (``true`` would name a class "True" that CSV spells
    "true" or 1: write the label as a string or an integer)."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    raise CorpusError(f"{path}:{line}: {name} is {value!r} ({type(value).__name__}); a label is a string or an integer")


def label_order(label: str) -> tuple:
    """Sort key of a label set: integer labels in numeric order ("2" before "10"), then the others."""
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)


def number(value, path, line, name: str) -> float:
    """A regression target: a finite number (or a string that holds one)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x):
        raise CorpusError(f"{path}:{line}: {name}={value!r} is not a finite number (regression)")
    return x


def drop_empty_texts(records: list[dict], path, fields: tuple[str, ...], policy: str) -> list[dict]:
    """Records whose input text (a string, or a list of words) is empty or blank have nothing to read:
    an error naming how many and where (``policy`` fail), or they are left out with a warning (skip)."""
    check_choice("empty_texts", policy, EmptyTexts)
    kept, empty = [], []  # empty: (line, the empty fields)
    for r in records:
        names = [name for name in fields if _blank(field(r, name, path))]
        if names:
            empty.append((r["_line"], names))
        else:
            kept.append(r)
    if not empty:
        return records
    where = ", ".join(f"{line} ({'/'.join(names)})" for line, names in empty[:5]) + (", ..." if len(empty) > 5 else "")
    what = f"{len(empty)} record(s) with an empty text, at line(s) {where}"
    if policy == "fail":
        raise CorpusError(f"{path}:{empty[0][0]}: {what}; set data.empty_texts=skip to leave them out")
    if not kept:
        raise CorpusError(f"{path}: every record has an empty text ({what})")
    warnings.warn(f"{path}: left out {what}")
    return kept


def _blank(value) -> bool:
    return not value.strip() if isinstance(value, str) else isinstance(value, list) and not value
