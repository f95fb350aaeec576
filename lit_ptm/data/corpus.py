"""Reading corpus files: plain text (one sentence a line, blank line between documents) or JSONL.

Errors name the file and line. Bytes that are not UTF-8 either fail the run (the default) or, with
``decode_errors="skip"``, drop that line and are counted and reported.
"""

from __future__ import annotations

import glob
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

DECODE_POLICIES = ("fail", "skip")


class CorpusError(ValueError):
    pass


def resolve_files(patterns: str | Sequence[str], key: str = "data.train_files") -> list[Path]:
    """Expand globs (and directories: their *.txt / *.jsonl files); every pattern must match."""
    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            matches = sorted([*path.glob("*.txt"), *path.glob("*.jsonl")])
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not matches:
            raise CorpusError(f"{key}: no corpus file matches {pattern!r}")
        files.extend(matches)
    return files


def _decoded_lines(path: Path, decode_errors: str) -> Iterator[tuple[int, str]]:
    skipped, first_bad = 0, None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                if decode_errors != "skip":
                    raise CorpusError(
                        f"{path}:{lineno}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not valid UTF-8 "
                        f"(set data.decode_errors=skip to skip such lines)"
                    ) from None
                skipped += 1
                first_bad = first_bad or lineno
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} line(s) that are not valid UTF-8 (first at line {first_bad})")


def json_record(path, lineno: int, line: str) -> dict:
    """One JSONL line as a dict, or an error naming the file and line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise CorpusError(f"{path}:{lineno}: a JSON object is expected, got {type(record).__name__}")
    return record


def iter_documents(path: Path, decode_errors: str = "fail", text_field: str = "text") -> Iterator[list[str]]:
    """Yield the documents of one file as lists of sentences. Raises if the file holds no text."""
    if decode_errors not in DECODE_POLICIES:
        raise CorpusError(f"data.decode_errors={decode_errors!r} is not one of {', '.join(DECODE_POLICIES)}")
    if not path.is_file():
        raise CorpusError(f"corpus file {path} does not exist")
    found = False
    if path.suffix == ".jsonl":
        for lineno, line in _decoded_lines(path, decode_errors):
            if not line.strip():
                continue
            record = json_record(path, lineno, line)
            if not isinstance(record.get(text_field), str):
                raise CorpusError(f"{path}:{lineno}: no string field {text_field!r} (set data.text_field)")
            sentences = [s.strip() for s in record[text_field].splitlines() if s.strip()]
            if sentences:
                found = True
                yield sentences
    else:
        doc: list[str] = []
        for _, line in _decoded_lines(path, decode_errors):
            if line.strip():
                doc.append(line.strip())
            elif doc:
                found = True
                yield doc
                doc = []
        if doc:
            found = True
            yield doc
    if not found:
        raise CorpusError(f"corpus file {path} holds no text")
