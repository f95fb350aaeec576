"""XLNet's and MPNet's permutation LMs on the model itself (tiny, random weights, the real collators'
batches): no prediction reads a token its factorisation order hides, through every layer, at odd and
even lengths; the query stream runs at the predictions only and leaves the content stream alone;
Transformer-XL's relative attention against a reference written out here (and its gradients); MPNet's
bias between positions; packed documents read as each document alone. (The collators' masks:
test_permute.py; the recipes through the CLI: test_cli.py, test_recipe_losses.py; fine-tuning:
test_finetune.py; generation refused: test_generate.py.)"""

import dataclasses

import pytest
import torch

from conftest import random_module
from test_permute import target_roles, windows
from test_seq2seq import CONFIGS
from lit_ptm.data.collate.common import pad_windows
from lit_ptm.nn import AttentionMask, ModelConfig
from lit_ptm.nn.attention import Attention
from lit_ptm.nn.mask import LoweredMask, RelativeDistances
from lit_ptm.nn.stack import sinusoid_distances

KINDS = ["xlnet", "mpnet"]
# Denser than the recipes (1/6 and 15%), so that short rows hold several predictions in a real order.
DENSE = {"xlnet": {"partial_prediction": 2}, "mpnet": {"mlm_probability": 0.4}}


def model(kind, tok):
    cls, config = CONFIGS[kind]
    return random_module(cls, config=dataclasses.replace(config, vocab_size=tok.vocab_size), **DENSE[kind])


def batch_of(module, tok, samples):
    """``samples`` collated by the objective's own collator (documents isolated)."""
    samples = [{**s, "index": i} for i, s in enumerate(samples)]
    return module.data_recipe().collator(tok.ids, 0, True)(samples)


def rows_of_lengths(tok, lengths):
    return [windows(tok, 1, low=n, high=n + 1, seed=n)[0] for n in lengths]


def hidden_tokens(kind, batch, pad):
    """[B, P, W] bool: the window tokens (W: the window's width) prediction p may not read: XLNet's
    perm_mask rows of the targets (its own token included, and padding); MPNet's predicted tokens at or
    after p in the order, and padding (its [M] slots are not window tokens)."""
    labels = batch["labels"]
    if kind == "xlnet":
        perm = batch["perm_mask"]
        return perm.gather(1, batch["target_positions"][:, :, None].expand(-1, -1, perm.size(2)))
    W = batch["input_ids"].size(1) - labels.size(1)
    _, rank = target_roles(batch, W)  # -1 off the predicted tokens
    later = rank[:, None, :] >= torch.arange(labels.size(1))[None, :, None]
    return later | (batch["input_ids"][:, None, :W] == pad)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [15, 16])
def test_no_prediction_reads_a_token_its_order_hides(kind, length, tok):
    """For every prediction and every window token: changing a token it may not see leaves its logits
    as they were (1e-6); changing one it may see moves them. Two layers, so what the content stream
    passes on is covered; a shorter second row (the other parity), so padding is too."""
    m = model(kind, tok)
    batch = batch_of(m, tok, rows_of_lengths(tok, [length, length - 5]))
    hidden = hidden_tokens(kind, batch, tok.ids.pad)
    valid = batch["labels"] != -100
    (B, P, W), ids = hidden.shape, batch["input_ids"]
    target, _ = target_roles(batch, W)
    # Not vacuous: each row holds several predictions, some reading an earlier one; each hides its own token.
    assert (valid.sum(1) >= 3).all() and (~hidden & target[:, None, :] & valid[:, :, None]).any()
    own = hidden.gather(2, batch["target_positions"][:, :, None])[..., 0]
    assert own[valid].all()

    def logits(input_ids):
        with torch.no_grad():
            return m.lm_head(m.two_streams({**batch, "input_ids": input_ids}).query_hidden)

    base = logits(ids)
    regular = tok.ids.regular_ids()
    tested = torch.zeros(2, B, P, dtype=torch.long)  # [hidden, seen] tokens tested per prediction
    for b in range(B):
        for j in range(W):  # MPNet: the window only; its [M] slots (input_ids[:, W:], query_ids) stay
            changed = ids.clone()
            changed[b, j] = regular[j] if regular[j] != ids[b, j] else regular[j + 1]
            moved = (logits(changed) - base).abs().amax(-1)  # [B, P]
            assert moved[torch.arange(B) != b].max() == 0  # other rows never read it
            unseen, seen = hidden[b, :, j] & valid[b], ~hidden[b, :, j] & valid[b]
            assert (moved[b][unseen] <= 1e-6).all(), (b, j, moved[b][unseen])
            assert (moved[b][seen] > 1e-5).all(), (b, j, moved[b][seen])
            tested[0, b] += unseen
            tested[1, b] += seen
    assert (tested[:, valid] > 0).all()  # every prediction had tokens of both kinds to test


