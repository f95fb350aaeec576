"""Shared pieces of the benchmarks: matching configs for lit_ptm and HF transformers, timing helpers."""

from __future__ import annotations

import os
import statistics
import time

import torch

from lit_ptm.nn import ModelConfig


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    return "jemalloc" if "jemalloc" in preload else "glibc malloc"


def bert_config(hidden: int, layers: int, heads: int, vocab: int = 30522, dropout: float = 0.1) -> ModelConfig:
    """BERT exactly as HF's BertConfig builds it (post-LN, eps 1e-12, GELU, 2 token types, 512 positions)."""
    return ModelConfig(
        vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=4 * hidden,
        max_position_embeddings=512, type_vocab_size=2, dropout=dropout, attention_dropout=dropout,
    )


def gpt2_config(hidden: int, layers: int, heads: int, vocab: int = 50257, dropout: float = 0.1) -> ModelConfig:
    """GPT-2 exactly as HF's GPT2Config builds it (pre-LN, eps 1e-5, GELU-tanh, 1024 positions, tied head without bias)."""
    return ModelConfig(
        vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=4 * hidden,
        max_position_embeddings=1024, norm_position="pre", norm_eps=1e-5, embedding_norm=False, final_norm=True,
        activation="gelu_tanh", lm_head_transform=False, lm_head_bias=False, scale_residual_init=True,
        dropout=dropout, attention_dropout=dropout,
    )


def t5_config(hidden: int, layers: int, heads: int, vocab: int = 32128, dropout: float = 0.1) -> ModelConfig:
    """T5 (v1.0) as HF's T5Config builds it: relative buckets, pre-LN RMSNorm eps 1e-6, no biases, ReLU,
    unscaled scores, tied head on states scaled by d^-0.5."""
    return ModelConfig(
        vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=4 * hidden,
        max_position_embeddings=512, position_embedding="relative", norm="rms", norm_position="pre", norm_eps=1e-6,
        embedding_norm=False, final_norm=True, bias=False, activation="relu", scale_attention=False,
        lm_head_transform=False, lm_head_bias=False, lm_head_scale=True, dropout=dropout, attention_dropout=0.0,
    )


def bart_config(hidden: int, layers: int, heads: int, vocab: int = 50265, dropout: float = 0.1) -> ModelConfig:
    """BART as HF's BartConfig builds it: post-LN eps 1e-5, GELU, positions offset by 2, embedding LayerNorm,
    tied head plus final_logits_bias."""
    return ModelConfig(
        vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=4 * hidden,
        max_position_embeddings=1026, position_offset=2, norm_eps=1e-5, lm_head_transform=False,
        dropout=dropout, attention_dropout=0.0,
    )


def hf_model(kind: str, cfg: ModelConfig):
    """The HF transformers model of the same architecture, with SDPA attention."""
    import transformers

    if kind == "t5":
        hf_cfg = transformers.T5Config(
            vocab_size=cfg.vocab_size, d_model=cfg.hidden_size, d_kv=cfg.head_size, d_ff=cfg.ffn_size,
            num_layers=cfg.num_layers, num_heads=cfg.num_heads, dropout_rate=cfg.dropout, feed_forward_proj="relu",
            decoder_start_token_id=0, pad_token_id=0,
        )
        hf_cfg._attn_implementation = "sdpa"
        return transformers.T5ForConditionalGeneration(hf_cfg)
    if kind == "bart":
        hf_cfg = transformers.BartConfig(
            vocab_size=cfg.vocab_size, d_model=cfg.hidden_size, encoder_layers=cfg.num_layers, decoder_layers=cfg.num_layers,
            encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads, encoder_ffn_dim=cfg.ffn_size,
            decoder_ffn_dim=cfg.ffn_size, dropout=cfg.dropout, attention_dropout=0.0, activation_dropout=0.0,
        )
        hf_cfg._attn_implementation = "sdpa"
        return transformers.BartForConditionalGeneration(hf_cfg)

    if kind == "bert":
        hf_cfg = transformers.BertConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.ffn_size, hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.attention_dropout,
        )
        hf_cfg._attn_implementation = "sdpa"
        return transformers.BertForMaskedLM(hf_cfg)
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attention_dropout,
    )
    hf_cfg._attn_implementation = "sdpa"
    return transformers.GPT2LMHeadModel(hf_cfg)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def time_steps(step, n: int) -> float:
    """Seconds per call of ``step`` over ``n`` calls."""
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def interleaved(steps: dict, n: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each contender, measured in alternating rounds (same process,
    same allocator, so that machine noise hits all of them alike)."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_steps(step, n))
    return {k: statistics.median(v) for k, v in times.items()}
