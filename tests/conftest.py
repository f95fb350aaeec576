from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session: the built-in corpus, tokenizers and stores are built once."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["LIT_PTM_CACHE"] = str(path)
    return path


# The collator tests' text: windows of its BPE pieces (the ``tok`` fixture) with many multi-piece words.
SENTENCES = [f"word{i} alpha{i % 7}beta gamma{i % 13}delta epsilon" for i in range(400)]


@pytest.fixture(scope="module")
def tok():
    """A 300-piece BPE tokenizer of SENTENCES."""
    from lit_ptm.tokenizer import train_tokenizer

    return train_tokenizer(SENTENCES, "bpe", vocab_size=300, lowercase=False)


def write_corpus(path: Path, n_docs: int = 40, seed: int = 0, sentences=(3, 8)) -> Path:
    """A small synthetic text corpus: documents of sentences over a 300-word vocabulary."""
    import random

    rng = random.Random(seed)
    words = [f"w{i}" + "abcdefghij"[i % 10] * (1 + i % 4) for i in range(300)]
    docs = []
    for _ in range(n_docs):
        sents = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) + "." for _ in range(rng.randint(*sentences))]
        docs.append("\n".join(sents))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def corpus_store(directory: Path, n_docs: int, sentences=(3, 8)):
    """``write_corpus`` in ``directory``, a WordPiece tokenizer (400) trained on it, and its token store: (store, tokenizer)."""
    from lit_ptm.data.corpus import iter_documents
    from lit_ptm.data.store import open_store
    from lit_ptm.tokenizer import train_tokenizer

    corpus = write_corpus(directory / "c.txt", n_docs=n_docs, sentences=sentences)
    tok = train_tokenizer((s for d in iter_documents(corpus) for s in d), "wordpiece", 400)
    return open_store([corpus], tok, directory / "cache"), tok


def long_windows(tok, n, length=512, word_rate=0.75, seed=0):
    """Windows shaped like SentenceWindows' ([CLS] text [SEP], one document), of random regular tokens,
    1 / word_rate tokens a word on average: long enough that the last span of a row, shrunk to meet
    its budget, barely moves a span-length histogram."""
    g = torch.Generator().manual_seed(seed)
    regular = tok.ids.regular_ids()
    cls, sep, one = torch.tensor([tok.ids.cls]), torch.tensor([tok.ids.sep]), torch.tensor([True])
    return [{"ids": torch.cat([cls, regular[torch.randint(len(regular), (length - 2,), generator=g)], sep]),
             "word_start": torch.cat([one, torch.rand(length - 2, generator=g) < word_rate, one]),
             "document": torch.zeros(length, dtype=torch.long), "epoch": 0, "index": i} for i in range(n)]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def run_cli(args: list[str]):
    """Run ``lit-ptm`` in this process; returns the LightningCLI (trainer, model, datamodule)."""
    from lit_ptm.cli import run_cli as cli

    return cli([*args])


def run_module(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m lit_ptm`` as a subprocess (for DDP and error-exit tests)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lit_ptm", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def tiny_args(objective: str, root: Path, *extra: str) -> list[str]:
    return [
        "--config", str(CONFIGS / f"{objective}.yaml"), "--config", str(CONFIGS / "tiny.yaml"),
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", *extra,
    ]


def random_module(cls, **kw):
    """``cls(**kw)`` built with random weights (std 0.2, every parameter, so that zero-initialised biases
    count too), in eval mode."""
    torch.manual_seed(1)
    module = cls(**kw)
    module.configure_model()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    return module.eval()


def random_run(tmp_path, tok, cls, **kw):
    """``random_module(cls, **kw)`` saved as lit_ptm saves a run (meta, plain hyper-parameters) into
    tmp_path / "run" with its tokenizer: (module in eval mode, run directory, checkpoint)."""
    module = random_module(cls, **kw)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    run = tmp_path / "run"
    run.mkdir(parents=True)
    torch.save(checkpoint, run / "last.ckpt")
    tok.save(run / "tokenizer.json")
    return module, run, checkpoint


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of a TensorBoard scalar over all event files of a run directory (later files win)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out.update({e.step: e.value for e in acc.Scalars(tag)})
    return out
