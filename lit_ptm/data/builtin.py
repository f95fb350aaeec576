"""The built-in corpus: text that every CPython installation carries, so demos and tests run offline.

Documents are the topics of the language reference (``pydoc_data.topics``) and, per standard-library
module, its docstrings (module, classes, functions), read with ``ast`` so nothing is imported.
Written once as a plain-text corpus file (one sentence a line, blank line between documents).
"""

from __future__ import annotations

import ast
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Sentence ends: '.', '!' or '?' followed by whitespace and an upper-case letter or a quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'`(])")
# Blocks that are not prose: doctest prompts, indented code, reST directives and tables.
_NOT_PROSE = re.compile(r"^\s*(>>>|\.\.\.|\.\. |[=+\-~^*]{4,}|\|)")


def _paragraph_sentences(text: str) -> list[str]:
    """Split a docstring-like text into sentences: paragraphs are joined, code blocks dropped."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if not lines or any(_NOT_PROSE.match(line) for line in lines):
            continue
        joined = " ".join(line.strip() for line in lines)
        sentences.extend(s.strip() for s in _SENTENCE_END.split(joined) if len(s.strip()) > 1)
    return sentences


def _stdlib_modules() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _module_docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return [doc for node in nodes if (doc := ast.get_docstring(node))]


def iter_builtin_documents() -> Iterator[list[str]]:
    """Yield documents as lists of sentences, in a fixed order."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        if sentences := _paragraph_sentences(topics[name]):
            yield sentences
    for path in _stdlib_modules():
        sentences = [s for doc in _module_docstrings(path) for s in _paragraph_sentences(doc)]
        if len(sentences) >= 2:
            yield sentences


def write_builtin_corpus(path: Path) -> Path:
    """Write the built-in corpus as a text file (atomically) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for sentences in iter_builtin_documents():
            f.write("\n".join(sentences))
            f.write("\n\n")
    tmp.replace(path)
    return path
