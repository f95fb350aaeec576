import numpy as np
import pytest
import torch

from conftest import write_corpus
from lit_ptm.data.collate import PairMLMCollator, truncated_lengths
from lit_ptm.data.corpus import iter_documents
from lit_ptm.data.sampling import PairWindows
from lit_ptm.data.store import open_store
from lit_ptm.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def store_and_tok(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairs")
    corpus = write_corpus(tmp / "c.txt", n_docs=120, sentences=(2, 12))
    tok = train_tokenizer((s for d in iter_documents(corpus) for s in d), "wordpiece", 400)
    return open_store([corpus], tok, tmp / "cache"), tok


def doc_of(store, token_offset):
    return int(np.searchsorted(store.doc_offsets, token_offset, side="right") - 1)


def test_nsp_pairs_follow_bert_and_consume_every_sentence(store_and_tok):
    store, tok = store_and_tok
    docs = np.arange(store.num_docs)
    w = PairWindows(store, docs, 64, tok.ids, task="nsp", seed=3)
    p = w.pairs
    # Balanced although every one-sentence chunk takes a random B (multi-sentence chunks compensate).
    assert abs(p[:, 4].mean() - 0.5) < 0.03, p[:, 4].mean()
    covered = []
    for a0, a1, b0, b1, label in p.tolist():
        assert doc_of(store, a0) == doc_of(store, a1 - 1) and doc_of(store, b0) == doc_of(store, b1 - 1)
        if label == 1:
            assert doc_of(store, b0) != doc_of(store, a0)  # a random next never comes from A's document
            covered.append((a0, a1))
        else:
            assert b0 == a1  # the actual next sentences
            covered.append((a0, b1))
        # A and B are whole sentences
        assert a0 in store.sent_offsets and a1 in store.sent_offsets and b0 in store.sent_offsets and b1 in store.sent_offsets
    # Put-back: the A/B-next ranges tile the corpus, no sentence dropped or repeated.
    covered.sort()
    assert covered[0][0] == 0 and covered[-1][1] == store.num_tokens
    assert all(x[1] == y[0] for x, y in zip(covered, covered[1:]))


def test_sop_pairs_are_consecutive_segments_of_one_document(store_and_tok):
    store, tok = store_and_tok
    w = PairWindows(store, np.arange(store.num_docs), 64, tok.ids, task="sop", seed=3)
    for a0, a1, b0, b1, label in w.pairs.tolist():
        assert b0 == a1 and label == 0 and doc_of(store, a0) == doc_of(store, b1 - 1)


def reference_truncation(la, lb, max_tokens):
    a, b = list(range(la)), list(range(lb))
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()
    return len(a), len(b)


def test_truncation_matches_berts_loop():
    for la in range(1, 30):
        for lb in range(1, 30):
            assert truncated_lengths(la, lb, 20) == reference_truncation(la, lb, 20)


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_pair_batches_layout_segments_and_labels(store_and_tok, task):
    store, tok = store_and_tok
    L = 48
    w = PairWindows(store, np.arange(store.num_docs), L, tok.ids, task=task, seed=1)
    samples = [{**w[i], "epoch": 0, "index": i} for i in range(len(w))]
    collate = PairMLMCollator(tok.ids, seed=0, task=task, probability=0.15)
    batch = collate(samples)
    labels = batch["pair_labels"]
    assert labels.shape == (len(samples),) and 0.4 < labels.float().mean().item() < 0.65
    ids, types = batch["input_ids"], batch["token_type_ids"]
    original = ids.clone()
    original[batch["labels"] != -100] = batch["labels"][batch["labels"] != -100]
    assert ids.size(1) <= L
    for row, (s, t, y) in enumerate(zip(original, types, labels.tolist())):
        seps = (s == tok.ids.sep).nonzero().squeeze(1).tolist()
        assert s[0] == tok.ids.cls and len(seps) == 2
        first, second = seps
        assert (t[: first + 1] == 0).all() and (t[first + 1 : second + 1] == 1).all()
        a, b = s[1:first], s[first + 1 : second]
        raw = samples[row]
        if task == "sop" and len(raw["a"]) + len(raw["b"]) <= L - 3:
            expected = (raw["b"], raw["a"]) if y == 1 else (raw["a"], raw["b"])
            assert torch.equal(a, expected[0]) and torch.equal(b, expected[1])  # swapped = exactly reversed
    specials = torch.isin(original, torch.tensor(tok.ids.special)) & (batch["labels"] != -100)
    assert not specials.any()
    # The same sample gets the same swap, trim and mask in any batch.
    alone = collate([samples[7]])
    n = alone["input_ids"].size(1)
    assert torch.equal(alone["input_ids"][0], batch["input_ids"][7, :n]) and alone["pair_labels"][0] == labels[7]


def test_empty_segments_do_not_break_the_layout(store_and_tok):
    _, tok = store_and_tok
    empty = torch.zeros(0, dtype=torch.long)
    sample = {"a": empty, "a_word_start": empty.bool(), "b": torch.tensor([200, 201]), "b_word_start": torch.tensor([True, False]),
              "label": 1, "max_tokens": 10, "epoch": 0, "index": 0}
    batch = PairMLMCollator(tok.ids, seed=0, task="nsp")([sample])
    original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    assert original[0].tolist() == [tok.ids.cls, tok.ids.sep, 200, 201, tok.ids.sep]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 1, 1, 1]
