from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_ptm.nn.config import ModelConfig
from lit_ptm.nn.layers import activation, norm
from lit_ptm.nn.losses import IGNORE_INDEX, linear_cross_entropy

ROW_BUCKET = 128  # compiled loss: predicted rows are padded to a multiple of this


class LMHead(nn.Module):
    """Hidden states of the predicted positions [N, H] -> vocabulary logits [N, V].

    Objectives gather the rows they predict before calling it, so the V-wide projection (the
    largest matmul of a small model) runs on ~15% of the tokens for MLM, not on all of them.
    With ``tie_word_embeddings`` the projection is the token embedding matrix.
    """

    def __init__(self, config: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        H, E = config.hidden_size, config.embed_size
        # BERT: dense + activation + norm; ALBERT's dense also maps H -> E for the factorised output
        # embedding; without a transform, a factorised model still needs that projection.
        if config.lm_head_transform:
            self.transform = nn.Sequential(nn.Linear(H, E), _Activation(config.activation), norm(config, E))
        else:
            self.transform = nn.Linear(H, E, bias=False) if E != H else nn.Identity()
        self.embedding = embedding if config.tie_word_embeddings else None
        self.weight = None if config.tie_word_embeddings else nn.Parameter(torch.empty(config.vocab_size, E))
        self.bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.lm_head_bias else None
        # T5 scales the states by H^-0.5 before its output projection (the tied table is not scaled).
        self.scale = H**-0.5 if config.lm_head_scale else None
        self._compiled_loss = None
        if self.weight is not None:
            nn.init.normal_(self.weight, std=config.init_std)
        for m in self.transform.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=config.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embedding.weight if self.embedding is not None else self.weight

    def _transform(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.transform(hidden)
        return hidden * self.scale if self.scale is not None else hidden

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self._transform(hidden), self.output_weight, self.bias)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, want_argmax: bool = False):
        """Mean cross-entropy of the rows ``hidden`` [N, H] against ``targets`` [N] (and the argmax
        prediction per row if asked), without materialising the [N, V] logits."""
        if self._compiled_loss is None:
            return self._loss(hidden, targets, want_argmax)
        # Compiled: the fused loss walks its rows in chunks, a loop the compiler unrolls for one row
        # count. MLM's count changes from batch to batch, so rows are padded (ignored) up to a multiple
        # of ROW_BUCKET: a handful of shapes, each compiled once, instead of a recompilation a batch.
        n = hidden.size(0)
        padded = -(-n // ROW_BUCKET) * ROW_BUCKET
        if padded != n:
            hidden = F.pad(hidden, (0, 0, 0, padded - n))
            targets = F.pad(targets, (0, padded - n), value=IGNORE_INDEX)
        loss, argmax = self._compiled_loss(hidden, targets, want_argmax)
        return loss, argmax[:n] if argmax is not None else None

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor, want_argmax: bool):
        return linear_cross_entropy(self._transform(hidden), self.output_weight, self.bias, targets, want_argmax)

    def compile_loss(self) -> None:
        """Compile the transform + fused cross-entropy (see ``loss``)."""
        self._compiled_loss = torch.compile(self._loss, dynamic=False)


class _Activation(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name, self.fn = name, activation(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class PairHead(nn.Module):
    """BERT's pooler (dense + tanh on the [CLS] state) and a two-way classifier, for NSP and SOP."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 2)
        for m in (self.pooler, self.classifier):
            nn.init.normal_(m.weight, std=config.init_std)
            nn.init.zeros_(m.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, H) -> logits (B, 2), from the first ([CLS]) position."""
        return self.classifier(torch.tanh(self.pooler(hidden[:, 0])))


class SpanBoundaryHead(nn.Module):
    """SpanBERT's span boundary objective: a masked token's state from the two tokens just outside its
    span and a learned embedding of its offset inside the span, [h(s-1); h(e+1); p(i-s)] (3H) ->
    Linear-GeLU-LayerNorm -> Linear-GeLU-LayerNorm -> (P, E), for the tied output projection.
    Offsets past the table's last row (spans over ``max_offsets`` tokens) share it."""

    def __init__(self, config: ModelConfig, max_offsets: int = 32):
        super().__init__()
        H, E = config.hidden_size, config.embed_size
        self.offsets = nn.Embedding(max_offsets, H)
        act = config.activation
        self.mlp = nn.Sequential(nn.Linear(3 * H, H), _Activation(act), norm(config, H),
                                 nn.Linear(H, E), _Activation(act), norm(config, E))
        nn.init.normal_(self.offsets.weight, std=config.init_std)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=config.init_std)
                nn.init.zeros_(m.bias)

    def forward(self, left: torch.Tensor, right: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """left, right (P, H): boundary states; offset (P,) long: 0 at a span's first token -> (P, E)."""
        position = self.offsets(offset.clamp(max=self.offsets.num_embeddings - 1))
        return self.mlp(torch.cat([left, right, position], -1))
