import pytest
import torch

from conftest import SENTENCES, long_windows
from lit_ptm.data.collate import MPNetCollator, XLNetCollator
from lit_ptm.data.collate.common import pad_windows


def windows(tok, n, low=5, high=64, seed=0, documents=1):
    """SentenceWindows-shaped samples ([CLS] pieces [SEP]) of random lengths in [low, high), odd and
    even, so that batches have padded rows; ``documents`` > 1 packs that many documents a window."""
    g = torch.Generator().manual_seed(seed)
    (ids, starts), = tok.encode_batch([" ".join(SENTENCES)])
    out = []
    for i in range(n):
        L = int(torch.randint(low - 2, high - 2, (1,), generator=g))
        a = int(torch.randint(0, len(ids) - L, (1,), generator=g))
        cuts = sorted(torch.randint(1, L + 1, (documents - 1,), generator=g).tolist())
        document = torch.zeros(L + 2, dtype=torch.long)
        window = torch.tensor([tok.ids.cls, *ids[a:a + L], tok.ids.sep])
        word_start = torch.tensor([True, True, *starts[a + 1:a + L], True])
        for c in cuts:  # as SentenceWindows: a [SEP] closes each document but the last
            document[c + 1:] += 1
            window[c], word_start[c] = tok.ids.sep, True
        out.append({"ids": window, "word_start": word_start, "document": document, "epoch": 0, "index": i})
    return out


def padded(tok, samples):
    ids = pad_windows(samples, "ids", tok.ids.pad)
    real = torch.arange(ids.size(1)) < torch.tensor([len(s["ids"]) for s in samples])[:, None]
    special = torch.isin(ids, torch.tensor(tok.ids.special))
    return ids, real, special


def closure(start: torch.Tensor, content: torch.Tensor, layers: int) -> torch.Tensor:
    """Boolean reach of ``start`` [B, R, T] through ``layers`` applications of ``content`` [B, T, T]."""
    reach = start
    for _ in range(layers):
        reach = reach | (reach.float() @ content.float() > 0)
    return reach


# ----------------------------------------------------------------------------------------- XLNet


def collated(tok, collator_cls, seed):
    """48 windows (odd, even and padded rows) collated by ``collator_cls``: (samples, batch, ids, real, special)."""
    samples = windows(tok, 48, seed=seed)
    batch = collator_cls(tok.ids, seed=seed)(samples)
    ids, real, special = padded(tok, samples)
    assert {len(s["ids"]) % 2 for s in samples} == {0, 1} and not real.all()  # odd, even and padded rows
    return samples, batch, ids, real, special


def target_roles(batch, L):
    """(target [B, L] bool, rank [B, L] long: the order index, -1 off the targets) recovered from target_positions
    (XLNet's factorisation order; MPNet's order of the predicted tokens)."""
    pos, valid = batch["target_positions"], batch["labels"] != -100
    B, P = pos.shape
    target = torch.zeros(B, L + 1, dtype=torch.bool).scatter_(1, torch.where(valid, pos, L), True)[:, :L]
    rank = torch.full((B, L + 1), -1).scatter_(1, torch.where(valid, pos, L), torch.arange(P).expand(B, P))[:, :L]
    return target, rank


