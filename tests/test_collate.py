import torch
from torch.nn.utils.rnn import pad_sequence

from conftest import SENTENCES, long_windows
from lit_ptm.data.collate import CausalLMCollator, MLMCollator, SpanLengths, SpanMLMCollator, mask_tokens
from lit_ptm.data.collate.common import document_positions


def windows(tok, n, length=64, seed=0):
    """Windows shaped like SentenceWindows' output: [CLS] pieces [SEP], variable lengths."""
    g = torch.Generator().manual_seed(seed)
    out = []
    texts = " ".join(SENTENCES)
    (ids, starts), = tok.encode_batch([texts])
    for i in range(n):
        L = int(torch.randint(length // 2, length - 2, (1,), generator=g))
        a = int(torch.randint(0, len(ids) - L, (1,), generator=g))
        out.append({
            "ids": torch.tensor([tok.ids.cls, *ids[a:a + L], tok.ids.sep]),
            "word_start": torch.tensor([True, True, *starts[a + 1:a + L], True]),
            "document": torch.zeros(L + 2, dtype=torch.long), "epoch": 0, "index": i,
        })
    return out


def test_token_masking_rate_and_80_10_10(tok):
    collate = MLMCollator(tok.ids, seed=11)
    samples = windows(tok, 3000)
    batch = collate(samples)
    ids = torch.nn.utils.rnn.pad_sequence([s["ids"] for s in samples], batch_first=True, padding_value=tok.ids.pad)
    labels, corrupted = batch["labels"], batch["input_ids"]
    selected = labels != -100
    special = torch.isin(ids, torch.tensor(tok.ids.special))
    # Exactly round(0.15 * n) per row, never a special token or padding.
    n = (~special).sum(1)
    assert torch.equal(selected.sum(1), torch.clamp((n * 0.15).round().long(), min=1))
    assert not (selected & special).any()
    assert torch.equal(labels[selected], ids[selected])
    # 80% [MASK], 10% random non-special, 10% unchanged (over ~40k selections: +- 1%).
    total = selected.sum().item()
    masked = (corrupted == tok.ids.mask) & selected
    unchanged = (corrupted == ids) & selected
    randomised = selected & ~masked & ~unchanged
    assert abs(masked.sum().item() / total - 0.8) < 0.01
    # A random draw can hit the original token (p = 1/|regular|), so "unchanged" is slightly above 10%.
    assert abs(unchanged.sum().item() / total - 0.1) < 0.01
    assert abs(randomised.sum().item() / total - 0.1) < 0.01
    assert not torch.isin(corrupted[randomised], torch.tensor(tok.ids.special)).any()
    # Outside the selection nothing changes; the padding mask marks real tokens.
    assert torch.equal(corrupted[~selected], ids[~selected])
    assert torch.equal(batch["attention_mask"], ids != tok.ids.pad)


def test_whole_word_masking_keeps_words_whole(tok):
    collate = MLMCollator(tok.ids, seed=5, whole_word_mask=True)
    samples = windows(tok, 2000)
    batch = collate(samples)
    selected = batch["labels"] != -100
    multi_piece_words = 0
    for s, row in zip(samples, selected):
        starts = s["word_start"].tolist()
        sel = row[: len(starts)].tolist()
        word = -1
        words: dict[int, set] = {}
        for t, (st, x) in enumerate(zip(starts, sel)):
            word += st
            words.setdefault(word, set()).add(x)
            if not st and x:
                multi_piece_words += 1
        assert all(len(v) == 1 for v in words.values()), "a word was partly masked"
    assert multi_piece_words > 100  # the test corpus really has multi-piece words
    special = torch.isin(torch.nn.utils.rnn.pad_sequence([s["ids"] for s in samples], batch_first=True), torch.tensor(tok.ids.special))
    n = (~special).sum(1).float()
    rate = selected.sum(1).float() / n
    assert abs(rate.mean().item() - 0.15) < 0.015  # whole words round the count to the nearest word
    assert (selected.sum(1) >= 1).all()


def test_masks_are_a_pure_function_of_seed_epoch_index(tok):
    collate = MLMCollator(tok.ids, seed=1)
    samples = windows(tok, 8)
    full = collate(samples)
    # The same sample in another batch, at another position, gets the same mask.
    alone = collate([samples[5]])
    n = len(samples[5]["ids"])
    assert torch.equal(alone["labels"][0], full["labels"][5, :n])
    assert torch.equal(alone["input_ids"][0], full["input_ids"][5, :n])
    # A new epoch draws a new mask (dynamic masking).
    again = collate([{**samples[5], "epoch": 1}])
    assert not torch.equal(again["labels"][0], alone["labels"][0])
    # Another seed, another mask.
    assert not torch.equal(MLMCollator(tok.ids, seed=2)([samples[5]])["labels"][0], alone["labels"][0])


def test_mask_tokens_respects_protection_exactly():
    ids = torch.arange(10, 30).repeat(4, 1)
    protected = torch.zeros_like(ids, dtype=torch.bool)
    protected[:, :5] = True
    protected[3] = True  # a row with nothing to mask
    noise = torch.rand(4, 3, 20, generator=torch.Generator().manual_seed(0))
    corrupted, labels = mask_tokens(ids, protected, noise, torch.arange(10, 100), mask_id=4, probability=0.5)
    assert ((labels != -100).sum(1) == torch.tensor([8, 8, 8, 0])).all()
    assert (labels[protected] == -100).all() and torch.equal(corrupted[3], ids[3])


def test_ngram_masking_always_predicts_something():
    """A row whose only word is longer than its budget (one 3-token word, budget 1) still predicts that word."""
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    protected = torch.tensor([[True, False, False, False, True]])
    word_start = torch.tensor([[True, True, False, False, True]])
    for seed in range(20):
        noise = torch.rand(1, 4, 5, generator=torch.Generator().manual_seed(seed))
        _, labels = mask_tokens(ids, protected, noise, torch.arange(10, 20), 4, 0.15, word_start, max_ngram=3)
        assert labels[0].tolist() == [-100, 10, 11, 12, -100]


def test_causal_collator_shifts_and_isolates_documents(tok):
    ids = torch.tensor([5, 6, 7, tok.ids.eos, 8, 9, 10, 11, 12])
    segment = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    batch = CausalLMCollator(tok.ids)([{"ids": ids, "document": segment, "word_start": ids > 0, "epoch": 0, "index": 0}])
    assert batch["input_ids"].tolist() == [ids[:-1].tolist()]
    assert batch["labels"].tolist() == [ids[1:].tolist()]
    assert batch["document_ids"].tolist() == [segment[:-1].tolist()]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    shared = CausalLMCollator(tok.ids, isolate_documents=False)([{"ids": ids, "document": segment, "word_start": ids > 0, "epoch": 0, "index": 0}])
    assert "document_ids" not in shared and "position_ids" not in shared


def test_document_positions_restart_per_document():
    seg = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, -1, -1]])
    assert document_positions(seg).tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 0, 1]]


