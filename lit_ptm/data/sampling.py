"""Window builders (the packing an objective needs) and the deterministic, resumable sampler.

Every window builder works on one split: a set of documents of a TokenStore. A window is returned as
a dict of 1-D tensors: ``ids`` (token ids), ``word_start`` (1 where a word starts; special tokens
count as words) and ``segment`` (index of the document each token belongs to, within the window).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lit_ptm.data.collate.common import sample_seed
from lit_ptm.data.store import TokenStore
from lit_ptm.errors import ConfigError
from lit_ptm.tokenizer import SpecialIds

PACKING_MODES = ("contiguous", "full_sentences", "doc_sentences", "nsp_pairs", "sop_pairs")


class ContiguousWindows:
    """GPT packing: the split's documents back to back, each followed by [EOS], cut into windows of
    ``length + 1`` tokens (input and shifted labels) that overlap by one token."""

    def __init__(self, store: TokenStore, doc_ids: np.ndarray, length: int, ids: SpecialIds):
        self.store, self.length, self.eos = store, length, ids.eos
        self.starts = store.doc_offsets[doc_ids]
        self.lengths = store.doc_offsets[doc_ids + 1] - self.starts
        self.vstarts = np.concatenate([[0], np.cumsum(self.lengths + 1)])  # virtual offsets, +1 for [EOS]
        self.num_windows = int(max(0, (self.vstarts[-1] - 1) // length))

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        v, end = k * self.length, k * self.length + self.length + 1
        doc = int(np.searchsorted(self.vstarts, v, side="right") - 1)
        pieces, segments = [], []
        while v < end:
            offset, stop = v - self.vstarts[doc], min(end - self.vstarts[doc], self.lengths[doc] + 1)
            piece = self.store.tokens[self.starts[doc] + offset : self.starts[doc] + min(stop, self.lengths[doc])]
            piece = np.asarray(piece, dtype=np.int64)
            if stop > self.lengths[doc]:
                piece = np.append(piece, self.eos)
            pieces.append(piece)
            segments.append(np.full(len(piece), len(segments), dtype=np.int64))
            v += len(piece)
            doc += 1
        ids = torch.from_numpy(np.concatenate(pieces))
        return {"ids": ids, "word_start": torch.ones_like(ids, dtype=torch.bool), "segment": torch.from_numpy(np.concatenate(segments))}


class SentenceWindows:
    """RoBERTa's packings: ``[CLS] s1 s2 ... [SEP]`` filled with whole sentences up to ``length``.

    FULL-SENTENCES (``cross_documents=True``) continues into the next document with a [SEP] between
    documents; DOC-SENTENCES never crosses a document. A sentence longer than a window is cut into
    window-sized pieces, so no text is dropped.
    """

    def __init__(self, store: TokenStore, doc_ids: np.ndarray, length: int, ids: SpecialIds, cross_documents: bool):
        if length < 3:
            raise ConfigError(f"data.seq_length={length} leaves no room for text between [CLS] and [SEP]")
        self.store, self.ids, self.budget = store, ids, length - 2
        # Sentences of the split, in document order: global sentence index and owning document.
        first, last = store.doc_sents[doc_ids], store.doc_sents[doc_ids + 1]
        counts = last - first
        sent = np.repeat(first - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
        doc = np.repeat(np.arange(len(doc_ids)), counts)
        start, stop = store.sent_offsets[sent], store.sent_offsets[sent + 1]
        # Cut long sentences into pieces of at most `budget` tokens; drop empty ones.
        n_pieces = np.maximum(1, -(-(stop - start) // self.budget))
        piece_of = np.repeat(np.arange(len(start)), n_pieces)
        rank = np.arange(len(piece_of)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
        self.piece_start = start[piece_of] + rank * self.budget
        self.piece_stop = np.minimum(self.piece_start + self.budget, stop[piece_of])
        self.piece_doc = doc[piece_of]
        keep = self.piece_stop > self.piece_start
        self.piece_start, self.piece_stop, self.piece_doc = self.piece_start[keep], self.piece_stop[keep], self.piece_doc[keep]
        self.windows = self._pack(cross_documents)

    def _pack(self, cross_documents: bool) -> np.ndarray:
        """Greedy packing into [first_piece, end_piece) ranges; one pass, at set-up only."""
        lengths = (self.piece_stop - self.piece_start).tolist()
        new_doc = np.concatenate([[False], self.piece_doc[1:] != self.piece_doc[:-1]]).tolist()
        bounds, used = [0], 0
        for j, (n, crosses) in enumerate(zip(lengths, new_doc)):
            cost = n + (1 if crosses else 0)  # a [SEP] between documents
            if j > bounds[-1] and (used + cost > self.budget or (crosses and not cross_documents)):
                bounds.append(j)
                used = n
            else:
                used += cost
        bounds.append(len(lengths))
        bounds = np.asarray(bounds, dtype=np.int64)
        return np.stack([bounds[:-1], bounds[1:]], axis=1) if len(lengths) else np.zeros((0, 2), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        a, b = self.windows[k]
        ids, word_start, segment = [[self.ids.cls]], [[1]], [[0]]
        seg = 0
        for j in range(a, b):
            if j > a and self.piece_doc[j] != self.piece_doc[j - 1]:
                ids.append([self.ids.sep]); word_start.append([1]); segment.append([seg])
                seg += 1
            s, e = self.piece_start[j], self.piece_stop[j]
            ids.append(self.store.tokens[s:e]); word_start.append(self.store.word_start[s:e]); segment.append(np.full(e - s, seg))
        ids.append([self.ids.sep]); word_start.append([1]); segment.append([seg])
        return {
            "ids": torch.from_numpy(np.concatenate(ids).astype(np.int64)),
            "word_start": torch.from_numpy(np.concatenate(word_start).astype(bool)),
            "segment": torch.from_numpy(np.concatenate(segment).astype(np.int64)),
        }


def build_windows(mode: str, store: TokenStore, doc_ids: np.ndarray, seq_length: int, ids: SpecialIds, seed: int = 0):
    if mode in ("nsp_pairs", "sop_pairs"):
        return PairWindows(store, doc_ids, seq_length, ids, task=mode[:3], seed=seed)
    if mode == "contiguous":
        return ContiguousWindows(store, doc_ids, seq_length, ids)
    if mode in ("full_sentences", "doc_sentences"):
        return SentenceWindows(store, doc_ids, seq_length, ids, cross_documents=mode == "full_sentences")
    raise ConfigError(f"data.packing={mode!r} is not one of {', '.join(PACKING_MODES)}")


class WindowDataset(Dataset):
    """Map-style dataset keyed by ``(epoch, index)``, as the sampler yields them, so that the collator
    can derive each sample's random stream from (seed, epoch, index) in any worker process."""

    def __init__(self, windows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        return {**self.windows[index], "epoch": epoch, "index": index}


class ResumableSampler(Sampler):
    """Deterministic order from (seed, epoch), sharded over ranks, able to skip what a run consumed.

    Yields ``(epoch, index)``. ``resume(epoch, skip)`` makes the next iteration of that epoch start
    after its first ``skip`` samples of this rank (the checkpoint stores how many were consumed).
    ``fixed_epoch=True`` (evaluation) ignores ``set_epoch``: the same order and the same corruption
    (masks derive from the epoch) at every evaluation, so validation losses compare across a run.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, fixed_epoch: bool = False):
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size, self.drop_last, self.fixed_epoch = rank, world_size, drop_last, fixed_epoch
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        if not self.fixed_epoch:
            self.epoch = epoch

    def resume(self, epoch: int, skip: int) -> None:
        self._resume = (epoch, skip)

    def _rank_indices(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))  # well mixed: no (seed, epoch) collides
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        if self.drop_last:
            order = order[: self.num_samples // self.world_size * self.world_size]
        elif self.num_samples % self.world_size:  # pad by repeating, as DistributedSampler does
            pad = self.world_size - self.num_samples % self.world_size
            order = torch.cat([order, order.repeat(-(-pad // len(order)))[:pad]])
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def __iter__(self):
        indices = self._rank_indices()
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] :]
            self._resume = None
        epoch = self.epoch
        return iter([(epoch, i) for i in indices.tolist()])


class PairWindows:
    """Sentence pairs for NSP (BERT) and SOP (ALBERT), built once per split as in BERT's
    ``create_pretraining_data``: sentences of a document are collected up to a target length
    (``length - 3``; with probability ``short_seq_prob`` a random shorter one, drawn per document),
    and the chunk is split at a random sentence boundary into A and B.

    NSP: always when the chunk holds one sentence, and otherwise with a probability chosen so that half
    of all pairs are random (0.5 minus the one-sentence excess), B is taken from a random other
    document (label 1) and the chunk's unused sentences are put back to start the next chunk, so no
    sentence is silently dropped; otherwise B is the rest of the chunk (label 0).
    SOP: B is always the rest of the chunk (a one-sentence chunk is cut in the middle); the collator
    swaps A and B with probability 0.5 each time the sample is drawn (label 1 when swapped).

    An item is ``{"a": ids, "b": ids, "a_word_start", "b_word_start", "label"}``; the collator trims,
    lays out ``[CLS] A [SEP] B [SEP]`` and masks.
    """

    def __init__(self, store: TokenStore, doc_ids: np.ndarray, length: int, ids: SpecialIds, task: str,
                 seed: int, short_seq_prob: float = 0.1):
        if task not in ("nsp", "sop"):
            raise ConfigError(f"pair task {task!r} is not nsp or sop")
        if task == "nsp" and len(doc_ids) < 2:
            raise ConfigError("next-sentence prediction needs at least two documents in the split")
        self.store, self.task, self.max_tokens = store, task, length - 3
        self.doc_ids, self.seed, self.short_seq_prob = doc_ids, seed, short_seq_prob
        pairs = self._build(random_next_prob=0.5)
        if task == "nsp":
            # One-sentence chunks always take a random B (BERT's rule), which makes ~54% of BERT's own
            # pairs random. Choose the probability q for multi-sentence chunks that brings the share
            # of random-next pairs back to one half (the share grows with q; bisect, set-up only).
            low, high, best = 0.0, 0.5, pairs
            for _ in range(7):
                q = (low + high) / 2
                candidate = self._build(random_next_prob=q)
                share = candidate[:, 4].mean() if len(candidate) else 0.5
                if abs(share - 0.5) < abs(best[:, 4].mean() - 0.5):
                    best = candidate
                low, high = (q, high) if share < 0.5 else (low, q)
            pairs = best
        self.pairs = pairs

    def _build(self, random_next_prob: float) -> np.ndarray:
        store, doc_ids, max_tokens = self.store, self.doc_ids, self.max_tokens
        rng = np.random.default_rng(self.seed)
        offsets = store.sent_offsets
        pairs: list[tuple[int, int, int, int, int]] = []  # token ranges [a0, a1), [b0, b1) and the NSP label
        for k, d in enumerate(doc_ids):
            first, last = int(store.doc_sents[d]), int(store.doc_sents[d + 1])
            target = max_tokens if rng.random() >= self.short_seq_prob else int(rng.integers(2, max_tokens + 1))
            chunk_start, used, i = first, 0, first
            while i < last:
                used += int(offsets[i + 1] - offsets[i])
                if i == last - 1 or used >= target:
                    n = i + 1 - chunk_start
                    a_sents = 1 if n == 1 else int(rng.integers(1, n))
                    a0, a1 = int(offsets[chunk_start]), int(offsets[chunk_start + a_sents])
                    if self.task == "nsp" and (n == 1 or rng.random() < random_next_prob):
                        other = int(doc_ids[(k + int(rng.integers(1, len(doc_ids)))) % len(doc_ids)])  # never d
                        o_first, o_last = int(store.doc_sents[other]), int(store.doc_sents[other + 1])
                        start = int(rng.integers(o_first, o_last))
                        stop = start + 1
                        while stop < o_last and offsets[stop] - offsets[start] < target - (a1 - a0):
                            stop += 1
                        pairs.append((a0, a1, int(offsets[start]), int(offsets[stop]), 1))
                        i = chunk_start + a_sents - 1  # put the unused sentences back
                    elif n == 1:  # one sentence: cut it in two (SOP)
                        mid = (a0 + a1) // 2
                        if mid > a0:
                            pairs.append((a0, mid, mid, a1, 0))
                    else:
                        pairs.append((a0, a1, a1, int(offsets[i + 1]), 0))
                    chunk_start, used = i + 1, 0
                i += 1
        return np.asarray(pairs, dtype=np.int64).reshape(-1, 5)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict:
        a0, a1, b0, b1, label = self.pairs[k].tolist()
        tokens, starts = self.store.tokens, self.store.word_start
        return {
            "a": torch.from_numpy(tokens[a0:a1].astype(np.int64)), "b": torch.from_numpy(tokens[b0:b1].astype(np.int64)),
            "a_word_start": torch.from_numpy(starts[a0:a1].astype(bool)), "b_word_start": torch.from_numpy(starts[b0:b1].astype(bool)),
            "label": label, "max_tokens": self.max_tokens,
        }
