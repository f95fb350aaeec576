"""Masked-LM corruption in two stages: span selection, then corruption.

Stage 1, ``select_spans``, decides which tokens are corrupted and groups them into spans:
``span_id`` [B, L] is 0 on kept tokens and numbers the spans of each row 1..n in position order.
Two spans that touch keep distinct ids (they never merge), so a per-span decision, a sentinel or
an infilled [MASK] never straddles two of them. How long spans are is a ``SpanLengths`` value:
single tokens, whole words, or lengths in words drawn from a table (ALBERT's n-grams, SpanBERT's
geometric, BART's / GLM's Poisson); a new distribution is one more table, not another loop.
T5's noise layout (``random_spans_noise``: spans and the gaps between them cut at random, noise
density exact) is a selection of its own, and so are GLM's three: ``place_spans`` (Poisson lengths
drawn until the budget is met, then placed at random with gaps, as GLM's ``sample_spans``: no length
is rejected), ``select_sentences`` (whole sentences, [sMASK]) and ``select_suffix`` ([gMASK]).

Stage 2 corrupts the selected spans:
- ``mask_random_keep``: BERT's 80/10/10 decided per token (BERT, RoBERTa, ALBERT) or per span
  (SpanBERT); rows keep their length.
- ``sentinel_spans``: T5: each span becomes one sentinel; the target is ``<s1> span1 <s2> span2 ...``.
- ``delete_spans``: the selected tokens are dropped (BART's token deletion).
- ``infill_spans``: BART's text infilling: each span, an empty one too, becomes one [MASK].
- ``blank_infilling``: GLM: each span one blank in Part A, the spans in random order in Part B
  (``[SOP] x1..xl`` predicting ``x1..xl [EOP]``), with 2D positions and Part A's length.
The last four change row lengths. Each lays every position's output out as a few "slots" (e.g. a
sentinel for an empty span before the token, then the token or its span's sentinel) and
left-compacts the kept slots with one cumsum and one scatter (``_compact``): no loop over tokens
or rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch

SpanKind = Literal["token", "word", "ngram", "geometric", "poisson", "table"]


@dataclass(frozen=True)
class SpanLengths:
    """The length distribution of selected spans.

    - "token": single tokens; exactly the budget's lowest-scoring candidates (BERT, RoBERTa).
    - "word": whole words, in random word order, while the count is nearer the budget with the
      next word than without it (whole-word masking).
    - "ngram": n whole words, p(n) proportional to 1/n for n = min_n..max_n (ALBERT: max_n = 3).
    - "geometric": n whole words, p(n) proportional to p (1 - p)^(n - 1), clipped to min_n..max_n
      and renormalised (SpanBERT: p = 0.2, max_n = 10, mean ~3.8 words).
    - "poisson": n whole words, p(n) proportional to mean^n e^-mean / n!, truncated to
      min_n..max_n (BART: mean 3, min_n = 0, an empty span being an insertion; GLM: 1..39).
    - "table": n whole words, p(n) proportional to ``weights[n - min_n]`` for n = min_n..max_n
      (UniLM: 0.8 / 0.1 / 0.1 for n = 1..3).
    The drawn kinds ("ngram", "geometric", "poisson", "table") share one selection loop (``_draw_spans``):
    they differ only in ``probabilities()``. Without word starts, every token is a word.
    """

    kind: SpanKind = "token"
    max_n: int = 3  # longest span, in words (drawn kinds only)
    min_n: int = 1  # shortest span; 0 (Poisson only) admits empty spans, i.e. insertions
    p: float = 0.2  # geometric: success probability
    mean: float = 3.0  # poisson: lambda
    weights: tuple[float, ...] = ()  # table: the weight of each length min_n..max_n

    def __post_init__(self):
        if self.kind not in get_args(SpanKind):
            raise ValueError(f"SpanLengths.kind must be one of {get_args(SpanKind)}, not {self.kind!r}")
        if not (0 <= self.min_n <= self.max_n and self.max_n >= 1):
            raise ValueError(f"SpanLengths needs 0 <= min_n <= max_n and max_n >= 1, not {self.min_n}..{self.max_n}")
        if self.min_n == 0 and self.kind != "poisson":
            raise ValueError("empty spans (min_n = 0) are defined for kind='poisson' only")
        if (self.kind == "geometric" and not 0 < self.p <= 1) or (self.kind == "poisson" and not self.mean > 0):
            raise ValueError(f"invalid parameters for {self.kind!r}: p={self.p}, mean={self.mean}")
        if self.kind == "table" and (len(self.weights) != self.max_n - self.min_n + 1 or min(self.weights) < 0
                                     or sum(self.weights) <= 0):
            raise ValueError(f"SpanLengths('table') needs one weight >= 0 per length {self.min_n}..{self.max_n}, not {self.weights}")

    @property
    def drawn(self) -> bool:
        """Whether span lengths are drawn from ``probabilities()`` (one noise value per round)."""
        return self.kind not in ("token", "word")

    def probabilities(self) -> torch.Tensor:
        """p(n) for n = min_n..max_n, float32 [max_n - min_n + 1]; computed in float64 and normalised
        before the cast, so that ALBERT's table (6/11, 3/11, 2/11) is the one recorded runs used."""
        n = torch.arange(self.min_n, self.max_n + 1, dtype=torch.float64)
        if self.kind == "ngram":
            weight = 1.0 / n
        elif self.kind == "geometric":
            weight = self.p * (1 - self.p) ** (n - 1)
        elif self.kind == "table":
            weight = torch.tensor(self.weights, dtype=torch.float64)
        elif self.kind == "poisson":
            weight = torch.exp(n * torch.log(torch.tensor(self.mean, dtype=torch.float64)) - self.mean - torch.lgamma(n + 1))
        else:
            raise ValueError(f"kind {self.kind!r} has no length table: its spans are one token or one word")
        return (weight / weight.sum()).float()


