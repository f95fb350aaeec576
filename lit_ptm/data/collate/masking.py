"""BERT-style masked LM collators: token, whole-word or n-gram selection, then 80/10/10 (stages in ``spans``)."""

from __future__ import annotations

import torch

from lit_ptm.data.collate.common import pad_windows, sample_noise, document_positions
from lit_ptm.data.collate.spans import SpanLengths, mask_budget, mask_random_keep, select_spans
from lit_ptm.tokenizer import SpecialIds


def select_ngrams(candidate: torch.Tensor, starts: torch.Tensor, budget: torch.Tensor, order_noise: torch.Tensor,
                  length_noise: torch.Tensor, max_ngram: int) -> torch.Tensor:
    """ALBERT's n-gram selection (n whole words, p(n) ~ 1/n): [B, L] -> selected [B, L] bool.
    ``select_spans`` with ``SpanLengths("ngram")``, its spans' ids dropped."""
    spans = select_spans(candidate, budget, order_noise, length_noise, SpanLengths("ngram", max_n=max_ngram), starts)
    return spans.span_id > 0


def mask_tokens(
    input_ids: torch.Tensor, protected: torch.Tensor, noise: torch.Tensor, regular_ids: torch.Tensor, mask_id: int,
    probability: float = 0.15, word_start: torch.Tensor | None = None, max_ngram: int = 1,
    mask_ratio: float = 0.8, random_ratio: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select round(probability * n) of the n unprotected tokens of each row (at least one) and corrupt them.

    input_ids [B, L]; protected [B, L] True for special tokens and padding (never selected);
    noise [B, 3, L] (or [B, 4, L] for n-grams) uniform in [0, 1): selection scores, 80/10/10
    draws, random-token draws (and the n-gram length drawn in each round);
    word_start [B, L] True where a word starts: when given, whole words are selected together,
    in random word order, while the count is nearer the budget with the next word than without
    it (the first word is always taken); with ``max_ngram`` > 1, n-grams of whole words (ALBERT).
    The two stages of ``spans``: ``select_spans`` (kind "token", "word" or "ngram"), then
    ``mask_random_keep`` per token. Returns (corrupted ids, labels with -100 where not selected).
    """
    candidate = ~protected
    kind = "ngram" if max_ngram > 1 else "token" if word_start is None else "word"
    spans = select_spans(
        candidate, mask_budget(candidate, probability), noise[:, 0], noise[:, 3] if kind == "ngram" else None,
        SpanLengths(kind, max_n=max(max_ngram, 1)), word_start,
    )
    return mask_random_keep(input_ids, spans.span_id, noise[:, 1], noise[:, 2], regular_ids, mask_id, mask_ratio, random_ratio)


class MLMCollator:
    """Dynamic masking (RoBERTa): a fresh mask each time a sample is drawn, from (seed, epoch, index)."""

    def __init__(self, ids: SpecialIds, seed: int, probability: float = 0.15, whole_word_mask: bool = False,
                 isolate_documents: bool = True, max_ngram: int = 1):
        self.ids, self.seed, self.probability = ids, seed, probability
        self.whole_word_mask, self.isolate_documents, self.max_ngram = whole_word_mask, isolate_documents, max_ngram
        self.regular_ids = ids.regular_ids()
        self.is_special = ids.special_table()

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        ids = pad_windows(samples, "ids", self.ids.pad)
        protected = self.is_special[ids]  # special tokens and padding
        noise = sample_noise(samples, self.seed, 4 if self.max_ngram > 1 else 3, ids.size(1))
        word_start = pad_windows(samples, "word_start", True) if self.whole_word_mask or self.max_ngram > 1 else None
        input_ids, labels = mask_tokens(
            ids, protected, noise, self.regular_ids, self.ids.mask, self.probability, word_start, self.max_ngram
        )
        lengths = torch.tensor([len(s["ids"]) for s in samples])
        # num_tokens: a plain int, so that logging throughput never waits on the device.
        batch = {"input_ids": input_ids, "labels": labels, "num_tokens": int(lengths.sum())}
        real = torch.arange(ids.size(1)) < lengths[:, None]
        if not real.all():
            batch["attention_mask"] = real
        if self.isolate_documents:
            documents = pad_windows(samples, "document", -1)
            if (documents.masked_fill(~real, 0) != 0).any():
                batch["document_ids"] = documents
                batch["position_ids"] = document_positions(documents)
        return batch
