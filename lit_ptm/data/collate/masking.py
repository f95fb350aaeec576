"""BERT-style masked LM corruption: token-level or whole-word selection, then 80/10/10."""

from __future__ import annotations

import torch

from lit_ptm.data.collate.common import pad_windows, sample_noise, segment_positions
from lit_ptm.tokenizer import SpecialIds


def mask_tokens(
    input_ids: torch.Tensor, protected: torch.Tensor, noise: torch.Tensor, regular_ids: torch.Tensor, mask_id: int,
    probability: float = 0.15, word_start: torch.Tensor | None = None,
    mask_ratio: float = 0.8, random_ratio: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select round(probability * n) of the n unprotected tokens of each row (at least one) and corrupt them.

    input_ids [B, L]; protected [B, L] True for special tokens and padding (never selected);
    noise [B, 3, L] uniform in [0, 1): selection scores, 80/10/10 draws, random-token draws;
    word_start [B, L] True where a word starts: when given, whole words are selected together,
    in random word order, while the count is nearer the budget with the next word than without
    it (the first word is always taken). Returns (corrupted ids, labels with -100 where not selected).
    """
    candidate = ~protected
    n = candidate.sum(1)
    budget = torch.where(n > 0, torch.clamp((n * probability).round().long(), min=1), 0)  # [B]
    arange = torch.arange(input_ids.size(1)).expand_as(input_ids)
    if word_start is None:
        score = noise[:, 0].masked_fill(~candidate, 2.0)
        threshold = score.sort(dim=1).values.gather(1, (budget - 1).clamp(min=0)[:, None])
        selected = (score <= threshold) & candidate
    else:
        starts = word_start | protected  # special tokens and padding are words of their own
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
                 isolate_documents: bool = True):
        self.ids, self.seed, self.probability = ids, seed, probability
        self.whole_word_mask, self.isolate_documents = whole_word_mask, isolate_documents
        self.regular_ids = ids.regular_ids()
        self.is_special = ids.special_table()

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        ids = pad_windows(samples, "ids", self.ids.pad)
        protected = self.is_special[ids]  # special tokens and padding
        noise = sample_noise(samples, self.seed, 3, ids.size(1))
        word_start = pad_windows(samples, "word_start", True) if self.whole_word_mask else None
        input_ids, labels = mask_tokens(
            ids, protected, noise, self.regular_ids, self.ids.mask, self.probability, word_start
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
                batch["segment_ids"] = segment
                batch["position_ids"] = segment_positions(segment)
        return batch
