"""Labelled examples from JSONL, CSV or TSV files, with errors that name the file, the line and the field."""

from __future__ import annotations

import csv
from pathlib import Path

from lit_ptm.data.corpus import CorpusError, json_record

FORMATS = ("jsonl", "csv", "tsv")


def file_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ValueError(f"data.format={fmt!r} is not one of auto, {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if suffix in ("csv", "tsv"):
        return suffix
    raise ValueError(f"cannot tell the format of {path} from its suffix: name it .jsonl, .csv or .tsv, or set data.format")


def read_records(path: str | Path, fmt: str = "auto") -> list[dict]:
    """All records of a file as dicts, in file order. CSV/TSV: the first row names the fields."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"data file {path} does not exist")
    fmt = file_format(path, fmt)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise CorpusError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from e
    records = []
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            record = json_record(path, n, line)
            record["_line"] = n
            records.append(record)
    else:
        reader = csv.DictReader(text.splitlines(), delimiter="," if fmt == "csv" else "\t")
        for n, row in enumerate(reader, 2):
            row["_line"] = n
            records.append(row)
    if not records:
        raise CorpusError(f"data file {path} holds no records")
    return records


def field(record: dict, name: str, path, kind: type | tuple = object):
    """``record[name]``, or an error naming the file, the line and the field (and the flag that sets it)."""
    if name not in record or record[name] is None:
        keys = ", ".join(k for k in record if k != "_line")
        raise CorpusError(f"{path}:{record.get('_line', '?')}: no field {name!r} (fields: {keys}); set the data.*_field flags")
    value = record[name]
    if not isinstance(value, kind):
        raise CorpusError(f"{path}:{record.get('_line', '?')}: field {name!r} should be {kind}, got {type(value).__name__}")
    return value
