"""HF transformers interoperability: BERT, RoBERTa, ALBERT, GPT-2, the encoder-decoders T5 and BART, and
the permutation LMs XLNet and MPNet, in both directions.

One table per architecture maps lit_ptm's parameter names to HF's (the fused qkv split and merged,
GPT-2's Conv1D transposed, RoBERTa's position table offset by padding_idx + 1, ALBERT's shared group and
embedding projection; T5's relative bias kept in each stack's first block, BART's position table offset
by 2 and its final_logits_bias; XLNet's [H, heads, head_size] projections and its mask_emb, the XLNet
objective's query_embedding; MPNet's bucket table, shared by its layers); the same table reads an HF model
directory (``--model.pretrained HF_DIR``, ``lit-ptm import``) and writes one (``lit-ptm export``). Nothing is
approximated: a lit_ptm setting without an exact HF counterpart is refused by name. HF's ``mem_len`` /
``use_mems`` are not carried over: an imported XLNet reads every window on its own unless its continued
pretraining sets ``model.mem_len`` (Transformer-XL's memory, equal to HF's ``mems``). HF's MPNet
takes token id 1 for padding whatever its tokenizer says: export moves lit_ptm's [PAD] (id 0) there.
``transformers`` is imported only for export and the parity tests; reading needs ``safetensors`` for
.safetensors weights (``pip install -e '.[hf]'``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from lit_ptm.callbacks import read_checkpoint
from lit_ptm.errors import LitPtmError
from lit_ptm.nn import ModelConfig
from lit_ptm.rundir import atomic_write
from lit_ptm.tokenizer import ROLE_FILES, Tokenizer

SEQ2SEQ = ("t5", "bart")  # encoder-decoders: stacks "encoder" (the backbone) and "decoder", one LM head
FAMILIES = ("bert", "roberta", "albert", "gpt2", *SEQ2SEQ, "xlnet", "mpnet")
PREFIX = {"bert": "bert.", "roberta": "roberta.", "albert": "albert.", "gpt2": "transformer.", "t5": "", "bart": "model.",
          "xlnet": "transformer.", "mpnet": "mpnet."}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
ENCODER = {"norm_position": "post", "embedding_norm": True, "final_norm": False, "lm_head_transform": True, "lm_head_bias": True}
# What every family but T5 computes: LayerNorm, biases, learned absolute positions, scaled scores, a dense feed-forward.
# No family has MPNet's bucketed bias on top of absolute positions (before it was listed here, an MPNet run
# was taken for roberta, and its export silently dropped the bias).
COMMON_FLAGS = {"bias": True, "position_embedding": "learned", "norm": "layer", "scale_attention": True, "scale_embeddings": False,
                "lm_head_scale": False, "feed_forward": "dense", "block_position_embedding": False, "relative_attention_bias": False}
MPNET_PAD = 1  # HF's MPNet reads token id 1 as padding (its embeddings' padding_idx, its position ids), whatever its config says
# HF's MPNet sizes its bucket table from its config but buckets with 32 and 128 (compute_position_bias's defaults).
MPNET_BUCKETS = {"relative_attention_bias": True, "relative_buckets": 32, "relative_max_distance": 128}
# The flags of ModelConfig each family fixes (values not listed are free: sizes, eps, activation, dropout;
# T5: its feed-forward (dense or gated), the LM head's tie and scale, its buckets; BART: the embedding
# scale, the position offset (export adds or drops rows), the tie). ``attention_bias`` (the attention
# projections' biases) is ``bias`` where a family does not list it.
FAMILY_FLAGS: dict[str, dict] = {
    "bert": {**COMMON_FLAGS, **ENCODER, "share": "none", "position_offset": 0},
    "roberta": {**COMMON_FLAGS, **ENCODER, "share": "none"},
    "albert": {**COMMON_FLAGS, **ENCODER},
    "gpt2": {**COMMON_FLAGS, "norm_position": "pre", "embedding_norm": False, "final_norm": True, "lm_head_transform": False,
             "lm_head_bias": False, "share": "none", "position_offset": 0, "type_vocab_size": 0},
    "t5": {"norm": "rms", "norm_position": "pre", "embedding_norm": False, "final_norm": True, "bias": False,
           "position_embedding": "relative", "scale_attention": False, "scale_embeddings": False, "lm_head_transform": False,
           "lm_head_bias": False, "share": "none", "type_vocab_size": 0, "block_position_embedding": False,
           "relative_attention_bias": False},
    "bart": {**{k: v for k, v in COMMON_FLAGS.items() if k != "scale_embeddings"}, "norm_position": "post", "embedding_norm": True,
             "final_norm": False, "lm_head_transform": False, "lm_head_bias": True, "share": "none", "type_vocab_size": 0,
             "norm_eps": 1e-5},  # HF's BART: LayerNorm eps 1e-5, fixed
    # XLNet: post-LN, Transformer-XL's relative attention (no position table, relative segments), attention
    # projections without biases, no embedding norm, a tied head without transform but with a bias.
    "xlnet": {**COMMON_FLAGS, "position_embedding": "xlnet_relative", "attention_bias": False, "norm_position": "post",
              "embedding_norm": False, "final_norm": False, "lm_head_transform": False, "lm_head_bias": True, "share": "none",
              "type_vocab_size": 0},
    # MPNet: BERT's blocks, RoBERTa's position table (export moves it to padding_idx 1 + 1), no token types, the buckets.
    "mpnet": {**COMMON_FLAGS, **ENCODER, "share": "none", "type_vocab_size": 0, **MPNET_BUCKETS},
}
BART_OFFSET = 2  # HF's BART reads position p at row p + 2 of its table
# Settings of older BART configs that today's HF BART ignores, with the value it computes as: any other is refused.
BART_LEGACY = {"normalize_before": False, "add_final_layer_norm": False, "normalize_embedding": True, "static_position_embeddings": False,
               "add_bias_logits": False, "extra_pos_embeddings": BART_OFFSET}


class HFError(LitPtmError):
    pass


# -- which family a lit_ptm model is ---------------------------------------------------------------
def mismatches(config: ModelConfig, family: str) -> list[str]:
    """The settings of ``config`` that ``family`` cannot express exactly (empty: it can)."""
    wanted = {**FAMILY_FLAGS[family], "attention_bias": FAMILY_FLAGS[family].get("attention_bias", FAMILY_FLAGS[family]["bias"])}
    setting = {**{k: getattr(config, k) for k in wanted}, "attention_bias": config.attention_has_bias}  # None: as bias
    out = [f"model.config.{k}={setting[k]!r} ({family} has {v!r})" for k, v in wanted.items() if setting[k] != v]
    factorised = config.embedding_size not in (None, config.hidden_size)
    if family == "albert":
        if config.share not in ("all", "none"):
            out.append(f"model.config.share={config.share!r} (albert shares all layers or none)")
    elif factorised:
        out.append(f"model.config.embedding_size={config.embedding_size} ({family} has no factorised embeddings)")
    if family == "bert" and config.type_vocab_size < 1:
        out.append("model.config.type_vocab_size=0 (bert has segment embeddings; without them it is roberta)")
    if family in ("roberta", "mpnet") and config.activation != "gelu":
        out.append(f"model.config.activation={config.activation!r} ({family}'s LM head applies gelu whatever its hidden_act)")
    if family == "t5" and config.feed_forward == "gated" and config.activation == "gelu":
        out.append("model.config.activation='gelu' with feed_forward='gated' (t5's gated-gelu is gelu_tanh, HF's gelu_new)")
    return out


def family_of(config: ModelConfig, causal: bool = False, encoder_decoder: bool = False) -> str | None:
    """The HF architecture that computes exactly what ``config`` does (read causally or not), if any. T5 and
    BART are encoder-decoders: a config of theirs exports with an encoder-decoder objective (T5, BART, MASS);
    ``encoder_decoder``: the model is one (its config matches T5 or BART, or nothing)."""
    if encoder_decoder:
        candidates = list(SEQ2SEQ)
    elif causal:
        candidates = ["gpt2"]
    elif config.norm_position == "pre":
        candidates = ["gpt2", "t5"]
    elif config.embedding_size is not None:
        candidates = ["albert"]
    elif config.position_embedding == "xlnet_relative" or config.relative_attention_bias:
        candidates = ["xlnet", "mpnet"]
    elif config.position_offset or config.type_vocab_size == 0:
        candidates = ["roberta", "bert", "bart"]
    else:
        candidates = ["bert", "roberta", "bart"]
    return next((f for f in candidates if not mismatches(config, f)), None)


# -- configs -----------------------------------------------------------------------------------------
def config_from_hf(hf: dict, source) -> tuple[str, ModelConfig]:
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise HFError(f"{source}: model_type {family!r} is not one lit_ptm maps (it maps {', '.join(FAMILIES)})")
    if family == "t5":
        return family, t5_config(hf, source)
    if family == "bart":
        return family, bart_config(hf, source)
    if family == "xlnet":
        return family, xlnet_config(hf, source)
    act_key = "activation_function" if family == "gpt2" else "hidden_act"
    act = hf.get(act_key, "gelu_new" if family == "gpt2" else "gelu")
    if act not in ACT_FROM_HF:
        raise HFError(f"{source}: {act_key}={act!r} has no exact counterpart in lit_ptm ({', '.join(ACT_FROM_HF)})")
    if family == "gpt2":
        for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
            if hf.get(key, ok) != ok:
                raise HFError(f"{source}: {key}={hf[key]!r} is not mapped (lit_ptm's GPT-2 has {ok})")
        H = hf.get("n_embd", 768)
        return family, ModelConfig(
            vocab_size=hf["vocab_size"], hidden_size=H, num_layers=hf.get("n_layer", 12), num_heads=hf.get("n_head", 12),
            intermediate_size=hf.get("n_inner") or 4 * H, max_position_embeddings=hf.get("n_positions", 1024),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=ACT_FROM_HF[act], dropout=hf.get("resid_pdrop", 0.1),
            attention_dropout=hf.get("attn_pdrop", 0.1), init_std=hf.get("initializer_range", 0.02),
            tie_word_embeddings=hf.get("tie_word_embeddings", True), scale_residual_init=True,
            **FAMILY_FLAGS["gpt2"],
        )
    for key in ("is_decoder", "add_cross_attention"):
        if hf.get(key):
            raise HFError(f"{source}: {key}=true (a causal or cross-attending {family}) is not mapped: lit_ptm reads {family} as an encoder")
    if family in ("roberta", "mpnet") and ACT_FROM_HF[act] != "gelu":
        raise HFError(f"{source}: hidden_act={act!r}: {'RoBERTa' if family == 'roberta' else 'MPNet'}'s LM head applies gelu "
                      "whatever hidden_act says, lit_ptm's applies the model's activation; not mapped")
    if family == "mpnet" and hf.get("relative_attention_num_buckets", 32) != MPNET_BUCKETS["relative_buckets"]:
        raise HFError(f"{source}: relative_attention_num_buckets={hf['relative_attention_num_buckets']} is not mapped: HF's MPNet "
                      "sizes its bucket table with it but buckets distances with 32 whatever it says (compute_position_bias)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise HFError(f"{source}: position_embedding_type={hf['position_embedding_type']!r} is not mapped (absolute only)")
    share = "none"
    if family == "albert":
        groups, inner, layers = hf.get("num_hidden_groups", 1), hf.get("inner_group_num", 1), hf.get("num_hidden_layers", 12)
        if inner != 1 or groups not in (1, layers):
            raise HFError(f"{source}: num_hidden_groups={groups}, inner_group_num={inner} is not mapped (lit_ptm shares all "
                          "layers (1 group) or none (one group per layer), one layer per group)")
        share = "all" if groups == 1 else "none"
    offset = {"roberta": hf.get("pad_token_id", 1) + 1, "mpnet": MPNET_PAD + 1}.get(family, 0)  # right after padding_idx
    return family, ModelConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        embedding_size=hf.get("embedding_size", 128) if family == "albert" else None, share=share,
        max_position_embeddings=hf["max_position_embeddings"], position_offset=offset,
        type_vocab_size=0 if family == "mpnet" else hf.get("type_vocab_size", 2), norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=ACT_FROM_HF[act], dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1), init_std=hf.get("initializer_range", 0.02),
        tie_word_embeddings=hf.get("tie_word_embeddings", True), **ENCODER, **(MPNET_BUCKETS if family == "mpnet" else {}),
    )


def xlnet_config(hf: dict, source) -> ModelConfig:
    """XLNet's bidirectional encoder (attn_type bi), read without Transformer-XL's memory: mem_len, reuse_len,
    use_mems and same_length matter only with a memory and are ignored. Refused: a causal Transformer-XL
    (attn_type uni), the bidirectional data pipeline (bi_data, which negates the distances of half the batch)
    and clamped distances (clamp_len > 0). No position table: inputs up to 512 tokens (XLNet's pretraining
    length; raise model.config.max_position_embeddings for longer ones)."""
    for key, refused, why in (("attn_type", hf.get("attn_type", "bi") != "bi", "a causal Transformer-XL; lit_ptm's XLNet is bi"),
                              ("bi_data", bool(hf.get("bi_data")), "the distances of half of each batch negated"),
                              ("clamp_len", hf.get("clamp_len", -1) > 0, "relative distances clamped; lit_ptm does not clamp")):
        if refused:
            raise HFError(f"{source}: {key}={hf[key]!r} is not mapped ({why})")
    act = hf.get("ff_activation", "gelu")
    if act not in ACT_FROM_HF:
        raise HFError(f"{source}: ff_activation={act!r} has no exact counterpart in lit_ptm ({', '.join(ACT_FROM_HF)})")
    H, heads = hf.get("d_model", 1024), hf.get("n_head", 16)
    if hf.get("d_head") not in (None, H // heads) or H % heads:
        raise HFError(f"{source}: d_head={hf.get('d_head')} with n_head={heads} is not d_model={H}: not mapped")
    return ModelConfig(
        vocab_size=hf.get("vocab_size", hf.get("n_token")), hidden_size=H, num_layers=hf.get("n_layer", 24), num_heads=heads,
        intermediate_size=hf.get("d_inner", 4096), max_position_embeddings=512, norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=ACT_FROM_HF[act], dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("dropout", 0.1),
        init_std=hf.get("initializer_range", 0.02), tie_word_embeddings=hf.get("tie_word_embeddings", True) is not False,
        **FAMILY_FLAGS["xlnet"],
    )


def t5_config(hf: dict, source) -> ModelConfig:
    """T5 v1.0 (feed_forward_proj relu) and v1.1 / flan-t5 (gated-gelu: gelu_new, an untied head). Whether the
    decoder's output is scaled by d_model^-0.5 before the head is HF's scale_decoder_outputs (transformers 5;
    without it, tie_word_embeddings says, as transformers 4 read it). Whether the head is tied is settled by
    the weights (read_hf_dir): transformers 5 ties T5's head unless the checkpoint holds another one."""
    proj = hf.get("feed_forward_proj", "relu")
    gated, _, act = proj.rpartition("-")
    if gated not in ("", "gated"):
        raise HFError(f"{source}: feed_forward_proj={proj!r} is not mapped (ACT or gated-ACT)")
    act = "gelu_new" if proj == "gated-gelu" else act  # HF's T5 reads gated-gelu as gelu_new
    if act not in ACT_FROM_HF:
        raise HFError(f"{source}: feed_forward_proj={proj!r}: {act!r} has no exact counterpart in lit_ptm ({', '.join(ACT_FROM_HF)})")
    H, heads, d_kv = hf.get("d_model", 512), hf.get("num_heads", 8), hf.get("d_kv", 64)
    if d_kv * heads != H:
        raise HFError(f"{source}: d_kv={d_kv} with num_heads={heads} is not d_model={H}: lit_ptm's attention has "
                      "num_heads * head_size = hidden_size; not mapped")
    if hf.get("is_decoder"):
        raise HFError(f"{source}: is_decoder=true (a decoder-only T5) is not mapped")
    layers = hf.get("num_layers", 6)
    decoder_layers = hf.get("num_decoder_layers") or layers
    tie = hf.get("tie_word_embeddings", True) is not False
    return ModelConfig(
        vocab_size=hf["vocab_size"], hidden_size=H, num_layers=layers, num_heads=heads, intermediate_size=hf.get("d_ff", 2048),
        num_decoder_layers=decoder_layers if decoder_layers != layers else None,
        max_position_embeddings=hf.get("n_positions", 512),  # no position table: only the longest input lit_ptm accepts
        relative_buckets=hf.get("relative_attention_num_buckets", 32), relative_max_distance=hf.get("relative_attention_max_distance", 128),
        norm_eps=hf.get("layer_norm_epsilon", 1e-6), activation=ACT_FROM_HF[act], feed_forward="gated" if gated else "dense",
        dropout=hf.get("dropout_rate", 0.1), attention_dropout=hf.get("dropout_rate", 0.1), tie_word_embeddings=tie,
        lm_head_scale=bool(hf.get("scale_decoder_outputs", tie)), **FAMILY_FLAGS["t5"],
    )


