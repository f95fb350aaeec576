"""The stack's second edition: masks as data, one attention module (self, cross, two-stream, cached),
blocks from parts, shared embeddings, 2D positions."""

import dataclasses

import pytest
import torch

from lit_ptm.nn import AttentionMask, Embeddings, ModelConfig, Transformer
from lit_ptm.nn.layers import FEED_FORWARDS, FeedForward
from lit_ptm.nn.mask import create_mask, flex_attention

TINY = ModelConfig(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                   max_position_embeddings=40, dropout=0.0, attention_dropout=0.0, type_vocab_size=2)


def model(cross_attention=False, **kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(dataclasses.replace(TINY, **kw), cross_attention=cross_attention).eval()


# -- every mask kind against a mask built by hand, element by element ------------------------------------
def reference_mask(L, padding=None, documents=None, causal=False, prefix=None, explicit=None, B=2):
    """[B, L, L]: True where query q may see key k, written out with loops."""
    out = torch.zeros(B, L, L, dtype=torch.bool)
    for b in range(B):
        for q in range(L):
            for k in range(L):
                ok = True
                if documents is not None:
                    ok &= bool(documents[b, q] == documents[b, k])
                elif padding is not None:
                    ok &= bool(padding[b, k])
                if causal:
                    ok &= k <= q or (prefix is not None and k < int(prefix[b]))
                if explicit is not None:
                    ok &= bool(explicit[b, q, k])
                out[b, q, k] = ok
            if not out[b, q].any() and documents is None and padding is not None and not padding[b, q]:
                out[b, q, q] = True  # an empty padding row sees itself
    return out


L = 7
PADDING = torch.tensor([[True] * 5 + [False] * 2, [True] * 7])
DOCUMENTS = torch.tensor([[0, 0, 0, 1, 1, -1, -1], [0, 1, 1, 1, 2, 2, 2]])
PREFIX = torch.tensor([3, 0])
EXPLICIT = torch.rand(2, L, L, generator=torch.Generator().manual_seed(0)) < 0.5
CASES = {
    "padding": dict(padding=PADDING),
    "documents": dict(documents=DOCUMENTS),
    "causal": dict(causal=True),
    "causal+padding": dict(causal=True, padding=PADDING),
    "causal+documents": dict(causal=True, documents=DOCUMENTS),
    "prefix": dict(causal=True, prefix=PREFIX),
    "prefix+padding": dict(causal=True, prefix=PREFIX, padding=PADDING),
    "explicit": dict(explicit=EXPLICIT),
    "explicit+padding": dict(explicit=EXPLICIT, padding=PADDING),
}


@pytest.mark.parametrize("case", CASES)
def test_each_mask_kind_matches_a_hand_built_mask(case):
    kw = CASES[case]
    mask = AttentionMask(padding=kw.get("padding"), documents=kw.get("documents"), causal=kw.get("causal", False),
                         prefix_length=kw.get("prefix"), explicit=kw.get("explicit"))
    dense = mask.dense(L, L)
    assert torch.equal(dense.expand(2, 1, L, L)[:, 0], reference_mask(L, **kw))
    if case in ("padding", "documents", "causal+documents", "prefix", "causal+padding", "prefix+padding") and flex_attention:
        # The FlexAttention lowering describes the same pattern (compared on real query rows; a padding
        # row may see more there, never less).
        block = mask._block_mask(L, L, 0)
        flex = create_mask(block.mask_mod, 2, 1, L, L, device="cpu")[:, 0]
        real = PADDING if "padding" in case else torch.ones(2, L, dtype=torch.bool)
        assert torch.equal(flex[real], reference_mask(L, **kw)[real])


def test_bias_is_added_where_attention_is_allowed():
    bias = torch.randn(1, 4, L, L)
    lowered = AttentionMask(padding=PADDING, bias=bias).lower(L, L)
    assert lowered.mask.dtype == torch.float32
    assert torch.equal(lowered.mask[0, :, :, :5], bias[0, :, :, :5].expand(4, L, 5))
    assert torch.isinf(lowered.mask[0, :, :, 5:]).all()
    # The stack takes the bias: a bias that forbids key 0 is a mask that forbids it.
    m, x = model(), torch.randint(5, 99, (2, L))
    forbid = torch.zeros(1, 1, L, L)
    forbid[..., 0] = float("-inf")
    forbid[..., 0, 0] = 0.0  # row 0 must see something
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % 99
    a = m(x, AttentionMask(bias=forbid)).hidden
    b = m(y, AttentionMask(bias=forbid)).hidden
    assert torch.allclose(a[:, 1:], b[:, 1:], atol=1e-6) and not torch.allclose(a[:, 0], b[:, 0])


# -- leakage: changing what must not be seen leaves the output unchanged ---------------------------------
def test_prefix_lm_sees_its_whole_prefix_and_never_the_future():
    """The stack UniLM (seq2seq) and GLM (Part A / Part B) read: bidirectional over the first
    prefix_length tokens, causal after."""
    m, x = model(), torch.randint(5, 99, (2, 10))
    mask = AttentionMask(causal=True, prefix_length=torch.tensor([4, 6]))
    h = m(x, mask).hidden
    for b, prefix in enumerate((4, 6)):
        changed = x.clone()
        changed[b, prefix - 1] = (changed[b, prefix - 1] + 1) % 99  # the prefix's last token
        h2 = m(changed, mask).hidden
        assert not torch.allclose(h[b, 0], h2[b, 0])  # the prefix's first token sees it (bidirectional)
        later = x.clone()
        later[b, prefix + 2] = (later[b, prefix + 2] + 1) % 99  # a token of the causal part
        h3 = m(later, mask).hidden
        assert torch.allclose(h[b, : prefix + 2], h3[b, : prefix + 2], atol=1e-6)  # nobody before it sees it
        assert not torch.allclose(h[b, prefix + 2], h3[b, prefix + 2])
    # prefix 0 is the causal stack, prefix L the bidirectional one.
    assert torch.allclose(m(x, AttentionMask(causal=True, prefix_length=torch.tensor([0, 0]))).hidden,
                          m(x, AttentionMask(causal=True)).hidden, atol=1e-6)
    assert torch.allclose(m(x, AttentionMask(causal=True, prefix_length=torch.tensor([10, 10]))).hidden, m(x).hidden, atol=1e-6)


def test_cross_attention_sees_the_context_but_not_its_padding():
    m = model(cross_attention=True)
    x = torch.randint(5, 99, (2, 6))
    memory = torch.randn(2, 5, 32)
    padding = torch.tensor([[True, True, True, False, False], [True] * 5])
    context_mask = AttentionMask(padding=padding)
    h = m(x, AttentionMask(causal=True), context=memory, context_mask=context_mask).hidden
    changed = memory.clone()
    changed[0, 3:] = torch.randn(2, 32)  # row 0's padding: unseen
    assert torch.allclose(h, m(x, AttentionMask(causal=True), context=changed, context_mask=context_mask).hidden, atol=1e-6)
    changed[0, 1] += 1.0  # a real context position: seen by every query
    h2 = m(x, AttentionMask(causal=True), context=changed, context_mask=context_mask).hidden
    assert not torch.allclose(h[0], h2[0], atol=1e-4) and torch.allclose(h[1], h2[1], atol=1e-6)
    assert m.blocks[0].cross_attention is not m.blocks[0].attention
    assert n_params(m) > n_params(model())


def test_two_stream_query_stream_never_sees_its_own_content():
    """XLNet's query stream g attends to the content stream h through the same weights; with a mask that
    keeps position i from itself, g_i does not depend on token i (it sees only its position)."""
    m = model()
    block = m.blocks[0]
    ids = torch.randint(5, 99, (1, 6))
    h = m.embeddings(ids)
    g = m.embeddings.positions.weight[:6][None].expand(1, -1, -1)  # query stream: positions only
    permutation_mask = ~torch.eye(6, dtype=torch.bool)[None] & torch.ones(6, 6, dtype=torch.bool).tril()[None]
    permutation_mask[:, 0, 0] = True  # the first position has nothing else to see: it sees its own content
    lowered = AttentionMask(explicit=permutation_mask).lower(6, 6)
    g_out, _ = block(g, lowered, kv_from=h)
    for i in range(1, 6):
        changed = ids.clone()
        changed[0, i] = (changed[0, i] + 7) % 99
        g_changed, _ = block(g, lowered, kv_from=m.embeddings(changed))
        assert torch.allclose(g_out[0, : i + 1], g_changed[0, : i + 1], atol=1e-6)  # up to and including i: unseen
        if i < 5:
            assert not torch.allclose(g_out[0, i + 1], g_changed[0, i + 1])  # later positions see token i
    # The content stream h through the same block sees itself: the weights are shared, the roles are not.
    h_out, _ = block(h, AttentionMask(causal=True).lower(6, 6))
    assert h_out.shape == g_out.shape


# -- the KV cache ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_cached_decoding_equals_the_full_forward(norm_position):
    m = model(norm_position=norm_position, final_norm=norm_position == "pre")
    x = torch.randint(5, 99, (2, 12))
    full = m(x, AttentionMask(causal=True)).hidden
    cache = m.new_cache(2, 20)
    parts = [m(x[:, :5], AttentionMask(causal=True), cache=cache).hidden]  # a prompt of 5
    for t in range(5, 12):  # then one token at a time: the query is shorter than the keys
        parts.append(m(x[:, t : t + 1], AttentionMask(causal=True), cache=cache).hidden)
    assert cache.length == 12
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_a_cached_query_is_not_aligned_top_left():
    """SDPA's is_causal aligns its triangle top-left: for 2 queries over 6 keys it would let the
    first query see only key 0. The lowering gives the cached call an explicit mask instead."""
    lowered = AttentionMask(causal=True).lower(2, 6)
    assert not lowered.is_causal
    assert lowered.mask.tolist() == [[True] * 5 + [False], [True] * 6]
    # A causal-only pattern holds no tensor: the mask is built on the device the stack runs on (a
    # cached decoding step on a GPU must not get a CPU mask).
    assert AttentionMask(causal=True).lower(1, 6, device="meta").mask.device.type == "meta"


def test_cached_decoding_with_left_padding_and_cross_attention():
    m = model(cross_attention=True)
    memory = torch.randn(2, 4, 32)
    x = torch.randint(5, 99, (2, 8))
    padding = torch.tensor([[False, False] + [True] * 6, [True] * 8])  # row 0 left-padded
    positions = (padding.long().cumsum(1) - 1).clamp(min=0)
    full = m(x, AttentionMask(causal=True, padding=padding), position_ids=positions, context=memory).hidden
    cache = m.new_cache(2, 8, cross_length=4)
    first = m(x[:, :5], AttentionMask(causal=True, padding=padding[:, :5]), position_ids=positions[:, :5], context=memory,
              cache=cache).hidden
    rest = [m(x[:, t : t + 1], AttentionMask(causal=True, padding=padding[:, : t + 1]), position_ids=positions[:, t : t + 1],
              context=memory, cache=cache).hidden for t in range(5, 8)]
    got = torch.cat([first, *rest], 1)
    assert torch.allclose(got[0, 2:], full[0, 2:], atol=1e-5) and torch.allclose(got[1], full[1], atol=1e-5)
    assert torch.isfinite(got).all()  # the padding rows saw themselves, not nothing


# -- blocks from parts, shared embeddings, 2D positions ------------------------------------------------------
class _CountingFeedForward(FeedForward):
    """A feed-forward with an auxiliary loss, as an expert layer has one: it must reach the stack's output."""

    def forward(self, x):
        y = super().forward(x)
        return y, {"aux_loss": y.pow(2).mean()}


def test_a_feed_forward_with_an_auxiliary_loss_plugs_in_and_its_loss_is_summed(monkeypatch):
    monkeypatch.setitem(FEED_FORWARDS, "dense", _CountingFeedForward)
    m = model()
    out = m(torch.randint(5, 99, (2, 6)))
    assert set(out.aux_losses) == {"aux_loss"} and out.aux_losses["aux_loss"].requires_grad
    monkeypatch.setitem(FEED_FORWARDS, "dense", FeedForward)
    assert model()(torch.randint(5, 99, (2, 6))).aux_losses == {}


@pytest.mark.parametrize("act", ["gelu_tanh", "silu"])
def test_the_gated_feed_forward_is_act_of_the_gate_times_up_then_down(act):
    import torch.nn.functional as F

    m = model(feed_forward="gated", activation=act, bias=False)
    ffn = m.blocks[0].ffn
    assert [n for n, _ in ffn.named_parameters()] == ["gate.weight", "up.weight", "down.weight"]
    assert ffn.gate.weight.shape == ffn.up.weight.shape == (64, 32) and ffn.down.weight.shape == (32, 64)
    x = torch.randn(2, 5, 32)
    fn = (lambda h: F.gelu(h, approximate="tanh")) if act == "gelu_tanh" else F.silu
    expected = (fn(x @ ffn.gate.weight.T) * (x @ ffn.up.weight.T)) @ ffn.down.weight.T
    torch.testing.assert_close(ffn(x), expected, rtol=0, atol=1e-6)
    assert m(torch.randint(5, 99, (2, 6))).hidden.shape == (2, 6, 32)


def test_stacks_of_different_widths_share_one_embedding_table():
    """ELECTRA: the generator (narrower) and the discriminator share token, position and segment
    embeddings; each projects them to its own width."""
    discriminator = model()
    generator_config = dataclasses.replace(TINY, hidden_size=16, num_heads=2, intermediate_size=32, embedding_size=32)
    generator = Transformer(generator_config, embeddings=discriminator.embeddings)
    assert generator.embeddings is discriminator.embeddings and generator.project.weight.shape == (16, 32)
    before = discriminator.embeddings.tokens.weight.clone()
    assert torch.equal(discriminator.embeddings.tokens.weight, before)  # building the generator re-initialised nothing
    ids = torch.randint(5, 99, (2, 6))
    (generator(ids).hidden.sum() + discriminator(ids).hidden.sum()).backward()
    assert discriminator.embeddings.tokens.weight.grad is not None
    with pytest.raises(ValueError, match="shared embedding table is 32 wide"):
        Transformer(dataclasses.replace(TINY, hidden_size=16, num_heads=2), embeddings=discriminator.embeddings)


def test_block_positions_are_a_second_position_table():
    m = model(block_position_embedding=True)
    assert isinstance(m.embeddings, Embeddings) and m.embeddings.block_positions.weight.shape == (40, 32)
    ids = torch.randint(5, 99, (1, 6))
    a = m(ids, block_position_ids=torch.tensor([[0, 0, 0, 1, 2, 3]])).hidden
    b = m(ids, block_position_ids=torch.tensor([[0, 0, 0, 1, 2, 4]])).hidden
    assert not torch.allclose(a, b)
    assert "block_positions" not in dict(model().embeddings.named_children())


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# -- torch.compile -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [None, AttentionMask(causal=True), AttentionMask(padding=PADDING),
                                  AttentionMask(documents=DOCUMENTS, causal=True), AttentionMask(causal=True, prefix_length=PREFIX)],
                         ids=["bidirectional", "causal", "padding", "documents", "prefix"])