def test_batches_count_their_real_tokens(tok):
    samples = windows(tok, 5)
    assert MLMCollator(tok.ids, seed=0)(samples)["num_tokens"] == sum(len(s["ids"]) for s in samples)
    causal = CausalLMCollator(tok.ids)(samples)
    assert causal["num_tokens"] == sum(len(s["ids"]) - 1 for s in samples) == int((causal["labels"] != -100).sum())


def test_ngram_masking_takes_whole_word_ngrams_with_p_proportional_to_1_over_n(tok):
    from lit_ptm.data.collate.masking import select_ngrams

    # Rows of 120 one-token words (word ids known), so that n-grams are easy to read back.
    B, L = 4000, 120
    g = torch.Generator().manual_seed(0)
    candidate = torch.ones(B, L, dtype=torch.bool)
    candidate[:, 0] = candidate[:, -1] = False  # [CLS] ... [SEP]
    starts = torch.ones(B, L, dtype=torch.bool)
    budget = torch.full((B,), 18)
    selected = select_ngrams(candidate, starts, budget, torch.rand(B, L, generator=g), torch.rand(B, L, generator=g), 3)
    assert (selected.sum(1) <= budget).all() and selected.sum().item() / (B * 18) > 0.97
    assert not selected[:, 0].any() and not selected[:, -1].any()
    # Lengths of the runs of selected words: at 15% density n-grams rarely touch, so runs of 1, 2, 3
    # words come in the proportions 6/11, 3/11, 2/11 (touching n-grams and budget shrinking blur it a little).
    padded = torch.nn.functional.pad(selected.int(), (1, 1))
    edges = padded[:, 1:] - padded[:, :-1]
    run_lengths = (edges == -1).nonzero()[:, 1] - (edges == 1).nonzero()[:, 1]
    counts = torch.bincount(run_lengths, minlength=7)[1:4].float()
    freq = counts / counts.sum()
    assert abs(freq[0] - 6 / 11) < 0.06 and abs(freq[1] - 3 / 11) < 0.05 and abs(freq[2] - 2 / 11) < 0.05, freq