def bart_config(hf: dict, source) -> ModelConfig:
    """BART: post-LN, learned positions at offset 2 in each stack, an embedding LayerNorm, final_logits_bias."""
    for key, value in BART_LEGACY.items():
        if hf.get(key, value) != value:
            raise HFError(f"{source}: {key}={hf[key]!r} is not mapped (today's HF BART computes as {key}={value!r}, and so "
                          "does lit_ptm; mBART's pre-LN stacks are not mapped)")
    for a, b, default in (("encoder_attention_heads", "decoder_attention_heads", 16), ("encoder_ffn_dim", "decoder_ffn_dim", 4096)):
        if hf.get(a, default) != hf.get(b, default):
            raise HFError(f"{source}: {a}={hf.get(a, default)} differs from {b}={hf.get(b, default)}: lit_ptm's encoder "
                          "and decoder have one width each; not mapped")
    act = hf.get("activation_function", "gelu")
    if act not in ACT_FROM_HF:
        raise HFError(f"{source}: activation_function={act!r} has no exact counterpart in lit_ptm ({', '.join(ACT_FROM_HF)})")
    if hf.get("is_decoder"):
        raise HFError(f"{source}: is_decoder=true (BART's decoder alone) is not mapped")
    layers = hf.get("encoder_layers", 12)
    decoder_layers = hf.get("decoder_layers", 12)
    return ModelConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf.get("d_model", 1024), num_layers=layers,
        num_heads=hf.get("encoder_attention_heads", 16), intermediate_size=hf.get("encoder_ffn_dim", 4096),
        num_decoder_layers=decoder_layers if decoder_layers != layers else None,
        max_position_embeddings=hf.get("max_position_embeddings", 1024) + BART_OFFSET, position_offset=BART_OFFSET,
        scale_embeddings=bool(hf.get("scale_embedding", False)), activation=ACT_FROM_HF[act], dropout=hf.get("dropout", 0.1),
        attention_dropout=hf.get("attention_dropout", 0.0), init_std=hf.get("init_std", 0.02),
        tie_word_embeddings=hf.get("tie_word_embeddings", True) is not False, **FAMILY_FLAGS["bart"],
    )


