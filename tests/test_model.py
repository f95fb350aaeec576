import dataclasses

import pytest
import torch

from lit_ptm.nn import LMHead, ModelConfig, Transformer
from lit_ptm.nn import AttentionMask

TINY = ModelConfig(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                   max_position_embeddings=40, dropout=0.0, attention_dropout=0.0, type_vocab_size=2)


def model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(dataclasses.replace(TINY, **kw)).eval()


def hidden(m: Transformer, ids: torch.Tensor, mask: AttentionMask | None = None, **kw) -> torch.Tensor:
    return m(ids, mask, **kw).hidden


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_causal_mode_never_sees_the_future(norm_position):
    m = model(norm_position=norm_position, final_norm=norm_position == "pre")
    causal = AttentionMask(causal=True)
    x = torch.randint(5, 99, (2, 12))
    y = x.clone()
    y[:, 7:] = torch.randint(5, 99, (2, 5))
    assert torch.allclose(hidden(m, x, causal)[:, :7], hidden(m, y, causal)[:, :7], atol=1e-6)
    assert not torch.allclose(hidden(m, x, causal)[:, 7:], hidden(m, y, causal)[:, 7:])
    # Read bidirectionally, the same stack does see the future.
    assert not torch.allclose(hidden(m, x)[:, :7], hidden(m, y)[:, :7])


@pytest.mark.parametrize("causal", [False, True])
def test_segments_confine_attention_to_each_document(causal):
    m = model()
    x = torch.randint(5, 99, (1, 10))
    seg = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    docs = AttentionMask(documents=seg, causal=causal)
    y = x.clone()
    y[:, 4:] = torch.randint(5, 99, (1, 6))
    # Changing document 1 leaves document 0's states untouched, in either direction.
    assert torch.allclose(hidden(m, x, docs)[:, :4], hidden(m, y, docs)[:, :4], atol=1e-6)
    z = x.clone()
    z[:, :4] = torch.randint(5, 99, (1, 4))
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
    a, b = hidden(m, x, docs, position_ids=pos), hidden(m, z, docs, position_ids=pos)
    assert torch.allclose(a[:, 4:], b[:, 4:], atol=1e-6)
    # And a packed document equals the same document alone (positions restart).
    alone = hidden(m, x[:, 4:], AttentionMask(causal=causal))
    assert torch.allclose(a[:, 4:], alone, atol=1e-5)


def test_padding_does_not_change_real_tokens():
    m = model()
    x = torch.randint(5, 99, (1, 8))
    padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
    other = torch.cat([x, torch.randint(5, 99, (1, 4))], 1)
    mask = AttentionMask(padding=torch.tensor([[True] * 8 + [False] * 4]))
    assert torch.allclose(hidden(m, padded, mask)[:, :8], hidden(m, x)[:, :8], atol=1e-5)
    assert torch.allclose(hidden(m, other, mask)[:, :8], hidden(m, x)[:, :8], atol=1e-5)


def test_no_query_row_is_left_without_keys():
    pad = torch.tensor([[True, True, False, False]])
    for causal in (False, True):
        assert AttentionMask(padding=pad, causal=causal).dense(4, 4).any(-1).all()
    left = torch.tensor([[False, False, True, True]])  # left padding (generation): rows 0 and 1 see only padding
    assert AttentionMask(padding=left, causal=True).dense(4, 4).any(-1).all()
    seg = torch.tensor([[0, 0, 1, -1]])
    assert AttentionMask(documents=seg, causal=True).dense(4, 4).any(-1).all()
    assert AttentionMask().lower(4, 4).mask is None and AttentionMask().lower(4, 4).kernel == "sdpa"  # no mask at all
    assert AttentionMask(causal=True).lower(4, 4).kernel == "sdpa-causal"


def test_sequence_longer_than_positions_is_a_clear_error():
    with pytest.raises(ValueError, match=r"sequence length 41 exceeds the model.s 40 positions"):
        model()(torch.zeros(1, 41, dtype=torch.long))
    m = model()
    cache = m.new_cache(1, 40)
    m(torch.zeros(1, 30, dtype=torch.long), AttentionMask(causal=True), cache=cache)
    with pytest.raises(ValueError, match=r"sequence length 41 exceeds"):  # the cached positions count
        m(torch.zeros(1, 11, dtype=torch.long), AttentionMask(causal=True), cache=cache)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"model.config.hidden_size=30: is not divisible by num_heads=4"):
        ModelConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="model.config.activation='swish'"):
        ModelConfig(activation="swish")
    with pytest.raises(ValueError, match="model.config.norm_position"):
        ModelConfig(norm_position="middle")
    with pytest.raises(ValueError, match="vocab_size is not set"):
        Transformer(ModelConfig(hidden_size=32, num_heads=2, num_layers=1))


def test_tied_lm_head_shares_the_embedding_and_runs_on_given_rows():
    m = model()
    head = LMHead(m.config, m.embeddings.tokens)
    assert head.embedding.weight is m.embeddings.tokens.weight
    h = hidden(m, torch.randint(5, 99, (2, 6)))
    rows = h[torch.tensor([[True, False, False, True, False, False]] * 2)]
    assert head(rows).shape == (4, 99)
    untied = LMHead(dataclasses.replace(m.config, tie_word_embeddings=False, lm_head_transform=False), m.embeddings.tokens)
    assert untied.weight.shape == (99, 32) and untied.weight is not m.embeddings.tokens.weight