class Spans(NamedTuple):
    """Selected spans. ``span_id`` [B, L] long: 0 = not selected, spans 1..n per row in position order.
    ``inserted`` [B, L] long: the id of an empty span placed just before token i (0 = none); empty
    spans (BART's insertions) are numbered together with the others, and are all zero unless the
    length distribution admits n = 0."""

    span_id: torch.Tensor
    inserted: torch.Tensor


def mask_budget(candidate: torch.Tensor, probability: float) -> torch.Tensor:
    """round(probability * n) of each row's n candidate tokens, at least one when n > 0. [B, L] -> [B] long"""
    n = candidate.sum(1)
    return torch.where(n > 0, torch.clamp((n * probability).round().long(), min=1), 0)


def span_starts(span_id: torch.Tensor) -> torch.Tensor:
    """True at the first token of each span. [B, L] long -> [B, L] bool (touching spans differ in id)."""
    before = torch.nn.functional.pad(span_id[:, :-1], (1, 0))
    return (span_id > 0) & (span_id != before)


def span_bounds(span_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The position of the first and of the last token of each token's span. [B, L] long -> two [B, L]
    long; meaningless on unselected tokens. First: the latest span start at or before the token
    (cummax); last: the earliest span end at or after it (cummax over the reversed row)."""
    L = span_id.size(1)
    arange = torch.arange(L).expand_as(span_id)
    first = torch.where(span_starts(span_id), arange, 0).cummax(dim=1).values
    after = torch.nn.functional.pad(span_id[:, 1:], (0, 1))
    ends = (span_id > 0) & (span_id != after)  # [B, L]: True at the last token of each span
    # In the reversed row, position L-1-i; the nearest end at or after i is the largest reversed
    # position of an end at or before L-1-i.
    reversed_end = torch.where(ends, L - 1 - arange, 0).flip(1).cummax(dim=1).values.flip(1)
    return first, L - 1 - reversed_end


def merge_touching(span_id: torch.Tensor) -> torch.Tensor:
    """Spans that touch merged into one, renumbered 1..n per row (SpanBERT merges its sampled intervals,
    so that a span's boundary tokens are never masked themselves). [B, L] long -> [B, L] long."""
    selected = span_id > 0
    before = torch.nn.functional.pad(selected[:, :-1], (1, 0))
    return _number(selected, selected & ~before).span_id


def select_spans(
    candidate: torch.Tensor, budget: torch.Tensor, scores: torch.Tensor, length_noise: torch.Tensor | None = None,
    length: SpanLengths = SpanLengths(), word_start: torch.Tensor | None = None,
) -> Spans:
    """Select about ``budget`` candidate tokens per row, grouped in spans drawn from ``length``.

    candidate [B, L] bool: tokens that may be selected (not special tokens, not padding);
    budget [B] long: tokens to select per row (``mask_budget``); scores [B, L] uniform in [0, 1):
    the random order of tokens (a word takes its first token's score); length_noise [B, L] uniform
    in [0, 1): column r draws the span length of selection round r (drawn kinds only);
    word_start [B, L] bool: True where a word starts (None: every token is a word). Non-candidate
    tokens are words of their own, and a row always starts a word. Selected tokens are always
    candidates. Returns ``Spans``.
    """
    B, L = candidate.shape
    if length.kind == "token":
        score = scores.masked_fill(~candidate, 2.0)
        threshold = score.sort(dim=1).values.gather(1, (budget - 1).clamp(min=0)[:, None])  # the budget-th lowest score
        selected = (score <= threshold) & candidate
        span_id = selected.long().cumsum(1) * selected  # each token is a span
        return Spans(span_id, torch.zeros_like(span_id))
    # Special tokens and padding are words of their own, and a row always starts a word.
    starts = (word_start if word_start is not None else torch.ones_like(candidate)) | ~candidate
    starts[:, 0] = True
    if length.kind == "word":
        arange = torch.arange(L).expand(B, L)
        word_first = torch.where(starts, arange, 0).cummax(dim=1).values  # position of each token's word start
        score = scores.gather(1, word_first).masked_fill(~candidate, 2.0)  # one score per word
        # In random word order (stable sort keeps a word's tokens together), count candidate tokens.
        order = score.sort(dim=1, stable=True).indices
        counted = torch.zeros_like(score).scatter_(1, order, candidate.gather(1, order).float().cumsum(1))
        word_index = starts.long().cumsum(1) - 1
        # Tokens selected so far when the whole word is in: the count at its last token.
        word_total = torch.zeros_like(score).scatter_reduce(1, word_index, counted, "amax", include_self=True)
        word_size = torch.zeros_like(score).scatter_add_(1, word_index, candidate.float())
        token_total, token_word_size = word_total.gather(1, word_index), word_size.gather(1, word_index)
        # Take words while the budget is closer with the word than without it (its midpoint is within
        # budget), so the selected count is the nearest to the budget that whole words allow.
        within = token_total - token_word_size / 2 <= budget[:, None].float()
        first_word = token_total.masked_fill(~candidate, float("inf")).min(dim=1, keepdim=True).values
        selected = candidate & (within | (token_total <= first_word))
        # Each word is a span: a span starts at a selected word start, or after an unselected token
        # (a candidate piece glued to a special token's word).
        before = torch.nn.functional.pad(selected[:, :-1], (1, 0))
        return _number(selected, selected & (starts | ~before))
    if length_noise is None:
        raise ValueError(f"SpanLengths(kind={length.kind!r}) draws span lengths: pass length_noise [B, L]")
    return _draw_spans(candidate, starts, budget, scores, length_noise, length)


def random_spans_noise(lengths: torch.Tensor, noise_density: float, mean_span_length: float,
                       noise_scores: torch.Tensor, nonnoise_scores: torch.Tensor) -> Spans:
    """T5's noise layout (``t5.data.preprocessors.random_spans_noise_mask``, no random roll), vectorised
    over rows of different lengths.

    A row of n tokens holds num_noise = round(n * noise_density) noise tokens, clamped to [1, n - 1],
    in num_spans = max(1, round(num_noise / mean_span_length)) spans. The noise tokens are cut into
    num_spans non-empty spans at random, the other tokens likewise into num_spans segments, and the two
    interleave starting with a non-noise segment, so a row always ends in noise. As in T5, a row of
    one token is laid out as two and cut back (it has no noise). Unlike T5, which fails when there are
    fewer non-noise tokens than spans (densities near 1), num_spans is clamped to n - num_noise.

    lengths [B]: tokens per row; noise_scores, nonnoise_scores [B, W] uniform in [0, 1), W >= max(n, 2):
    the random cut points of the two segmentations. Returns ``Spans`` over [B, W] (no empty spans).
    """
    n = lengths.clamp(min=2)
    # float32 and round-half-to-even, as T5's tf.round on float32.
    num_noise = torch.minimum((n.float() * noise_density).round().long().clamp(min=1), n - 1)  # [B]
    num_spans = torch.minimum((num_noise.float() / mean_span_length).round().long().clamp(min=1), n - num_noise)
    spans = int(num_spans.max()) if len(n) else 0
    noise = _random_segmentation(num_noise, num_spans, noise_scores)[:, :spans]  # [B, S] span lengths, 0 past num_spans
    nonnoise = _random_segmentation(n - num_noise, num_spans, nonnoise_scores)[:, :spans]
    interleaved = torch.stack([nonnoise, noise], -1).flatten(1)  # [B, 2S]: non-noise first
    # Where segments 2..2S begin (a row's missing segments are empty and begin at its end, n); the
    # segment number of each token is the count of beginnings at or before it: odd = noise.
    B, W = noise_scores.shape
    marker = torch.zeros(B, W + 1, dtype=torch.long)
    begins = interleaved.cumsum(1)[:, :-1]  # [B, 2S - 1]
    marker.scatter_add_(1, begins, torch.ones_like(begins))
    segment = marker.cumsum(1)[:, :W]  # [B, W]
    is_noise = (segment % 2 == 1) & (torch.arange(W) < lengths[:, None])
    span_id = torch.where(is_noise, (segment + 1) // 2, 0)
    return Spans(span_id, torch.zeros_like(span_id))


def _random_segmentation(num_items: torch.Tensor, num_segments: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Cut each row's ``num_items`` items into ``num_segments`` non-empty segments at random (T5's
    ``_random_segmentation``: its shuffle of num_segments - 1 cut marks over the num_items - 1 gaps is
    the gaps of lowest score here). num_items, num_segments [B] (1 <= num_segments <= num_items);
    scores [B, W] uniform, W >= num_items. Returns segment lengths [B, W] long, 0 past num_segments."""
    B, W = scores.shape
    arange = torch.arange(W)
    gap = (arange >= 1) & (arange < num_items[:, None])  # [B, W]: a cut may fall before item i
    rank = scores.masked_fill(~gap, 2.0).argsort(1).argsort(1)  # gaps first, in random order
    first_in_segment = (gap & (rank < num_segments[:, None] - 1)) | (arange == 0)
    segment = first_in_segment.long().cumsum(1) - 1  # [B, W]
    return torch.zeros(B, W, dtype=torch.long).scatter_add_(1, segment, (arange < num_items[:, None]).long().expand(B, W))


def _number(selected: torch.Tensor, start: torch.Tensor, inserted: torch.Tensor | None = None) -> Spans:
    """Number spans (and empty spans) 1..n per row in position order; an empty span before token i
    comes before a span that starts at i. All [B, L] bool (``inserted`` None: no empty spans) -> ``Spans``."""
    events = start.long() if inserted is None else inserted.long() + start.long()
    count = events.cumsum(1)  # [B, L]: spans begun up to and including position i
    # A span's tokens carry the id given at its first token: carry it right with cummax (ids only
    # grow along a row), then clear the unselected tokens.
    span_id = torch.where(start, count, 0).cummax(dim=1).values * selected
    if inserted is None:
        return Spans(span_id, torch.zeros_like(span_id))
    return Spans(span_id, torch.where(inserted, count - start.long(), 0))


def _draw_spans(candidate: torch.Tensor, starts: torch.Tensor, budget: torch.Tensor, order_noise: torch.Tensor,
                length_noise: torch.Tensor, length: SpanLengths) -> Spans:
    """Spans of whole words with lengths drawn from ``length.probabilities()``, vectorised over the batch.

    Candidate words are visited in random order (one per row per round); each proposes a span of n
    whole words, n drawn from the table with that round's length noise, shrunk while it would
    overshoot the budget, and taken unless it overlaps one already taken, runs past a special token
    or would swallow an empty span. n = 0 proposes an empty span before the word (taken unless the
    word is taken or already has one). The loop runs over rounds (spans), never over tokens, and
    ends when every row has met its budget or run out of words; a row that took nothing (all its
    words are longer than its budget) takes its first word. With kind "ngram" this is ALBERT's
    n-gram masking, selection for selection as lit_ptm made it before spans had ids.
    """
    B, L = candidate.shape
    word_index = starts.long().cumsum(1) - 1  # [B, L]
    word_len = torch.zeros(B, L, dtype=torch.long).scatter_add_(1, word_index, candidate.long())  # tokens per word
    all_candidate = torch.zeros(B, L, dtype=torch.long).scatter_reduce_(1, word_index, candidate.long(), "amin", include_self=False)
    word_ok = (all_candidate > 0) & (word_len > 0)  # every token of the word may be selected
    first_token = torch.where(starts, torch.arange(L).expand(B, L), L)
    word_start_pos = torch.full((B, L), L, dtype=torch.long).scatter_reduce_(1, word_index, first_token, "amin")
    word_score = torch.where(word_ok, order_noise.gather(1, word_start_pos.clamp(max=L - 1)), 2.0)
    order = word_score.argsort(dim=1)  # random word order, candidates first
    thresholds = length.probabilities().cumsum(0)  # inverse CDF over n = min_n..max_n
    M = length.max_n
    # Words w..w+m-1, for m = 1..M: their token counts and whether all are candidate words. [B, L, M]
    lens = torch.stack([word_len.roll(-k, 1) for k in range(M)], -1).cumsum(-1)
    oks = torch.stack([word_ok.roll(-k, 1) & (torch.arange(L) < L - k) for k in range(M)], -1).cummin(-1).values
    rows, m_range, offsets = torch.arange(B), torch.arange(1, M + 1), torch.arange(M)
    # Per word, with a spare column L that absorbs writes for rows that take nothing this round:
    # the round (1-based) whose span took the word, 0 = free. A span's words share their round and
    # touching spans differ in it, so spans are told apart without marking their first words.
    taken = torch.zeros(B, L + 1, dtype=torch.long)
    empty_before = torch.zeros(B, L + 1, dtype=torch.bool)  # an empty span just before the word
    count = torch.zeros(B, dtype=torch.long)
    for r in range(L):
        w = order[:, r]  # [B]
        active = word_ok[rows, w] & (count < budget)
        if not active.any():
            break
        n = length.min_n + (length_noise[:, r, None] >= thresholds[None, :-1]).sum(1)  # [B], one draw per round
        fits = oks[rows, w] & (count[:, None] + lens[rows, w] <= budget[:, None]) & (m_range[None, :] <= n[:, None])
        m = torch.where(fits, m_range, 0).max(1).values  # longest span <= n words that fits; 0: none
        cols = torch.where(offsets[None, :] < m[:, None], w[:, None] + offsets, L)  # the span's words, [B, M]
        overlap = (taken.gather(1, cols) > 0).any(1)  # spans never overlap
        if length.min_n == 0:
            # An empty span may sit before a span, never inside one; n = 0 proposes one before w.
            overlap |= empty_before.gather(1, torch.where(offsets > 0, cols, L)).any(1)
            insert = active & (n == 0) & (taken[rows, w] == 0) & ~empty_before[rows, w]
            empty_before[rows, torch.where(insert, w, L)] = True
            empty_before[:, L] = False
        accept = active & (m > 0) & ~overlap
        taken.scatter_(1, torch.where(accept[:, None], cols, L), r + 1)
        taken[:, L] = 0  # the spare column only absorbs writes; it must never read as taken
        count += torch.where(accept, lens[rows, w, (m - 1).clamp(min=0)], 0)
    # A row whose every word is longer than its budget (e.g. one 3-token word, budget 1) still
    # predicts something: its first word in random order, as whole-word masking does.
    empty = (count == 0) & word_ok.any(1)
    taken[rows[empty], order[empty, 0]] = L + 1
    round_taken = taken[:, :L].gather(1, word_index)  # [B, L]: per token
    selected = (round_taken > 0) & candidate
    before = torch.nn.functional.pad(round_taken[:, :-1], (1, 0))
    start = selected & (round_taken != before)
    # An empty span marked on a word sits before the word's first token.
    inserted = empty_before[:, :L].gather(1, word_index) & starts if length.min_n == 0 else None
    return _number(selected, start, inserted)


def mask_random_keep(
    input_ids: torch.Tensor, span_id: torch.Tensor, decision_noise: torch.Tensor, token_noise: torch.Tensor,
    regular_ids: torch.Tensor, mask_id: int, mask_ratio: float = 0.8, random_ratio: float = 0.1,
    decide: Literal["token", "span"] = "token",
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of the selected tokens: [MASK] with ``mask_ratio``, a random regular token
    with ``random_ratio``, else unchanged (ELECTRA's generator: 0.85, 0.0).

    input_ids, span_id [B, L]; decision_noise [B, L] uniform: the draw deciding between the three;
    with ``decide="span"`` every token takes its span's first draw, so a span is masked, randomised
    or kept as a whole (SpanBERT); token_noise [B, L] uniform: the random token of each position
    (drawn per token in either case). Returns (corrupted ids, labels with -100 where not selected).
    """
    selected = span_id > 0
    decision = decision_noise
    if decide == "span":
        first, _ = span_bounds(span_id)  # each token's span start
        decision = decision_noise.gather(1, first)
    to_mask = selected & (decision < mask_ratio)
    to_random = selected & (decision >= mask_ratio) & (decision < mask_ratio + random_ratio)
    random_tokens = regular_ids[(token_noise * len(regular_ids)).long().clamp(max=len(regular_ids) - 1)]
    corrupted = torch.where(to_mask, mask_id, torch.where(to_random, random_tokens, input_ids))
    labels = input_ids.masked_fill(~selected, -100)
    return corrupted, labels


def _compact(slots: torch.Tensor, keep: torch.Tensor, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-compact each row's kept slots: [B, N] (+ keep [B, N] bool) -> ([B, N'] padded with ``fill``,
    lengths [B]), N' the longest row. A kept slot goes to column (kept slots before it); dropped
    slots are scattered into a spare last column that is cut off."""
    lengths = keep.sum(1)
    width = int(lengths.max()) if lengths.numel() else 0
    column = torch.where(keep, keep.long().cumsum(1) - 1, width)  # [B, N]
    out = torch.full((slots.size(0), width + 1), fill, dtype=slots.dtype)
    return out.scatter_(1, column, slots)[:, :width], lengths


def _real(input_ids: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """[B, L] bool: True on each row's first ``lengths`` tokens (all of them when None)."""
    if lengths is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    return torch.arange(input_ids.size(1)) < lengths[:, None]


def _empty_spans(span_id: torch.Tensor, inserted: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros_like(span_id) if inserted is None else inserted


def delete_spans(input_ids: torch.Tensor, span_id: torch.Tensor, pad_id: int,
                 lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the selected tokens and left-compact each row (BART's token deletion).

    input_ids, span_id [B, L]; lengths [B]: real tokens per row (None: no padding).
    Returns (ids [B, L'] right-padded with ``pad_id``, new lengths [B]); L' is the longest new row.
    """
    return _compact(input_ids, (span_id == 0) & _real(input_ids, lengths), pad_id)


def infill_spans(input_ids: torch.Tensor, span_id: torch.Tensor, mask_id: int, pad_id: int,
                 lengths: torch.Tensor | None = None, inserted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BART's text infilling: each span becomes one ``mask_id``, and so does each empty span
    (``Spans.inserted``: a [MASK] inserted before the token, nothing removed).

    input_ids, span_id [B, L]; lengths [B]: real tokens per row (None: no padding).
    Returns (ids [B, L'] right-padded with ``pad_id``, new lengths [B]).
    """
    inserted = _empty_spans(span_id, inserted)
    start = span_starts(span_id)
    # Two slots per position: the [MASK] of an empty span before it, then the token (or its span's
    # [MASK] at the span's first token; the span's other tokens vanish). [B, L, 2] -> [B, 2L]
    slots = torch.stack([torch.full_like(input_ids, mask_id), torch.where(start, mask_id, input_ids)], -1)
    keep = torch.stack([inserted > 0, ((span_id == 0) | start) & _real(input_ids, lengths)], -1)
    return _compact(slots.flatten(1), keep.flatten(1), pad_id)


def sentinel_spans(
    input_ids: torch.Tensor, span_id: torch.Tensor, sentinel_ids: torch.Tensor, pad_id: int,
    lengths: torch.Tensor | None = None, inserted: torch.Tensor | None = None, eos_id: int | None = None,
    final_sentinel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """T5's span corruption: span k of a row becomes the sentinel ``sentinel_ids[k - 1]`` in the
    input, and the target is ``<s1> span1 <s2> span2 ... <sn> spann``, then ``<s(n+1)>`` with
    ``final_sentinel`` (T5's target when the text goes on after the last span) and ``eos_id`` when
    given. Empty spans (``inserted``) take a sentinel with nothing after it in the target.

    input_ids, span_id [B, L]; sentinel_ids [S] long: at least as many as spans (+1) in any row;
    lengths [B]: real tokens per row (None: no padding).
    Returns (inputs [B, L'], input lengths [B], targets [B, T], target lengths [B]), right-padded with ``pad_id``.
    """
    inserted = _empty_spans(span_id, inserted)
    sentinel_ids = torch.as_tensor(sentinel_ids, dtype=input_ids.dtype)
    spans = torch.maximum(span_id, inserted).amax(1) if span_id.size(1) else span_id.new_zeros(len(span_id))  # [B]: spans per row
    needed = int(spans.max()) + int(final_sentinel) if len(spans) else 0
    if needed > len(sentinel_ids):
        raise ValueError(f"a row needs {needed} sentinels (its spans, and the final sentinel if asked for) "
                         f"but only {len(sentinel_ids)} sentinel ids were given")
    # Span k's sentinel at index k - 1; id 0 (no span) reads index -1, a padding entry.
    table = torch.cat([sentinel_ids, sentinel_ids.new_tensor([pad_id])])
    sentinel = table[span_id - 1]  # [B, L]: the sentinel of each token's span
    empty_sentinel = table[inserted - 1]  # [B, L]: that of an empty span before it
    start, selected = span_starts(span_id), span_id > 0
    # Input, two slots per position: an empty span's sentinel, then the token or its span's sentinel. [B, 2L]
    slots = torch.stack([empty_sentinel, torch.where(start, sentinel, input_ids)], -1)
    keep = torch.stack([inserted > 0, (~selected | start) & _real(input_ids, lengths)], -1)
    inputs, input_lengths = _compact(slots.flatten(1), keep.flatten(1), pad_id)
    # Target, three slots per position: an empty span's sentinel, the sentinel of a span starting
    # here, the selected token itself; then two closing slots: the next sentinel and EOS. [B, 3L + 2]
    B = input_ids.size(0)
    closing = torch.full((B, 2), pad_id if eos_id is None else eos_id, dtype=input_ids.dtype)  # [B, 2]
    if final_sentinel:
        closing[:, 0] = sentinel_ids[spans]  # the sentinel after the row's last span
    target_slots = torch.cat([torch.stack([empty_sentinel, sentinel, input_ids], -1).flatten(1), closing], 1)
    closing_keep = torch.tensor([final_sentinel, eos_id is not None]).expand(B, 2)
    target_keep = torch.cat([torch.stack([inserted > 0, start, selected], -1).flatten(1), closing_keep], 1)
    targets, target_lengths = _compact(target_slots, target_keep, pad_id)
    return inputs, input_lengths, targets, target_lengths


def place_spans(candidate: torch.Tensor, budget: torch.Tensor, place_noise: torch.Tensor, length_noise: torch.Tensor,
                length: SpanLengths) -> Spans:
    """GLM's span sampling (``blocklm_utils.sample_spans``): span lengths drawn from ``length``'s table
    until ``budget`` tokens are covered (the last one shrunk to meet it exactly), then placed at random
    in the row's candidate run with at least one token between two spans: the n - covered - k + 1 free
    places are drawn uniformly, sorted, and each span follows the previous one's end + 1. Lengths are
    never rejected, so they follow the table exactly (but the last). No loop: one cumsum per stage.

    candidate [B, L] bool: one contiguous run of candidates per row (a DOC-SENTENCES window's text);
    budget [B] long (at most (n + 1) / 2 is used, so that k spans and their gaps fit); place_noise,
    length_noise [B, L] uniform: column r draws span r's place and length. Returns ``Spans``."""
    B, L = candidate.shape
    n = candidate.sum(1)
    first = candidate.long().argmax(1)  # where the run starts
    budget = torch.minimum(budget, (n + 1) // 2)
    thresholds = length.probabilities().cumsum(0)
    drawn = length.min_n + (length_noise[..., None] >= thresholds[:-1]).sum(-1)  # [B, L]: span r's length
    before = drawn.cumsum(1) - drawn
    used = before < budget[:, None]  # spans are drawn until the budget is covered
    lengths = torch.where(used, torch.minimum(drawn, budget[:, None] - before), 0)
    k, covered = used.sum(1), lengths.sum(1)
    free = (n - covered - k + 1).clamp(min=0)  # places a span may start at, before gaps are added
    places = torch.where(used, (place_noise * (free + 1)[:, None]).long().clamp(max=L), L).sort(1).values
    rank = torch.arange(L)
    start = first[:, None] + places + (lengths.cumsum(1) - lengths) + rank  # each after the previous span and a gap
    span = rank + 1
    marks = torch.zeros(B, L + 1, dtype=torch.long)
    marks.scatter_add_(1, torch.where(used, start, L).clamp(max=L), torch.where(used, span, 0))
    marks.scatter_add_(1, torch.where(used, start + lengths, L).clamp(max=L), torch.where(used, -span, 0))
    span_id = marks.cumsum(1)[:, :L]
    return Spans(span_id, torch.zeros_like(span_id))


def select_sentences(candidate: torch.Tensor, sentence: torch.Tensor, budget: torch.Tensor, scores: torch.Tensor) -> Spans:
    """Whole sentences in random order until at least ``budget`` candidate tokens are covered (GLM's
    [sMASK] blanks): each selected sentence is a span of its own (two adjacent ones touch, with two ids).

    candidate [B, L] bool; sentence [B, L] long: the sentence of each token, numbered along the row
    (padding: L or more); budget [B] long; scores [B, L] uniform: a sentence's key is
    its first token's. A sentence is a candidate when all its tokens are ([CLS] and [SEP] are sentences
    of their own in DOC-SENTENCES windows). Returns ``Spans`` (no empty spans)."""
    B, L = candidate.shape
    unit = sentence.clamp(0, L)  # one spare unit, L, for padding (never a candidate)
    arange = torch.arange(L).expand(B, L)
    first = torch.full((B, L + 1), L, dtype=torch.long).scatter_reduce_(1, unit, arange, "amin")  # per sentence
    size = torch.zeros(B, L + 1, dtype=torch.long).scatter_add_(1, unit, candidate.long())
    whole = torch.ones(B, L + 1, dtype=torch.long).scatter_reduce_(1, unit, candidate.long(), "amin")
    movable = (first < L) & (size > 0) & (whole > 0)
    order = torch.where(movable, scores.gather(1, first.clamp(max=L - 1)), 2.0).argsort(1)  # sentences by key
    covered_before = size.gather(1, order).cumsum(1) - size.gather(1, order)
    # Take sentences in key order while fewer than ``budget`` tokens are covered.
    take = torch.zeros(B, L + 1, dtype=torch.bool).scatter_(1, order, movable.gather(1, order) & (covered_before < budget[:, None]))
    selected = take.gather(1, unit) & candidate
    before = torch.nn.functional.pad(unit[:, :-1], (1, 0), value=-1)
    return _number(selected, selected & (unit != before))


def select_suffix(candidate: torch.Tensor, noise: torch.Tensor, min_ratio: float = 0.5) -> Spans:
    """One span at the end of each row's candidate tokens (GLM's [gMASK] blank), its length k uniform
    in [ceil(min_ratio n), max(n - 2, ceil(min_ratio n))] for the row's n candidates (contiguous, e.g.
    a DOC-SENTENCES window's text). candidate [B, L] bool; noise [B] uniform. Returns ``Spans``."""
    n = candidate.sum(1)
    low = torch.ceil(n * min_ratio).long().clamp(min=1)
    high = torch.maximum(n - 2, low)
    k = torch.minimum(low + (noise * (high - low + 1)).long(), high)
    # The k last candidates of the row: those with fewer than k candidates after them.
    after = candidate.flip(1).long().cumsum(1).flip(1) - candidate.long()
    selected = candidate & (after < k[:, None])
    return Spans(selected.long(), torch.zeros_like(selected, dtype=torch.long))


class Blanks(NamedTuple):
    """GLM's blank-infilling rows ``[Part A | Part B]``, right-padded, all [B, W] but the lengths [B]:
    input_ids, labels (-100 on Part A and padding), position_ids (Part A's index; a Part B token: its
    span's [MASK]), block_position_ids (0 on Part A; 1..l+1 inside a span), prefix_length (|A|), lengths."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    block_position_ids: torch.Tensor
    prefix_length: torch.Tensor
    lengths: torch.Tensor


def blank_infilling(input_ids: torch.Tensor, span_id: torch.Tensor, order_scores: torch.Tensor, mask_id: int, sop_id: int,
                    eop_id: int, pad_id: int, lengths: torch.Tensor | None = None) -> Blanks:
    """GLM's autoregressive blank infilling of the selected spans (no empty spans).

    Part A is the row with each span replaced by one ``mask_id`` (``infill_spans``); Part B holds the
    spans in random order (a span's key: its first token's ``order_scores`` [B, L]), each read as
    ``[SOP] x1 .. xl`` and predicted as ``x1 .. xl [EOP]``. A row's |A| + |B| = n + 2 (spans).
    Part B is laid out as two slots per position (the [SOP] of a span starting there, then the token)
    sorted by span key (stable: a span's slots keep their order), then both parts are left-compacted
    into one row: no loop over rows, spans or tokens. Returns ``Blanks``."""
    B, L = input_ids.shape
    real = _real(input_ids, lengths)
    selected, start = span_id > 0, span_starts(span_id)
    part_a, a_lengths = infill_spans(input_ids, span_id, mask_id, pad_id, lengths)
    a_position = (((span_id == 0) | start) & real).long().cumsum(1) - 1  # [B, L]: each kept slot's index in Part A
    first, _ = span_bounds(span_id)
    mask_position = a_position.gather(1, first)  # [B, L]: where each token's span's [MASK] sits in Part A
    next_same = torch.nn.functional.pad(span_id[:, 1:], (0, 1)) == span_id
    following = torch.nn.functional.pad(input_ids[:, 1:], (0, 1), value=pad_id)
    # Slots [B, L, 2]: ([SOP] where a span starts, the token), their targets, block positions, keep.
    slot_input = torch.stack([torch.full_like(input_ids, sop_id), input_ids], -1).flatten(1)
    slot_target = torch.stack([input_ids, torch.where(next_same, following, eop_id)], -1).flatten(1)
    slot_block = torch.stack([torch.ones_like(first), torch.arange(L) - first + 2], -1).flatten(1)
    slot_position = mask_position.repeat_interleave(2, 1)
    keep = (torch.stack([start, selected], -1) & real[..., None]).flatten(1)
    key = torch.where(keep, order_scores.gather(1, first).repeat_interleave(2, 1), 2.0)
    order = key.argsort(dim=1, stable=True)  # spans in random order, each slot after the one before it
    b_lengths = keep.sum(1)
    width = int(b_lengths.max()) if B else 0
    order = order[:, :width]
    b_real = torch.arange(width) < b_lengths[:, None]
    a_real = torch.arange(part_a.size(1)) < a_lengths[:, None]
    both = torch.cat([a_real, b_real], 1)

    def rows(a: torch.Tensor, b: torch.Tensor, fill: int) -> torch.Tensor:
        return _compact(torch.cat([a, b.gather(1, order)], 1), both, fill)[0]

    a_arange = torch.arange(part_a.size(1)).expand_as(part_a)
    return Blanks(
        input_ids=rows(part_a, slot_input, pad_id), labels=rows(torch.full_like(part_a, -100), slot_target, -100),
        position_ids=rows(a_arange, slot_position, 0), block_position_ids=rows(torch.zeros_like(part_a), slot_block, 0),
        prefix_length=a_lengths, lengths=a_lengths + b_lengths,
    )