def config_to_hf(config: ModelConfig, family: str, tokenizer: Tokenizer | None) -> dict:
    ids = tokenizer.ids if tokenizer is not None else None
    special = {f"{r}_token_id": getattr(ids, r) for r in ("pad", "bos", "eos")} if ids is not None else {}
    common = {"vocab_size": config.vocab_size, "initializer_range": config.init_std, "tie_word_embeddings": config.tie_word_embeddings}
    if family == "gpt2":
        return {**common, **special, "model_type": "gpt2", "n_embd": config.hidden_size, "n_layer": config.num_layers,
                "n_head": config.num_heads, "n_inner": config.ffn_size, "n_positions": config.max_position_embeddings,
                "activation_function": ACT_TO_HF[config.activation], "layer_norm_epsilon": config.norm_eps,
                "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.attention_dropout}
    decoder_layers = config.num_decoder_layers or config.num_layers
    if family == "t5":
        gated = "gated-" if config.feed_forward == "gated" else ""
        act = "gelu" if gated and config.activation == "gelu_tanh" else ACT_TO_HF[config.activation]  # gated-gelu is gelu_new
        return {**common, **special, "model_type": "t5", "d_model": config.hidden_size, "d_kv": config.head_size,
                "d_ff": config.ffn_size, "num_layers": config.num_layers, "num_decoder_layers": decoder_layers,
                "num_heads": config.num_heads, "relative_attention_num_buckets": config.relative_buckets,
                "relative_attention_max_distance": config.relative_max_distance, "dropout_rate": config.dropout,
                "layer_norm_epsilon": config.norm_eps, "feed_forward_proj": gated + act, "n_positions": config.max_length,
                "scale_decoder_outputs": config.lm_head_scale, "initializer_factor": 1.0}
    if family == "bart":
        return {**common, **special, "model_type": "bart", "d_model": config.hidden_size, "encoder_layers": config.num_layers,
                "decoder_layers": decoder_layers, "encoder_attention_heads": config.num_heads,
                "decoder_attention_heads": config.num_heads, "encoder_ffn_dim": config.ffn_size, "decoder_ffn_dim": config.ffn_size,
                "activation_function": ACT_TO_HF[config.activation], "max_position_embeddings": config.max_length,
                "scale_embedding": config.scale_embeddings, "dropout": config.dropout, "attention_dropout": config.attention_dropout,
                "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "init_std": config.init_std,
                "forced_eos_token_id": None}
    if family == "xlnet":  # no memory; sequence classification reads the first token (lit_ptm's [CLS]) through dense + tanh
        return {**common, **special, "model_type": "xlnet", "d_model": config.hidden_size, "n_layer": config.num_layers,
                "n_head": config.num_heads, "d_inner": config.ffn_size, "ff_activation": ACT_TO_HF[config.activation],
                "layer_norm_eps": config.norm_eps, "dropout": config.dropout, "attn_type": "bi", "bi_data": False,
                "clamp_len": -1, "same_length": False, "mem_len": None, "reuse_len": None, "use_mems_eval": False,
                "use_mems_train": False, "summary_type": "first", "summary_use_proj": True, "summary_activation": "tanh",
                "summary_last_dropout": config.dropout}
    out = {**common, **special, "model_type": family, "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
           "num_attention_heads": config.num_heads, "intermediate_size": config.ffn_size, "hidden_act": ACT_TO_HF[config.activation],
           "max_position_embeddings": config.max_position_embeddings, "type_vocab_size": max(1, config.type_vocab_size),
           "layer_norm_eps": config.norm_eps, "hidden_dropout_prob": config.dropout,
           "attention_probs_dropout_prob": config.attention_dropout, "position_embedding_type": "absolute"}
    if family in ("roberta", "mpnet"):
        out["max_position_embeddings"] = roberta_rows(config, out["pad_token_id"])[1]
    if family == "mpnet":  # no token types; buckets as HF's MPNet computes them
        del out["type_vocab_size"], out["position_embedding_type"]
        out["relative_attention_num_buckets"] = MPNET_BUCKETS["relative_buckets"]
    if family == "albert":
        out.update(embedding_size=config.embed_size, num_hidden_groups=1 if config.share == "all" else config.num_layers,
                   inner_group_num=1, classifier_dropout_prob=config.dropout)
    return out


def roberta_rows(config: ModelConfig, pad_id: int) -> tuple[int, int]:
    """RoBERTa reads position p of a right-padded row at table row p + pad_id + 1: the rows to add in front
    of lit_ptm's table (negative: to drop), and the HF table's size."""
    shift = pad_id + 1 - config.position_offset
    if config.position_offset + shift < 0 or config.max_position_embeddings + shift <= 0:
        raise HFError(f"model.config.position_offset={config.position_offset} cannot be written for pad_token_id={pad_id}")
    return shift, config.max_position_embeddings + shift


# -- parameter tables --------------------------------------------------------------------------------
# Each row: (lit_ptm name, HF names, kind). Several HF names (q, k, v) join into lit_ptm's fused projection
# (export splits it), each part converted by the kind (KINDS). An encoder-decoder's rows name both stacks,
# "encoder.*" and "decoder.*".
def backbone_table(family: str, config: ModelConfig, stacks=("encoder", "decoder")) -> list[tuple[str, tuple[str, ...], str]]:
    rows: list[tuple[str, tuple[str, ...], str]] = []

    def tensor(lit, hf, kind=""):
        rows.append((lit, (hf,) if isinstance(hf, str) else tuple(hf), kind))

    def add(lit, hf, kind="", params=("weight", "bias")):
        hf = (hf,) if isinstance(hf, str) else hf
        for p in params:
            tensor(f"{lit}.{p}", [f"{h}.{p}" for h in hf], kind)

    def feed_forward(block, up, down, norm):  # a dense feed-forward with biases and the LayerNorm after it
        add(f"{block}.ffn.up", up)
        add(f"{block}.ffn.down", down)
        add(f"{block}.ffn_norm", norm)

    if family == "t5":
        add("encoder.embeddings.tokens", "shared", params=("weight",))  # the decoder's is the same table
        for s in stacks:
            depth = config.num_layers if s == "encoder" else config.num_decoder_layers or config.num_layers
            add(f"{s}.relative_bias.buckets", f"{s}.block.0.layer.0.SelfAttention.relative_attention_bias", params=("weight",))
            for i in range(depth):
                b, h = f"{s}.blocks.{i}", f"{s}.block.{i}.layer"
                attn = f"{h}.0.SelfAttention"
                add(f"{b}.attention.qkv", (f"{attn}.q", f"{attn}.k", f"{attn}.v"), params=("weight",))
                add(f"{b}.attention.out", f"{attn}.o", params=("weight",))
                add(f"{b}.attention_norm", f"{h}.0.layer_norm", params=("weight",))
                ff = 1
                if s == "decoder":
                    cross, ff = f"{h}.1.EncDecAttention", 2
                    add(f"{b}.cross_attention.qkv", (f"{cross}.q", f"{cross}.k", f"{cross}.v"), params=("weight",))
                    add(f"{b}.cross_attention.out", f"{cross}.o", params=("weight",))
                    add(f"{b}.cross_attention_norm", f"{h}.1.layer_norm", params=("weight",))
                dense = f"{h}.{ff}.DenseReluDense"
                if config.feed_forward == "gated":
                    add(f"{b}.ffn.gate", f"{dense}.wi_0", params=("weight",))
                    add(f"{b}.ffn.up", f"{dense}.wi_1", params=("weight",))
                else:
                    add(f"{b}.ffn.up", f"{dense}.wi", params=("weight",))
                add(f"{b}.ffn.down", f"{dense}.wo", params=("weight",))
                add(f"{b}.ffn_norm", f"{h}.{ff}.layer_norm", params=("weight",))
            add(f"{s}.final_norm", f"{s}.final_layer_norm", params=("weight",))
        return rows
    if family == "bart":
        add("encoder.embeddings.tokens", "shared", params=("weight",))  # the decoder's is the same table
        for s in stacks:
            depth = config.num_layers if s == "encoder" else config.num_decoder_layers or config.num_layers
            add(f"{s}.embeddings.positions", f"{s}.embed_positions", params=("weight",))
            add(f"{s}.embeddings.norm", f"{s}.layernorm_embedding")
            for i in range(depth):
                b, h = f"{s}.blocks.{i}", f"{s}.layers.{i}"
                attention = [("attention", "self_attn")] + ([("cross_attention", "encoder_attn")] if s == "decoder" else [])
                for ours, theirs in attention:
                    add(f"{b}.{ours}.qkv", tuple(f"{h}.{theirs}.{p}_proj" for p in "qkv"))
                    add(f"{b}.{ours}.out", f"{h}.{theirs}.out_proj")
                    add(f"{b}.{ours}_norm", f"{h}.{theirs}_layer_norm")
                feed_forward(b, f"{h}.fc1", f"{h}.fc2", f"{h}.final_layer_norm")
        return rows
    e = "transformer.embeddings"
    if family == "gpt2":
        add(f"{e}.tokens", "wte", params=("weight",))
        add(f"{e}.positions", "wpe", params=("weight",))
        for i in range(config.num_layers):
            b, h = f"transformer.blocks.{i}", f"h.{i}"
            add(f"{b}.attention_norm", f"{h}.ln_1")
            add(f"{b}.attention.qkv", f"{h}.attn.c_attn", "T")
            add(f"{b}.attention.out", f"{h}.attn.c_proj", "T")
            add(f"{b}.ffn_norm", f"{h}.ln_2")
            add(f"{b}.ffn.up", f"{h}.mlp.c_fc", "T")
            add(f"{b}.ffn.down", f"{h}.mlp.c_proj", "T")
        add("transformer.final_norm", "ln_f")
        return [(lit, hf, kind if not lit.endswith("bias") else "") for lit, hf, kind in rows]
    if family == "xlnet":  # rel_attn's projections are [H, heads, head_size] without biases; r_*_bias and seg_embed per layer
        tensor("transformer.embeddings.tokens.weight", "word_embedding.weight")
        tensor("query_embedding", "mask_emb", "row2")  # where the query stream starts: the XLNet objective's, not the stack's
        for i in range(config.num_layers):
            b, h = f"transformer.blocks.{i}", f"layer.{i}"
            a, r = f"{h}.rel_attn", f"{b}.attention.relative"
            tensor(f"{b}.attention.qkv.weight", (f"{a}.q", f"{a}.k", f"{a}.v"), "heads")
            tensor(f"{b}.attention.out.weight", f"{a}.o", "heads_out")
            tensor(f"{r}.r.weight", f"{a}.r", "heads")
            for ours, theirs in (("content_bias", "r_w_bias"), ("position_bias", "r_r_bias"), ("segment_bias", "r_s_bias"),
                                 ("segments", "seg_embed")):
                tensor(f"{r}.{ours}", f"{a}.{theirs}")
            add(f"{b}.attention_norm", f"{a}.layer_norm")
            feed_forward(b, f"{h}.ff.layer_1", f"{h}.ff.layer_2", f"{h}.ff.layer_norm")
        return rows
    add(f"{e}.tokens", "embeddings.word_embeddings", params=("weight",))
    add(f"{e}.positions", "embeddings.position_embeddings", params=("weight",))
    if family == "mpnet":  # no token types; one bucket table for all layers
        add("transformer.relative_bias.buckets", "encoder.relative_attention_bias", params=("weight",))
    else:
        add(f"{e}.token_types", "embeddings.token_type_embeddings", params=("weight",))
    add(f"{e}.norm", "embeddings.LayerNorm")
    if family == "albert":
        add("transformer.project", "encoder.embedding_hidden_mapping_in")
    for i in range(config.num_layers):
        b = f"transformer.blocks.{i}"
        if family == "albert":
            h = f"encoder.albert_layer_groups.{0 if config.share == 'all' else i}.albert_layers.0"
            names = {"q": f"{h}.attention.query", "k": f"{h}.attention.key", "v": f"{h}.attention.value",
                     "out": f"{h}.attention.dense", "attn_norm": f"{h}.attention.LayerNorm", "up": f"{h}.ffn",
                     "down": f"{h}.ffn_output", "ffn_norm": f"{h}.full_layer_layer_norm"}
        elif family == "mpnet":
            h = f"encoder.layer.{i}"
            names = {"q": f"{h}.attention.attn.q", "k": f"{h}.attention.attn.k", "v": f"{h}.attention.attn.v",
                     "out": f"{h}.attention.attn.o", "attn_norm": f"{h}.attention.LayerNorm", "up": f"{h}.intermediate.dense",
                     "down": f"{h}.output.dense", "ffn_norm": f"{h}.output.LayerNorm"}
        else:
            h = f"encoder.layer.{i}"
            names = {"q": f"{h}.attention.self.query", "k": f"{h}.attention.self.key", "v": f"{h}.attention.self.value",
                     "out": f"{h}.attention.output.dense", "attn_norm": f"{h}.attention.output.LayerNorm",
                     "up": f"{h}.intermediate.dense", "down": f"{h}.output.dense", "ffn_norm": f"{h}.output.LayerNorm"}
        add(f"{b}.attention.qkv", (names["q"], names["k"], names["v"]))
        add(f"{b}.attention.out", names["out"])
        add(f"{b}.attention_norm", names["attn_norm"])
        feed_forward(b, names["up"], names["down"], names["ffn_norm"])
    return rows


HEADS = {  # head name -> family -> [(lit_ptm prefix, HF prefix)], for .weight and .bias
    "mlm": {"bert": [("lm_head.transform.0", "cls.predictions.transform.dense"), ("lm_head.transform.2", "cls.predictions.transform.LayerNorm")],
            "roberta": [("lm_head.transform.0", "lm_head.dense"), ("lm_head.transform.2", "lm_head.layer_norm")],
            "albert": [("lm_head.transform.0", "predictions.dense"), ("lm_head.transform.2", "predictions.LayerNorm")],
            "mpnet": [("lm_head.transform.0", "lm_head.dense"), ("lm_head.transform.2", "lm_head.layer_norm")]},
    "pair": {"bert": [("pair_head.pooler", "bert.pooler.dense"), ("pair_head.classifier", "cls.seq_relationship")],
             "albert": [("pair_head.pooler", "albert.pooler"), ("pair_head.classifier", "sop_classifier.classifier")]},
    "classify": {"bert": [("head.dense", "bert.pooler.dense"), ("head.out", "classifier")],
                 "roberta": [("head.dense", "classifier.dense"), ("head.out", "classifier.out_proj")],
                 "albert": [("head.dense", "albert.pooler"), ("head.out", "classifier")],
                 "mpnet": [("head.dense", "classifier.dense"), ("head.out", "classifier.out_proj")],
                 "xlnet": [("head.dense", "sequence_summary.summary"), ("head.out", "logits_proj")]},  # summary_type first
    "tag": {f: [("head", "classifier")] for f in FAMILIES},
    "qa": {f: [("head", "qa_outputs")] for f in FAMILIES},
}
LM_BIAS = {"bert": "cls.predictions.bias", "roberta": "lm_head.bias", "albert": "predictions.bias", "bart": "final_logits_bias",
           "xlnet": "lm_loss.bias", "mpnet": "lm_head.bias"}
# An untied LM head's own matrix (the MLM families' decoder has its own bias too, which their forward adds).
UNTIED_HEAD = {"bert": "cls.predictions.decoder", "roberta": "lm_head.decoder", "albert": "predictions.decoder", "gpt2": "lm_head",
               "t5": "lm_head", "bart": "lm_head", "xlnet": "lm_loss", "mpnet": "lm_head.decoder"}
MLM_DECODER_BIAS = ("bert", "roberta", "albert", "mpnet")  # untied, the decoder's own bias is the one their forward adds
HF_CLASSES = {
    ("bert", "mlm"): "BertForMaskedLM", ("bert", "mlm+pair"): "BertForPreTraining", ("roberta", "mlm"): "RobertaForMaskedLM",
    ("albert", "mlm"): "AlbertForMaskedLM", ("albert", "mlm+pair"): "AlbertForPreTraining", ("gpt2", "lm"): "GPT2LMHeadModel",
    **{(f, "classify"): f"{n}ForSequenceClassification" for f, n in (("bert", "Bert"), ("roberta", "Roberta"), ("albert", "Albert"),
                                                                       ("mpnet", "MPNet"), ("xlnet", "XLNet"))},
    **{(f, "tag"): f"{n}ForTokenClassification" for f, n in (("bert", "Bert"), ("roberta", "Roberta"), ("albert", "Albert"), ("gpt2", "GPT2"),
                                                             ("mpnet", "MPNet"), ("xlnet", "XLNet"))},
    **{(f, "qa"): f"{n}ForQuestionAnswering" for f, n in (("bert", "Bert"), ("roberta", "Roberta"), ("albert", "Albert"), ("gpt2", "GPT2"),
                                                          ("mpnet", "MPNet"))},
    ("xlnet", "qa"): "XLNetForQuestionAnsweringSimple",  # (XLNetForQuestionAnswering is the beam-search head)
    ("t5", "seq2seq"): "T5ForConditionalGeneration", ("bart", "seq2seq"): "BartForConditionalGeneration",
    ("xlnet", "plm"): "XLNetLMHeadModel", ("mpnet", "mlm"): "MPNetForMaskedLM",
}


def head_rows(family: str, heads: tuple[str, ...], config: ModelConfig) -> list[tuple[str, tuple[str, ...], str]]:
    rows = []
    for head in heads:
        for lit, hf in HEADS.get(head, {}).get(family, []):
            rows += [(f"{lit}.{p}", (f"{hf}.{p}",), "") for p in ("weight", "bias")]
    if {"mlm", "lm", "seq2seq", "plm"} & set(heads):
        if family in LM_BIAS:
            rows.append(("lm_head.bias", (LM_BIAS[family],), "row" if family == "bart" else ""))
        if not config.tie_word_embeddings:
            rows.append(("lm_head.weight", (f"{UNTIED_HEAD[family]}.weight",), ""))
            if family in MLM_DECODER_BIAS:
                rows.append(("lm_head.bias", (f"{UNTIED_HEAD[family]}.bias",), ""))
    return rows


def prefixed(family: str, heads: tuple[str, ...], backbone: list) -> list:
    """HF names of the backbone sit under the model prefix (bert., transformer., ...) in every head class."""
    prefix = PREFIX[family] if heads else ""
    return [(lit, tuple(prefix + h for h in hf), kind) for lit, hf, kind in backbone]


# How a row's tensor is written (lit_ptm -> HF, given the model config) and read (HF -> lit_ptm), per HF part.
KINDS = {
    "": (lambda v, config: v, lambda h: h),
    "T": (lambda v, config: v.t(), lambda h: h.t()),  # GPT-2's Conv1D: [in, out]
    "row": (lambda v, config: v[None], lambda h: h[0]),  # BART's final_logits_bias [1, V]
    "row2": (lambda v, config: v[None, None], lambda h: h[0, 0]),  # XLNet's mask_emb [1, 1, H]
    # XLNet's q, k, v, r [H, heads, head_size] project x as x @ W: lit_ptm's Linear weight is W.reshape(H, H).T ...
    "heads": (lambda v, config: v.t().reshape(-1, config.num_heads, config.head_size), lambda h: h.flatten(1).t()),
    # ... and its o [H, heads, head_size] contracts the heads (einsum ibnd,hnd->ibh): the weight is o.reshape(H, H)
    "heads_out": (lambda v, config: v.reshape(-1, config.num_heads, config.head_size), lambda h: h.flatten(1)),
}


def to_hf(state: dict[str, torch.Tensor], rows, config: ModelConfig) -> dict[str, torch.Tensor]:
    out = {}
    for lit, hf, kind in rows:
        for name, part in zip(hf, state[lit].chunk(len(hf), dim=0)):  # a fused projection splits into q, k, v
            out[name] = KINDS[kind][0](part, config).clone(memory_format=torch.contiguous_format)
    return out


def from_hf(state: dict[str, torch.Tensor], rows, source) -> dict[str, torch.Tensor]:
    out = {}
    for lit, hf, kind in rows:
        missing = [h for h in hf if h not in state]
        if missing:
            raise HFError(f"{source} lacks {missing[0]} (a {lit} weight); it does not hold the architecture its config names")
        parts = [KINDS[kind][1](state[h]) for h in hf]
        out[lit] = (torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]).contiguous()
    return out


