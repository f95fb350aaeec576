"""Span selection and corruption (lit_ptm.data.collate.spans).

``old_mask_tokens`` below is lit_ptm's mask_tokens as it was before selection and corruption were
split (commit f6f63d0, verbatim but for the old_ prefix): the token, whole-word and n-gram kinds
must reproduce its selections and corrupted tokens exactly for the same noise.
"""

import math

import numpy as np
import pytest
import torch

from lit_ptm.data.collate import (
    SpanLengths, Spans, delete_spans, infill_spans, mask_budget, mask_random_keep, mask_tokens, random_spans_noise, select_spans,
    sentinel_spans, span_bounds, span_starts,
)


# ---------------------------------------------------------------------------------------------
# The old implementation, for exact comparison.
# ---------------------------------------------------------------------------------------------

def old_ngram_probabilities(max_ngram: int) -> torch.Tensor:
    """p(n) proportional to 1/n for n = 1..max_ngram (ALBERT: 6/11, 3/11, 2/11)."""
    inverse = 1.0 / torch.arange(1, max_ngram + 1, dtype=torch.float64)
    return (inverse / inverse.sum()).float()


def old_select_ngrams(candidate: torch.Tensor, starts: torch.Tensor, budget: torch.Tensor, order_noise: torch.Tensor,
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
    thresholds = old_ngram_probabilities(max_ngram).cumsum(0)
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


def old_mask_tokens(
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
        selected = old_select_ngrams(candidate, starts, budget, noise[:, 0], noise[:, 3], max_ngram)
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


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

REGULAR = torch.arange(100, 200)  # random replacements never equal an input id (inputs are 10..99)
MASK, PAD, EOS = 4, 0, 1


def random_batch(seed: int, B: int = 16, L: int = 40, word_rate: float = 0.6):
    """Padded rows of ids 10..99 with [CLS] first, specials sprinkled in, random word starts, and
    noise laid out as the collators draw it (padding gets 1.0). One row is all special tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 100, (B, L), generator=g)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[0] = L
    real = torch.arange(L) < lengths[:, None]
    protected = ~real | (torch.rand(B, L, generator=g) < 0.05)
    protected[:, 0] = True
    protected[-1] = True
    word_start = torch.rand(B, L, generator=g) < word_rate
    noise = torch.rand(B, 4, L, generator=g).masked_fill(~real[:, None], 1.0)
    return ids, protected, word_start, noise, lengths


def word_starts(candidate, word_start):
    """The word starts select_spans works with: non-candidates are words of their own; a row starts a word."""
    starts = (word_start if word_start is not None else torch.ones_like(candidate)) | ~candidate
    starts[:, 0] = True
    return starts


def check_spans(spans: Spans, candidate: torch.Tensor, starts: torch.Tensor | None = None):
    """Invariants of every selection: only candidates; ids 1..n in position order, each span one
    contiguous run (so touching spans differ in id); with word starts, spans are whole words;
    an empty span sits before a word start, never inside a span."""
    span_id, inserted = spans
    selected = span_id > 0
    assert not (selected & ~candidate).any(), "a protected token was selected"
    start = span_starts(span_id)
    for b in range(len(span_id)):
        events = []
        for i in range(span_id.size(1)):
            if inserted[b, i]:
                events.append(int(inserted[b, i]))
            if start[b, i]:
                events.append(int(span_id[b, i]))
        assert events == list(range(1, len(events) + 1)), (b, events)  # each id begins exactly once, in order
    if starts is not None:
        # (A candidate piece glued to a special token's word, e.g. a trimmed word after [CLS], is
        # selected apart from it: it starts a span after a non-candidate.)
        after_special = torch.nn.functional.pad(~candidate[:, :-1], (1, 0))
        assert not (start & ~starts & ~after_special).any(), "a span starts inside a word"
        after = torch.nn.functional.pad(starts[:, 1:], (0, 1), value=True)  # the next token starts a word (or the row ends)
        nxt = torch.nn.functional.pad(span_id[:, 1:], (0, 1))
        ends = selected & (nxt != span_id)
        assert not (ends & ~after).any(), "a span ends inside a word"
        assert not ((inserted > 0) & ~starts).any()
    assert not ((inserted > 0) & selected & ~start).any(), "an empty span inside a span"
    assert not ((inserted > 0) & ~candidate).any()


DRAWN = [SpanLengths("ngram", max_n=3), SpanLengths("geometric", max_n=10, p=0.2),
         SpanLengths("poisson", min_n=0, max_n=20, mean=3.0), SpanLengths("poisson", min_n=1, max_n=39, mean=3.0)]


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_ngram", [1, 2, 3, 5])
@pytest.mark.parametrize("whole_words", [False, True])
@pytest.mark.parametrize("probability", [0.15, 0.5, 1.0])
def test_token_word_and_ngram_kinds_reproduce_the_old_mask_tokens(max_ngram, whole_words, probability):
    for seed in range(6):
        ids, protected, word_start, noise, _ = random_batch(seed + 100 * max_ngram)
        ws = word_start if whole_words else None
        rows = 4 if max_ngram > 1 else 3
        old = old_mask_tokens(ids, protected, noise[:, :rows], REGULAR, MASK, probability, ws, max_ngram)
        new = mask_tokens(ids, protected, noise[:, :rows], REGULAR, MASK, probability, ws, max_ngram)
        assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])
        # The selection stage alone selects the very same tokens.
        kind = "ngram" if max_ngram > 1 else "word" if whole_words else "token"
        candidate = ~protected
        spans = select_spans(candidate, mask_budget(candidate, probability), noise[:, 0], noise[:, 3],
                             SpanLengths(kind, max_n=max_ngram), ws)
        assert torch.equal(spans.span_id > 0, old[1] != -100)
        assert not spans.inserted.any()
        check_spans(spans, candidate, word_starts(candidate, ws) if kind != "token" else None)


def test_old_and_new_agree_on_training_sized_batches():
    """Larger batches (32 x 128, as training draws them) with sparse word starts (long words)."""
    for seed, (ws_rate, max_ngram) in enumerate([(0.7, 1), (0.3, 1), (0.5, 3), (0.2, 3)]):
        ids, protected, word_start, noise, _ = random_batch(seed, B=32, L=128, word_rate=ws_rate)
        for ws in (None, word_start):
            old = old_mask_tokens(ids, protected, noise, REGULAR, MASK, 0.15, ws, max_ngram)
            new = mask_tokens(ids, protected, noise, REGULAR, MASK, 0.15, ws, max_ngram)
            assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])


@pytest.mark.parametrize("kind", ["token", "word", "ngram"])
def test_touching_spans_keep_distinct_ids(kind):
    """Select everything: every token (word, n-gram) touches the next, and none merge."""
    candidate = torch.ones(3, 12, dtype=torch.bool)
    candidate[:, 0] = candidate[:, -1] = False
    word_start = torch.tensor([[1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1]] * 3, dtype=torch.bool)
    scores = torch.rand(3, 12, generator=torch.Generator().manual_seed(0))
    lengths = torch.rand(3, 12, generator=torch.Generator().manual_seed(1))
    spans = select_spans(candidate, torch.full((3,), 10), scores, lengths, SpanLengths(kind, max_n=2), word_start)
    starts = word_starts(candidate, word_start)
    check_spans(spans, candidate, starts if kind != "token" else None)
    assert (spans.span_id > 0).sum().item() == 30  # everything
    if kind == "token":
        assert spans.span_id[0].tolist() == [0, *range(1, 11), 0]
    if kind == "word":  # words: [1, 2] [3] [4, 5, 6] [7] [8] [9, 10]
        assert spans.span_id[0].tolist() == [0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 0]
    if kind == "ngram":  # 6 words in n-grams of 1 or 2 words: between 3 and 6 spans, touching
        assert 3 <= spans.span_id.amax(1).min() <= spans.span_id.amax(1).max() <= 6


@pytest.mark.parametrize("length", DRAWN, ids=lambda x: f"{x.kind}{x.min_n}-{x.max_n}")
def test_drawn_spans_are_whole_words_never_protected_never_merged(length):
    for seed in range(4):
        ids, protected, word_start, noise, _ = random_batch(seed, B=24, L=64)
        candidate = ~protected
        budget = mask_budget(candidate, 0.3)
        spans = select_spans(candidate, budget, noise[:, 0], noise[:, 3], length, word_start)
        check_spans(spans, candidate, word_starts(candidate, word_start))
        selected = (spans.span_id > 0).sum(1)
        lone = spans.span_id.amax(1) == 1
        assert ((selected <= budget) | lone).all()  # over budget only with a lone first word
        # A row selects something if it has a word of candidates only (a piece glued to [CLS]'s word is none).
        starts = word_starts(candidate, word_start)
        index = starts.long().cumsum(1) - 1
        clean = torch.ones_like(index).scatter_reduce(1, index, candidate.long(), "amin", include_self=False)
        has_word = (clean.bool() & (torch.arange(starts.size(1)) < starts.sum(1, keepdim=True))).any(1)
        assert torch.equal(selected > 0, has_word)


def test_dense_drawn_spans_touch_without_merging():
    B, L = 200, 30
    g = torch.Generator().manual_seed(3)
    candidate = torch.ones(B, L, dtype=torch.bool)
    candidate[:, 0] = False
    spans = select_spans(candidate, torch.full((B,), L), torch.rand(B, L, generator=g), torch.rand(B, L, generator=g),
                         SpanLengths("geometric", max_n=10))
    check_spans(spans, candidate, torch.ones(B, L, dtype=torch.bool))
    sid = spans.span_id
    touching = (sid[:, 1:] > 0) & (sid[:, :-1] > 0) & (sid[:, 1:] != sid[:, :-1])
    assert touching.sum() > 100


def test_length_tables():
    assert torch.allclose(SpanLengths("ngram", max_n=3).probabilities(), torch.tensor([6 / 11, 3 / 11, 2 / 11]))
    geometric = SpanLengths("geometric", max_n=10, p=0.2).probabilities().double()
    n = torch.arange(1, 11, dtype=torch.float64)
    assert abs((n * geometric).sum().item() - 3.797) < 1e-3  # SpanBERT: mean ~3.8 words
    poisson = SpanLengths("poisson", min_n=0, max_n=60, mean=3.0).probabilities().double()
    expected = torch.tensor([math.exp(-3) * 3 ** k / math.factorial(k) for k in range(61)], dtype=torch.float64)
    assert torch.allclose(poisson, expected, atol=1e-6)
    glm = SpanLengths("poisson", min_n=1, max_n=39, mean=3.0).probabilities()
    assert len(glm) == 39 and abs(glm.sum().item() - 1) < 1e-6
    for bad in (dict(kind="nope"), dict(kind="geometric", min_n=0), dict(kind="ngram", max_n=0), dict(kind="geometric", p=0.0)):
        with pytest.raises(ValueError):
            SpanLengths(**bad)
    with pytest.raises(ValueError):
        select_spans(torch.ones(1, 4, dtype=torch.bool), torch.tensor([1]), torch.rand(1, 4), None, SpanLengths("ngram"))


@pytest.mark.parametrize("length", [SpanLengths("ngram", max_n=3), SpanLengths("geometric", max_n=10, p=0.2),
                                    SpanLengths("poisson", min_n=0, max_n=20, mean=3.0)], ids=lambda x: x.kind)
def test_first_round_span_lengths_follow_the_table(length):
    """The first span a row proposes cannot overlap, overshoot or run past the row (rows of one-token
    words, budget >= max_n, the last max_n words visited after the others): its length is an exact
    sample of the table. n = 0 is an empty span (an insertion)."""
    B, L = 20000, 32
    g = torch.Generator().manual_seed(7)
    candidate = torch.ones(B, L, dtype=torch.bool)
    scores, noise = torch.rand(B, L, generator=g), torch.rand(B, L, generator=g)
    scores[:, L - length.max_n:] += 1.0  # still below non-candidates' 2.0
    spans = select_spans(candidate, torch.full((B,), length.max_n), scores, noise, length)
    first = scores.argmin(1)  # the first word visited
    rows = torch.arange(B)
    first_id = spans.span_id[rows, first]
    size = ((spans.span_id == first_id[:, None]) & (first_id[:, None] > 0)).sum(1)
    empty = spans.inserted[rows, first] > 0
    assert not (empty & (size > 0)).any()
    freq = torch.bincount(size, minlength=length.max_n + 1)[length.min_n:].double() / B
    table = length.probabilities().double()
    assert (freq - table).abs().max() < 0.012, (freq, table)
    n = torch.arange(length.min_n, length.max_n + 1, dtype=torch.float64)
    assert abs((freq * n).sum() - (table * n).sum()) < 0.05
    if length.kind == "poisson":
        assert abs(empty.double().mean().item() - math.exp(-3)) < 0.005


def test_geometric_spans_at_spanbert_density():
    """All spans at 15%: mean length a little under the table's 3.8 (overlapping proposals are
    refused and the last span of a row is shrunk to the budget); rows meet their budget."""
    B, L = 300, 512
    g = torch.Generator().manual_seed(11)
    candidate = torch.ones(B, L, dtype=torch.bool)
    candidate[:, 0] = candidate[:, -1] = False
    budget = mask_budget(candidate, 0.15)
    spans = select_spans(candidate, budget, torch.rand(B, L, generator=g), torch.rand(B, L, generator=g),
                         SpanLengths("geometric", max_n=10, p=0.2))
    key = spans.span_id + torch.arange(B)[:, None] * L  # one key per span of the batch
    sizes = torch.bincount(key[spans.span_id > 0])
    sizes = sizes[sizes > 0].double()
    assert 3.2 < sizes.mean().item() < 3.8, sizes.mean()
    assert ((spans.span_id > 0).sum(1) == budget).float().mean() > 0.95


# ---------------------------------------------------------------------------------------------
# Corruption
# ---------------------------------------------------------------------------------------------

def test_per_span_decisions_are_uniform_within_a_span():
    ids, protected, word_start, noise, _ = random_batch(5, B=400, L=64)
    candidate = ~protected
    spans = select_spans(candidate, mask_budget(candidate, 0.15), noise[:, 0], noise[:, 3],
                         SpanLengths("geometric", max_n=10), word_start)
    corrupted, labels = mask_random_keep(ids, spans.span_id, noise[:, 1], noise[:, 2], REGULAR, MASK, decide="span")
    selected = spans.span_id > 0
    assert torch.equal(labels[selected], ids[selected]) and (labels[~selected] == -100).all()
    assert torch.equal(corrupted[~selected], ids[~selected])
    kind = torch.where(corrupted == MASK, 0, torch.where(corrupted >= 100, 1, 2))  # mask / random / kept
    key = torch.arange(len(ids))[:, None] * 1000 + spans.span_id  # one key per span of the batch
    per_span_min = torch.zeros(400 * 1000 + 100, dtype=torch.long)
    per_span_max = torch.zeros_like(per_span_min)
    per_span_min.scatter_reduce_(0, key[selected], kind[selected], "amin", include_self=False)
    per_span_max.scatter_reduce_(0, key[selected], kind[selected], "amax", include_self=False)
    assert torch.equal(per_span_min[key[selected]], per_span_max[key[selected]]), "a span was split between decisions"
    first = span_starts(spans.span_id)
    share = torch.bincount(kind[first], minlength=3).double() / first.sum()
    assert abs(share[0] - 0.8) < 0.03 and abs(share[1] - 0.1) < 0.025 and abs(share[2] - 0.1) < 0.025, share
    # Per token, the same spans are split (long spans hold several decisions).
    per_token, _ = mask_random_keep(ids, spans.span_id, noise[:, 1], noise[:, 2], REGULAR, MASK)
    kind = torch.where(per_token == MASK, 0, torch.where(per_token >= 100, 1, 2))
    per_span_min.zero_().scatter_reduce_(0, key[selected], kind[selected], "amin", include_self=False)
    per_span_max.zero_().scatter_reduce_(0, key[selected], kind[selected], "amax", include_self=False)
    assert not torch.equal(per_span_min[key[selected]], per_span_max[key[selected]])


# Two rows: row 0 has 7 real tokens and spans 1, 2 touching; row 1 is one span over its whole length.
IDS = torch.tensor([[10, 11, 12, 13, 14, 15, 16, PAD], [20, 21, 22, 23, 24, 25, 26, 27]])
SPAN_ID = torch.tensor([[0, 1, 1, 2, 0, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
LENGTHS = torch.tensor([7, 8])
SENTINELS = torch.tensor([99, 98, 97, 96])


def test_deletion_by_hand():
    out, lengths = delete_spans(IDS, SPAN_ID, PAD, LENGTHS)
    assert out.tolist() == [[10, 14, 16]] + [[PAD, PAD, PAD]] and lengths.tolist() == [3, 0]


def test_infilling_by_hand():
    out, lengths = infill_spans(IDS, SPAN_ID, MASK, PAD, LENGTHS)
    assert out.tolist() == [[10, MASK, MASK, 14, MASK, 16], [MASK, PAD, PAD, PAD, PAD, PAD]] and lengths.tolist() == [6, 1]
    # Empty spans (BART's insertions: length 0) add a [MASK] before their token and remove nothing.
    ids = torch.tensor([[10, 11, 12, 13]])
    spans = Spans(torch.tensor([[0, 2, 0, 0]]), torch.tensor([[1, 0, 0, 3]]))
    out, lengths = infill_spans(ids, spans.span_id, MASK, PAD, inserted=spans.inserted)
    assert out.tolist() == [[MASK, 10, MASK, 12, MASK, 13]] and lengths.tolist() == [6]


def test_sentinels_by_hand():
    inputs, input_lengths, targets, target_lengths = sentinel_spans(IDS, SPAN_ID, SENTINELS, PAD, LENGTHS, eos_id=EOS)
    assert inputs.tolist() == [[10, 99, 98, 14, 97, 16], [99, PAD, PAD, PAD, PAD, PAD]]
    assert input_lengths.tolist() == [6, 1]
    assert targets.tolist() == [[99, 11, 12, 98, 13, 97, 15, EOS, PAD, PAD], [99, 20, 21, 22, 23, 24, 25, 26, 27, EOS]]
    assert target_lengths.tolist() == [8, 10]
    # T5's target when the text goes on after the last span ends with the next sentinel.
    _, _, targets, target_lengths = sentinel_spans(IDS, SPAN_ID, SENTINELS, PAD, LENGTHS, eos_id=EOS, final_sentinel=True)
    assert targets.tolist() == [[99, 11, 12, 98, 13, 97, 15, 96, EOS, PAD, PAD], [99, 20, 21, 22, 23, 24, 25, 26, 27, 98, EOS]]
    assert target_lengths.tolist() == [9, 11]
    # Empty spans take their sentinel with nothing after it.
    ids = torch.tensor([[10, 11, 12, 13]])
    span_id, inserted = torch.tensor([[0, 2, 0, 0]]), torch.tensor([[1, 0, 0, 3]])
    inputs, _, targets, _ = sentinel_spans(ids, span_id, SENTINELS, PAD, inserted=inserted)
    assert inputs.tolist() == [[99, 10, 98, 12, 97, 13]] and targets.tolist() == [[99, 98, 11, 97]]
    with pytest.raises(ValueError, match="sentinel"):
        sentinel_spans(IDS, SPAN_ID, SENTINELS[:2], PAD, LENGTHS)


def reference_infill(ids, span_id, inserted, length):
    """Infilling one token at a time, for the property test."""
    out, previous = [], 0
    for i in range(length):
        if inserted[i]:
            out.append(MASK)
        if span_id[i] == 0:
            out.append(int(ids[i]))
        elif span_id[i] != previous:
            out.append(MASK)
        previous = int(span_id[i])
    return out


@pytest.mark.parametrize("length", [SpanLengths("token"), SpanLengths("word"), *DRAWN], ids=lambda x: f"{x.kind}{x.min_n}")
def test_corruptions_round_trip_on_random_batches(length):
    sentinels = torch.arange(1000, 1064)
    for seed in range(3):
        ids, protected, word_start, noise, lengths = random_batch(seed, B=32, L=48)
        candidate = ~protected
        spans = select_spans(candidate, mask_budget(candidate, 0.3), noise[:, 0], noise[:, 3], length, word_start)
        inputs, input_lengths, targets, target_lengths = sentinel_spans(
            ids, spans.span_id, sentinels, PAD, lengths, spans.inserted, eos_id=EOS)
        deleted, deleted_lengths = delete_spans(ids, spans.span_id, PAD, lengths)
        infilled, infilled_lengths = infill_spans(ids, spans.span_id, MASK, PAD, lengths, spans.inserted)
        for b in range(len(ids)):
            n = int(lengths[b])
            original = ids[b, :n].tolist()
            # Sentinel input + target reconstructs the original.
            inp, tgt = inputs[b, : input_lengths[b]].tolist(), targets[b, : target_lengths[b]].tolist()
            assert tgt[-1] == EOS
            assert (inputs[b, input_lengths[b]:] == PAD).all() and (targets[b, target_lengths[b]:] == PAD).all()
            pieces, current = {}, None
            for t in tgt[:-1]:
                if t >= 1000:
                    current = pieces.setdefault(t, [])
                else:
                    current.append(t)
            rebuilt = [t for x in inp for t in (pieces[x] if x >= 1000 else [x])]
            assert rebuilt == original
            used = [x for x in inp if x >= 1000]
            assert used == sentinels[: len(used)].tolist()  # numbered in order
            # Deletion keeps the unselected tokens, in order.
            kept = ids[b, :n][spans.span_id[b, :n] == 0].tolist()
            assert deleted[b, : deleted_lengths[b]].tolist() == kept and (deleted[b, deleted_lengths[b]:] == PAD).all()
            # Infilling matches the token-at-a-time reference.
            assert infilled[b, : infilled_lengths[b]].tolist() == reference_infill(ids[b], spans.span_id[b], spans.inserted[b], n)
            assert (infilled[b, infilled_lengths[b]:] == PAD).all()


# ---------------------------------------------------------------------------------------------
# Span bounds, T5's noise layout
# ---------------------------------------------------------------------------------------------

def test_span_bounds_by_hand():
    first, last = span_bounds(SPAN_ID)
    selected = SPAN_ID > 0
    assert (first * selected).tolist() == [[0, 1, 1, 3, 0, 5, 0, 0], [0] * 8]
    assert (last * selected).tolist() == [[0, 2, 2, 3, 0, 5, 0, 0], [7] * 8]


def t5_random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                               noise_scores: np.ndarray, nonnoise_scores: np.ndarray) -> np.ndarray:
    """t5.data.preprocessors.random_spans_noise_mask (random_roll=False) in numpy, one row at a time,
    line for line; its seeded shuffles are the permutations that rank the given scores, the draw
    random_spans_noise makes."""
    orig_length = length
    length = max(length, 2)
    num_noise_tokens = int(np.round(np.float32(length) * np.float32(noise_density)))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(np.round(np.float32(num_noise_tokens) / np.float32(mean_noise_span_length)))
    num_noise_spans = max(num_noise_spans, 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def _random_segmentation(num_items, num_segments, scores):
        marks = (np.arange(num_items - 1) < num_segments - 1).astype(np.int64)
        shuffled = marks[np.argsort(np.argsort(scores[1:num_items], kind="stable"), kind="stable")]
        first_in_segment = np.pad(shuffled, [[1, 0]])
        segment_id = np.cumsum(first_in_segment)
        return np.bincount(segment_id)

    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, noise_scores)
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, nonnoise_scores)
    interleaved_span_lengths = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).reshape(num_noise_spans * 2)
    span_starts = np.cumsum(interleaved_span_lengths)[:-1]
    span_start_indicator = np.zeros(length, dtype=np.int64)
    np.add.at(span_start_indicator, span_starts, 1)
    span_num = np.cumsum(span_start_indicator)
    is_noise = span_num % 2 == 1
    return is_noise[:orig_length]


@pytest.mark.parametrize("density, mean", [(0.15, 3.0), (0.5, 3.0), (0.15, 1.0), (0.3, 8.0)])
def test_random_spans_noise_is_t5s_layout(density, mean):
    B, W = 300, 160
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, W + 1, (B,), generator=g)
    lengths[:12] = torch.arange(1, 13)  # the smallest rows, one token included
    noise_scores, nonnoise_scores = torch.rand(B, W, generator=g), torch.rand(B, W, generator=g)
    spans = random_spans_noise(lengths, density, mean, noise_scores, nonnoise_scores)
    assert not spans.inserted.any()
    check_spans(spans, torch.arange(W) < lengths[:, None])
    for b in range(B):
        n = int(lengths[b])
        expected = t5_random_spans_noise_mask(n, density, mean, noise_scores[b].numpy(), nonnoise_scores[b].numpy())
        assert (spans.span_id[b, :n] > 0).tolist() == expected.tolist(), b
        runs = int(span_starts(spans.span_id[b:b + 1]).sum())
        assert int(spans.span_id[b].max()) == runs  # one id per noise run
    assert not (spans.span_id[lengths == 1] > 0).any()  # T5 lays one token out as two and cuts the noise off
