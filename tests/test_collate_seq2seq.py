"""Encoder-decoder collators (lit_ptm.data.collate.seq2seq): T5's span corruption, BART's text
infilling and sentence permutation, MASS. Statistics over many DOC-SENTENCES windows of a generated
corpus, as the objectives draw them."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import long_windows, write_corpus
from lit_ptm.data.collate import BARTCollator, MASSCollator, SpanLengths, T5Collator, pad_windows, permute_sentences
from lit_ptm.data.corpus import iter_documents
from lit_ptm.data.sampling import SentenceWindows
from lit_ptm.data.store import open_store
from lit_ptm.tokenizer import train_tokenizer

START = 5  # decoder_start: any id; the objective passes its own


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tokenizer and DOC-SENTENCES windows of 128 tokens (one document each, 2 to 12 sentences)."""
    tmp = tmp_path_factory.mktemp("seq2seq")
    corpus = write_corpus(tmp / "c.txt", n_docs=200, sentences=(2, 12))
    tok = train_tokenizer((s for d in iter_documents(corpus) for s in d), "wordpiece", 400)
    store = open_store([corpus], tok, tmp / "cache")
    return tok, SentenceWindows(store, np.arange(store.num_docs), 128, tok.ids, cross_documents=False)


def draw(windows, epochs=1):
    """Every window, once per epoch, keyed as WindowDataset keys them."""
    return [{**windows[k], "epoch": e, "index": k} for e in range(epochs) for k in range(len(windows))]


def rows(batch, key, lengths):
    return [batch[key][b, :n].tolist() for b, n in enumerate(lengths)]


def check_encoder_decoder(batch, pad):
    """What every encoder-decoder batch holds: padding masks only when padded, labels -100 exactly on
    padding, the decoder input the labels shifted right behind decoder_start; returns the real lengths."""
    input_real = batch.get("attention_mask", torch.ones_like(batch["input_ids"], dtype=torch.bool))
    target_real = batch.get("decoder_attention_mask", torch.ones_like(batch["labels"], dtype=torch.bool))
    assert ("attention_mask" in batch) == bool((~input_real).any()) and input_real.dtype == torch.bool
    assert torch.equal(target_real, batch["labels"] != -100)
    assert (batch["input_ids"][~input_real] == pad).all() and (batch["decoder_input_ids"][~target_real] == pad).all()
    assert (batch["decoder_input_ids"][:, 0] == START).all()
    shifted = batch["labels"][:, :-1].masked_fill(~target_real[:, 1:], pad)
    assert torch.equal(batch["decoder_input_ids"][:, 1:], shifted)
    input_lengths, target_lengths = input_real.sum(1), target_real.sum(1)
    assert batch["num_tokens"] == int(input_lengths.sum() + target_lengths.sum())
    return input_lengths.tolist(), target_lengths.tolist()


# ---------------------------------------------------------------------------------------------
# T5
# ---------------------------------------------------------------------------------------------

def undo_t5(inputs: list[int], targets: list[int], sentinels: list[int], eos: int) -> list[int]:
    """The text back from T5's input and target: each sentinel of the input replaced by what follows
    the same sentinel in the target."""
    assert inputs[-1] == eos and targets[-1] == eos
    pieces, current = {}, None
    for t in targets[:-1]:
        if t in sentinels:
            current = pieces.setdefault(t, [])
        else:
            current.append(t)
    return [t for x in inputs[:-1] for t in (pieces[x] if x in sentinels else [x])]