# -- reading an HF directory --------------------------------------------------------------------------
def is_hf_dir(path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def weight_files(directory: Path) -> list[Path]:
    """The weight files of an HF directory: model.safetensors (or its shards), else pytorch_model.bin (or its shards)."""
    for single in ("model.safetensors", "pytorch_model.bin"):
        index = directory / f"{single}.index.json"
        names = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [single]
        if all((directory / name).is_file() for name in names):
            return [directory / name for name in names]
    raise HFError(f"{directory} has config.json but no weights (model.safetensors or pytorch_model.bin)")


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All weights; .bin files with torch.load(weights_only=True), like any checkpoint."""
    state = {}
    for path in weight_files(directory):
        if path.suffix == ".bin":
            state.update(read_checkpoint(path))
            continue
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise HFError(f"{directory} holds safetensors weights: pip install -e '.[hf]' (safetensors) to read them") from None
        try:
            state.update(load_file(path))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise HFError(f"{path} cannot be read: {e}") from None
    return state


def read_hf_config(directory: Path) -> tuple[str, ModelConfig]:
    try:
        hf_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HFError(f"{directory / 'config.json'} cannot be read as JSON: {e}") from None
    return config_from_hf(hf_config, directory / "config.json")


def read_hf_tokenizer(directory: Path, config: ModelConfig, family: str) -> Tokenizer:
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise HFError(f"{directory} has no tokenizer.json (lit_ptm reads fast tokenizers only; save one with "
                      "AutoTokenizer.from_pretrained(...).save_pretrained(dir))")
    tokenizer = Tokenizer.load(tokenizer_file)
    if tokenizer.vocab_size > config.vocab_size:
        raise HFError(f"{tokenizer_file} has {tokenizer.vocab_size} tokens, more than the model's {config.vocab_size} embeddings")
    if tokenizer.vocab_size < config.vocab_size:
        raise HFError(f"{tokenizer_file} has {tokenizer.vocab_size} tokens but the model has {config.vocab_size} embeddings: "
                      "lit_ptm needs them equal (resize the embeddings with HF first)")
    if family == "mpnet" and tokenizer.ids.pad != MPNET_PAD:
        raise HFError(f"{tokenizer_file}: its padding token has id {tokenizer.ids.pad}, but HF's MPNet takes id {MPNET_PAD} for "
                      f"padding whatever the tokenizer says (its positions skip every id {MPNET_PAD}); not mapped")
    return tokenizer


def check_hf_dir(directory) -> None:
    """What can be checked of an HF directory without reading its weights: its architecture, that the weights
    are there, its tokenizer (the weights are read once, when the model is built)."""
    directory = Path(directory)
    family, config = read_hf_config(directory)
    weight_files(directory)
    read_hf_tokenizer(directory, config, family)


@dataclass
class HFModel:
    """An HF model directory in lit_ptm's terms."""

    directory: Path
    family: str
    config: ModelConfig
    objective: str  # MaskedLM | CausalLM | T5 | BART | XLNet | MPNet: the pretraining objective its heads belong to
    pair_task: str  # none | nsp | sop
    state_dict: dict[str, torch.Tensor]  # lit_ptm names: transformer.* (encoder.*, decoder.*), and the heads it holds
    tokenizer: Tokenizer
    backbone: str = "transformer"  # the stack fine-tuning takes: an encoder-decoder's "encoder"
    stacks: tuple[str, ...] = ("transformer",)
    heads: tuple[str, ...] = field(default=())  # the pretraining heads it holds (none: a bare model)


SEQ2SEQ_OBJECTIVE = {"t5": ("T5", "pad"), "bart": ("BART", "eos")}  # the objective an HF encoder-decoder imports as, its decoder start


def read_seq2seq(directory: Path, family: str, config: ModelConfig, state: dict[str, torch.Tensor]) -> HFModel:
    """T5 / BART (their ForConditionalGeneration, a bare T5Model / BartModel, or T5EncoderModel: the encoder alone)."""
    prefix = PREFIX[family]
    shared = f"{prefix}shared.weight"
    stacks = ("encoder", "decoder") if any(k.startswith(f"{prefix}decoder.") for k in state) else ("encoder",)
    # Each stack reads its own embed_tokens where the checkpoint holds one, else the shared table (as transformers 5
    # loads them: tied unless both are there and differ; an untied BART keeps three tables). lit_ptm's stacks share one.
    tables = {s: state.get(f"{prefix}{s}.embed_tokens.weight", state.get(shared)) for s in stacks}
    if tables["encoder"] is None:
        raise HFError(f"{directory} lacks {shared} (the token table); it does not hold the architecture its config names")
    if "decoder" in stacks and not torch.equal(tables["encoder"], tables["decoder"]):
        raise HFError(f"{directory}: the encoder's and the decoder's token tables (embed_tokens) differ; lit_ptm's stacks share "
                      "one table: not mapped")
    state[shared] = tables["encoder"]
    # The head: a matrix of its own where the checkpoint holds one that differs (transformers 5 then unties it; an
    # untied BART config always has one), else the table. T5's config never unties it in transformers 5.
    head = UNTIED_HEAD[family] + ".weight"
    other_head = head in state and not torch.equal(state[head], state[shared])
    tied = not other_head if family == "t5" else config.tie_word_embeddings and not other_head
    config = replace(config, tie_word_embeddings=tied)
    if family == "bart" and "final_logits_bias" not in state:  # HF's BART starts it at zeros when a checkpoint lacks it
        state["final_logits_bias"] = torch.zeros(1, config.vocab_size)
    lit = from_hf(state, prefixed(family, ("base",), backbone_table(family, config, stacks)), directory)
    heads = ("seq2seq",) if "decoder" in stacks and (tied or head in state) else ()
    lit.update(from_hf(state, head_rows(family, heads, config), directory))
    if "decoder" in stacks:  # lit_ptm's decoder and tied head hold the one table under their own names too
        lit["decoder.embeddings.tokens.weight"] = lit["encoder.embeddings.tokens.weight"]
    if heads and tied:
        lit["lm_head.embedding.weight"] = lit["encoder.embeddings.tokens.weight"]
    return HFModel(directory, family, config, SEQ2SEQ_OBJECTIVE[family][0], "none", lit, read_hf_tokenizer(directory, config, family),
                   backbone="encoder", stacks=stacks, heads=heads)


def read_hf_dir(directory) -> HFModel:
    directory = Path(directory)
    family, config = read_hf_config(directory)
    state = read_hf_weights(directory)
    # Checkpoints from TF-era conversions (bert-base-uncased's pytorch_model.bin) name LayerNorm parameters gamma / beta.
    state = {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)): v for k, v in state.items()}
    if not any(k.startswith(PREFIX[family]) for k in state):  # a bare model (BertModel): no prefix
        state = {PREFIX[family] + k: v for k, v in state.items()}
    if family in SEQ2SEQ:
        return read_seq2seq(directory, family, config, state)
    lit = from_hf(state, prefixed(family, ("base",), backbone_table(family, config)), directory)
    objective = {"gpt2": "CausalLM", "xlnet": "XLNet", "mpnet": "MPNet"}.get(family, "MaskedLM")
    heads = [{"gpt2": "lm", "xlnet": "plm"}.get(family, "mlm")]
    head_keys = {"bert": "cls.predictions.transform.dense.weight", "roberta": "lm_head.dense.weight",
                 "albert": "predictions.dense.weight", "gpt2": "transformer.wte.weight", "xlnet": "lm_loss.bias",
                 "mpnet": "lm_head.dense.weight"}
    if head_keys[family] not in state:
        heads = []  # a bare encoder: an MLM head would start fresh
    pair_task = "none"
    if family in HEADS["pair"] and all(hf[0] in state for _, hf, _ in head_rows(family, ("pair",), config)):
        heads.append("pair")
        pair_task = "nsp" if family == "bert" else "sop"
    if not config.tie_word_embeddings and family in MLM_DECODER_BIAS:  # older untied heads kept one bias, under LM_BIAS's name
        decoder = f"{UNTIED_HEAD[family]}.bias"
        if decoder not in state and LM_BIAS[family] in state:
            state[decoder] = state[LM_BIAS[family]]
    lit.update(from_hf(state, head_rows(family, tuple(heads), config), directory))
    if heads and config.tie_word_embeddings:  # lit_ptm's LM head holds the tied table under its own name too
        lit["lm_head.embedding.weight"] = lit["transformer.embeddings.tokens.weight"]
    return HFModel(directory, family, config, objective, pair_task, lit, read_hf_tokenizer(directory, config, family),
                   heads=tuple(heads))


