"""One attention module for self-, cross- and two-stream attention, with an optional KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_ptm.nn.config import ModelConfig
from lit_ptm.nn.mask import LoweredMask, RelativeDistances, attend


class LayerCache:
    """One layer's keys and values, (B, nh, max_length, hs) each, preallocated: ``update`` writes the new
    positions after the ``length`` already held and returns all of them. A ``static`` cache (an
    encoder's keys for cross-attention) is filled once and then returned as it is."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int, static: bool = False):
        self.k, self.v, self.length, self.static = k, v, length, static

    @property
    def filled(self) -> bool:
        return self.static and self.length > 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.filled:
            return self.k[:, :, : self.length], self.v[:, :, : self.length]
        end = (0 if self.static else self.length) + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"the KV cache holds {self.k.size(2)} positions; {end} were asked for")
        self.k[:, :, end - k.size(2) : end] = k
        self.v[:, :, end - k.size(2) : end] = v
        if self.static:
            self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """The keys and values of every layer for the positions seen so far (generation: each step feeds
    only the new tokens). ``length`` is the number of positions held; the stack advances it after
    a forward. ``cross`` holds a decoder's per-layer cross-attention keys (the encoder's, computed once)."""

    def __init__(self, config: ModelConfig, batch_size: int, max_length: int, device=None, dtype=torch.float32,
                 cross_length: int = 0):
        shape = (config.num_layers, batch_size, config.num_heads, max_length, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        cross_shape = (*shape[:3], cross_length, shape[4])
        self.cross = [LayerCache(torch.zeros(cross_shape[1:], device=device, dtype=dtype),
                                 torch.zeros(cross_shape[1:], device=device, dtype=dtype), 0, static=True)
                      for _ in range(config.num_layers)] if cross_length else None

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self.k[i], self.v[i], self.length)

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows ``index`` (beam search: each surviving beam takes its parent's cache)."""
        self.k, self.v = self.k.index_select(1, index), self.v.index_select(1, index)
        for c in self.cross or ():
            c.k, c.v = c.k.index_select(0, index), c.v.index_select(0, index)


class XLRelativeTerms(nn.Module):
    """Transformer-XL's relative attention terms of one layer (XLNet; Dai et al. 2019, Yang et al. 2019):
    score(i, j) = (q_i + content_bias) . k_j                               (content, with a global content bias)
                + (q_i + position_bias) . r(sinusoid(pos_i - pos_j))        (relative position)
                + (q_i + segment_bias) . segments[seg_i != seg_j]           (relative segment)
    all scaled by 1 / sqrt(head_size). Each bias is [nh, hs]; ``segments`` [2, nh, hs] (same, other)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, H = config.num_heads, config.hidden_size
        self.r = nn.Linear(H, H, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(config.num_heads, config.head_size))  # XLNet's r_w_bias
        self.position_bias = nn.Parameter(torch.zeros(config.num_heads, config.head_size))  # r_r_bias
        self.segment_bias = nn.Parameter(torch.zeros(config.num_heads, config.head_size))  # r_s_bias
        self.segments = nn.Parameter(torch.zeros(2, config.num_heads, config.head_size))  # seg_embed

    def scores(self, q: torch.Tensor, relative: RelativeDistances) -> torch.Tensor:
        """The position and segment terms (B, nh, Lq, Lk), unscaled, for queries q (B, nh, Lq, hs)."""
        B, nh, Lq, hs = q.shape
        R = self.r(relative.table).view(-1, nh, hs)  # (2D-1, nh, hs): this layer's projection of every distance
        by_distance = torch.einsum("bnqd,mnd->bnqm", q + self.position_bias[:, None], R)  # (B, nh, Lq, 2D-1)
        index = relative.index[:, None].expand(B, nh, Lq, relative.index.size(-1))
        terms = by_distance.gather(-1, index)  # (B, nh, Lq, Lk)
        by_segment = torch.einsum("bnqd,snd->bnqs", q + self.segment_bias[:, None], self.segments)  # (B, nh, Lq, 2)
        if relative.other_segment is not None:
            return terms + torch.where(relative.other_segment, by_segment[..., 1:], by_segment[..., :1])
        # No segments given (pretraining, single texts): all in one, the same-segment term on every key. A constant
        # along each row, it changes no attention weight (as HF's XLNet, which leaves the term out), but keeps the
        # segment parameters in the loss's graph: DDP refused to train XLNet while they took no part in it.
        return terms + by_segment[..., :1]


class Attention(nn.Module):
    """Multi-head attention through ``F.scaled_dot_product_attention`` (or FlexAttention, see nn.mask).

    - self-attention: ``attention(x, mask)``; q, k and v come from one fused projection (the fast path);
    - cross-attention: ``attention(x, mask, context=memory)`` on a module of its own: queries from x,
      keys and values from ``context`` (an encoder's output), whose padding the mask describes;
    - two-stream attention (XLNet, MPNet): ``attention(g, mask, context=h)`` on the *same* module as h's
      self-attention: the query stream g attends to the content stream's keys and values with shared weights;
    - cached decoding: ``cache`` holds the keys and values of earlier positions.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.dropout = config.num_heads, config.attention_dropout
        self.scale = None if config.scale_attention else 1.0  # None: SDPA's 1 / sqrt(head_size)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_has_bias)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_has_bias)
        self.relative = XLRelativeTerms(config) if config.position_embedding == "xlnet_relative" else None

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape  # (B, T, n * C) -> n x (B, nh, T, hs)
        return x.view(B, T, n, self.num_heads, -1).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, mask: LoweredMask, context: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        if context is None:
            q, k, v = self._heads(self.qkv(x), 3)  # 3 x (B, nh, T, hs)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q = self._heads(F.linear(x, w[:C], b[:C] if b is not None else None), 1)[0]
            if cache is not None and cache.filled:  # cross-attention keys were computed at the first step
                k = v = None
            else:
                k, v = self._heads(F.linear(context, w[C:], b[C:] if b is not None else None), 2)  # (B, nh, S, hs)
        if cache is not None:
            k, v = cache.update(k, v)
        if mask.relative is not None:  # Transformer-XL: SDPA scales (q + content_bias) . k and adds the rest as its float mask
            scale = self.scale if self.scale is not None else q.size(-1) ** -0.5
            bias = self.relative.scores(q, mask.relative) * scale
            if mask.mask is not None:
                bias = bias.masked_fill(~mask.mask, float("-inf"))
            q, mask = q + self.relative.content_bias[:, None], LoweredMask(mask=bias)
        y = attend(q, k, v, mask, self.dropout if self.training else 0.0, self.scale)  # (B, nh, T, hs)
        return self.out(y.transpose(1, 2).reshape(B, T, C))
