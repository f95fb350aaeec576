"""PretrainDataModule: corpus -> tokenizer -> token store -> document split -> windows -> batches."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.accelerators import CUDAAccelerator
import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer
from torch.utils.data import DataLoader

from lit_ptm.data.batch import DataRecipe
from lit_ptm.data.builtin import write_builtin_corpus
from lit_ptm.data.corpus import CorpusError, iter_documents, resolve_files
from lit_ptm.data.sampling import PACKING_MODES, ResumableSampler, StreamSampler, WindowDataset, build_windows
from lit_ptm.data.store import TokenStore, file_lock, files_fingerprint, open_store
from lit_ptm.errors import ConfigError
from lit_ptm.tokenizer import Tokenizer, train_tokenizer


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIT_PTM_CACHE", Path.home() / ".cache" / "lit_ptm"))


class ResumableLoaders:
    """Exact resume for a LightningDataModule whose train loader draws from ``self._train_sampler``
    (a ResumableSampler): the checkpoint stores what the fit loop consumed, and a resumed run's
    sampler skips it. Also the loaders themselves, from ``self.datasets``, ``self._collate_fn()``,
    ``self.eval_batch_size``, ``self.num_workers`` and ``self.seed``."""

    _resume: dict | None = None
    _train_sampler: ResumableSampler | None = None
    drop_last_train_batch = True  # pretraining drops a ragged last batch; fine-tuning keeps every example

    def _collate_fn(self):
        raise NotImplementedError

    def _loader(self, split: str, sampler: ResumableSampler, batch_size: int) -> DataLoader:
        # sampler + batch_size rather than a batch_sampler: for `predict` Lightning rebuilds the batch
        # sampler around the loader's sampler, which must then be ours.
        return DataLoader(
            self.datasets[split], sampler=sampler, batch_size=batch_size,
            drop_last=self.drop_last_train_batch and split == "train", collate_fn=self._collate_fn(),
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=isinstance(self.trainer.accelerator, CUDAAccelerator),
            # Its own generator: creating an iterator must not draw from the global RNG (dropout's),
            # or a resumed run would see a different dropout stream than an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def _streams(self) -> bool:
        """Whether batches are streams (row b continues row b of the previous batch: XLNet's memory)."""
        return False

    def _make_train_sampler(self, num_samples: int, seed: int) -> ResumableSampler:
        rank, world = self._rank()
        if self._streams():
            self._train_sampler = StreamSampler(num_samples, seed, self.batch_size, rank=rank, world_size=world)
        else:
            self._train_sampler = ResumableSampler(num_samples, seed, shuffle=True, rank=rank, world_size=world, drop_last=True)
        # The sampler starts at the epoch the fit loop is about to run, not at 0: Lightning creates a fit's
        # first iterator before it sets the sampler's epoch, and DataLoader workers prefetch from it at once,
        # so a run resumed into epoch >= 1 with num_workers > 0 replayed epoch 0's order, masks and pairs.
        if self._resume is not None:
            self._apply_resume(self._resume)
            self._resume = None
        elif self.trainer is not None:
            self._train_sampler.set_epoch(self.trainer.current_epoch)  # 0, or a later one when loaders are reloaded
        return self._train_sampler

    def _make_eval_sampler(self, num_samples: int, seed: int) -> ResumableSampler:
        rank, world = self._rank()
        # A fixed epoch: evaluation corruption (masks) is the same at every evaluation, so losses compare.
        return ResumableSampler(num_samples, seed, shuffle=False, rank=rank, world_size=world, drop_last=False, fixed_epoch=True)

    def _eval_loader(self, split: str) -> DataLoader:
        n = len(self.datasets[split])
        if self._streams():  # in corpus order, as streams; as many rows as the split's windows allow
            rank, world = self._rank()
            rows = max(1, min(self.eval_batch_size, n // world))
            sampler = StreamSampler(n, self.seed, rows, shuffle=False, rank=rank, world_size=world, fixed_epoch=True)
            return self._loader(split, sampler, rows)
        return self._loader(split, self._make_eval_sampler(n, self.seed), self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def state_dict(self) -> dict:
        """What the sampler consumed: saved in every checkpoint, so a resumed run continues with the next batch."""
        if self.trainer is None or self._train_sampler is None:
            return {}
        loop = self.trainer.fit_loop
        return {
            # The sampler's own epoch: the fit loop's epoch counter has already moved on when a
            # checkpoint is written at the end of an epoch, while its batch count has not been reset.
            # A resume into that epoch skips its batches; a resume that starts the next one skips nothing.
            "epoch": self._train_sampler.epoch,
            "batches": loop.epoch_loop.batch_progress.current.processed,
            # All of the epoch's batches consumed: a resumed run starts the next epoch.
            "epoch_done": loop.epoch_loop.batch_progress.current.processed >= self.trainer.num_training_batches,
            "batch_size": self.batch_size,
            "world_size": self.trainer.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None

    def _apply_resume(self, state: dict) -> None:
        _, world = self._rank()
        consumed = state["batches"] * state["batch_size"] * state["world_size"]  # samples, over all ranks
        if state["batch_size"] != self.batch_size or state["world_size"] != world:
            warnings.warn(
                f"resuming with batch size {self.batch_size} x {world} devices where the checkpoint used "
                f"{state['batch_size']} x {state['world_size']}: the run skips exactly the {consumed} samples consumed and "
                "keeps the epoch's order, but batches are composed differently from an uninterrupted run, so losses "
                "will not match it step for step"
            )
        self._train_sampler.resume(state["epoch"], consumed // world)
        # Checkpoints written before "epoch_done" was saved: a whole epoch's batches (without limit_train_batches).
        whole = state["batches"] >= self._train_sampler.num_samples // state["world_size"] // state["batch_size"]
        self._train_sampler.set_epoch(state["epoch"] + 1 if state.get("epoch_done", whole) else state["epoch"])


class PretrainDataModule(ResumableLoaders, L.LightningDataModule):
    """Pretraining data for any objective; the objective chooses the packing and the collator.

    Args:
        train_files: corpus files or globs (plain text: one sentence a line, blank line between
            documents; or JSONL with a ``text_field``). None: the built-in corpus.
        val_files, test_files: held-out files; None: hold out ``val_fraction`` / ``test_fraction``
            of the training documents (split by document, never inside one).
        tokenizer: a tokenizer.json to use; None: train a ``tokenizer_kind`` tokenizer of
            ``vocab_size`` on the training files (cached).
        seq_length: model input length of a window, special tokens included.
        packing: contiguous (GPT) | full_sentences | doc_sentences (RoBERTa); None: the objective's choice.
        cross_document_attention: let packed windows attend across document boundaries (RoBERTa's
            FULL-SENTENCES); by default each token sees only its own document.
        decode_errors: fail | skip, for bytes that are not UTF-8.
        seed: data order and corruption (masks) derive from (seed, epoch, sample index).
    """

    def __init__(
        self,
        train_files: list[str] | str | None = None,
        val_files: list[str] | str | None = None,
        test_files: list[str] | str | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        tokenizer: str | None = None,
        tokenizer_kind: Literal["wordpiece", "bpe", "unigram"] = "wordpiece",
        vocab_size: int = 30522,
        lowercase: bool = True,
        seq_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        packing: Literal["contiguous", "full_sentences", "doc_sentences", "nsp_pairs", "sop_pairs"] | None = None,
        cross_document_attention: bool = False,
        num_workers: int = 2,
        decode_errors: Literal["fail", "skip"] = "fail",
        text_field: str = "text",
        cache_dir: str | None = None,
        seed: int = 1234,
    ):
        super().__init__()
        if packing is not None and packing not in PACKING_MODES:
            raise ConfigError(f"data.packing={packing!r} is not one of {', '.join(PACKING_MODES)}")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 0.5:
                raise ConfigError(f"data.{key}={value} must be in [0, 0.5)")
        if seq_length < 4:
            raise ConfigError(f"data.seq_length={seq_length} is too short (at least 4)")
        for key, value, least in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size or 1, 1),
                                  ("num_workers", num_workers, 0), ("vocab_size", vocab_size, 1)):
            if value < least:
                raise ConfigError(f"data.{key}={value} must be at least {least}")
        self.train_files, self.val_files, self.test_files = train_files, val_files, test_files
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.tokenizer_path, self.tokenizer_kind, self.vocab_size, self.lowercase = tokenizer, tokenizer_kind, vocab_size, lowercase
        self.seq_length, self.batch_size = seq_length, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.packing, self.cross_document_attention = packing, cross_document_attention
        self.num_workers, self.decode_errors, self.text_field = num_workers, decode_errors, text_field
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.seed = seed
        self.tokenizer: Tokenizer | None = None
        self.datasets: dict[str, WindowDataset] = {}
        self._recipe: DataRecipe | None = None

    # -- corpus and tokenizer -------------------------------------------------------------------
    def _files(self, which: str) -> list[Path] | None:
        patterns = getattr(self, f"{which}_files")
        if patterns is None:
            if which != "train":
                return None
            with file_lock(self.cache_dir / "builtin.lock"):
                path = self.cache_dir / "builtin_corpus.txt"
                if not path.is_file():
                    write_builtin_corpus(path)
            return [path]
        return resolve_files(patterns, key=f"data.{which}_files")

    def _load_tokenizer(self, train_files: list[Path]) -> Tokenizer:
        if self.tokenizer_path is not None:
            return Tokenizer.load(self.tokenizer_path)
        key = hashlib.sha256(
            f"{files_fingerprint(train_files)}|{self.tokenizer_kind}|{self.vocab_size}|{self.lowercase}|{self.decode_errors}".encode()
        ).hexdigest()[:20]
        path = self.cache_dir / "tokenizers" / f"{key}.json"
        with file_lock(path.with_suffix(".lock")):
            if not path.is_file():
                sentences = (s for f in train_files for doc in iter_documents(f, self.decode_errors, self.text_field) for s in doc)
                train_tokenizer(sentences, self.tokenizer_kind, self.vocab_size, self.lowercase).save(path)
        return Tokenizer.load(path)

    def _shared_tokenizer(self, train_files: list[Path]) -> Tokenizer:
        """Rank 0's tokenizer, on every rank. Tokenizer training is not deterministic across processes
        (the Rust trainers break ties in hash-map order), so nodes that do not share a cache must
        not each train their own: rank 0 loads or trains it and broadcasts it."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return self._load_tokenizer(train_files)
        text = self._load_tokenizer(train_files).hf.to_str() if trainer.is_global_zero else None
        text = trainer.strategy.broadcast(text, src=0)
        return Tokenizer(HFTokenizer.from_str(text), source=self.tokenizer_path or "<rank 0's trained tokenizer>")

    # -- Lightning hooks ------------------------------------------------------------------------
    def recipe(self) -> DataRecipe:
        """The objective's data recipe: handed over with ``use_recipe``, else asked of the trainer's
        module (its ``data_recipe()``, the one method of the contract)."""
        if self._recipe is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            if module is None or not hasattr(module, "data_recipe"):
                raise ConfigError("the pretraining data need an objective's recipe (train through lit-ptm, or call use_recipe)")
            self._recipe = module.data_recipe()
        return self._recipe

    def use_recipe(self, recipe: DataRecipe) -> None:
        self._recipe = recipe

    def _packing(self) -> str:
        accepted = self.recipe().packings
        if self.packing is None:
            return accepted[0]
        if self.packing not in accepted:
            raise ConfigError(
                f"data.packing={self.packing} does not suit {self.recipe().name}: it takes "
                f"{' or '.join(accepted)} (leave data.packing unset for its default, {accepted[0]})"
            )
        return self.packing

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None and self.datasets:
            return
        train_files = self._files("train")
        self.tokenizer = self._shared_tokenizer(train_files)
        store = self._open(train_files)
        held_out = {which: self._files(which) for which in ("val", "test")}
        docs = self._split(store, held_out)
        mode = self._packing()
        # Contiguous windows are L + 1 tokens: inputs and labels shifted by one.
        for split, (split_store, doc_ids) in docs.items():
            if mode == "nsp_pairs" and len(doc_ids) < 2:
                raise CorpusError(
                    f"the {split} split holds {len(doc_ids)} document(s), but next-sentence prediction draws B from "
                    f"another document: it needs at least two (give data.{split}_files, or raise data.{split}_fraction)"
                )
            windows = build_windows(mode, split_store, doc_ids, self.seq_length, self.tokenizer.ids, seed=self.seed)
            if len(windows) == 0:
                raise CorpusError(f"the {split} split holds too little text for one window of data.seq_length={self.seq_length}")
            self.datasets[split] = WindowDataset(windows)
        if self.trainer is not None and self.trainer.is_global_zero and self.trainer.default_root_dir:
            self.tokenizer.save(Path(self.trainer.default_root_dir) / "tokenizer.json")

    def _open(self, files: list[Path]) -> TokenStore:
        return open_store(files, self.tokenizer, self.cache_dir, self.decode_errors, self.text_field)

    def _split(self, store: TokenStore, held_out: dict) -> dict[str, tuple[TokenStore, np.ndarray]]:
        """Train / val / test by document: held-out files, or a seeded share of the training documents."""
        order = np.random.default_rng(self.seed).permutation(store.num_docs)
        taken, splits = 0, {}
        for which in ("val", "test"):
            if held_out[which] is not None:
                other = self._open(held_out[which])
                splits[which] = (other, np.arange(other.num_docs))
                continue
            n = int(round(getattr(self, f"{which}_fraction") * store.num_docs))
            if getattr(self, f"{which}_fraction") > 0:
                n = max(1, n)
            splits[which] = (store, np.sort(order[taken : taken + n]))
            taken += n
        if taken >= store.num_docs:
            raise CorpusError(
                f"the corpus has {store.num_docs} document(s): too few to hold out validation and test documents "
                "(give data.val_files / data.test_files, or lower data.val_fraction / data.test_fraction)"
            )
        return {"train": (store, np.sort(order[taken:])), **splits}

    def _collate_fn(self):
        return self.recipe().collator(self.tokenizer.ids, self.seed, not self.cross_document_attention)

    def _streams(self) -> bool:
        return self.recipe().streams

    def train_dataloader(self) -> DataLoader:
        _, world = self._rank()
        n = len(self.datasets["train"])
        if n < world * self.batch_size:
            raise CorpusError(
                f"the training split has {n} windows: fewer than one batch per device "
                f"(data.batch_size={self.batch_size} x {world} devices)"
            )
        return self._loader("train", self._make_train_sampler(n, self.seed), self.batch_size)