@pytest.mark.parametrize("kind", KINDS)
def test_the_query_stream_runs_at_the_predictions_only_and_leaves_the_content_stream_alone(kind, tok, monkeypatch):
    m = model(kind, tok)
    batch = batch_of(m, tok, rows_of_lengths(tok, [21, 16, 9]))
    stack, calls = m.stack(), []
    forward = stack.forward
    monkeypatch.setattr(stack, "forward", lambda *a, **kw: calls.append((a, kw)) or forward(*a, **kw))
    with torch.no_grad():
        out = m.two_streams(batch)
        (args, kw), = calls
        alone = forward(*args, **{k: v for k, v in kw.items() if not k.startswith("query")})
        parts = m.loss_parts(batch)
    assert torch.equal(out.hidden, alone.hidden)
    # One query row per prediction (the most of a row), far fewer than the tokens; the loss reads the real ones.
    labels = batch["labels"]
    assert kw["query_stream"].shape[:2] == out.query_hidden.shape[:2] == labels.shape
    assert labels.size(1) < batch["input_ids"].size(1) / 2
    assert parts.num_predicted == (labels != -100).sum()
    if kind == "xlnet":  # each query row stands at its target
        assert torch.equal(kw["query_columns"], batch["target_positions"])
    else:  # at its [M] slot, which carries its target's position
        W = batch["input_ids"].size(1) - labels.size(1)
        assert torch.equal(batch["position_ids"].gather(1, kw["query_columns"]), batch["position_ids"][:, W:])


# -- Transformer-XL's relative attention, written out ------------------------------------------------
def sinusoid(distance: torch.Tensor, width: int) -> torch.Tensor:
    """Transformer-XL's (and HF XLNet's) embedding of each relative distance: [sin(d f), cos(d f)], f_k = 10000^(-2k / width)."""
    angles = distance.double()[..., None] / 10000 ** (torch.arange(0, width, 2, dtype=torch.float64) / width)
    return torch.cat([angles.sin(), angles.cos()], -1)


def reference_attention(attention, x, context, q_pos, k_pos, q_seg, k_seg, allowed):
    """score(i, j) = [(q_i + r_w) . k_j + (q_i + r_r) . R(pos_i - pos_j) + (q_i + r_s) . seg(s_i != s_j)] / sqrt(hs),
    softmax over the allowed j, then the values and the output projection. x (B, Lq, H), context (B, Lk, H);
    segments None: no segment term."""
    (B, Lq, H), Lk, nh = x.shape, context.size(1), attention.num_heads
    hs, rel = H // nh, attention.relative
    w = attention.qkv.weight  # [q | k | v] rows; XLNet's projections have no biases
    q = (x @ w[:H].T).view(B, Lq, nh, hs)
    k, v = ((context @ w[a:a + H].T).view(B, Lk, nh, hs) for a in (H, 2 * H))
    R = rel.r(sinusoid(q_pos[:, :, None] - k_pos[:, None, :], H).to(x.dtype)).view(B, Lq, Lk, nh, hs)
    scores = torch.einsum("bind,bjnd->bnij", q + rel.content_bias, k) + torch.einsum("bind,bijnd->bnij", q + rel.position_bias, R)
    if q_seg is not None:
        seg = rel.segments[(q_seg[:, :, None] != k_seg[:, None, :]).long()]  # (B, Lq, Lk, nh, hs): same / other
        scores = scores + torch.einsum("bind,bijnd->bnij", q + rel.segment_bias, seg)
    scores = scores * hs**-0.5
    p = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
    return attention.out(torch.einsum("bnij,bjnd->bind", p, v).reshape(B, Lq, H))


@pytest.mark.parametrize("segments", [True, False])
def test_xlnet_relative_attention_is_transformer_xls_at_any_query_position(segments, tok):
    """Every attention call of a two-stream XLNet stack (float64) equals the reference: the content stream
    at the tokens' positions (restarting, as in a packed row), each query row at the position and segment
    of its query_columns entry (any columns, repeated, in any order). Without token_type_ids, as HF's
    XLNet: no segment term (the stack adds a constant per row instead, which changes no weight)."""
    stack = model("xlnet", tok).stack().double()
    g = torch.Generator().manual_seed(0)
    B, T, P, H = 2, 9, 5, stack.config.hidden_size
    ids = torch.randint(5, tok.vocab_size, (B, T), generator=g)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3], list(range(T))])
    types = torch.randint(0, 2, (B, T), generator=g) if segments else None
    columns = torch.tensor([[7, 0, 3, 3, 8], [2, 6, 1, 5, 4]])
    content = (torch.rand(B, T, T, generator=g) < 0.5) | torch.eye(T, dtype=torch.bool)
    query = torch.rand(B, P, T, generator=g) < 0.5
    query[:, :, 0] = True  # no empty row
    calls = []
    hooks = [block.attention.register_forward_hook(lambda module, a, kw, out: calls.append((module, a[0], kw.get("context"), out)),
                                                   with_kwargs=True) for block in stack.blocks]
    with torch.no_grad():
        stack(ids, AttentionMask(explicit=content), position_ids=positions, token_type_ids=types,
              query_stream=torch.randn(B, P, H, generator=g, dtype=torch.float64), query_mask=AttentionMask(explicit=query),
              query_columns=columns)
        for hook in hooks:
            hook.remove()
        assert len(calls) == 2 * len(stack.blocks)  # per layer: the query stream, then the content stream
        for attention, x, context, out in calls:
            if context is None:  # the content stream
                expected = reference_attention(attention, x, x, positions, positions, types, types, content)
            else:
                expected = reference_attention(attention, x, context, positions.gather(1, columns), positions,
                                               None if types is None else types.gather(1, columns), types, query)
            assert (out - expected).abs().max() < 1e-10