@pytest.mark.parametrize("seed", range(8))
def test_xlnet_perm_mask_follows_the_order(tok, seed):
    samples, batch, ids, real, special = collated(tok, XLNetCollator, seed)
    B, L = ids.shape
    # The content stream is the windows themselves: no [MASK] anywhere.
    assert torch.equal(batch["input_ids"], ids) and not (batch["input_ids"] == tok.ids.mask).any()
    assert torch.equal(batch["attention_mask"], real)
    target, rank = target_roles(batch, L)
    pos, valid = batch["target_positions"], batch["labels"] != -100
    assert torch.equal(batch["labels"][valid], ids.gather(1, pos)[valid])
    assert (pos[~valid] == 0).all()
    assert not (target & (special | ~real)).any()  # never a special token or padding
    see = ~batch["perm_mask"]  # [B, L, L]: True where i may see j
    # i sees j iff j is real and (a non-target, or a target earlier in the order than i).
    expected = real[:, None, :] & (~target[:, None, :] | (target[:, None, :] & (rank[:, None, :] < rank[:, :, None])))
    assert torch.equal(see, expected)
    assert not see.diagonal(dim1=1, dim2=2)[target].any()  # a target never sees itself
    assert not see[:, :, ~real.any(0)].any() and not (see & ~real[:, None, :]).any()  # padding never seen
    # Non-targets see no target.
    assert not (see & ~target[:, :, None] & target[:, None, :]).any()
    # Query rows (the targets' perm_mask rows, padded slots at position 0) are never empty.
    query = see.gather(1, pos[:, :, None].expand(B, pos.size(1), L))
    assert query.any(-1).all()
    # Transitively, through any number of layers of the content stream (which also sees itself),
    # a target reaches only tokens earlier in the order.
    content = see | torch.eye(L, dtype=torch.bool)
    reach = closure(query, content, 4)
    later_or_self = target[:, None, :] & (rank[:, None, :] >= torch.arange(pos.size(1))[None, :, None])
    assert not (reach & later_or_self & valid[:, :, None]).any()


def test_xlnet_partial_prediction_share_and_ngram_lengths(tok):
    samples = long_windows(tok, 400, length=512)
    batch = XLNetCollator(tok.ids, seed=3)(samples)
    ids, _, special = padded(tok, samples)
    target, _ = target_roles(batch, ids.size(1))
    n = (~special).sum(1)
    share = target.sum(1).float() / n
    assert abs(share.mean().item() - 1 / 6) < 0.005 and (share - 1 / 6).abs().max() < 0.02
    # N-gram lengths in words, read off the collator's own selection (touching spans cannot be told
    # apart from the mask alone). Drawn with p(n) ~ 1/n; realised lengths lean a little short, since a
    # long n-gram more often overlaps a taken one and the last span of a row shrinks to its budget.
    from lit_ptm.data.collate.common import sample_noise
    from lit_ptm.data.collate.spans import mask_budget, select_spans
    candidate, word_start = ~special, pad_windows(samples, "word_start", True)
    noise = sample_noise(samples, 3, 3, ids.size(1))
    span_id = select_spans(candidate, mask_budget(candidate, 1 / 6), noise[:, 0], noise[:, 1],
                           XLNetCollator(tok.ids, seed=3).lengths, word_start).span_id
    assert torch.equal(span_id > 0, target)
    words = torch.zeros(len(samples), ids.size(1) + 1, dtype=torch.long).scatter_add_(
        1, span_id, (word_start & (span_id > 0)).long())[:, 1:]
    counts = torch.bincount(words[words > 0], minlength=7)[1:].float()
    assert counts[5:].sum() == 0  # n <= 5
    share, p = counts[:5] / counts.sum(), 1 / torch.arange(1, 6).float()
    assert (share[1:] < share[:-1]).all()
    assert torch.allclose(share, p / p.sum(), rtol=0.25, atol=0)


def test_xlnet_any_length_and_determinism(tok):
    collate = XLNetCollator(tok.ids, seed=1)
    samples = windows(tok, 64, low=3, high=40)
    batch = collate(samples)
    for b in (0, 7, 31):
        alone = collate([samples[b]])
        L = len(samples[b]["ids"])
        P = alone["target_positions"].size(1)
        assert torch.equal(alone["perm_mask"][0], batch["perm_mask"][b, :L, :L])
        assert torch.equal(alone["target_positions"][0], batch["target_positions"][b, :P])
        assert torch.equal(alone["labels"][0], batch["labels"][b, :P])
        assert (batch["labels"][b, P:] == -100).all()
    again = collate(samples)
    assert all(torch.equal(batch[k], again[k]) for k in ("perm_mask", "target_positions", "labels"))
    other_epoch = collate([{**s, "epoch": 1} for s in samples])
    assert not torch.equal(other_epoch["perm_mask"], batch["perm_mask"])