def test_t5_noise_density_mean_span_length_and_alternation(data):
    tok, windows = data
    samples = draw(windows, epochs=4)
    text, lengths, spans = T5Collator(tok.ids, seed=0, decoder_start=START).spans(samples)
    real = torch.arange(text.size(1)) < lengths[:, None]
    noise = spans.span_id > 0
    assert not (noise & ~real).any()
    # Per row, exactly T5's counts: round(0.15 n) noise tokens (1..n-1) in round(noise / 3) >= 1 spans.
    expected = torch.minimum((lengths.float() * 0.15).round().long().clamp(min=1), lengths - 1)
    assert torch.equal(noise.sum(1), expected)
    assert torch.equal(spans.span_id.amax(1), (expected.float() / 3.0).round().long().clamp(min=1))
    assert abs(noise.sum().item() / lengths.sum().item() - 0.15) < 0.005
    assert abs(noise.sum().item() / spans.span_id.amax(1).sum().item() - 3.0) < 0.1
    # Runs alternate, starting with text and ending in noise: as many text runs as noise spans.
    for b in range(len(samples)):
        row = noise[b, : lengths[b]].int()
        runs = torch.unique_consecutive(row)
        assert runs[0] == 0 and runs[-1] == 1 and len(runs) == 2 * int(spans.span_id[b].max())
    # Span lengths vary (a random segmentation, not fixed lengths of 3).
    sizes = torch.bincount((spans.span_id + torch.arange(len(samples))[:, None] * text.size(1))[noise])
    assert len(torch.unique(sizes[sizes > 0])) > 5


def test_t5_sentinels_in_order_and_input_plus_target_give_back_the_text(data):
    tok, windows = data
    samples = draw(windows, epochs=2)
    batch = T5Collator(tok.ids, seed=1, decoder_start=START)(samples)
    input_lengths, target_lengths = check_encoder_decoder(batch, tok.ids.pad)
    sentinels = list(tok.ids.sentinels)
    for b, s in enumerate(samples):
        inputs, targets = batch["input_ids"][b, : input_lengths[b]].tolist(), batch["labels"][b, : target_lengths[b]].tolist()
        in_input, in_target = [x for x in inputs if x in sentinels], [x for x in targets if x in sentinels]
        assert in_input == in_target == sentinels[: len(in_input)]  # the k-th in the input is the k-th in the target
        assert targets[0] == sentinels[0]  # the target opens with the first sentinel
        assert undo_t5(inputs, targets, sentinels, tok.ids.eos) == s["ids"][1:-1].tolist()


def test_t5_names_the_window_that_needs_more_sentinels(data):
    tok, windows = data
    few = dataclasses.replace(tok.ids, sentinels=tok.ids.sentinels[:2])
    long = max(draw(windows), key=lambda s: len(s["ids"]))
    with pytest.raises(ValueError, match=f"a window of {len(long['ids'])} tokens needs [0-9]+ sentinels"):
        T5Collator(few, seed=0, decoder_start=START)([long])
    with pytest.raises(ValueError, match="sentinel"):
        T5Collator(dataclasses.replace(tok.ids, sentinels=()), seed=0, decoder_start=START)


# ---------------------------------------------------------------------------------------------
# BART
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("permute", [False, True])
def test_bart_target_is_the_original_window_and_each_span_one_mask(data, permute):
    tok, windows = data
    samples = draw(windows, epochs=2)
    collate = BARTCollator(tok.ids, seed=2, permute_sentences=permute, decoder_start=START)
    batch = collate(samples)
    input_lengths, target_lengths = check_encoder_decoder(batch, tok.ids.pad)
    assert rows(batch, "labels", target_lengths) == [s["ids"].tolist() for s in samples]
    _, spans = collate.spans(samples)
    num_spans = torch.maximum(spans.span_id, spans.inserted).amax(1)  # spans, empty ones too
    assert (spans.inserted > 0).sum() > 100  # empty spans (insertions) do occur
    masks = [row.count(tok.ids.mask) for row in rows(batch, "input_ids", input_lengths)]
    assert masks == num_spans.tolist()
    for b, row in enumerate(rows(batch, "input_ids", input_lengths)):
        assert row[0] == tok.ids.cls and row[-1] == tok.ids.sep


