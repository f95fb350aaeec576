"""Window builders (the packing an objective needs) and the deterministic, resumable sampler.

Every window builder works on one split: a set of documents of a TokenStore. A window is returned as
a dict of 1-D tensors: ``ids`` (token ids), ``word_start`` (1 where a word starts; special tokens
count as words) and ``segment`` (index of the document each token belongs to, within the window).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lit_ptm.data.store import TokenStore
from lit_ptm.tokenizer import SpecialIds

PACKING_MODES = ("contiguous", "full_sentences", "doc_sentences")


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
            raise ValueError(f"data.seq_length={length} leaves no room for text between [CLS] and [SEP]")
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


def build_windows(mode: str, store: TokenStore, doc_ids: np.ndarray, seq_length: int, ids: SpecialIds):
    if mode == "contiguous":
        return ContiguousWindows(store, doc_ids, seq_length, ids)
    if mode in ("full_sentences", "doc_sentences"):
        return SentenceWindows(store, doc_ids, seq_length, ids, cross_documents=mode == "full_sentences")
    raise ValueError(f"data.packing={mode!r} is not one of {', '.join(PACKING_MODES)}")


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
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool = True):
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, skip: int) -> None:
        self._resume = (epoch, skip)

    def _rank_indices(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
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