# ----------------------------------------------------------------------------------------- MPNet


@pytest.mark.parametrize("seed", range(8))
def test_mpnet_masks_follow_the_reference_table(tok, seed):
    samples, batch, ids, real, special = collated(tok, MPNetCollator, seed)
    B, L = ids.shape
    pos, valid = batch["target_positions"], batch["labels"] != -100
    C = pos.size(1)
    n = (~special).sum(1)
    assert torch.equal(valid.sum(1), torch.clamp((n * 0.15).round().long(), min=1))  # c = round(0.15 n)
    target, k = target_roles(batch, L)
    assert not (target & (special | ~real)).any()
    # Layout: [window | slots], positions [positions | target positions], the query stream = the slots.
    assert torch.equal(batch["input_ids"][:, :L], ids)
    assert torch.equal(batch["input_ids"][:, L:], batch["query_ids"])
    assert torch.equal(batch["position_ids"][:, :L], torch.arange(L).expand(B, L))
    assert torch.equal(batch["position_ids"][:, L:], batch["query_position_ids"])
    assert torch.equal(batch["query_position_ids"], pos)
    assert torch.equal(batch["labels"][valid], ids.gather(1, pos)[valid])
    content, query = batch["content_mask"], batch["query_mask"]
    assert content.shape == (B, L + C, L + C) and query.shape == (B, C, L + C)
    # The table, entry by entry.
    nonpred = real & ~target
    order = torch.cat([k, torch.arange(C).expand(B, C)], 1)
    col_pred = torch.cat([target, torch.zeros(B, C, dtype=torch.bool)], 1)
    col_slot = torch.cat([torch.zeros(B, L, dtype=torch.bool), valid], 1)
    col_nonpred = torch.cat([nonpred, torch.zeros(B, C, dtype=torch.bool)], 1)
    for b in range(B):
        for i in range(L + C):
            row = content[b, i]
            if i < L and not real[b, i] or i >= L and not valid[b, i - L]:
                assert row.nonzero().flatten().tolist() == [i]  # padding rows see themselves only
                continue
            assert row[col_nonpred[b]].all()
            if i < L and target[b, i]:
                ki = int(k[b, i])
                assert torch.equal(row[col_pred[b]], order[b][col_pred[b]] <= ki)
                assert torch.equal(row[col_slot[b]], order[b][col_slot[b]] > ki)
            else:
                assert not row[col_pred[b]].any() and row[col_slot[b]].all()
            assert not (row & ~(col_nonpred[b] | col_pred[b] | col_slot[b])).any()  # padding never seen
        for q in range(C):
            row = query[b, q]
            if not valid[b, q]:
                assert row.nonzero().flatten().tolist() == [L + q]
                continue
            assert row[col_nonpred[b]].all()
            assert torch.equal(row[col_pred[b]], order[b][col_pred[b]] < q)
            assert torch.equal(row[col_slot[b]], order[b][col_slot[b]] >= q)
            assert not (row & ~(col_nonpred[b] | col_pred[b] | col_slot[b])).any()
    # Position compensation: every query sees the positions of all n real tokens of its row.
    positions = batch["position_ids"]
    seen = torch.zeros(B, C, L + 1, dtype=torch.bool).scatter_(
        2, torch.where(query, positions[:, None, :], L).expand(B, C, L + C), True)[:, :, :L]
    assert torch.equal(seen[valid], real[:, None, :].expand(B, C, L)[valid])
    # No predicted token at the query's own or a later order position is reachable, over any layers.
    reach = closure(query, content, 4)
    forbidden = col_pred[:, None, :] & (order[:, None, :] >= torch.arange(C)[None, :, None])
    assert not (reach & forbidden & valid[:, :, None]).any()
    # Earlier predicted tokens are seen directly.
    assert torch.equal((query & col_pred[:, None, :]).sum(-1)[valid], torch.arange(C).expand(B, C)[valid])