# -- import: an HF directory as a lit_ptm run ---------------------------------------------------------
def import_hf(source, out, overwrite: bool = False) -> Path:
    """Writes RUN_DIR (last.ckpt, tokenizer.json, config.yaml) for ``--model.pretrained``, ``test --ckpt_path``."""
    import lightning
    import yaml

    from lit_ptm.objectives.base import CHECKPOINT_FORMAT

    out = Path(out)
    if (out / "last.ckpt").exists() and not overwrite:
        raise HFError(f"{out} already holds a run (last.ckpt): choose another --out or pass --overwrite")
    model = read_hf_dir(source)
    if model.family in SEQ2SEQ and not model.heads:
        raise HFError(f"{source} holds no decoder and LM head (an encoder alone, or an untied head missing), so it is no "
                      f"{model.objective} run to import; use it directly: --model.pretrained {source} (fine-tuning takes its encoder)")
    if not {"mlm", "lm", "plm"} & set(model.heads) and model.family not in SEQ2SEQ:
        raise HFError(f"{source} holds no {'LM head (lm_loss)' if model.family == 'xlnet' else 'MLM head'} (a bare encoder or a "
                      f"fine-tuned checkpoint), so it is no {model.objective} run to import; use it directly: --model.pretrained "
                      f"{source} (a new head starts fresh)")
    class_path = f"lit_ptm.objectives.{model.objective}"
    config = model.config
    hparams = {"config": config.to_dict(), "pretrained": None, "_class_path": class_path}
    if model.objective == "MaskedLM":
        hparams["pair_task"] = model.pair_task
    seq2seq = {}
    if model.family in SEQ2SEQ:
        hparams["decoder_start"] = SEQ2SEQ_OBJECTIVE[model.family][1]
        seq2seq = {"decoder_start": hparams["decoder_start"]}
    checkpoint = {
        "state_dict": model.state_dict, "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
        "lit_ptm": {"format": CHECKPOINT_FORMAT, "objective": model.objective, "backbone": model.backbone, "stacks": list(model.stacks),
                    "family": model.family, "causal": model.objective == "CausalLM", **seq2seq,
                    "started_from": str(Path(source).resolve()), "model_config": config.to_dict(),
                    "tokenizer_sha": model.tokenizer.sha, "weights_only": True},
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "last.ckpt") as tmp:
        torch.save(checkpoint, tmp)
    model.tokenizer.save(out / "tokenizer.json")
    recipe = {"model": {"class_path": class_path, "init_args": {k: v for k, v in hparams.items() if not k.startswith("_")}},
              "data": {"class_path": "lit_ptm.data.PretrainDataModule",
                       "init_args": {"tokenizer": str(out / "tokenizer.json"), "seq_length": min(512, config.max_length)}}}
    with atomic_write(out / "config.yaml") as tmp:
        note = "".join(f"# {line}\n" for line in IMPORT_NOTES.get(model.family, "").splitlines())
        tmp.write_text(f"# imported from {source} ({model.family}); continue with --model.pretrained {out}\n{note}" + yaml.safe_dump(recipe))
    return out


