import numpy as np
import pytest
import torch

from conftest import write_corpus
from lit_ptm.data.corpus import iter_documents
from lit_ptm.data.sampling import ContiguousWindows, ResumableSampler, SentenceWindows, WindowDataset
from lit_ptm.data.store import open_store
from lit_ptm.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def store_and_tok(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sampling")
    corpus = write_corpus(tmp / "c.txt", n_docs=30, sentences=(1, 10))
    # One very long sentence, longer than any window, must be cut, not dropped.
    with open(corpus, "a") as f:
        f.write("\n" + " ".join(f"w{i}a" for i in range(200)) + ".\nshort tail.\n")
    tok = train_tokenizer((s for d in iter_documents(corpus) for s in d), "wordpiece", 400)
    return open_store([corpus], tok, tmp / "cache"), tok


def test_contiguous_windows_tile_the_split_with_eos_between_documents(store_and_tok):
    store, tok = store_and_tok
    docs = np.array([1, 4, 5, 9, 30])
    w = ContiguousWindows(store, docs, 16, tok.ids)
    stream = np.concatenate([np.append(store.document(d), tok.ids.eos) for d in docs])
    assert len(w) == (len(stream) - 1) // 16
    for k in range(len(w)):
        s = w[k]
        assert s["ids"].tolist() == stream[k * 16 : k * 16 + 17].tolist()  # L + 1, overlapping by one
        # Segments change right after an [EOS].
        eos_before = torch.cat([torch.tensor([False]), s["ids"][:-1] == tok.ids.eos])
        changes = torch.cat([torch.tensor([False]), s["document"][1:] != s["document"][:-1]])
        assert torch.equal(eos_before, changes)


@pytest.mark.parametrize("cross", [False, True])
def test_sentence_windows_hold_whole_sentences_and_lose_nothing(store_and_tok, cross):
    store, tok = store_and_tok
    docs = np.arange(store.num_docs)
    L = 24
    w = SentenceWindows(store, docs, L, tok.ids, cross_documents=cross)
    content = []
    for k in range(len(w)):
        s = w[k]
        ids = s["ids"].tolist()
        assert len(ids) <= L and ids[0] == tok.ids.cls and ids[-1] == tok.ids.sep
        seps = [i for i, t in enumerate(ids[1:-1], 1) if t == tok.ids.sep]
        if not cross:
            assert not seps and s["document"].max() == 0  # DOC-SENTENCES never crosses a document
        else:
            assert len(seps) == int(s["document"].max())  # one [SEP] between each pair of documents
        content.extend(t for t in ids[1:-1] if t != tok.ids.sep)
        starts = s["word_start"]
        assert starts[0] and starts[-1]
    # Every token of every document appears exactly once, in order.
    assert content == store.tokens[: store.num_tokens].tolist()
    # Windows end at sentence boundaries, except pieces of the over-long sentence.
    long_sentence = int(np.argmax(np.diff(store.sent_offsets)))
    assert store.sent_offsets[long_sentence + 1] - store.sent_offsets[long_sentence] > L
    if not cross:
        assert len(w) >= store.num_docs
    else:
        assert len(w) < len(SentenceWindows(store, docs, L, tok.ids, cross_documents=False))


def test_sampler_is_deterministic_per_epoch_and_shards_ranks():
    a = ResumableSampler(103, seed=7)
    a.set_epoch(0)
    first = list(a)
    assert first == list(a) and sorted(i for _, i in first) == list(range(103))
    a.set_epoch(1)
    second = list(a)
    assert [i for _, i in second] != [i for _, i in first] and all(e == 1 for e, _ in second)
    ranks = [ResumableSampler(103, seed=7, rank=r, world_size=3) for r in range(3)]
    shards = [[i for _, i in r] for r in ranks]
    assert all(len(s) == 34 == len(r) for s, r in zip(shards, ranks))
    assert len(set().union(*map(set, shards))) == 102  # disjoint; the tail of 1 is dropped
    evaluation = [ResumableSampler(103, seed=7, shuffle=False, rank=r, world_size=2, drop_last=False) for r in range(2)]
    assert set(i for s in evaluation for _, i in s) == set(range(103)) and all(len(list(s)) == 52 for s in evaluation)
    # Seeds are mixed, not added: (seed 7, epoch 1) and (seed 8, epoch 0) are different orders.
    b = ResumableSampler(103, seed=8)
    b.set_epoch(0)
    assert [i for _, i in b] != [i for _, i in second]


def test_evaluation_sampler_keeps_its_epoch_so_masks_do_not_change_between_evaluations():
    """Lightning calls set_epoch on every loader's sampler; the evaluation sampler must not follow,
    or the validation masks (drawn from (seed, epoch, index)) would change every epoch."""
    evaluation = ResumableSampler(20, seed=1, shuffle=False, drop_last=False, fixed_epoch=True)
    before = list(evaluation)
    evaluation.set_epoch(5)
    assert list(evaluation) == before and all(e == 0 for e, _ in before)


def test_sampler_resume_skips_consumed_samples_of_that_epoch_only():
    full = ResumableSampler(50, seed=3)
    full.set_epoch(2)
    expected = list(full)
    resumed = ResumableSampler(50, seed=3)
    resumed.resume(epoch=2, skip=20)
    resumed.set_epoch(2)
    assert list(resumed) == expected[20:]
    assert list(resumed) == expected  # the skip applies once
    other = ResumableSampler(50, seed=3)
    other.resume(epoch=1, skip=20)
    other.set_epoch(2)
    assert list(other) == expected


def test_window_dataset_passes_epoch_and_index(store_and_tok):
    store, tok = store_and_tok
    ds = WindowDataset(ContiguousWindows(store, np.arange(3), 8, tok.ids))
    s = ds[(4, 2)]
    assert s["epoch"] == 4 and s["index"] == 2 and len(s["ids"]) == 9


@pytest.mark.parametrize("cross", [False, True])
def test_sentence_windows_number_their_sentences(store_and_tok, cross):
    """``sentence``: 0 for [CLS], then one number per sentence piece and per [SEP], along the window."""
    store, tok = store_and_tok
    w = SentenceWindows(store, np.arange(store.num_docs), 24, tok.ids, cross_documents=cross)
    for k in range(len(w)):
        s = w[k]
        ids, sentence = s["ids"], s["sentence"]
        assert set(s) == {"ids", "word_start", "document", "sentence"} and sentence.dtype == torch.long
        new = torch.ones_like(ids, dtype=torch.bool)
        new[1:] = sentence[1:] != sentence[:-1]
        assert torch.equal(sentence, new.long().cumsum(0) - 1)  # 0, 1, 2, ... in runs
        special = (ids == tok.ids.cls) | (ids == tok.ids.sep)
        assert new[special].all() and new[1:][special[:-1]].all()  # a special token is a sentence of its own
        # The text sentences are the window's pieces (whole sentences, or pieces of one too long for a window).
        text = [ids[(sentence == u) & ~special].tolist() for u in sentence.unique().tolist()]
        a, b = w.windows[k]
        assert [t for t in text if t] == [store.tokens[w.piece_start[j]:w.piece_stop[j]].tolist() for j in range(a, b)]