def test_bart_masks_30_percent_in_spans_of_poisson_lengths(data):
    tok, windows = data
    collate = BARTCollator(tok.ids, seed=3, decoder_start=START)
    # On one-document windows: 30% of the text tokens, up to whole words.
    samples = draw(windows, epochs=2)
    ids, spans = collate.spans(samples)
    candidate = ~tok.ids.special_table()[ids]
    assert abs((spans.span_id > 0).sum().item() / candidate.sum().item() - 0.3) < 0.01
    # Lengths in words, on long rows (each row's last span, shrunk to its budget, adds short spans:
    # about one span in eight on 128-token windows, one in forty here).
    samples = long_windows(tok, 300)
    ids, spans = collate.spans(samples)
    word_start = pad_windows(samples, "word_start", True)
    selected = spans.span_id > 0
    key = (spans.span_id + torch.arange(len(ids))[:, None] * ids.size(1))[selected]
    _, index = torch.unique(key, return_inverse=True)
    words = torch.zeros(int(index.max()) + 1, dtype=torch.long).scatter_add_(0, index, word_start[selected].long())
    histogram = torch.bincount(words, minlength=17).double()
    histogram[0] += (spans.inserted > 0).sum()  # empty spans: length 0
    freq, table = histogram / histogram.sum(), SpanLengths("poisson", min_n=0, max_n=16, mean=3.0).probabilities().double()
    assert len(freq) == 17 and (freq - table).abs().max() < 0.04, (freq, table)
    assert abs(freq[0].item() - math.exp(-3)) < 0.015  # insertions: p(0) = e^-3


def as_sentences(text: list[int], sentences: list[list[int]]) -> list[int] | None:
    """How ``text`` is the concatenation of all of ``sentences``, each once: their order, or None."""
    if not sentences:
        return [] if not text else None
    for i, s in enumerate(sentences):
        if text[: len(s)] == s:
            rest = as_sentences(text[len(s):], sentences[:i] + sentences[i + 1:])
            if rest is not None:
                return [i] + [j + (j >= i) for j in rest]
    return None


def test_bart_sentence_permutation_moves_whole_sentences_in_random_order(data):
    tok, windows = data
    samples = draw(windows, epochs=3)
    ids, _ = BARTCollator(tok.ids, seed=4, permute_sentences=True, decoder_start=START).spans(samples)
    first_stays, expected, moved, several = 0, 0.0, 0, 0
    for b, s in enumerate(samples):
        n = len(s["ids"])
        row = ids[b, :n].tolist()
        assert row[0] == tok.ids.cls and row[-1] == tok.ids.sep  # [CLS] and [SEP] keep their places
        sentence = s["sentence"][1:-1]
        originals = [s["ids"][1:-1][sentence == u].tolist() for u in torch.unique(sentence).tolist()]
        order = as_sentences(row[1:-1], originals)
        assert order is not None, "the permuted text is not the window's sentences in some order"
        if len(originals) >= 2:
            several += 1
            moved += order != sorted(order)
            first_stays += order[0] == 0
            expected += 1 / len(originals)
    # A uniform order: the first sentence stays first with probability 1/m.
    assert several > 300 and moved > 0.4 * several
    assert abs(first_stays / several - expected / several) < 0.05


def test_permute_sentences_by_hand():
    # [CLS] a a | b | c c c [SEP] pad: sentences 0..4, padding L = 8; scores at sentence starts: b < c < a.
    sentence = torch.tensor([[0, 1, 1, 2, 3, 3, 3, 4, 8]])
    fixed = torch.tensor([[True, False, False, False, False, False, False, True, True]])
    scores = torch.tensor([[0.0, 0.9, 0.0, 0.1, 0.5, 0.0, 0.0, 0.0, 0.0]])
    order = permute_sentences(sentence, fixed, scores)
    assert sentence.gather(1, order).tolist() == [[0, 2, 3, 3, 3, 1, 1, 4, 8]]
    assert order.tolist() == [[0, 3, 4, 5, 6, 1, 2, 7, 8]]


# ---------------------------------------------------------------------------------------------
# MASS
# ---------------------------------------------------------------------------------------------