def test_the_stack_traces_without_graph_breaks(mask):
    m = model().train()
    explained = torch._dynamo.explain(lambda ids: m(ids, mask).hidden)(torch.randint(5, 99, (2, L)))
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_t5_and_decoder_stacks_trace_without_graph_breaks():
    """T5's relative bias (computed in the forward) and a decoder with cross-attention to padded context."""
    t5 = dict(position_embedding="relative", norm="rms", norm_position="pre", bias=False, scale_attention=False)
    context = torch.randn(2, 5, TINY.hidden_size)
    context_mask = AttentionMask(padding=torch.tensor([[True] * 3 + [False] * 2, [True] * 5]))
    for flags in ({}, t5):
        encoder, decoder = model(**flags).train(), model(cross_attention=True, **flags).train()
        for fn in (lambda ids: encoder(ids, AttentionMask(padding=PADDING)).hidden,
                   lambda ids: decoder(ids, AttentionMask(causal=True), context=context, context_mask=context_mask).hidden):
            explained = torch._dynamo.explain(fn)(torch.randint(5, 99, (2, L)))
            assert explained.graph_break_count == 0 and explained.graph_count == 1, (flags, explained.break_reasons)


def test_two_stream_stacks_trace_without_graph_breaks():
    """XLNet's relative attention (with segments and a Transformer-XL memory) and MPNet's bucketed bias from
    the batch's positions, content and query streams together."""
    xlnet = model(position_embedding="xlnet_relative", attention_bias=False, embedding_norm=False, type_vocab_size=0).train()
    mpnet = model(relative_attention_bias=True).train()
    columns = torch.tensor([[1, 4], [0, 5]])
    query = AttentionMask(explicit=torch.ones(2, 2, L, dtype=torch.bool).scatter(2, columns[:, :, None], False))
    g0 = torch.randn(2, 2, TINY.hidden_size)
    memory = [torch.randn(2, 3, TINY.hidden_size) for _ in xlnet.blocks]
    segments = torch.tensor([[0] * 3 + [1] * (L - 3), [0] * L])
    positions = torch.arange(L).expand(2, L)
    for fn in (lambda ids: xlnet(ids, AttentionMask(padding=PADDING), token_type_ids=segments, query_stream=g0, query_mask=query,
                                 query_columns=columns, memory=memory, memory_length=3).query_hidden,
               lambda ids: mpnet(ids, AttentionMask(padding=PADDING), position_ids=positions, query_stream=g0, query_mask=query,
                                 query_columns=columns).query_hidden):
        explained = torch._dynamo.explain(fn)(torch.randint(5, 99, (2, L)))
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_the_fused_loss_traces_without_graph_breaks_and_ignores_padding_rows():
    from lit_ptm.nn import LMHead

    m = model()
    head = LMHead(m.config, m.embeddings.tokens)
    h, t = torch.randn(10, 32, requires_grad=True), torch.randint(0, 99, (10,))
    explained = torch._dynamo.explain(lambda h, t: head.loss(h, t, want_argmax=True))(h, t)
    assert explained.graph_break_count == 0, explained.break_reasons
    # Rows with target -100 (the compiled path pads to a row bucket with them) change nothing.
    loss, argmax = head.loss(h, t, want_argmax=True)
    loss.backward()
    grad = h.grad.clone()
    h.grad = None
    padded_h = torch.cat([h, torch.randn(6, 32)])
    loss_padded, argmax_padded = head.loss(padded_h, torch.cat([t, torch.full((6,), -100)]), want_argmax=True)
    loss_padded.backward()
    assert torch.allclose(loss, loss_padded) and torch.equal(argmax, argmax_padded[:10]) and torch.allclose(grad, h.grad)