def test_pre_ln_gpt2_flags_build_the_gpt2_layout():
    m = model(norm_position="pre", final_norm=True, embedding_norm=False, scale_residual_init=True, init_std=0.02)
    assert m.final_norm is not None and m.embeddings.norm is None
    # GPT-2 scales residual projections by 1 / sqrt(2 * layers).
    std = m.blocks[0].attention.out.weight.std().item()
    assert abs(std - 0.02 / 2) < 0.004
    total = sum(p.numel() for p in m.parameters())
    H, V, P, I, L = 32, 99, 40, 64, 2
    per_block = 3 * H * H + 3 * H + H * H + H + H * I + I + I * H + H + 4 * H
    assert total == V * H + P * H + 2 * H + L * per_block + 2 * H  # tokens, positions, token types, blocks, final norm


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("scale", [0.1, 30.0])  # 30: probabilities underflow fp32, the exact path takes over
def test_fused_linear_cross_entropy_matches_autograd(monkeypatch, with_bias, scale):
    from lit_ptm.nn import losses

    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 700)  # several chunks of 6 rows
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(37, 16, generator=g) * scale).requires_grad_()
    w = torch.randn(101, 16, generator=g).requires_grad_()
    b = torch.randn(101, generator=g).requires_grad_() if with_bias else None
    t = torch.randint(0, 101, (37,), generator=g)
    loss, argmax = losses.linear_cross_entropy(h * 2, w, b, t, want_argmax=True)
    (loss * 3).backward()
    fused = [p.grad.clone() for p in (h, w, b) if p is not None]
    for p in (h, w, b):
        if p is not None:
            p.grad = None
    logits = torch.nn.functional.linear(h * 2, w, b)
    reference = torch.nn.functional.cross_entropy(logits, t)
    (reference * 3).backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.equal(argmax, logits.argmax(1))
    for ours, p in zip(fused, [p for p in (h, w, b) if p is not None]):
        assert torch.allclose(ours, p.grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # evaluation: the same loss, no gradient buffers
        assert losses.linear_cross_entropy(h * 2, w, b, t)[0].item() == pytest.approx(reference.item(), rel=1e-5)


def test_fused_linear_cross_entropy_trains_a_bias_alone():
    """Only the bias requires grad (bias-only fine-tuning, frozen embeddings): it still gets its gradient."""
    from lit_ptm.nn.losses import linear_cross_entropy

    g = torch.Generator().manual_seed(1)
    h, w, t = torch.randn(9, 8, generator=g), torch.randn(13, 8, generator=g), torch.randint(0, 13, (9,), generator=g)
    b = torch.zeros(13, requires_grad=True)
    linear_cross_entropy(h, w, b, t)[0].backward()
    expected = torch.softmax(h @ w.t(), 1).mean(0) - torch.nn.functional.one_hot(t, 13).float().mean(0)
    assert torch.allclose(b.grad, expected, atol=1e-6)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())  # parameters() yields a shared tensor once


def test_all_shared_layers_hold_one_layers_parameters_whatever_the_depth():
    shallow, deep = model(share="all", num_layers=2), model(share="all", num_layers=6)
    assert n_params(shallow) == n_params(deep)
    assert all(b is deep.blocks[0] for b in deep.blocks)
    unshared = model(num_layers=6)
    per_block = n_params(unshared.blocks[0])
    assert n_params(unshared) - n_params(deep) == 5 * per_block
    # Gradients from every layer reach the one shared layer.
    deep.train()
    hidden(deep, torch.randint(5, 99, (2, 8))).pow(2).mean().backward()
    grads = [p.grad for p in deep.blocks[0].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("share, shared, own", [("attention", "attention", "ffn"), ("ffn", "ffn", "attention")])
def test_partial_sharing_shares_one_sub_layer(share, shared, own):
    m = model(share=share, num_layers=4)
    for block in m.blocks[1:]:
        assert getattr(block, shared) is getattr(m.blocks[0], shared)
        assert getattr(block, own) is not getattr(m.blocks[0], own)
    sub = n_params(getattr(m.blocks[0], shared)) + n_params(getattr(m.blocks[0], f"{shared}_norm"))
    assert n_params(model(num_layers=4)) - n_params(m) == 3 * sub


@pytest.mark.parametrize("transform", [True, False])
def test_factorised_embeddings_project_to_hidden_and_back(transform):
    m = model(embedding_size=8, lm_head_transform=transform)
    assert m.embeddings.tokens.weight.shape == (99, 8) and m.project.weight.shape == (32, 8)
    assert m.embeddings.positions.weight.shape == (40, 8) and m.embeddings.norm.normalized_shape == (8,)
    h = hidden(m, torch.randint(5, 99, (2, 6)))
    assert h.shape == (2, 6, 32)
    head = LMHead(m.config, m.embeddings.tokens)
    assert head(h.flatten(0, 1)).shape == (12, 99)
    loss, _ = head.loss(h.flatten(0, 1), torch.randint(0, 99, (12,)))
    loss.backward()
    assert m.embeddings.tokens.weight.grad is not None and m.project.weight.grad is not None
    # V x E + E x H instead of V x H.
    assert n_params(model()) - n_params(model(embedding_size=8)) == (99 + 40 + 2) * (32 - 8) + 2 * (32 - 8) - (8 * 32 + 32)


def test_sharing_and_embedding_size_are_validated():
    with pytest.raises(ValueError, match="model.config.share='layers'"):
        ModelConfig(share="layers")
    with pytest.raises(ValueError, match="model.config.embedding_size=0"):
        ModelConfig(embedding_size=0)