def test_xlnet_relative_attention_has_exact_gradients():
    """torch.autograd.gradcheck (float64) of a query stream's attention over a content stream through the
    relative terms: the inputs, the distance projection, the three biases and the segment vectors."""
    config = ModelConfig(vocab_size=10, hidden_size=4, num_layers=1, num_heads=2, intermediate_size=8, dropout=0.0,
                         attention_dropout=0.0, position_embedding="xlnet_relative", attention_bias=False)
    torch.manual_seed(0)
    attention = Attention(config).double()
    Lq, Lk = 2, 3
    relative = RelativeDistances(sinusoid_distances(Lk, 4, dtype=torch.float64), torch.tensor([[[2, 0, 1], [4, 3, 2]]]),
                                 torch.tensor([[[[False, True, True], [True, False, False]]]]))
    mask = LoweredMask(mask=torch.tensor([[[[True, True, False], [True, False, True]]]]), relative=relative)
    names = ["relative.r.weight", "relative.content_bias", "relative.position_bias", "relative.segment_bias", "relative.segments"]
    params = dict(attention.named_parameters())

    def attend(x, context, *weights):
        return torch.func.functional_call(attention, {**params, **dict(zip(names, weights))}, (x, mask), {"context": context})

    inputs = [torch.randn(1, Lq, 4, dtype=torch.float64), torch.randn(1, Lk, 4, dtype=torch.float64),
              *(torch.randn_like(params[n]) for n in names)]
    assert torch.autograd.gradcheck(attend, [t.requires_grad_() for t in inputs])


def test_mpnet_bias_between_the_batchs_positions_is_the_bias_of_a_plain_sequence(tok):
    """MPNet pretrains with the positions its batches carry (RelativePositionBias.between) and fine-tunes
    without (0..T-1): the same bias, and the same content states."""
    m = model("mpnet", tok)
    stack, T = m.stack(), 13
    positions = torch.arange(T).expand(2, T)
    assert torch.equal(stack.relative_bias.between(positions, positions, True), stack.relative_bias(T, 0, True).expand(2, -1, -1, -1))
    ids = torch.randint(5, tok.vocab_size, (2, T))
    with torch.no_grad():
        assert torch.equal(stack(ids, position_ids=positions).hidden, stack(ids).hidden)


def document_alone(kind, batch, documents, b, d):
    """Row b's document d (documents [B, W]: the samples' ids) as a batch of its own, with the masks the
    packed row gave it: (batch, its columns in the row, its prediction rows in the row)."""
    labels, targets = batch["labels"][b], batch["target_positions"][b]
    own = documents[b] == d
    columns, predictions = own.nonzero()[:, 0], ((labels != -100) & own[targets]).nonzero()[:, 0]
    alone = {"labels": labels[predictions][None], "target_positions": (targets[predictions] - columns[0])[None]}
    if kind == "xlnet":
        return {**alone, "input_ids": batch["input_ids"][b, columns][None],
                "perm_mask": batch["perm_mask"][b][columns][:, columns][None]}, columns, predictions
    columns = torch.cat([columns, documents.size(1) + predictions])  # its window and its [M] slots
    return {**alone, **{k: batch[k][b, predictions][None] for k in ("query_ids", "query_position_ids")},
            **{k: batch[k][b, columns][None] for k in ("input_ids", "position_ids")},
            "content_mask": batch["content_mask"][b][columns][:, columns][None],
            "query_mask": batch["query_mask"][b][predictions][:, columns][None]}, columns, predictions


@pytest.mark.parametrize("kind", KINDS)
def test_a_packed_row_reads_each_document_as_if_alone(kind, tok):
    """Packed documents (isolate_documents; positions restart per document): each document's content and
    query states are those of the document alone under the same order, to float32 rounding."""
    m = model(kind, tok)
    samples = windows(tok, 4, low=30, high=50, documents=3)
    batch = batch_of(m, tok, samples)
    documents = pad_windows(samples, "document", -1)
    compared = 0
    with torch.no_grad():
        packed = m.two_streams(batch)
        for b in range(len(samples)):
            for d in range(int(documents[b].max()) + 1):
                alone, columns, predictions = document_alone(kind, batch, documents, b, d)
                if len(predictions):
                    out = m.two_streams(alone)
                    assert (out.hidden[0] - packed.hidden[b, columns]).abs().max() < 1e-5
                    assert (out.query_hidden[0] - packed.query_hidden[b, predictions]).abs().max() < 1e-5
                    compared += d > 0
    assert compared >= 4  # documents after a row's first: their positions restart