def test_a_compiled_training_step_trains_as_the_eager_one():
    """--model.compile: the stacks and the fused loss compiled (inductor, CPU); MLM's varying number of
    predicted rows must not recompile the loss each batch."""
    from lit_ptm.objectives import MaskedLM

    def train(compile):
        torch.manual_seed(0)
        module = MaskedLM(config=TINY, compile=compile)
        module.configure_model()
        opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
        ids = torch.randint(5, 99, (4, 16), generator=torch.Generator().manual_seed(0))
        losses = []
        for i in range(4):  # 20% .. 35% of the tokens predicted: a different row count each step
            chosen = torch.rand(4, 16, generator=torch.Generator().manual_seed(i)) < 0.2 + 0.05 * i
            loss = module.loss_parts({"input_ids": ids, "labels": ids.masked_fill(~chosen, -100)}).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses, module

    eager, _ = train(False)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):  # one compilation serves every batch
        compiled, module = train(True)
    assert compiled == pytest.approx(eager, abs=1e-5)
    assert module.stack()._compiled_call_impl is not None and module.lm_head._compiled_loss is not None


def test_a_two_stream_stack_never_lets_a_query_see_its_own_token():
    """XLNet's permutation LM through the whole stack: in a random factorisation order, the content
    stream sees itself and what comes before it in the order, the query stream only what comes before
    it. Over every layer, the query state of position i must not depend on token i (it predicts it),
    and must depend on the tokens before it in the order."""
    m = model()
    L_ = 6
    ids = torch.randint(5, 99, (1, L_))
    rank = torch.randperm(L_, generator=torch.Generator().manual_seed(3))  # position -> place in the order
    before = rank[None, :, None] > rank[None, None, :]  # (1, Lq, Lk): key k comes before query q in the order
    content = AttentionMask(explicit=before | torch.eye(L_, dtype=torch.bool)[None])
    first = int((rank == 0).nonzero())
    query_explicit = before.clone()
    # The first in the order has nothing before it to attend to; XLNet predicts only the last tokens of
    # an order, so its query row is never a prediction: let it see the others, and leave it out below.
    query_explicit[0, first] = True
    query_explicit[0, first, first] = False
    queries = AttentionMask(explicit=query_explicit)
    g0 = m.embeddings.positions.weight[:L_][None]  # the query stream starts from positions alone

    def query_states(tokens):
        return m(tokens, content, query_stream=g0, query_mask=queries).query_hidden

    base = query_states(ids)
    assert base.shape == (1, L_, 32)
    # The content stream is the stack's own output, untouched by the query stream beside it.
    assert torch.equal(m(ids, content, query_stream=g0, query_mask=queries).hidden, m(ids, content).hidden)
    for i in range(L_):
        changed = ids.clone()
        changed[0, i] = (changed[0, i] + 11) % 99
        moved = (query_states(changed) - base).abs().amax(-1)[0]  # per query position
        if i != first:
            assert moved[i] < 1e-6  # its own token: never seen, through any layer
        later = [q for q in range(L_) if rank[q] > rank[i]]
        assert all(moved[q] > 1e-6 for q in later)  # tokens after it in the order read it
