"""The shared stack: embeddings + blocks (+ final norm), in encoder (bidirectional) or decoder (causal) mode."""

from __future__ import annotations

import math

import torch
from torch import nn

from lit_ptm.errors import ConfigError
from lit_ptm.nn.attention import attention_mask as build_attention_mask
from lit_ptm.nn.config import ModelConfig
from lit_ptm.nn.layers import Block


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.max_positions, self.offset = config.max_length, config.position_offset
        E = config.embed_size  # ALBERT: every embedding in E dimensions, then one projection to H
        self.tokens = nn.Embedding(config.vocab_size, E)
        self.positions = nn.Embedding(config.max_position_embeddings, E) if config.position_embedding == "learned" else None
        self.token_types = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size else None
        self.norm = nn.LayerNorm(E, eps=config.norm_eps) if config.embedding_norm else None
        self.dropout = nn.Dropout(config.dropout)
        # Factorised (ALBERT): always projected, also where E == H, as HF's ALBERT is.
        self.project = nn.Linear(E, config.hidden_size) if config.embedding_size is not None else None

    def forward(self, input_ids, position_ids=None, token_type_ids=None) -> torch.Tensor:
        T = input_ids.size(1)
        if T > self.max_positions:
            raise ConfigError(
                f"sequence length {T} exceeds the model's {self.max_positions} positions (model.config.max_position_embeddings "
                "less position_offset); lower data.seq_length or raise max_position_embeddings"
            )
        x = self.tokens(input_ids)  # (B, T, H)
        if self.positions is not None:
            x = x + (self.positions.weight[self.offset : self.offset + T] if position_ids is None else self.positions(position_ids + self.offset))
        if self.token_types is not None:  # no ids given: every token is in segment 0 (as in BERT)
            x = x + (self.token_types.weight[0] if token_type_ids is None else self.token_types(token_type_ids))
        if self.norm is not None:
            x = self.norm(x)
        x = self.dropout(x)
        return self.project(x) if self.project is not None else x  # (B, T, H)


class Transformer(nn.Module):
    """Token ids -> hidden states (B, T, H). Knows nothing of objectives."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("model.config.vocab_size is not set (it is taken from the tokenizer when training)")
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(self._shared_blocks(config))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps) if config.final_norm else None
        self.apply(self._init_weights)
        if config.scale_residual_init:
            for block in self.blocks:
                for proj in (block.attention.out, block.ffn.down):
                    nn.init.normal_(proj.weight, std=config.init_std / math.sqrt(2 * config.num_layers))

    @staticmethod
    def _shared_blocks(config: ModelConfig) -> list[Block]:
        """The blocks, with ALBERT's cross-layer sharing: every layer reuses the first layer's
        modules (all), or only its attention or feed-forward sub-layer (with that sub-layer's norm)."""
        first = Block(config)
        if config.share == "all":
            return [first] * config.num_layers
        blocks = [first] + [Block(config) for _ in range(config.num_layers - 1)]
        for block in blocks[1:]:
            if config.share == "attention":
                block.attention, block.attention_norm = first.attention, first.attention_norm
            elif config.share == "ffn":
                block.ffn, block.ffn_norm = first.ffn, first.ffn_norm
        return blocks

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, T]; attention_mask [B, T] (True/1 = real token); segment_ids [B, T] confine
        attention to packed documents. Returns hidden states [B, T, H]."""
        causal = self.config.causal
        key_padding = attention_mask.bool() if attention_mask is not None else None
        mask = build_attention_mask(causal, input_ids.size(1), key_padding, segment_ids)
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        for block in self.blocks:
            x = block(x, mask, causal)
        return self.final_norm(x) if self.final_norm is not None else x

