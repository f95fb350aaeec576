"""BERT-style masked LM collators: token, whole-word, n-gram or SpanBERT's span selection, then 80/10/10
(stages in ``spans``)."""

from __future__ import annotations

import torch

from lit_ptm.data.collate.common import pad_windows, sample_noise, window_keys
from lit_ptm.data.collate.spans import SpanLengths, mask_budget, mask_random_keep, merge_touching, select_spans, span_bounds
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
        # num_tokens: a plain int, so that logging throughput never waits on the device.
        num_tokens = sum(len(s["ids"]) for s in samples)
        return {"input_ids": input_ids, "labels": labels, "num_tokens": num_tokens,
                **window_keys(samples, ids.size(1), self.isolate_documents)}


class SpanMLMCollator:
    """SpanBERT's span masking with the inputs of its span boundary objective (SBO).

    Spans of whole words, their lengths in words ~ Geometric(``geometric_p``) clipped to
    1..``max_span_words``, until round(``probability`` * n) of a window's n non-special tokens are
    selected; one 80/10/10 decision per span. Besides MLM's keys, each predicted token gets its span's
    boundary: ``span_left`` / ``span_right`` [B, L], the positions just before and just after its span
    (SpanBERT's x_(s-1), x_(e+1)), and ``span_offset`` [B, L], its 0-based index inside the span (the
    SBO's relative position); all three are 0 where labels are -100. Spans never hold a special token,
    so both boundaries lie inside the row ([CLS] ... [SEP]). A new mask each time a sample is drawn,
    from (seed, epoch, index).
    """

    def __init__(self, ids: SpecialIds, seed: int, probability: float = 0.15, geometric_p: float = 0.2,
                 max_span_words: int = 10, isolate_documents: bool = True):
        self.ids, self.seed, self.probability, self.isolate_documents = ids, seed, probability, isolate_documents
        self.lengths = SpanLengths("geometric", max_n=max_span_words, min_n=1, p=geometric_p)
        self.regular_ids = ids.regular_ids()
        self.is_special = ids.special_table()

    def spans(self, samples: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(window ids [B, L], the sampled spans' ids [B, L] (before merging), noise [B, 4, L])."""
        ids = pad_windows(samples, "ids", self.ids.pad)  # [B, L]
        candidate = ~self.is_special[ids]  # not special, not padding
        # Rows: span order scores, 80/10/10 draws (a span reads its first token's), random tokens, span lengths.
        noise = sample_noise(samples, self.seed, 4, ids.size(1))
        spans = select_spans(candidate, mask_budget(candidate, self.probability), noise[:, 0], noise[:, 3], self.lengths,
                             pad_windows(samples, "word_start", True))
        return ids, spans.span_id, noise

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        ids, sampled, noise = self.spans(samples)
        # As SpanBERT's code: sampled spans that touch are one span (one decision, boundaries outside both).
        span_id = merge_touching(sampled)
        input_ids, labels = mask_random_keep(ids, span_id, noise[:, 1], noise[:, 2], self.regular_ids, self.ids.mask,
                                             decide="span")
        first, last = span_bounds(span_id)  # [B, L] each
        selected = span_id > 0
        offset = torch.arange(ids.size(1)) - first
        return {
            "input_ids": input_ids, "labels": labels,
            "span_left": (first - 1) * selected, "span_right": (last + 1) * selected, "span_offset": offset * selected,
            "num_tokens": sum(len(s["ids"]) for s in samples), **window_keys(samples, ids.size(1), self.isolate_documents),
        }
