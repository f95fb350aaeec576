"""The built-in demo task: which standard-library package does a docstring come from?

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
    paths = {split: directory / f"{split}.jsonl" for split in ("train", "val", "test")}
    with file_lock(directory.with_suffix(".lock")):
        if all(p.is_file() for p in paths.values()):
            return paths
        directory.mkdir(parents=True, exist_ok=True)
        splits: dict[str, list[str]] = {split: [] for split in paths}
        for example in _examples(per_label):
            bucket = int(hashlib.sha256(("split:" + example["id"]).encode()).hexdigest(), 16) % 10
            split = "test" if bucket == 0 else "val" if bucket == 1 else "train"
            splits[split].append(json.dumps(example))
        for split, lines in splits.items():
            tmp = paths[split].with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            tmp.replace(paths[split])
    return paths
