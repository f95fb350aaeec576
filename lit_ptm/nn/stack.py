"""The shared stack: embeddings + blocks (+ final norm). Which positions see which is the caller's mask."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lit_ptm.errors import ConfigError
from lit_ptm.nn.attention import KVCache, XLRelativeTerms
from lit_ptm.nn.config import ModelConfig
from lit_ptm.nn.layers import Block, norm
from lit_ptm.nn import mask as masks
from lit_ptm.nn.mask import AttentionMask, LoweredMask, RelativeDistances


class Embeddings(nn.Module):
    """Token (+ position, + segment, + block position) tables of width E, summed, normalised and dropped out.

    A module of its own so that stacks can share it: ELECTRA's generator and discriminator, or an
    encoder and a decoder over one vocabulary, hold the same ``Embeddings`` (each stack projects
    E to its own width when they differ). ``tokens``: another stack's token table, the one thing an
    encoder and a decoder share (BART and MASS give each stack its own positions and norm)."""

    def __init__(self, config: ModelConfig, tokens: nn.Embedding | None = None):
        super().__init__()
        self.max_positions, self.offset = config.max_length, config.position_offset
        E = config.embed_size  # ALBERT: every embedding in E dimensions, then one projection to H (in the stack)
        self.tokens = tokens if tokens is not None else nn.Embedding(config.vocab_size, E)
        self.token_scale = E**0.5 if config.scale_embeddings else None
        self.positions = nn.Embedding(config.max_position_embeddings, E) if config.position_embedding == "learned" else None
        self.token_types = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size else None
        self.norm = norm(config, E) if config.embedding_norm else None
        self.dropout = nn.Dropout(config.dropout)
        # GLM's 2D positions: a second table for the position inside a blank (0 outside the blanks).
        self.block_positions = nn.Embedding(config.max_position_embeddings, E) if config.block_position_embedding else None

    @property
    def width(self) -> int:
        return self.tokens.embedding_dim

    def forward(self, input_ids, position_ids=None, token_type_ids=None, block_position_ids=None, start: int = 0) -> torch.Tensor:
        """input_ids [B, T] -> (B, T, E). Without position ids, positions run from ``start`` (the
        positions a KV cache already holds)."""
        T = input_ids.size(1)
        # Given position ids (packed documents, MPNet's appended slots) index the table themselves: the
        # data's length was checked against the table when the model was configured.
        if position_ids is None and start + T > self.max_positions:
            raise ConfigError(
                f"sequence length {start + T} exceeds the model's {self.max_positions} positions (model.config.max_position_embeddings "
                "less position_offset); lower data.seq_length or raise max_position_embeddings"
            )
        x = self.tokens(input_ids)  # (B, T, E)
        if self.token_scale is not None:
            x = x * self.token_scale
        if self.positions is not None:
            first = self.offset + start
            x = x + (self.positions.weight[first : first + T] if position_ids is None else self.positions(position_ids + self.offset))
        if self.token_types is not None:  # no ids given: every token is in segment 0 (as in BERT)
            x = x + (self.token_types.weight[0] if token_type_ids is None else self.token_types(token_type_ids))
        if self.block_positions is not None:
            x = x + (self.block_positions.weight[0] if block_position_ids is None else self.block_positions(block_position_ids))
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class RelativePositionBias(nn.Module):
    """T5's relative positions: a learned scalar per head for each bucket of the distance key - query,
    added to the attention scores. Of the n buckets of a direction, distances below n / 2 have a bucket
    each; longer ones share logarithmically wider buckets up to ``relative_max_distance``, beyond which
    all share the last. Bidirectional (an encoder): n = buckets / 2 for each direction (so distances
    below buckets / 4 are exact); a decoder (causal) looks back only, with n = buckets."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_buckets, self.max_distance = config.relative_buckets, config.relative_max_distance
        self.buckets = nn.Embedding(config.relative_buckets, config.num_heads)

    def bucket(self, distance: torch.Tensor, bidirectional: bool) -> torch.Tensor:
        """distance = key - query position (any shape, long) -> bucket index (same shape)."""
        n, bucket = self.num_buckets, torch.zeros_like(distance)
        if bidirectional:
            n //= 2
            bucket = bucket + (distance > 0).long() * n
            distance = distance.abs()
        else:
            distance = (-distance).clamp(min=0)  # keys after the query are masked anyway
        exact = n // 2
        # Logarithmic beyond ``exact``: exact + log(d / exact) / log(max / exact) * (n - exact), capped at n - 1.
        wide = exact + (torch.log(distance.clamp(min=1).float() / exact) / math.log(self.max_distance / exact)
                        * (n - exact)).long()
        return bucket + torch.where(distance < exact, distance, wide.clamp(max=n - 1))

    def forward(self, q_len: int, start: int, bidirectional: bool) -> torch.Tensor:
        """The bias (1, nh, q_len, start + q_len) of queries at positions start.. over keys 0.. (a KV cache's first)."""
        device = self.buckets.weight.device
        q = torch.arange(start, start + q_len, device=device)[:, None]
        k = torch.arange(start + q_len, device=device)[None, :]
        return self.buckets(self.bucket(k - q, bidirectional)).permute(2, 0, 1)[None]  # (1, nh, Lq, Lk)

    def between(self, query_positions: torch.Tensor, key_positions: torch.Tensor, bidirectional: bool) -> torch.Tensor:
        """The bias (B, nh, Lq, Lk) of queries at query_positions [B, Lq] over keys at key_positions [B, Lk]
        (MPNet: a permuted layout's positions, its query stream's at the targets')."""
        distance = key_positions[:, None, :] - query_positions[:, :, None]  # (B, Lq, Lk)
        return self.buckets(self.bucket(distance, bidirectional)).permute(0, 3, 1, 2)


