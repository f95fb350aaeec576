"""The token store: a corpus tokenized once into memory-mapped files, plus its boundary index.

Layout of a store directory::

    tokens.bin          uint16 (vocab < 65536) or uint32, all tokens of all documents back to back
    word_start.bin      uint8, 1 where a token starts a word (from the tokenizer's word ids)
    sent_offsets.bin    int64 [n_sents + 1], token offset of each sentence start (and the end)
    doc_sents.bin       int64 [n_docs + 1], sentence index of each document start (and the end)
    meta.json           counts, dtype, tokenizer sha, the source files

Building streams documents through the tokenizer in chunks (the Rust tokenizer encodes each chunk
on all cores) and appends every array to its file, so peak memory depends on the chunk size, not
on the corpus size. A store is written to a temporary directory and renamed into place, and
built under a file lock, so concurrent processes (DDP ranks) build it once and never see half of it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lit_ptm.data.corpus import iter_documents
from lit_ptm.tokenizer import Tokenizer

STORE_VERSION = 1


class TokenStore:
    """Read-only view of a built store; arrays are memory-mapped, so it is cheap to pickle into workers."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.tokens = np.memmap(self.directory / "tokens.bin", dtype=self.meta["dtype"], mode="r")
        self.word_start = np.memmap(self.directory / "word_start.bin", dtype=np.uint8, mode="r")
        self.sent_offsets = np.fromfile(self.directory / "sent_offsets.bin", dtype=np.int64)
        self.doc_sents = np.fromfile(self.directory / "doc_sents.bin", dtype=np.int64)
        self.doc_offsets = self.sent_offsets[self.doc_sents]  # token offset of each document, [n_docs + 1]

    @property
    def num_docs(self) -> int:
        return len(self.doc_sents) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sent_offsets[-1])

    def document(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.doc_offsets[i] : self.doc_offsets[i + 1]])


def _iter_corpus(files: Sequence[Path], decode_errors: str, text_field: str) -> Iterator[list[str]]:
    for path in files:
        yield from iter_documents(path, decode_errors, text_field)


def _chunks(docs: Iterator[list[str]], max_sentences: int) -> Iterator[list[list[str]]]:
    chunk, size = [], 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc)
        if size >= max_sentences:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def build_store(
    files: Sequence[Path], tokenizer: Tokenizer, directory: Path, decode_errors: str = "fail",
    text_field: str = "text", chunk_sentences: int = 16384,
) -> TokenStore:
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n_tokens = n_sents = n_docs = 0
    started = time.time()
    with open(tmp / "tokens.bin", "wb") as f_tok, open(tmp / "word_start.bin", "wb") as f_word, \
            open(tmp / "sent_offsets.bin", "wb") as f_sent, open(tmp / "doc_sents.bin", "wb") as f_doc:
        for chunk in _chunks(_iter_corpus(files, decode_errors, text_field), chunk_sentences):
            ids, starts, lengths = tokenizer.encode_arrays([s for doc in chunk for s in doc])
            f_tok.write(ids.astype(dtype).tobytes())
            f_word.write(starts.astype(np.uint8).tobytes())
            f_sent.write((n_tokens + np.concatenate([[0], np.cumsum(lengths)[:-1]])).tobytes())
            doc_sizes = np.array([len(doc) for doc in chunk], dtype=np.int64)
            f_doc.write((n_sents + np.concatenate([[0], np.cumsum(doc_sizes)[:-1]])).tobytes())
            n_tokens += int(lengths.sum())
            n_sents += len(lengths)
            n_docs += len(chunk)
            print(f"\rtoken store: {n_docs:,} documents, {n_tokens:,} tokens", end="", file=sys.stderr, flush=True)
        f_sent.write(np.array([n_tokens], dtype=np.int64).tobytes())
        f_doc.write(np.array([n_sents], dtype=np.int64).tobytes())
    print(f" ({time.time() - started:.1f}s)", file=sys.stderr, flush=True)
    meta = {
        "version": STORE_VERSION, "dtype": np.dtype(dtype).name, "num_tokens": n_tokens, "num_sentences": n_sents,
        "num_documents": n_docs, "tokenizer_sha": tokenizer.sha, "vocab_size": tokenizer.vocab_size,
        "files": [str(p) for p in files],
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return TokenStore(directory)


def files_fingerprint(files: Sequence[Path]) -> str:
    """Identity of a set of corpus files: path, size and modification time of each."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@contextmanager
def file_lock(path: Path):
    """An exclusive lock, so that one process builds a cached artefact while the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_store(
    files: Sequence[Path], tokenizer: Tokenizer, cache_dir: Path, decode_errors: str = "fail", text_field: str = "text"
) -> TokenStore:
    """The store of ``files`` under ``tokenizer``, built once and reused while the files are unchanged."""
    key = hashlib.sha256(
        f"{STORE_VERSION}|{files_fingerprint(files)}|{tokenizer.sha}|{decode_errors}|{text_field}".encode()
    ).hexdigest()[:20]
    directory = cache_dir / "stores" / key
    with file_lock(cache_dir / "stores" / f"{key}.lock"):
        if not (directory / "meta.json").is_file():
            build_store(files, tokenizer, directory, decode_errors, text_field)
    return TokenStore(directory)