def test_mass_fragment_length_place_and_decoder(data):
    tok, windows = data
    samples = draw(windows, epochs=20)  # ~5,000 fragments: a share's standard deviation is ~0.006
    batch = MASSCollator(tok.ids, seed=5, decoder_start=START)(samples)
    input_lengths, target_lengths = check_encoder_decoder(batch, tok.ids.pad)
    n = torch.tensor([len(s["ids"]) - 2 for s in samples])
    k = torch.tensor(target_lengths)
    assert torch.equal(k, (n.float() * 0.5).round().long().clamp(min=1))  # ~50% of the text
    assert input_lengths == [len(s["ids"]) for s in samples]
    positions = batch["decoder_position_ids"]
    start = positions[:, 0] - 1  # in text coordinates
    for b, s in enumerate(samples):
        kb = target_lengths[b]
        assert positions[b, :kb].tolist() == list(range(int(start[b]) + 1, int(start[b]) + kb + 1))
        assert (positions[b, kb:] == 0).all()
        assert batch["labels"][b, :kb].tolist() == s["ids"][positions[b, :kb]].tolist()  # the fragment, at its positions
    # Start: 0 with 20%, n - k with 20%, else uniform in [0, n - k] (which hits the ends too).
    room = (n - k).double()
    at_start, at_end = (start == 0).double(), (start == n - k).double()
    expected = torch.where(room == 0, 1.0, 0.2 + 0.6 / (room + 1)).mean().item()  # a fragment of the whole text: both
    assert abs(at_start.mean().item() - expected) < 0.025 and abs(at_end.mean().item() - expected) < 0.025
    inside = (start > 0) & (start < n - k)
    assert abs((start[inside] / room[inside]).mean().item() - 0.5) < 0.02


def test_mass_encoder_corrupts_only_the_fragment_80_10_10(data):
    tok, windows = data
    samples = draw(windows, epochs=8)
    batch = MASSCollator(tok.ids, seed=6, decoder_start=START)(samples)
    ids = pad_windows(samples, "ids", tok.ids.pad)
    positions = batch["decoder_position_ids"]
    k = (batch["labels"] != -100).sum(1)
    arange = torch.arange(ids.size(1))
    fragment = (arange >= positions[:, :1]) & (arange < positions[:, :1] + k[:, None])
    corrupted = batch["input_ids"]
    assert torch.equal(corrupted[~fragment], ids[~fragment])
    total = fragment.sum().item()
    masked = ((corrupted == tok.ids.mask) & fragment).sum().item() / total
    kept = ((corrupted == ids) & fragment).sum().item() / total
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(1 - masked - kept - 0.1) < 0.01
    assert not tok.ids.special_table()[corrupted[fragment & (corrupted != tok.ids.mask)]].any()


# ---------------------------------------------------------------------------------------------
# All three
# ---------------------------------------------------------------------------------------------

COLLATORS = {
    "t5": lambda ids: T5Collator(ids, seed=9, decoder_start=START),
    "bart": lambda ids: BARTCollator(ids, seed=9, decoder_start=START),
    "bart-permuted": lambda ids: BARTCollator(ids, seed=9, permute_sentences=True, decoder_start=START),
    "mass": lambda ids: MASSCollator(ids, seed=9, decoder_start=START),
}


@pytest.mark.parametrize("name", COLLATORS)
def test_a_sample_collated_alone_equals_its_row_in_a_batch(data, name):
    tok, windows = data
    collate = COLLATORS[name](tok.ids)
    samples = draw(windows)[:16]
    full = collate(samples)
    input_lengths, target_lengths = check_encoder_decoder(full, tok.ids.pad)
    for b in (0, 7, 15):
        alone = collate([samples[b]])
        assert "attention_mask" not in alone and "decoder_attention_mask" not in alone  # nothing padded
        for key, value in alone.items():
            if key == "num_tokens":
                assert value == input_lengths[b] + target_lengths[b]
                continue
            n = input_lengths[b] if key == "input_ids" else target_lengths[b]
            assert value.size(1) == n and torch.equal(value[0], full[key][b, :n]), key
    # Another epoch or another index: another draw.
    alone = collate([samples[7]])
    for other in ({**samples[7], "epoch": 1}, {**samples[7], "index": 100}):
        again = collate([other])
        assert not all(torch.equal(again[key], alone[key]) for key in ("input_ids", "labels")), other