IMPORT_NOTES = {  # what `lit-ptm import` says of a family beyond its weights
    "xlnet": "HF's mem_len / use_mems are not carried over: the run reads every window on its own (HF's logits without\n"
             "mems); continued pretraining with --model.mem_len M adds Transformer-XL's memory (equal to HF's mems).",
}


# -- export: a lit_ptm run as an HF directory ---------------------------------------------------------
def export_hf(source, out, overwrite: bool = False) -> tuple[Path, str]:
    """Writes an HF model directory (safetensors, config.json, tokenizer files) from a run or checkpoint."""
    try:
        import transformers
    except ImportError:
        raise HFError("export needs transformers: pip install -e '.[hf]'") from None
    from lit_ptm.pretrained import read_run, reads_causally, tokenizer_of

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HFError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    path, raw, config = read_run(source, key="export")
    meta = raw["lit_ptm"]
    if meta["objective"] == "GLM":
        raise HFError(f"{path}: a GLM run does not export: HF's transformers has no GLM architecture (its 2D positions "
                      "and blank infilling have no HF class); fine-tune or generate from the run with lit_ptm")
    hparams = raw.get("hyper_parameters", {})
    causal = reads_causally(meta)
    end_of_target = seq2seq_objective(meta["objective"])  # an encoder-decoder objective: its end-of-target token
    family = meta.get("family") or family_of(config, causal, encoder_decoder=bool(end_of_target))
    if end_of_target and family not in SEQ2SEQ:  # older checkpoints recorded an encoder family for an encoder-decoder
        family = family_of(config, encoder_decoder=True)
    if family is None:
        close = {f: mismatches(config, f) for f in (SEQ2SEQ if end_of_target else [f for f in FAMILIES if f not in SEQ2SEQ])}
        nearest = min(close, key=lambda f: len(close[f]))
        raise HFError(f"{path}: no HF architecture computes this model exactly; nearest {nearest}, which differs in "
                      + "; ".join(close[nearest]))
    if problems := mismatches(config, family):
        raise HFError(f"{path}: recorded as {family}, but {'; '.join(problems)}")
    if causal != (family == "gpt2"):  # HF's classes fix how each architecture reads
        raise HFError(f"{path}: the model reads {'causally' if causal else 'bidirectionally'}, but HF's {family} reads "
                      f"{'causally' if family == 'gpt2' else 'bidirectionally'}: its predictions would differ")
    objective, heads, extra = meta["objective"], (), {}
    if objective in ("MaskedLM", "SpanBERT", "MPNet"):  # SpanBERT: the stack and MLM head (its boundary head has no HF place);
        heads = ("mlm", "pair") if hparams.get("pair_task", "none") != "none" else ("mlm",)  # MPNet: the content stream's
    elif objective == "UniLM":  # BERT's stack, MLM head and NSP head; the sub-tasks' segment ids are rows of its type table
        heads = ("mlm", "pair")
    elif objective == "CausalLM":
        heads = ("lm",)
    elif objective == "XLNet":  # XLNetLMHeadModel: the content stream, or the query stream given perm_mask and target_mapping
        heads = ("plm",)
    elif end_of_target:
        heads = ("seq2seq",)
    elif objective == "SequenceClassification":
        if hparams.get("pooling", "auto") == "mean":
            raise HFError(f"{path}: model.pooling=mean has no HF counterpart (HF pools [CLS] or the last token)")
        if family == "gpt2":
            raise HFError(f"{path}: GPT-2's sequence-classification head is one linear layer without bias; lit_ptm's "
                          "pooled head (dense + tanh + linear) has no exact counterpart")
        heads = ("classify",)
        if hparams.get("regression"):
            extra = {"num_labels": 1, "problem_type": "regression"}
        else:
            labels = hparams["labels"]
            extra = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)},
                     "problem_type": "single_label_classification"}
    elif objective == "TokenClassification":
        labels = hparams["labels"]
        heads, extra = ("tag",), {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    elif objective == "ExtractiveQA":
        heads = ("qa",)
    else:
        raise HFError(f"{path}: a {objective} run has no HF counterpart to export to")
    key = (family, "mlm+pair" if heads == ("mlm", "pair") else heads[0])
    if key not in HF_CLASSES:
        raise HFError(f"{path}: a {family} model with the {' + '.join(heads)} head has no HF class")
    tokenizer_file = tokenizer_of(path)
    tokenizer = Tokenizer.load(tokenizer_file) if tokenizer_file else None
    if tokenizer is None:
        raise HFError(f"{path}: no tokenizer.json beside it; an HF directory needs its tokenizer")
    state = dict(raw["state_dict"])
    backbone = meta.get("backbone", "transformer")
    if backbone != "transformer" and family not in SEQ2SEQ:
        state = {("transformer." + k[len(backbone) + 1:] if k.startswith(backbone + ".") else k): v for k, v in state.items()}
    if family == "albert" and config.share == "all":
        state = {re.sub(r"^transformer\.blocks\.\d+\.", "transformer.blocks.0.", k): v for k, v in state.items()}
    if family == "mpnet" and tokenizer.ids.pad != MPNET_PAD:  # lit_ptm's [PAD] (0) trades ids with the token at 1 ([UNK])
        tokenizer, order = swap_ids(tokenizer, tokenizer.ids.pad, MPNET_PAD)
        for name in ("transformer.embeddings.tokens.weight", "lm_head.weight", "lm_head.bias"):  # the tables by token id
            if name in state:
                state[name] = state[name][order]
    if end_of_target:  # the token the decoder starts from, the one that ends a target (generation stops there)
        start = meta.get("decoder_start") or hparams.get("decoder_start")
        if getattr(tokenizer.ids, start, None) is None:
            raise HFError(f"{path}: the decoder starts from the tokenizer's {start} token (model.decoder_start), which it lacks")
        extra = {"decoder_start_token_id": getattr(tokenizer.ids, start), "eos_token_id": end_of_target(tokenizer.ids)}
    hf_config = {**config_to_hf(config, family, tokenizer), **extra}
    if family in ("roberta", "bert", "albert"):  # lit_ptm's RoBERTa may have no segments, HF's has one
        if config.type_vocab_size == 0:
            state["transformer.embeddings.token_types.weight"] = torch.zeros(1, config.embed_size)
    if family == "xlnet" and "query_embedding" not in state:  # a fine-tuned XLNet: HF reads mask_emb only with target_mapping
        state["query_embedding"] = torch.zeros(config.hidden_size)
    if family in ("roberta", "mpnet"):
        shift, _ = roberta_rows(config, hf_config["pad_token_id"])
        name = "transformer.embeddings.positions.weight"
        state[name] = shift_rows(state[name], shift)
    if family == "bart":  # HF's BART reads position p at row p + 2: rows added in front (or unused ones dropped)
        for name in ("encoder.embeddings.positions.weight", "decoder.embeddings.positions.weight"):
            state[name] = shift_rows(state[name], BART_OFFSET - config.position_offset)
    rows = prefixed(family, heads, backbone_table(family, config)) + head_rows(family, heads, config)
    if family == "albert" and config.share == "all":
        rows = [r for r in rows if not re.match(r"transformer\.blocks\.[1-9]", r[0])]
    hf_state = to_hf(state, rows, config)
    if family in SEQ2SEQ:  # each stack's embed_tokens too: transformers 5 unties them from the shared table with an untied head
        for s in ("encoder", "decoder"):
            hf_state[f"{PREFIX[family]}{s}.embed_tokens.weight"] = hf_state[f"{PREFIX[family]}shared.weight"]
    model_type = hf_config.pop("model_type")
    hf_cfg = transformers.AutoConfig.for_model(model_type, **hf_config)
    if family == "t5":  # transformers 5: whether the decoder's output is scaled is a setting of its own
        hf_cfg.scale_decoder_outputs = config.lm_head_scale
    model = getattr(transformers, HF_CLASSES[key])(hf_cfg)
    if family in SEQ2SEQ and not config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight:
        # transformers 5 always ties T5's head when it builds one; an untied head is a parameter of its own, saved as such
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
        getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
    unexpected = model.load_state_dict(hf_state, strict=False).unexpected_keys
    # named_parameters lists a tied parameter once (the embedding, not the decoder that shares it), and
    # buffers are HF's own: every parameter listed must have come from the table.
    not_written = [name for name, _ in model.named_parameters() if name not in hf_state]
    if unexpected or not_written:
        raise HFError(f"internal mapping error for {family} {'+'.join(heads)}: unexpected {unexpected[:5]}, missing {not_written[:5]}")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    if family == "t5":  # transformers 5 writes tie_word_embeddings: true whatever the head; say what it is (as 4.x reads it)
        written = json.loads((out / "config.json").read_text())
        written.update(tie_word_embeddings=config.tie_word_embeddings, scale_decoder_outputs=config.lm_head_scale)
        (out / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    write_hf_tokenizer(tokenizer, out, family)
    return out, HF_CLASSES[key]


def seq2seq_objective(objective: str):
    """``end_of_target(ids)`` of an encoder-decoder objective (T5, BART, MASS: lit_ptm.objectives), else None."""
    from lit_ptm import objectives
    from lit_ptm.objectives.encoder_decoder import EncoderDecoderLM

    cls = getattr(objectives, objective, None)
    if not (isinstance(cls, type) and issubclass(cls, EncoderDecoderLM)):
        return None
    return cls.end_of_target


def shift_rows(table: torch.Tensor, shift: int) -> torch.Tensor:
    """A position table with ``shift`` zero rows added in front (negative: that many rows dropped)."""
    return torch.cat([table.new_zeros(shift, table.size(1)), table]) if shift >= 0 else table[-shift:]


def swap_ids(tokenizer: Tokenizer, a: int, b: int) -> tuple[Tokenizer, torch.Tensor]:
    """``tokenizer`` with the tokens of ids ``a`` and ``b`` traded, and the row order [V] that trades them in a table
    indexed by token id. Its post-processor, which names ids, is dropped (export writes its own)."""
    from tokenizers import Tokenizer as RustTokenizer

    data = json.loads(tokenizer.hf.to_str())
    trade = {a: b, b: a}
    for token in data["added_tokens"]:
        token["id"] = trade.get(token["id"], token["id"])
    model = data["model"]
    if isinstance(model["vocab"], dict):  # WordPiece, BPE, WordLevel: token -> id
        model["vocab"] = {token: trade.get(i, i) for token, i in model["vocab"].items()}
    else:  # Unigram: [token, score] by id
        model["vocab"][a], model["vocab"][b] = model["vocab"][b], model["vocab"][a]
        model["unk_id"] = trade.get(model.get("unk_id"), model.get("unk_id"))
    data["post_processor"] = None
    order = torch.arange(tokenizer.vocab_size)
    order[[a, b]] = order[[b, a]]
    return Tokenizer(RustTokenizer.from_str(json.dumps(data)), source=tokenizer.source, roles=tokenizer.roles), order


def write_hf_tokenizer(tokenizer: Tokenizer, out: Path, family: str) -> None:
    """tokenizer.json with the roles of its special tokens, for AutoTokenizer.from_pretrained."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers.processors import TemplateProcessing

    rust = RustTokenizer.from_str(tokenizer.hf.to_str())
    names = {role: rust.id_to_token(getattr(tokenizer.ids, role)) for role in ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
             if getattr(tokenizer.ids, role) is not None}
    if family == "t5" and "eos" in names:  # T5's tokenizer(text) adds </s> (lit_ptm's T5 frames a source as text [EOS])
        eos = names["eos"]
        rust.post_processor = TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.ids.eos)])
    elif family not in ("gpt2", "t5") and "cls" in names and "sep" in names:  # tokenizer(text) adds [CLS] ... [SEP] as HF users expect
        cls, sep = names["cls"], names["sep"]
        pair = f"{cls} $A {sep} {sep} $B {sep}" if family in ("roberta", "bart", "mpnet") else f"{cls} $A {sep} $B:1 {sep}:1"  # each family's own
        rust.post_processor = TemplateProcessing(
            single=f"{cls} $A {sep}", pair=pair, special_tokens=[(cls, tokenizer.ids.cls), (sep, tokenizer.ids.sep)],
        )
    rust.save(str(out / "tokenizer.json"))
    roles = {f"{role}_token": token for role, token in names.items()}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": None, **roles}
    if family in ("bert", "albert"):  # segment ids reach the model (PreTrainedTokenizerFast omits them otherwise)
        config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    (out / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}, indent=1))
    (out / ROLE_FILES[0]).write_text(json.dumps(roles, indent=1))


# -- `lit-ptm import` / `lit-ptm export` ---------------------------------------------------------------
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lit-ptm", description="HF transformers import / export")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="an HF model directory (BERT, RoBERTa, ALBERT, GPT-2, T5, BART, XLNet, MPNet) as a lit_ptm "
                         "run directory")
    imp.add_argument("source", help="local HF model directory (config.json, model.safetensors or pytorch_model.bin, tokenizer.json)")
    imp.add_argument("--out", required=True, help="the run directory to write")
    imp.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    exp = sub.add_parser("export", help="a lit_ptm run (directory or .ckpt) as an HF model directory")
    exp.add_argument("source", help="run directory (its last.ckpt) or .ckpt file")
    exp.add_argument("--out", required=True, help="the HF directory to write (safetensors)")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    if args.command == "import":
        if not is_hf_dir(args.source):
            raise HFError(f"{args.source} is not an HF model directory (no config.json)")
        out = import_hf(args.source, args.out, args.overwrite)
        print(f"imported {args.source} into {out}: continue pretraining or fine-tune with --model.pretrained {out}")
        family = read_hf_config(Path(args.source))[0]
        if family in IMPORT_NOTES:
            print(IMPORT_NOTES[family].replace("\n", " "))
    else:
        out, cls = export_hf(args.source, args.out, args.overwrite)
        print(f"exported {args.source} to {out} ({cls}); load it with transformers.AutoModel...from_pretrained({str(out)!r})")


if __name__ == "__main__":
    main(sys.argv[1:])
