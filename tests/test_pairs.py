import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import write_corpus
from lit_ptm.data.collate import PairMLMCollator, truncated_lengths
from lit_ptm.data.corpus import iter_documents
from lit_ptm.data.sampling import PairWindows, ResumableSampler, WindowDataset
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


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_nsp_pairs_follow_bert_and_consume_every_sentence(store_and_tok, epoch):
    store, tok = store_and_tok
    docs = np.arange(store.num_docs)
    w = PairWindows(store, docs, 64, tok.ids, task="nsp", seed=3)
    p = w._draw(epoch)  # the epoch's own draw, before it is fitted to the epoch length
    if epoch == 0:
        assert np.array_equal(p, w.pairs)  # epoch 0 sets the length: nothing dropped or repeated
    # Balanced although every one-sentence chunk takes a random B (multi-sentence chunks compensate),
    # within the sampling noise of ~290 pairs (sd 0.03).
    assert abs(p[:, 4].mean() - 0.5) < 0.1, p[:, 4].mean()
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
    for epoch in range(3):
        for a0, a1, b0, b1, label in w.plan(epoch).tolist():
            assert b0 == a1 and label == 0 and doc_of(store, a0) == doc_of(store, b1 - 1) and a1 > a0 and b1 > b0


# -- pairs drawn anew every epoch ------------------------------------------------------------------
def rows(pairs) -> set:
    return set(map(tuple, pairs.tolist()))


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_every_epoch_draws_its_own_pairs_of_one_length(store_and_tok, task):
    store, tok = store_and_tok
    docs = np.arange(store.num_docs)
    w = PairWindows(store, docs, 64, tok.ids, task=task, seed=3)
    plans = [w.plan(e) for e in range(4)]
    assert all(len(p) == len(w) for p in plans)  # the length the sampler and Lightning were given
    for e in range(1, 4):
        # Another epoch, other pairs. Measured share of epoch 0's pairs that recur: NSP 5-8% (A, B and the
        # IsNext choice are all redrawn); SOP 34-39% (a chunk is most often a whole short document, or
        # the same full-length window, and only where A ends is redrawn; the swap is drawn per sample).
        shared = len(rows(plans[e]) & rows(plans[0])) / len(w)
        assert shared < {"nsp": 0.15, "sop": 0.5}[task], (e, shared)
        # Fitted to the length by dropping or repeating a few pairs of the epoch's own draw.
        draw = w._draw(e)
        assert rows(plans[e]) <= rows(draw) and abs(len(draw) - len(w)) <= 0.05 * len(w)
    # A pure function of (seed, epoch): a fresh builder draws the same pairs, in any order of epochs.
    again = PairWindows(store, docs, 64, tok.ids, task=task, seed=3)
    assert np.array_equal(again.plan(2), plans[2]) and np.array_equal(again.plan(0), plans[0])
    assert not np.array_equal(PairWindows(store, docs, 64, tok.ids, task=task, seed=4).plan(2), plans[2])


def test_isnext_share_is_one_half_in_every_epoch(store_and_tok):
    store, tok = store_and_tok
    w = PairWindows(store, np.arange(store.num_docs), 64, tok.ids, task="nsp", seed=3)
    shares = np.array([w.plan(e)[:, 4].mean() for e in range(20)])
    sigma = 0.5 / np.sqrt(len(w))  # a binomial share's noise over one epoch's pairs (measured over 200 epochs: 1.1x that)
    assert np.all(np.abs(shares - 0.5) < 4 * sigma), (shares, sigma)
    assert abs(shares.mean() - 0.5) < 4 * sigma / np.sqrt(len(shares))  # and no bias across epochs


def test_worker_processes_draw_the_same_batches_and_resume_inside_epoch_1(store_and_tok):
    """DataLoader workers started fresh (spawn: nothing inherited from this process, whose own draws
    are not pickled over) give the batches this process gives, for epoch 1 and resumed inside it.
    (NSP only, as spawning costs ~10 s; test_cli's exact-resume test runs both pair tasks in workers.)"""
    store, tok = store_and_tok
    task = "nsp"
    w = PairWindows(store, np.arange(store.num_docs), 48, tok.ids, task=task, seed=5)
    ds, collate = WindowDataset(w), PairMLMCollator(tok.ids, seed=5, task=task)
    sampler = ResumableSampler(len(ds), seed=5)
    sampler.set_epoch(1)
    keys = list(sampler)
    straight = [collate([ds[k] for k in keys[i : i + 4]]) for i in range(0, len(keys) - 3, 4)]
    assert list(w._plans) == [1]  # drawn here, and not pickled over to the workers
    sampler.resume(epoch=1, skip=8)
    loader = DataLoader(ds, sampler=sampler, batch_size=4, drop_last=True, collate_fn=collate, num_workers=2,
                        multiprocessing_context="spawn")
    resumed = list(loader)
    assert len(resumed) == len(straight) - 2
    for a, b in zip(resumed, straight[2:]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


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