def test_ngram_masking_in_the_collator_keeps_words_whole(tok):
    collate = MLMCollator(tok.ids, seed=3, max_ngram=3)
    samples = windows(tok, 500)
    batch = collate(samples)
    selected = batch["labels"] != -100
    for s, row in zip(samples, selected):
        starts = s["word_start"].tolist()
        sel = row[: len(starts)].tolist()
        word, words = -1, {}
        for st, x in zip(starts, sel):
            word += st
            words.setdefault(word, set()).add(x)
        assert all(len(v) == 1 for v in words.values())
    special = torch.isin(torch.nn.utils.rnn.pad_sequence([s["ids"] for s in samples], batch_first=True), torch.tensor(tok.ids.special))
    rate = selected.sum() / (~special).sum()
    assert 0.12 < rate.item() <= 0.15


# ---------------------------------------------------------------------------------------------
# SpanBERT
# ---------------------------------------------------------------------------------------------

def sbo_spans(batch):
    """The spans of a SpanBERT batch read back from its boundaries: a key per predicted token, the same
    for the tokens of one span ([B, L] long, -1 where nothing is predicted)."""
    B, L = batch["labels"].shape
    key = torch.arange(B)[:, None] * L * L + batch["span_left"] * L + batch["span_right"]
    return key.masked_fill(batch["labels"] == -100, -1)


def test_span_masking_budget_and_geometric_lengths_in_words(tok):
    samples = long_windows(tok, 500)
    collator = SpanMLMCollator(tok.ids, seed=3)
    batch = collator(samples)
    selected = batch["labels"] != -100
    # 15% of the 510 text tokens a row (76 or 77), met by all but a few rows (whole words may fall short).
    rate = selected.sum(1).double() / 510
    assert abs(rate.mean().item() - 0.15) < 0.01, rate.mean()
    # Sampled spans that touch are merged (as SpanBERT's code does): a predicted token's boundaries are
    # never predicted themselves, and the merged spans are the sampled ones, joined.
    rows = torch.arange(len(samples))[:, None].expand_as(selected)[selected]
    assert not selected[rows, batch["span_left"][selected]].any() and not selected[rows, batch["span_right"][selected]].any()
    _, sampled, _ = collator.spans(samples)
    assert torch.equal(sampled > 0, selected) and len(sbo_spans(batch)[selected].unique()) < int(sampled.amax(1).sum())
    # The sampled spans' lengths in words follow the clipped geometric.
    word_start = torch.stack([s["word_start"] for s in samples])
    key = torch.arange(len(samples))[:, None] * 10_000 + sampled
    spans, index = torch.unique(key[selected], return_inverse=True)
    words = torch.zeros(len(spans), dtype=torch.long).scatter_add_(0, index, word_start[selected].long())
    freq = torch.bincount(words, minlength=11)[1:].double() / len(words)
    table = SpanLengths("geometric", max_n=10, p=0.2).probabilities().double()
    # Each row's last span is shrunk to its budget (~1 span in 16 here), which adds a few % of short spans.
    assert (freq - table).abs().max() < 0.05, (freq, table)
    assert 3.3 < (words.double().mean()).item() < 3.8  # the table's mean: 3.797 words
    assert words.min() >= 1 and words.max() <= 10


