"""BERT-style masked LM corruption: token-level or whole-word selection, then 80/10/10."""

from __future__ import annotations

import torch

from lit_ptm.data.collate.common import pad_windows, sample_noise, segment_positions
from lit_ptm.tokenizer import SpecialIds


def ngram_probabilities(max_ngram: int) -> torch.Tensor:
    """p(n) proportional to 1/n for n = 1..max_ngram (ALBERT: 6/11, 3/11, 2/11)."""
    inverse = 1.0 / torch.arange(1, max_ngram + 1, dtype=torch.float64)
    return (inverse / inverse.sum()).float()


def select_ngrams(candidate: torch.Tensor, starts: torch.Tensor, budget: torch.Tensor, order_noise: torch.Tensor,
                  length_noise: torch.Tensor, max_ngram: int) -> torch.Tensor:
    """ALBERT's n-gram masking, vectorised over the batch: [B, L] -> selected [B, L].

    Candidate words are visited in random order (one per row per round); each proposes an n-gram of
    n whole words, n ~ 1/n, shrunk while it would overshoot the budget, and is taken unless it
    overlaps one already taken or runs past a special token. The loop runs over rounds (n-grams),
    never over tokens, and ends when every row has met its budget or run out of words; a row that
    took nothing (all its words are longer than its budget) takes its first word.
    """
    B, L = candidate.shape
    word_index = starts.long().cumsum(1) - 1  # [B, L]
    word_len = torch.zeros(B, L, dtype=torch.long).scatter_add_(1, word_index, candidate.long())  # tokens per word
    all_candidate = torch.zeros(B, L, dtype=torch.long).scatter_reduce_(1, word_index, candidate.long(), "amin", include_self=False)
    word_ok = (all_candidate > 0) & (word_len > 0)  # every token of the word may be masked
    first_token = torch.where(starts, torch.arange(L).expand(B, L), L)
    word_start_pos = torch.full((B, L), L, dtype=torch.long).scatter_reduce_(1, word_index, first_token, "amin")
    word_score = torch.where(word_ok, order_noise.gather(1, word_start_pos.clamp(max=L - 1)), 2.0)
    order = word_score.argsort(dim=1)  # random word order, candidates first
    thresholds = ngram_probabilities(max_ngram).cumsum(0)
    # Words w..w+m-1, for m = 1..max_ngram: their token counts and whether all are candidate words.
    lens = torch.stack([word_len.roll(-k, 1) for k in range(max_ngram)], -1).cumsum(-1)  # [B, L, M]
    oks = torch.stack([word_ok.roll(-k, 1) & (torch.arange(L) < L - k) for k in range(max_ngram)], -1).cummin(-1).values
    rows, m_range, offsets = torch.arange(B), torch.arange(1, max_ngram + 1), torch.arange(max_ngram)
    taken = torch.zeros(B, L + 1, dtype=torch.bool)  # per word (+1 column absorbs out-of-range writes)
    count = torch.zeros(B, dtype=torch.long)
    for r in range(L):
        w = order[:, r]  # [B]
        active = word_ok[rows, w] & (count < budget)
        if not active.any():
            break
        n = 1 + (length_noise[:, r, None] >= thresholds[None, :-1]).sum(1)  # [B], p(n) ~ 1/n, one draw per round
        fits = oks[rows, w] & (count[:, None] + lens[rows, w] <= budget[:, None]) & (m_range[None, :] <= n[:, None])
        m = torch.where(fits, m_range, 0).max(1).values  # longest n-gram <= n that fits; 0: none
        cols = torch.where(offsets[None, :] < m[:, None], w[:, None] + offsets, L)  # the n-gram's words, [B, M]
        overlap = taken.gather(1, cols).any(1)
        accept = active & (m > 0) & ~overlap
        taken.scatter_(1, torch.where(accept[:, None], cols, L), True)
        taken[:, L] = False  # the spare column only absorbs writes; it must never read as taken
        count += torch.where(accept, lens[rows, w, (m - 1).clamp(min=0)], 0)
    # A row whose every word is longer than its budget (e.g. one 3-token word, budget 1) still
    # predicts something: its first word in random order, as whole-word masking does.
    empty = (count == 0) & word_ok.any(1)
    taken[rows[empty], order[empty, 0]] = True
    return taken[:, :L].gather(1, word_index) & candidate


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
    Returns (corrupted ids, labels with -100 where not selected).
    """
    candidate = ~protected
    n = candidate.sum(1)
    budget = torch.where(n > 0, torch.clamp((n * probability).round().long(), min=1), 0)  # [B]
    arange = torch.arange(input_ids.size(1)).expand_as(input_ids)
    if word_start is not None or max_ngram > 1:
        # Special tokens and padding are words of their own, and a row always starts a word.
        starts = (word_start if word_start is not None else torch.ones_like(protected)) | protected
        starts[:, 0] = True
    if max_ngram > 1:
        selected = select_ngrams(candidate, starts, budget, noise[:, 0], noise[:, 3], max_ngram)
    elif word_start is None:
        score = noise[:, 0].masked_fill(~candidate, 2.0)
        threshold = score.sort(dim=1).values.gather(1, (budget - 1).clamp(min=0)[:, None])
        selected = (score <= threshold) & candidate
    else:
        word_first = torch.where(starts, arange, 0).cummax(dim=1).values  # position of each token's word start
        score = noise[:, 0].gather(1, word_first).masked_fill(~candidate, 2.0)  # one score per word
        # In random word order (stable sort keeps a word's tokens together), count candidate tokens.
        order = score.sort(dim=1, stable=True).indices
        counted = torch.zeros_like(score).scatter_(1, order, candidate.gather(1, order).float().cumsum(1))
        word_index = starts.long().cumsum(1) - 1
        # Tokens selected so far when the whole word is in: the count at its last token.
        word_total = torch.zeros_like(score).scatter_reduce(1, word_index, counted, "amax", include_self=True)
        word_size = torch.zeros_like(score).scatter_add_(1, word_index, candidate.float())
        token_total, token_word_size = word_total.gather(1, word_index), word_size.gather(1, word_index)
        # Take words while the budget is closer with the word than without it (its midpoint is within
        # budget), so the masked count is the nearest to round(p * n) that whole words allow.
        within = token_total - token_word_size / 2 <= budget[:, None].float()
        first_word = token_total.masked_fill(~candidate, float("inf")).min(dim=1, keepdim=True).values
        selected = candidate & (within | (token_total <= first_word))
    decision = noise[:, 1]
    to_mask = selected & (decision < mask_ratio)
    to_random = selected & (decision >= mask_ratio) & (decision < mask_ratio + random_ratio)
    random_tokens = regular_ids[(noise[:, 2] * len(regular_ids)).long().clamp(max=len(regular_ids) - 1)]
    corrupted = torch.where(to_mask, mask_id, torch.where(to_random, random_tokens, input_ids))
    labels = input_ids.masked_fill(~selected, -100)
    return corrupted, labels


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
            segment = pad_windows(samples, "segment", -1)
            if (segment.masked_fill(~real, 0) != 0).any():
                batch["document_ids"] = segment
                batch["position_ids"] = segment_positions(segment)
        return batch
