"""What each query may attend to, as data: one description per batch, lowered once per forward.

An objective describes its attention pattern with an ``AttentionMask`` (padding, packed documents,
causal, a per-row prefix, an explicit [B, Lq, Lk] mask, an additive bias); the stack lowers it once
per forward to what the kernel wants, and every layer reuses the result:

- nothing to mask                     -> SDPA without a mask (flash kernel on GPU)
- causal only, query aligned with keys -> SDPA ``is_causal`` (flash on GPU)
- anything else                       -> a boolean [B, 1, Lq, Lk] SDPA mask (memory-efficient kernel
                                         on GPU), or a float one when there is a bias
- (``USE_FLEX``, off: see there) on CUDA, without attention dropout, packed documents and prefixes
  -> a FlexAttention ``BlockMask``, whose kernel skips the blocks nobody attends

Queries may be fewer than keys: with a KV cache the queries are the last ``Lq`` of ``Lk`` positions
(``query_offset = Lk - Lq`` by default). SDPA's ``is_causal`` aligns its triangle top-left, which is
wrong there, so a cached causal call always gets an explicit mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:  # FlexAttention: CUDA fast path for structured masks
    from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention
except ImportError:  # pragma: no cover - torch without FlexAttention
    create_block_mask = create_mask = flex_attention = None


# FlexAttention for packed documents and prefixes on CUDA: off. Measured on an H200 (torch 2.11,
# benchmarks/gpu_check.py ... flex): its forward equals SDPA's (fp32, 3e-6) but the gradients of the qkv
# projection differ by 40-90% (relative norm), and at 8 x 1024 and 2 x 4096 a step took 1.6-1.9x as
# long as SDPA with the dense mask (the memory-efficient fused kernel). Set True to investigate.
USE_FLEX = False


@dataclass(frozen=True)
class AttentionMask:
    """One batch's attention pattern. Every field is optional; they combine with AND.

    padding [B, Lk] bool: True for real keys.
    documents [B, Lk] long: packed-document id per position; a token sees only its own document
        (padding must carry an id of its own, so that no row is left with nothing to see).
    causal: each query sees keys at its own position and before.
    anticausal: each query sees keys at its own position and after (right-to-left, UniLM): the mirror
        of ``causal``; never the ``is_causal`` fast path nor a block mask (the dense mask's own).
    prefix_length [B] long: with ``causal``, the first ``prefix_length[b]`` positions are
        bidirectional (UniLM seq2seq, GLM Part A); 0 is plain causal, L fully bidirectional.
    explicit [B, Lq, Lk] bool: any pattern at all (XLNet permutations, right-to-left).
    bias [B or 1, heads or 1, Lq, Lk] float: added to the attention scores (relative positions).
    """

    padding: torch.Tensor | None = None
    documents: torch.Tensor | None = None
    causal: bool = False
    anticausal: bool = False
    prefix_length: torch.Tensor | None = None
    explicit: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    @classmethod
    def from_batch(cls, batch: dict, causal: bool = False) -> AttentionMask:
        """The pattern of a collated batch: its ``attention_mask`` (padding), ``document_ids`` and
        ``prefix_length`` entries, causal or not as the objective reads it."""
        padding = batch.get("attention_mask")
        return cls(
            padding=padding.bool() if padding is not None else None, documents=batch.get("document_ids"), causal=causal,
            prefix_length=batch.get("prefix_length"),
        )

    @property
    def empty(self) -> bool:
        return (self.padding is None and self.documents is None and not self.causal and not self.anticausal
                and self.explicit is None
                and self.bias is None)

    def _device(self):
        return next((t.device for t in (self.padding, self.documents, self.prefix_length, self.explicit, self.bias)
                     if t is not None), None)

    def dense(self, q_len: int, k_len: int, query_offset: int | None = None, cross: bool = False,
              device=None) -> torch.Tensor | None:
        """The boolean mask [B or 1, 1, Lq, Lk] (True = may attend), or None when every key is visible.

        A padding query row that would see nothing (left padding under a causal mask) sees itself, so
        the kernel never normalises over an empty row (NaN that would spread through the values of
        later layers). A real query row left with nothing is the caller's mask to fix. ``cross``: the
        keys are another sequence (cross-attention): ``padding`` is theirs, not the queries'."""
        offset = k_len - q_len if query_offset is None else query_offset
        device = self._device() or device  # a causal-only pattern holds no tensor: the caller's device
        mask = None
        if self.documents is not None:
            docs_k = self.documents[:, :k_len]
            docs_q = docs_k[:, offset : offset + q_len]
            mask = docs_q[:, None, :, None] == docs_k[:, None, None, :]  # (B, 1, Lq, Lk)
        elif self.padding is not None:
            mask = self.padding[:, None, None, :k_len].expand(-1, 1, q_len, -1)  # (B, 1, Lq, Lk)
        if self.causal or self.anticausal:
            q_pos = torch.arange(offset, offset + q_len, device=device)[:, None]
            k_pos = torch.arange(k_len, device=device)[None, :]
        if self.causal:
            allowed = k_pos <= q_pos  # (Lq, Lk)
            if self.prefix_length is not None:  # bidirectional prefix: every query sees all of it
                allowed = (allowed | (k_pos[None] < self.prefix_length[:, None, None]))[:, None]  # (B, 1, Lq, Lk)
            mask = allowed if mask is None else mask & allowed
        if self.anticausal:
            allowed = k_pos >= q_pos  # (Lq, Lk)
            mask = allowed if mask is None else mask & allowed
        if self.explicit is not None:
            explicit = self.explicit[:, None]  # (B, 1, Lq, Lk)
            mask = explicit if mask is None else mask & explicit
        if mask is None:
            return None
        if self.documents is None and self.padding is not None and not cross:
            # A padding query with nothing to see (left padding under a causal mask) sees itself. Only
            # padding rows: a real query left with nothing (a two-stream query stream whose explicit
            # mask hides everything) must not be handed its own token, which may be its target.
            own = torch.zeros(q_len, k_len, dtype=torch.bool, device=mask.device)
            own[torch.arange(q_len), torch.arange(offset, offset + q_len).clamp(max=k_len - 1)] = True
            padding_query = ~self.padding[:, offset : offset + q_len][:, None, :, None]  # (B, 1, Lq, 1)
            mask = mask | (own & padding_query & ~mask.any(-1, keepdim=True))
        return mask

    def lower(self, q_len: int, k_len: int, query_offset: int | None = None, flex: bool = False,
              cross: bool = False, device=None) -> LoweredMask:
        """What the kernel takes, computed once per forward and shared by every layer.

        ``flex``: the caller may use FlexAttention (CUDA, no attention dropout); it is used when the
        pattern is one of padding / documents / causal / prefix and there is no explicit mask or bias."""
        offset = k_len - q_len if query_offset is None else query_offset
        if self.empty:
            return LoweredMask()
        structured = self.explicit is None and self.bias is None and not self.anticausal
        if (structured and self.causal and self.padding is None and self.documents is None and self.prefix_length is None
                and offset == 0 and q_len == k_len):
            return LoweredMask(is_causal=True)
        if flex and structured and not cross and flex_attention is not None:
            return LoweredMask(block_mask=self._block_mask(q_len, k_len, offset))
        mask = self.dense(q_len, k_len, offset, cross, device)
        if self.bias is not None:
            bias = self.bias[..., -q_len:, :k_len]
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        return LoweredMask(mask=mask)

    def _block_mask(self, q_len: int, k_len: int, offset: int):
        """The pattern of ``dense`` as a FlexAttention block mask (the mask_mods combined with AND)."""
        padding, documents, causal, prefix = self.padding, self.documents, self.causal, self.prefix_length

        def mask_mod(b, h, q_idx, kv_idx):
            q_pos = q_idx + offset
            allowed = kv_idx >= 0
            if documents is not None:
                allowed = allowed & (documents[b, q_pos] == documents[b, kv_idx])
            elif padding is not None:  # a padding query row sees itself, so that no row is empty
                allowed = allowed & (padding[b, kv_idx] | ((kv_idx == q_pos) & ~padding[b, q_pos]))
            if causal:
                seen = kv_idx <= q_pos
                if prefix is not None:
                    seen = seen | (kv_idx < prefix[b])
                allowed = allowed & seen
            return allowed

        batch = next((t.size(0) for t in (padding, documents, prefix) if t is not None), None)
        device = self._device() or torch.device("cuda")  # flex is asked for on CUDA only
        # Compiled, building the block mask costs a fraction of the dense mask's memory and time (CUDA only:
        # the CPU code generator does not build it in torch 2.13).
        return create_block_mask(mask_mod, batch, None, q_len, k_len, device=device, _compile=device.type == "cuda")


@dataclass(frozen=True)
class RelativeDistances:
    """Transformer-XL's relative attention inputs of one stream (XLNet), built once per forward and read
    by every layer (each projects ``table`` with its own weights).

    table [2D-1, H]: the sinusoid of the distances d = -(D-1) .. D-1 (row d + D - 1), dropout applied;
    index [B or 1, Lq, Lk] long: the table row of query i and key j, position(i) - position(j) + D - 1;
    other_segment [B, 1, Lq, Lk] bool: i and j lie in different segments (None: no segments given, all in
        one: the same-segment term on every key, a constant per row, so the weights are XLNet's without it)."""

    table: torch.Tensor
    index: torch.Tensor
    other_segment: torch.Tensor | None = None


@dataclass(frozen=True)
class LoweredMask:
    """A mask as the kernel takes it: SDPA's ``attn_mask`` / ``is_causal``, or a FlexAttention block mask.
    ``relative``: Transformer-XL's relative terms, which depend on the query (``mask`` is then boolean:
    the attention module turns both into one float mask)."""

    mask: torch.Tensor | None = None
    is_causal: bool = False
    block_mask: object | None = None
    relative: RelativeDistances | None = None

    @property
    def kernel(self) -> str:
        if self.block_mask is not None:
            return "flex"
        return "sdpa-causal" if self.is_causal else ("sdpa" if self.mask is None else "sdpa-masked")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: LoweredMask, dropout: float = 0.0,
           scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention of q (B, nh, Lq, hs) over k, v (B, nh, Lk, hs) -> (B, nh, Lq, hs).
    ``scale``: of the scores; None is 1 / sqrt(hs)."""
    if mask.block_mask is not None:
        return _compiled_flex()(q, k, v, block_mask=mask.block_mask, scale=scale)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask.mask, dropout_p=dropout, is_causal=mask.is_causal, scale=scale)


_FLEX = None


def _compiled_flex():
    """FlexAttention runs its fused kernel only when compiled; compiled once per process."""
    global _FLEX
    if _FLEX is None:
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX
