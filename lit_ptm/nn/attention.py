from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_ptm.nn.config import ModelConfig


def attention_mask(
    causal: bool, length: int, key_padding: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The boolean SDPA mask [B, 1, L, L] (True = may attend), or None where ``is_causal`` or no mask will do.

    key_padding [B, L]: True for real tokens. segment_ids [B, L]: tokens attend only within their
    segment (documents packed into one window); padding must carry a segment id of its own, so that
    no query row is left with nothing to attend to.
    """
    if segment_ids is not None:
        mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    elif key_padding is not None:
        mask = key_padding[:, None, None, :].expand(-1, 1, length, -1)
    else:
        return None
    if causal:
        mask = mask & torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        if segment_ids is None:  # a padding query row would see nothing: let it see itself
            mask = mask | torch.eye(length, dtype=torch.bool, device=mask.device)
    return mask


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.dropout = config.num_heads, config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.bias)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal and mask is None
        )  # (B, nh, T, hs)
        return self.out(y.transpose(1, 2).reshape(B, T, C))
