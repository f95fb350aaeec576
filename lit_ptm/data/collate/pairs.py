"""Sentence-pair batches for NSP (BERT) and SOP (ALBERT): ``[CLS] A [SEP] B [SEP]`` with MLM on top."""

from __future__ import annotations

import torch

from lit_ptm.data.collate.common import pad_windows, padding_keys, sample_seed
from lit_ptm.data.collate.masking import mask_tokens
from lit_ptm.tokenizer import SpecialIds


def truncated_lengths(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """BERT's ``truncate_seq_pair`` in closed form: one token at a time comes off the longer side
    (off B when they are equal) until the pair fits. Returns the kept lengths."""
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return len_a, len_b
    if len_a > len_b:
        cut = min(excess, len_a - len_b)
        len_a, excess = len_a - cut, excess - cut
    elif len_b > len_a:
        cut = min(excess, len_b - len_a)
        len_b, excess = len_b - cut, excess - cut
    return len_a - excess // 2, len_b - (excess + 1) // 2  # then B and A alternate, B first


class PairMLMCollator:
    """Lays out pairs from ``PairWindows``, trims the longer side from a random end, swaps SOP pairs,
    and masks for MLM. Every random choice comes from the sample's own (seed, epoch, index) stream."""

    def __init__(self, ids: SpecialIds, seed: int, task: str, probability: float = 0.15, whole_word_mask: bool = False,
                 max_ngram: int = 1):
        self.ids, self.seed, self.task, self.probability, self.whole_word_mask = ids, seed, task, probability, whole_word_mask
        self.max_ngram = max_ngram
        self.noise_rows = 4 if max_ngram > 1 else 3
        self.regular_ids = ids.regular_ids()
        self.is_special = ids.special_table()

    def _trim(self, tokens: torch.Tensor, starts: torch.Tensor, keep: int, g: torch.Generator):
        cut = len(tokens) - keep
        front = int((torch.rand(cut, generator=g) < 0.5).sum()) if cut else 0  # each cut from a random end
        tokens, starts = tokens[front : front + keep], starts[front : front + keep].clone()
        if keep:
            starts[0] = True  # a trimmed piece starts a word for masking purposes
        return tokens, starts

    def lay_out(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """The pairs laid out, before masking: ``ids``, ``token_type`` (A = 0, B = 1), ``word_start`` [B, L]
        (padded: pad id, 0, True), ``noise`` [B, noise_rows, L] (padding: 1.0), ``pair_labels`` [B],
        ``lengths`` [B]. Each sample's draws come from its own (seed, epoch, index) stream."""
        g = torch.Generator()
        rows, noises, labels = [], [], []
        for s in samples:
            g.manual_seed(sample_seed(self.seed, s["epoch"], s["index"]))
            a, a_ws, b, b_ws, label = s["a"], s["a_word_start"], s["b"], s["b_word_start"], s["label"]
            if self.task == "sop" and torch.rand(1, generator=g).item() < 0.5:
                a, a_ws, b, b_ws, label = b, b_ws, a, a_ws, 1
            keep_a, keep_b = truncated_lengths(len(a), len(b), s["max_tokens"])
            a, a_ws = self._trim(a, a_ws, keep_a, g)
            b, b_ws = self._trim(b, b_ws, keep_b, g)
            cls, sep, one = torch.tensor([self.ids.cls]), torch.tensor([self.ids.sep]), torch.tensor([True])
            ids = torch.cat([cls, a, sep, b, sep])
            rows.append({
                "ids": ids,
                "word_start": torch.cat([one, a_ws, one, b_ws, one]),
                # segment 0 up to and including the first [SEP], 1 after
                "token_type": torch.cat([torch.zeros(len(a) + 2, dtype=torch.long), torch.ones(len(b) + 1, dtype=torch.long)]),
            })
            noises.append(torch.rand(self.noise_rows, len(ids), generator=g))
            labels.append(label)
        ids = pad_windows(rows, "ids", self.ids.pad)
        noise = torch.ones(len(rows), self.noise_rows, ids.size(1))
        for i, n in enumerate(noises):
            noise[i, :, : n.size(1)] = n
        return {"ids": ids, "token_type": pad_windows(rows, "token_type", 0), "word_start": pad_windows(rows, "word_start", True),
                "noise": noise, "pair_labels": torch.tensor(labels), "lengths": torch.tensor([len(r["ids"]) for r in rows])}

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        pairs = self.lay_out(samples)
        ids, lengths = pairs["ids"], pairs["lengths"]
        word_start = pairs["word_start"] if self.whole_word_mask or self.max_ngram > 1 else None
        input_ids, mlm_labels = mask_tokens(
            ids, self.is_special[ids], pairs["noise"], self.regular_ids, self.ids.mask, self.probability, word_start, self.max_ngram
        )
        return {
            "input_ids": input_ids, "labels": mlm_labels, "token_type_ids": pairs["token_type"],
            "pair_labels": pairs["pair_labels"], "num_tokens": int(lengths.sum()), **padding_keys(lengths, ids.size(1)),
        }
