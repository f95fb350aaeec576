"""ModelConfig: one dataclass whose flags express every architecture the stack builds."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from lit_ptm.errors import ConfigError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
NORM_POSITIONS = ("post", "pre")
POSITION_EMBEDDINGS = ("learned", "none", "relative", "xlnet_relative")
NORMS = ("layer", "rms")
SHARING = ("none", "all", "attention", "ffn")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and flags of the shared Transformer stack.

    The defaults are BERT-base (post-LN, GELU, learned positions, tied MLM head with a transform).
    GPT-2 is ``norm_position: pre, final_norm: true, embedding_norm: false, norm_eps: 1e-5,
    activation: gelu_tanh, lm_head_transform: false, lm_head_bias: false, scale_residual_init: true``.
    """

    vocab_size: int | None = None  # None: the tokenizer's vocabulary size
    hidden_size: int = 768
    embedding_size: int | None = None  # None: hidden_size; ALBERT's factorisation: V x E, then E -> H
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int | None = None  # None: 4 * hidden_size
    share: Literal["none", "all", "attention", "ffn"] = "none"  # cross-layer sharing: none | all (ALBERT) | attention | ffn
    max_position_embeddings: int = 512
    position_offset: int = 0  # first row of the position table used (RoBERTa's table starts at padding_idx + 1)
    type_vocab_size: int = 0  # segment (token type) embeddings; 0: none
    # learned: absolute positions in a table; none; relative: T5's learned bias per head and bucket of
    # (key - query) distance, added to the attention scores of every layer (no absolute positions);
    # xlnet_relative: Transformer-XL's relative attention (XLNet): each layer projects a sinusoid of the
    # distance query - key and scores it against the query (+ a learned bias per head), the content term
    # gets a bias of its own, and XLNet's relative segment term (same / other segment, from token_type_ids)
    position_embedding: Literal["learned", "none", "relative", "xlnet_relative"] = "learned"
    relative_buckets: int = 32  # T5: distance buckets (half per direction in an encoder)
    relative_max_distance: int = 128  # T5: distances beyond this share the last bucket
    # MPNet: T5's bucketed bias (bidirectional, relative_buckets / relative_max_distance) on top of learned
    # absolute positions, from the positions the batch carries (a permuted layout's own)
    relative_attention_bias: bool = False
    norm_position: Literal["post", "pre"] = "post"  # post (BERT: norm after the residual add) | pre (GPT-2)
    norm_eps: float = 1e-12
    norm: Literal["layer", "rms"] = "layer"  # layer: LayerNorm (BERT, GPT-2, BART); rms: RMSNorm, no mean, no bias (T5)
    embedding_norm: bool = True  # LayerNorm on the summed embeddings (BERT)
    final_norm: bool = False  # LayerNorm after the last block (pre-LN stacks)
    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = "gelu"  # gelu | gelu_tanh | relu | silu
    bias: bool = True  # biases in attention and feed-forward projections
    attention_bias: bool | None = None  # biases in the attention projections; None: ``bias`` (XLNet: none there, FFN has them)
    dropout: float = 0.1
    attention_dropout: float = 0.1
    tie_word_embeddings: bool = True
    lm_head_transform: bool = True  # dense + activation + LayerNorm before the output projection (BERT)
    lm_head_bias: bool = True
    init_std: float = 0.02
    # T5: the token table starts at std 1.0 (its tied head reads states scaled by d^-0.5: at init_std the
    # logits would start ~15x too small to learn from); None: init_std. Under AdamW the table then trains at
    # lr * embedding_init_std / init_std (OptimConfig.embedding_lr_scale), so that it moves at its own scale
    embedding_init_std: float | None = None
    scale_attention: bool = True  # scores / sqrt(head_size); T5 does not scale (its initialisation does)
    scale_embeddings: bool = False  # token embeddings * sqrt(E) (BART's scale_embedding, mBART)
    lm_head_scale: bool = False  # T5: hidden * hidden_size^-0.5 before the (tied, unscaled) output projection
    num_decoder_layers: int | None = None  # an encoder-decoder's decoder depth; None: num_layers
    scale_residual_init: bool = False  # GPT-2: residual output projections get std / sqrt(2 * num_layers)
    # the blocks' feed-forward class (nn.layers.FEED_FORWARDS): dense (up, act, down) | gated (down(act(gate(x)) * up(x)):
    # T5 v1.1's gated-gelu with activation gelu_tanh, SwiGLU with silu)
    feed_forward: Literal["dense", "gated"] = "dense"
    block_position_embedding: bool = False  # a second position table (GLM's 2D positions: the position inside a blank)

    def __post_init__(self):
        def bad(key, why):
            raise ConfigError(f"model.config.{key}={getattr(self, key)!r}: {why}")

        for key in ("hidden_size", "num_layers", "num_heads", "max_position_embeddings"):
            if getattr(self, key) < 1:
                bad(key, "must be positive")
        if not 0 <= self.position_offset < self.max_position_embeddings:
            bad("position_offset", f"must be in [0, max_position_embeddings={self.max_position_embeddings})")
        if self.vocab_size is not None and self.vocab_size < 1:
            bad("vocab_size", "must be positive")
        if self.hidden_size % self.num_heads:
            bad("hidden_size", f"is not divisible by num_heads={self.num_heads}")
        if self.activation not in ACTIVATIONS:
            bad("activation", f"is not one of {', '.join(ACTIVATIONS)}")
        if self.norm_position not in NORM_POSITIONS:
            bad("norm_position", f"is not one of {', '.join(NORM_POSITIONS)}")
        if self.share not in SHARING:
            bad("share", f"is not one of {', '.join(SHARING)}")
        if self.embedding_size is not None and self.embedding_size < 1:
            bad("embedding_size", "must be positive")
        if self.relative_buckets < 4:
            bad("relative_buckets", "must be at least 4 (an encoder splits them by direction, then into exact and logarithmic)")
        if self.relative_max_distance <= self.relative_buckets // 2:
            bad("relative_max_distance", f"must exceed relative_buckets / 2 = {self.relative_buckets // 2} (the exactly bucketed distances)")
        if self.norm not in NORMS:
            bad("norm", f"is not one of {', '.join(NORMS)}")
        if self.num_decoder_layers is not None and self.num_decoder_layers < 1:
            bad("num_decoder_layers", "must be positive (or null: num_layers)")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            bad("position_embedding", f"is not one of {', '.join(POSITION_EMBEDDINGS)}")
        if self.relative_attention_bias and self.position_embedding in ("relative", "xlnet_relative"):
            bad("relative_attention_bias", f"adds MPNet's bucketed bias to absolute positions; position_embedding="
                f"{self.position_embedding} has its own relative terms")
        if self.position_embedding == "xlnet_relative" and self.type_vocab_size:
            bad("type_vocab_size", "must be 0 with position_embedding=xlnet_relative (XLNet encodes segments relatively, "
                "from token_type_ids, in every layer)")
        for key in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                bad(key, "must be in [0, 1)")

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def embed_size(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def max_length(self) -> int:
        """The longest input the position table holds."""
        return self.max_position_embeddings - self.position_offset

    @property
    def attention_has_bias(self) -> bool:
        return self.bias if self.attention_bias is None else self.attention_bias

    @property
    def reads_token_types(self) -> bool:
        """Whether token_type_ids enter the model: segment embeddings, or XLNet's relative segments (which
        need no table: type_vocab_size is 0 there)."""
        return bool(self.type_vocab_size) or self.position_embedding == "xlnet_relative"

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def decoder(self) -> ModelConfig:
        """The config of an encoder-decoder's decoder stack: this one with ``num_decoder_layers`` layers."""
        return replace(self, num_layers=self.num_decoder_layers or self.num_layers)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


LEGACY_KEYS = ("causal",)  # settings older checkpoints record that are no longer ModelConfig's