def sinusoid_distances(span: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Transformer-XL's position table of the distances -(span-1) .. span-1: (2 span - 1, width), row d + span - 1
    = [sin(d f), cos(d f)] with the frequencies f_k = 10000^(-2k / width) (the halves concatenated, not interleaved).
    In ``dtype``, computed in float32 (float64 for a float64 model: a float32 sin rounds differently on other CPUs)."""
    exact = torch.float64 if dtype == torch.float64 else torch.float32
    distance = torch.arange(-(span - 1), span, device=device, dtype=exact)
    frequency = 1.0 / 10000 ** (torch.arange(0, width, 2, device=device, dtype=exact) / width)
    angle = distance[:, None] * frequency[None]
    return torch.cat([angle.sin(), angle.cos()], -1).to(dtype)


@dataclass
class StackOutput:
    """hidden (B, T, H); aux_losses: the blocks' auxiliary losses summed over layers (an MoE balance
    loss), which the objective adds to its loss; cache: the KV cache, advanced past these tokens;
    query_hidden: the query stream of two-stream attention."""

    hidden: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    cache: KVCache | None = None
    query_hidden: torch.Tensor | None = None  # two-stream attention: the query stream's states (B, T, H)
    memory: list[torch.Tensor] | None = None  # Transformer-XL: each layer's input, after the memory given, detached (B, M, H)


class Transformer(nn.Module):
    """Token ids -> hidden states. Knows nothing of objectives: the caller's ``AttentionMask`` says what
    each position sees (bidirectional, causal, prefix, packed documents, permutations).

    ``embeddings``: another stack's ``Embeddings`` to share (their width must be ``config.embed_size``).
    ``cross_attention``: every block also attends to a ``context`` (a decoder over an encoder's output).
    """

    def __init__(self, config: ModelConfig, embeddings: Embeddings | None = None, cross_attention: bool = False,
                 tokens: nn.Embedding | None = None):
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("model.config.vocab_size is not set (it is taken from the tokenizer when training)")
        if embeddings is not None and embeddings.width != config.embed_size:
            raise ConfigError(
                f"a shared embedding table is {embeddings.width} wide, but this stack's model.config.embedding_size "
                f"is {config.embed_size}"
            )
        self.config = config
        shared = embeddings is not None
        self.embeddings = embeddings if shared else Embeddings(config, tokens)
        # Factorised (ALBERT): always projected, also where E == H, as HF's ALBERT is.
        self.project = nn.Linear(config.embed_size, config.hidden_size) if config.embedding_size is not None else None
        self.blocks = nn.ModuleList(self._shared_blocks(config, cross_attention))
        self.final_norm = norm(config) if config.final_norm else None
        # T5 / MPNet: one bias table per stack, shared by its layers (HF keeps T5's in the first layer).
        self.relative_bias = (RelativePositionBias(config)
                              if config.position_embedding == "relative" or config.relative_attention_bias else None)
        # XLNet: the sinusoid of the distances is built once per forward and dropped out (each layer projects it)
        self.distance_dropout = nn.Dropout(config.dropout) if config.position_embedding == "xlnet_relative" else None
        for name, module in self.named_children():
            if shared and name == "embeddings":  # a shared table keeps its owner's weights
                continue
            for part in (module.children() if name == "embeddings" and tokens is not None else [module]):
                if part is not tokens:
                    part.apply(self._init_weights)
        if config.embedding_init_std is not None and not shared and tokens is None:
            nn.init.normal_(self.embeddings.tokens.weight, std=config.embedding_init_std)
        if config.scale_residual_init:
            for block in self.blocks:
                for proj in (block.attention.out, block.ffn.down):
                    nn.init.normal_(proj.weight, std=config.init_std / math.sqrt(2 * config.num_layers))

    @staticmethod
    def _shared_blocks(config: ModelConfig, cross_attention: bool) -> list[Block]:
        """The blocks, with ALBERT's cross-layer sharing: every layer reuses the first layer's
        modules (all), or only its attention or feed-forward sub-layer (with that sub-layer's norm)."""
        first = Block(config, cross_attention)
        if config.share == "all":
            return [first] * config.num_layers
        blocks = [first] + [Block(config, cross_attention) for _ in range(config.num_layers - 1)]
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
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, XLRelativeTerms):  # XLNet initialises its biases and segment vectors as its weights
            for p in (module.content_bias, module.position_bias, module.segment_bias, module.segments):
                nn.init.normal_(p, std=self.config.init_std)

    def forward(
        self, input_ids: torch.Tensor, mask: AttentionMask | None = None, *, position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None, block_position_ids: torch.Tensor | None = None,
        context: torch.Tensor | None = None, context_mask: AttentionMask | None = None, cache: KVCache | None = None,
        query_stream: torch.Tensor | None = None, query_mask: AttentionMask | None = None,
        query_columns: torch.Tensor | None = None, memory: list[torch.Tensor] | None = None,
        memory_padding: torch.Tensor | None = None, memory_length: int = 0,
    ) -> StackOutput:
        """input_ids [B, T] -> StackOutput(hidden [B, T, H], aux_losses, cache).

        mask: the attention pattern (None: bidirectional over every position). With a ``cache`` the
        T tokens follow the ``cache.length`` positions it holds; the mask's padding / documents then
        cover all ``cache.length + T`` positions. context [B, S, H] + context_mask: an encoder's output
        for the cross-attention blocks.

        query_stream [B, T, H] + query_mask: two-stream attention (XLNet, MPNet). Each block runs the
        content stream (the tokens, under ``mask``) and the query stream (position information only,
        under ``query_mask``, usually one that hides each position's own token), whose queries attend
        to the content stream's keys and values at the same layer, through the same weights. The query
        stream's states come back as ``StackOutput.query_hidden``. query_columns [B, P]: the content
        column each query row stands for (XLNet: its target's; MPNet: its [M] slot's): its position and
        segment are that column's, for the relative terms (None: query row i stands for column i).

        Relative positions (T5's and MPNet's buckets, XLNet's sinusoid) are distances between the
        ``position_ids`` when given (a permuted layout's, restarting per packed document), else between
        0..T-1; XLNet's distances must lie within +-(T-1).

        memory (XLNet, Transformer-XL's segment recurrence): per layer, the inputs of that layer over the
        M positions that came before these T (the previous window of each row's text; no gradient), at
        positions -M..-1; both streams attend to them as to the window (segment 0, every row sees them but
        where ``memory_padding`` [B, M] is False). ``memory_length`` > 0: ``StackOutput.memory`` returns the
        last ``memory_length`` of (memory, this window) per layer, for the next window."""
        mask = mask if mask is not None else AttentionMask()
        T, start = input_ids.size(1), cache.length if cache is not None else 0
        g = query_stream
        if g is not None and query_columns is None:
            query_columns = torch.arange(g.size(1), device=input_ids.device).expand(g.size(0), -1)
        query_mask = query_mask if query_mask is not None else AttentionMask()
        relative = query_relative = None
        if self.relative_bias is not None or self.distance_dropout is not None:
            positions = (position_ids if position_ids is not None and cache is None
                         else torch.arange(start, start + T, device=input_ids.device)[None])  # (B or 1, T)
            query_positions = positions.expand(g.size(0), -1).gather(1, query_columns) if g is not None else None
        if self.relative_bias is not None:  # (B or 1, nh, T, start + T), for every layer; a decoder's buckets look back only
            bidirectional = not mask.causal
            if position_ids is None or cache is not None:
                bias = self.relative_bias(T, start, bidirectional)
            else:
                bias = self.relative_bias.between(positions, positions, bidirectional)
            mask = dataclasses.replace(mask, bias=bias if mask.bias is None else mask.bias + bias)
            if g is not None:
                bias = self.relative_bias.between(query_positions, positions.expand(g.size(0), -1), bidirectional)
                query_mask = dataclasses.replace(query_mask, bias=bias if query_mask.bias is None else query_mask.bias + bias)
        M = memory[0].size(1) if memory else 0
        if memory and self.distance_dropout is None:
            raise ConfigError("a Transformer-XL memory needs position_embedding=xlnet_relative (relative positions across windows)")
        if self.distance_dropout is not None:
            if cache is not None:
                raise ConfigError("position_embedding=xlnet_relative (XLNet) is an encoder: it does not decode with a KV cache")
            relative, query_relative = self._xl_distances(positions, query_positions, token_type_ids, query_columns, M)
        x = self.embeddings(input_ids, position_ids, token_type_ids, block_position_ids, start=start)
        if self.project is not None:
            x = self.project(x)  # (B, T, H)
        # Lowered once for every layer. FlexAttention (CUDA) where the pattern is structured and sparse
        # (documents, prefixes) and no attention dropout is drawn: it takes none.
        flex = (x.is_cuda and masks.USE_FLEX and (mask.documents is not None or mask.prefix_length is not None)
                and not (self.training and self.config.attention_dropout > 0))
        if relative is None:
            lowered = mask.lower(T, start + T, start, flex=flex, device=x.device)
        else:  # a boolean mask (never is_causal alone), which the attention turns into one float mask with the terms
            lowered = LoweredMask(mask=self._with_memory(mask.dense(T, T, device=x.device), T, M, memory_padding, x), relative=relative)
        lowered_context = None
        if context is not None:
            lowered_context = (context_mask or AttentionMask()).lower(T, context.size(1), 0, cross=True, device=x.device)
        aux: dict[str, torch.Tensor] = {}
        lowered_query = None
        if g is not None:  # the query rows are not the key rows: lowered as cross-attention (no padding-row fix)
            if query_relative is None:
                lowered_query = query_mask.lower(g.size(1), T, cross=True, device=x.device)
            else:
                dense = query_mask.dense(g.size(1), T, cross=True, device=x.device)
                lowered_query = LoweredMask(mask=self._with_memory(dense, g.size(1), M, memory_padding, x), relative=query_relative)
        new_memory = [] if memory_length > 0 else None
        for i, block in enumerate(self.blocks):
            keys = torch.cat([memory[i], x], 1) if memory else x  # (B, M + T, H): what both streams attend to
            if new_memory is not None:
                new_memory.append(keys[:, -memory_length:].detach())
            if g is not None:  # the query stream reads this layer's content stream, before the block updates it
                g, _ = block(g, lowered_query, kv_from=keys)
            x, block_aux = block(
                x, lowered, kv_from=keys if memory else None, cache=cache.layer(i) if cache is not None else None,
                context=context, context_mask=lowered_context,
                cross_cache=cache.cross[i] if cache is not None and cache.cross is not None else None,
            )
            for name, value in block_aux.items():
                aux[name] = aux[name] + value if name in aux else value
        if cache is not None:
            cache.advance(T)
        norm = self.final_norm if self.final_norm is not None else (lambda h: h)
        return StackOutput(norm(x), aux, cache, norm(g) if g is not None else None, new_memory)

    def _xl_distances(self, positions, query_positions, segments, query_columns, M: int):
        """XLNet's relative inputs of the content rows and of the query rows (``RelativeDistances``): one
        sinusoid table of the distances, dropped out once for every layer; keys are the M memory
        positions (-M..-1, segment 0 as in XLNet) and the window's."""
        T = positions.size(1)
        span = T + M  # distances between queries 0..T-1 and keys -M..T-1 lie within +-(span - 1)
        # In the weights' dtype: a float32 table failed the projection of a float64 (or bf16-true) model.
        table = self.distance_dropout(sinusoid_distances(span, self.config.hidden_size, positions.device,
                                                         self.embeddings.tokens.weight.dtype))
        keys = positions
        if M:
            keys = torch.cat([torch.arange(-M, 0, device=positions.device).expand(positions.size(0), M), positions], 1)
            if segments is not None:
                segments = torch.cat([segments.new_zeros(segments.size(0), M), segments], 1)

        def distances(at: torch.Tensor, at_segments: torch.Tensor | None) -> RelativeDistances:
            other = None if segments is None else (at_segments[:, :, None] != segments[:, None, :])[:, None]
            return RelativeDistances(table, at[:, :, None] - keys[:, None, :] + span - 1, other)

        own = segments[:, M:] if segments is not None else None
        query = None
        if query_positions is not None:
            query = distances(query_positions, None if own is None else own.gather(1, query_columns))
        return distances(positions, own), query

    @staticmethod
    def _with_memory(mask: torch.Tensor | None, rows: int, M: int, memory_padding: torch.Tensor | None, x: torch.Tensor):
        """A window's boolean mask [B or 1, 1, rows, T] (or None) with M memory columns in front, which every
        row sees but where ``memory_padding`` [B, M] is False."""
        if not M:
            return mask
        B, T = x.size(0), x.size(1)
        seen = (memory_padding[:, None, None, :] if memory_padding is not None
                else torch.ones(1, 1, 1, M, dtype=torch.bool, device=x.device))
        window = mask if mask is not None else torch.ones(1, 1, rows, T, dtype=torch.bool, device=x.device)
        return torch.cat([seen.expand(B, 1, rows, M), window.expand(B, 1, rows, T)], -1)

    def new_cache(self, batch_size: int, max_length: int, cross_length: int = 0, dtype=None) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_length`` positions."""
        weight = self.blocks[0].attention.qkv.weight
        return KVCache(self.config, batch_size, max_length, weight.device, dtype or weight.dtype, cross_length)


# Tensor names of older checkpoints -> today's: the factorised-embedding projection moved from the
# embeddings to the stack (embeddings are shared between stacks; each stack projects to its own width).
LEGACY_NAMES = ((".embeddings.project.", ".project."),)


def upgrade_state_dict(state: dict) -> dict:
    """A checkpoint's state dict with older tensor names renamed to today's (in place, and returned)."""
    for key in [k for k in state if any(old in k for old, _ in LEGACY_NAMES)]:
        new = key
        for old, now in LEGACY_NAMES:
            new = new.replace(old, now)
        state[new] = state.pop(key)
    return state