def test_spans_keep_words_whole_and_take_one_decision_each(tok):
    samples = windows(tok, 2000)
    batch = SpanMLMCollator(tok.ids, seed=5)(samples)
    ids = pad_sequence([s["ids"] for s in samples], batch_first=True, padding_value=tok.ids.pad)
    word_start = pad_sequence([s["word_start"] for s in samples], batch_first=True, padding_value=True)
    labels, corrupted = batch["labels"], batch["input_ids"]
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected]) and torch.equal(corrupted[~selected], ids[~selected])
    rows = torch.arange(len(ids))[:, None].expand_as(ids)[selected]
    left, right = batch["span_left"][selected], batch["span_right"][selected]
    # Whole words: a span starts at a word start (its left boundary is [CLS] or a word's end) and the
    # token after it starts a word.
    assert word_start[rows, left + 1].all() and word_start[rows, right].all()
    # One decision per span: all its tokens masked, all random, or all kept.
    kind = torch.where(corrupted == tok.ids.mask, 0, torch.where(corrupted != ids, 1, 2))[selected]
    spans, index = torch.unique(sbo_spans(batch)[selected], return_inverse=True)
    lowest = torch.full((len(spans),), 3).scatter_reduce_(0, index, kind, "amin")
    highest = torch.full((len(spans),), -1).scatter_reduce_(0, index, kind, "amax")
    # (A random token may draw the original one, p = 1/|regular|: a random span may show a kept token.)
    mixed = lowest != highest
    assert not (mixed & (lowest == 0)).any(), "a span was split between [MASK] and not"
    assert mixed.sum() <= 0.02 * (highest == 1).sum(), "a span was split between random and kept"
    share = torch.bincount(lowest, minlength=3).double() / len(spans)  # a random span: some token differs
    assert abs(share[0] - 0.8) < 0.03 and abs(share[1] - 0.1) < 0.025 and abs(share[2] - 0.1) < 0.025, share


def test_span_boundaries_lie_just_outside_their_span_and_offsets_count_from_0(tok):
    samples = windows(tok, 400) + long_windows(tok, 50)
    batch = SpanMLMCollator(tok.ids, seed=7)(samples)
    labels, key = batch["labels"], sbo_spans(batch)
    left, right, offset = batch["span_left"], batch["span_right"], batch["span_offset"]
    selected = labels != -100
    for name in ("span_left", "span_right", "span_offset"):
        assert batch[name].dtype == torch.long and (batch[name][~selected] == 0).all(), name
    lengths = torch.tensor([len(s["ids"]) for s in samples])
    positions = torch.arange(labels.size(1)).expand_as(labels)
    assert (left[selected] >= 0).all() and (right[selected] < lengths[:, None].expand_as(labels)[selected]).all()
    assert (left < positions)[selected].all() and (positions < right)[selected].all()
    assert torch.equal(offset[selected], (positions - left - 1)[selected])
    # Every token between the boundaries is of the span, and the boundaries are not.
    rows = torch.arange(len(labels))[:, None].expand_as(labels)
    for b, i in selected.nonzero().tolist()[::7]:
        l, r = int(left[b, i]), int(right[b, i])
        assert (key[b, l + 1:r] == key[b, i]).all() and key[b, l] != key[b, i] and key[b, r] != key[b, i]
    # A span's tokens share their boundaries and number 0, 1, ... from its start.
    starts = selected & (offset == 0)
    assert torch.equal(starts.sum(), torch.unique(key[selected]).numel() * torch.ones((), dtype=torch.long))
    assert (selected[rows[starts], left[starts] + 1]).all()


def test_span_masking_is_a_pure_function_of_seed_epoch_index_and_isolates_documents(tok):
    samples = windows(tok, 8)
    collate = SpanMLMCollator(tok.ids, seed=1)
    full, alone = collate(samples), collate([samples[5]])
    n = len(samples[5]["ids"])
    for key in ("input_ids", "labels", "span_left", "span_right", "span_offset"):
        assert torch.equal(alone[key][0], full[key][5, :n]), key
    assert not torch.equal(collate([{**samples[5], "epoch": 1}])["labels"][0], alone["labels"][0])
    assert torch.equal(full["attention_mask"], MLMCollator(tok.ids, seed=1)(samples)["attention_mask"])
    assert full["num_tokens"] == sum(len(s["ids"]) for s in samples)
    # Packed documents (FULL-SENTENCES): the same document ids and positions as MLM's.
    packed = [{**s, "document": (torch.arange(len(s["ids"])) >= len(s["ids"]) // 2).long()} for s in samples]
    ours, mlm = SpanMLMCollator(tok.ids, seed=1)(packed), MLMCollator(tok.ids, seed=1)(packed)
    assert torch.equal(ours["document_ids"], mlm["document_ids"]) and torch.equal(ours["position_ids"], mlm["position_ids"])
    assert "document_ids" not in SpanMLMCollator(tok.ids, seed=1, isolate_documents=False)(packed)