def test_mpnet_slots_split_80_10_10(tok):
    samples = windows(tok, 3000, low=20, high=64)
    batch = MPNetCollator(tok.ids, seed=7)(samples)
    ids, _, _ = padded(tok, samples)
    valid = batch["labels"] != -100
    slots, originals = batch["query_ids"][valid], batch["labels"][valid]
    total = len(slots)
    masked = slots == tok.ids.mask
    unchanged = slots == originals
    randomised = ~masked & ~unchanged
    assert total > 15000  # +- 1% is > 3 sigma
    assert abs(masked.float().mean().item() - 0.8) < 0.01
    assert abs(unchanged.float().mean().item() - 0.1) < 0.01
    assert abs(randomised.float().mean().item() - 0.1) < 0.01
    assert not torch.isin(slots[randomised], torch.tensor(tok.ids.special)).any()
    assert (batch["query_ids"][~valid] == tok.ids.pad).all()


def test_mpnet_determinism_and_batch_independence(tok):
    collate = MPNetCollator(tok.ids, seed=2)
    samples = windows(tok, 32, low=3, high=40)
    batch = collate(samples)
    L, C = max(len(s["ids"]) for s in samples), batch["labels"].size(1)
    for b in (0, 5, 31):
        alone = collate([samples[b]])
        n, c = len(samples[b]["ids"]), alone["labels"].size(1)
        assert torch.equal(alone["target_positions"][0], batch["target_positions"][b, :c])
        assert torch.equal(alone["query_ids"][0], batch["query_ids"][b, :c])
        assert torch.equal(alone["labels"][0], batch["labels"][b, :c])
        columns = torch.cat([torch.arange(n), L + torch.arange(c)])
        assert torch.equal(alone["content_mask"][0], batch["content_mask"][b][columns][:, columns])
        assert torch.equal(alone["query_mask"][0], batch["query_mask"][b, :c][:, columns])
        # Its real queries see none of the batch's padding (window or slots); its padded queries see themselves.
        assert not batch["query_mask"][b, :c, n:L].any() and not batch["query_mask"][b, :c, L + c:].any()
        assert torch.equal(batch["query_mask"][b, c:], torch.eye(L + C, dtype=torch.bool)[L + c:])
    again = collate(samples)
    assert all(torch.equal(batch[k], again[k]) for k in batch if k != "num_tokens")


def test_packed_documents_are_isolated(tok):
    samples = windows(tok, 32, low=30, high=64, documents=3)
    mp = MPNetCollator(tok.ids, seed=4)(samples)
    ids, real, _ = padded(tok, samples)
    B, L = ids.shape
    doc = pad_windows(samples, "document", -1)
    pos = mp["target_positions"]
    doc_all = torch.cat([doc, doc.gather(1, pos)], 1)
    different = doc_all[:, :, None] != doc_all[:, None, :]
    assert not (mp["content_mask"] & different & ~torch.eye(L + pos.size(1), dtype=torch.bool)).any()
    assert not (mp["query_mask"] & different[:, L:]).any()
    # Positions restart per document, the slots carry their target's.
    assert torch.equal(mp["query_position_ids"], mp["position_ids"][:, :L].gather(1, pos))
    assert mp["query_mask"].any(-1).all() and mp["content_mask"].any(-1).all()
    xl = XLNetCollator(tok.ids, seed=4)(samples)
    assert torch.equal(xl["document_ids"], doc) and torch.equal(xl["position_ids"], mp["position_ids"][:, :L])
    # With the documents AND-ed in (as the stack does), no query row is empty either.
    see = ~xl["perm_mask"] & (doc[:, :, None] == doc[:, None, :])
    tp = xl["target_positions"]
    assert see.gather(1, tp[:, :, None].expand(*tp.shape, L)).any(-1).all()
