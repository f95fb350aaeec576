"""Blocks from parts: attention, optional cross-attention and a feed-forward chosen by config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_ptm.nn.attention import Attention, LayerCache
from lit_ptm.nn.config import ModelConfig
from lit_ptm.nn.mask import LoweredMask


def activation(name: str):
    return {
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu": F.relu,
        "silu": F.silu,
    }[name]


def norm(config: ModelConfig, width: int | None = None) -> nn.Module:
    """The stack's normalisation over ``width`` (default hidden_size): LayerNorm, or T5's RMSNorm
    (no mean subtraction, no bias)."""
    width = width or config.hidden_size
    if config.norm == "rms":
        return nn.RMSNorm(width, eps=config.norm_eps)
    return nn.LayerNorm(width, eps=config.norm_eps)


class FeedForward(nn.Module):
    """The dense position-wise feed-forward: H -> ffn_size -> H."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.ffn_size, bias=config.bias)
        self.down = nn.Linear(config.ffn_size, config.hidden_size, bias=config.bias)
        self.act = activation(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class GatedFeedForward(nn.Module):
    """A gated feed-forward (GLU variants: T5 v1.1's gated-gelu, LLaMA's SwiGLU):
    down(act(gate(x)) * up(x)), H -> ffn_size (twice) -> H."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(config.hidden_size, config.ffn_size, bias=config.bias)
        self.up = nn.Linear(config.hidden_size, config.ffn_size, bias=config.bias)
        self.down = nn.Linear(config.ffn_size, config.hidden_size, bias=config.bias)
        self.act = activation(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


# ModelConfig.feed_forward names the class. A feed-forward returns its output (B, T, H), or
# (output, {name: auxiliary loss}) when it has a loss of its own (an expert layer's balance loss):
# the block passes such losses up, and the objective adds them to its loss once.
FEED_FORWARDS: dict[str, type[nn.Module]] = {"dense": FeedForward, "gated": GatedFeedForward}


class Block(nn.Module):
    """Attention (+ cross-attention) + feed-forward, each a residual sub-layer with its LayerNorm after
    the add (post, BERT) or before the sub-layer (pre, GPT-2)."""

    def __init__(self, config: ModelConfig, cross_attention: bool = False):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attention = Attention(config)
        self.attention_norm = norm(config)
        if cross_attention:
            self.cross_attention = Attention(config)
            self.cross_attention_norm = norm(config)
        else:
            self.cross_attention = self.cross_attention_norm = None
        self.ffn = FEED_FORWARDS[config.feed_forward](config)
        self.ffn_norm = norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def _sublayer(self, x: torch.Tensor, normalise: nn.Module, fn) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(fn(normalise(x)))
        return normalise(x + self.dropout(fn(x)))

    def forward(
        self, x: torch.Tensor, mask: LoweredMask, *, kv_from: torch.Tensor | None = None, cache: LayerCache | None = None,
        context: torch.Tensor | None = None, context_mask: LoweredMask | None = None, cross_cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x (B, T, H) -> (B, T, H) and the feed-forward's auxiliary losses.

        kv_from (B, S, H): the sequence self-attention takes keys and values from, when it is not x
        (two-stream attention: x is the query stream, kv_from the content stream).
        context (B, S, H) + context_mask: an encoder's output, for the cross-attention sub-layer."""
        if kv_from is None:
            x = self._sublayer(x, self.attention_norm, lambda h: self.attention(h, mask, cache=cache))
        else:
            source = self.attention_norm(kv_from) if self.pre_norm else kv_from
            x = self._sublayer(x, self.attention_norm, lambda h: self.attention(h, mask, context=source, cache=cache))
        if self.cross_attention is not None and context is not None:
            x = self._sublayer(
                x, self.cross_attention_norm, lambda h: self.cross_attention(h, context_mask, context=context, cache=cross_cache)
            )
        aux: dict[str, torch.Tensor] = {}

        def ffn(h):
            out = self.ffn(h)
            if isinstance(out, tuple):
                out, losses = out
                aux.update(losses)
            return out

        return self._sublayer(x, self.ffn_norm, ffn), aux
