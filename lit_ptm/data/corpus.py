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

from lit_ptm.errors import LitPtmError

DECODE_POLICIES = ("fail", "skip")


class CorpusError(LitPtmError, ValueError):
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


# Bounds that keep reading a corpus within a bounded memory whatever its lines hold: a text line is
# one sentence, a JSONL line one document. A longer line is refused at once with file:line (a file
# that has no newlines at all is the usual cause), before it reaches the tokenizer.
MAX_SENTENCE_BYTES = 1 << 20
MAX_DOCUMENT_BYTES = 64 << 20


def _decoded_lines(path: Path, decode_errors: str, max_bytes: int = MAX_SENTENCE_BYTES) -> Iterator[tuple[int, str]]:
    skipped, first_bad = 0, None
    with open(path, "rb") as f:
        lineno = 0
        while raw := f.readline(max_bytes + 1):  # never more than max_bytes + 1 bytes in memory
            lineno += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                raise CorpusError(
                    f"{path}:{lineno}: line longer than {max_bytes:,} bytes; a corpus line holds "
                    f"{'one document' if max_bytes == MAX_DOCUMENT_BYTES else 'one sentence'} (is the file missing its newlines?)"
                )
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
        for lineno, line in _decoded_lines(path, decode_errors, MAX_DOCUMENT_BYTES):
            if not line.strip():
                continue
            record = json_record(path, lineno, line)
            if not isinstance(record.get(text_field), str):
                raise CorpusError(f"{path}:{lineno}: no string field {text_field!r} (set data.text_field)")
            sentences = [s.strip() for s in record[text_field].splitlines() if s.strip()]
            if any(len(s) > MAX_SENTENCE_BYTES for s in sentences):  # characters: at least as many bytes
                raise CorpusError(
                    f"{path}:{lineno}: field {text_field!r} holds a line longer than {MAX_SENTENCE_BYTES:,} characters; "
                    "each line of a document's text is one sentence"
                )
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
