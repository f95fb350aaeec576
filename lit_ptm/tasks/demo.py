"""The built-in demo tasks. Classification (and the other tasks' default): which standard-library
package does a docstring come from? Sequence-to-sequence: a docstring's first sentence (its summary
line) from the rest of it.

Made from the same text as the built-in corpus (so pretraining on that corpus is task-adaptive
pretraining in the sense of "Don't Stop Pretraining"), for packages that every CPython 3.9-3.13
carries. Each example is one docstring's prose (at most its first three sentences); at most
``per_label`` examples per package keep the classes balanced. Split 80/10/10 by a hash of the
module path and docstring index, so the split does not depend on the Python version's file list.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from functools import lru_cache
from pathlib import Path

from lit_ptm.data.builtin import _module_docstrings, _paragraph_sentences, _stdlib_modules
from lit_ptm.data.store import file_lock

PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "urllib", "xml")
DEMO_VERSION = 1


def _examples(per_label: int) -> list[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    by_label: dict[str, list[dict]] = {p: [] for p in PACKAGES}
    for path in _stdlib_modules():
        parts = path.relative_to(root).parts
        if len(parts) < 2 or parts[0] not in by_label:
            continue
        for k, doc in enumerate(_module_docstrings(path)):
            sentences = _paragraph_sentences(doc)
            if sentences and len(" ".join(sentences[:3]).split()) >= 4:
                key = f"{'/'.join(parts)}:{k}"
                by_label[parts[0]].append({"id": key, "text": " ".join(sentences[:3]), "label": parts[0]})
    examples = []
    for label, items in by_label.items():
        items.sort(key=lambda e: hashlib.sha256(e["id"].encode()).hexdigest())  # a fixed, version-independent order
        examples.extend(items[:per_label])
    return examples


def write_demo_task(directory: Path, per_label: int = 150) -> dict[str, Path]:
    """Write train/val/test JSONL files (once; cached) and return their paths."""
    directory = Path(directory) / f"stdlib_package_v{DEMO_VERSION}_{per_label}"
    return _write_splits(directory, lambda: _examples(per_label))


def _write_splits(directory: Path, examples) -> dict[str, Path]:
    """``examples()`` split 80/10/10 by a hash of each id into train/val/test JSONL files (once; cached)."""
    paths = {split: directory / f"{split}.jsonl" for split in ("train", "val", "test")}
    with file_lock(directory.with_suffix(".lock")):
        if all(p.is_file() for p in paths.values()):
            return paths
        directory.mkdir(parents=True, exist_ok=True)
        splits: dict[str, list[str]] = {split: [] for split in paths}
        for example in examples():
            bucket = int(hashlib.sha256(("split:" + example["id"]).encode()).hexdigest(), 16) % 10
            split = "test" if bucket == 0 else "val" if bucket == 1 else "train"
            splits[split].append(json.dumps(example))
        for split, lines in splits.items():
            tmp = paths[split].with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            tmp.replace(paths[split])
    return paths


SUMMARY_VERSION = 1


@lru_cache(maxsize=1)
def _docstring_sentences() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(id, prose sentences) of every standard-library docstring, parsed once per process."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return tuple((f"{'/'.join(path.relative_to(root).parts)}:{k}", tuple(_paragraph_sentences(doc)))
                 for path in _stdlib_modules() for k, doc in enumerate(_module_docstrings(path)))


def _summary_examples(max_examples: int, max_source_words: int) -> list[dict]:
    """Docstrings of at least two prose sentences: the first is the target (4-30 words), the rest the
    source (at least 8 words, cut to ``max_source_words``); at most ``max_examples``, a fixed hash order."""
    examples = []
    for key, sentences in _docstring_sentences():
        if len(sentences) < 2:
            continue
        target, source = sentences[0], " ".join(sentences[1:]).split()
        if 4 <= len(target.split()) <= 30 and len(source) >= 8:
            examples.append({"id": key, "source": " ".join(source[:max_source_words]), "target": target})
    examples.sort(key=lambda e: hashlib.sha256(e["id"].encode()).hexdigest())  # a fixed, version-independent order
    return examples[:max_examples]


def write_summary_task(directory: Path, max_examples: int = 2500, max_source_words: int = 64) -> dict[str, Path]:
    """The sequence-to-sequence demo (a docstring's first sentence from the rest of it) as train/val/test
    JSONL files with ``source`` and ``target`` fields (once; cached), split 80/10/10 by a hash of the id."""
    directory = Path(directory) / f"stdlib_summary_v{SUMMARY_VERSION}_{max_examples}_{max_source_words}"
    return _write_splits(directory, lambda: _summary_examples(max_examples, max_source_words))
