"""Permutation language modelling with two-stream attention: XLNet (Yang et al. 2019) and MPNet (Song et al. 2020).

Both predict tokens in a random factorisation order. The content stream h reads the real tokens (it is
the encoder that fine-tuning takes); the query stream g, one row per prediction, reads the position it
predicts and what the order lets it see, never its own token, through the same weights (``Transformer``'s
``query_stream``). The collators (data/collate/permute.py) build the order as masks, tokens in place;
the LM head runs on the query stream at the predictions only.

- ``XLNet``: partial prediction (the last ~1/K of the order, whole-word n-grams), Transformer-XL's
  relative attention (``position_embedding: xlnet_relative``) with relative segments, the query stream
  starting from one learned vector. Transformer-XL's segment recurrence (memory) is not built: every
  window is read on its own (HF's XLNet with ``mem_len`` None / ``use_mems`` False).
- ``MPNet``: 15% of each sequence predicted as the last tokens of the order, their [MASK] slots (80/10/10)
  appended at their positions so every prediction sees the positions of all n tokens, BERT's blocks with
  absolute positions plus bucketed relative positions (``relative_attention_bias``).

Neither generates: ``lit-ptm generate`` refuses them with ``generate_refusal``.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_ptm.data.batch import Batch, DataRecipe
from lit_ptm.errors import ConfigError
from lit_ptm.nn import AttentionMask, LMHead, ModelConfig, StackOutput
from lit_ptm.objectives.base import LossParts, OptimConfig, PretrainObjective


class PermutationLM(PretrainObjective):
    """The two-stream base: the LM head on the query stream at the predicted slots, logged as ``plm``."""

    generate_refusal = ("is a permutation LM: its encoder reads bidirectionally and its query stream predicts "
                        "tokens in a sampled order, not left to right; lit_ptm generates with causal LMs (configs/gpt.yaml) "
                        "and encoder-decoders (T5, BART, MASS). Fine-tune it like any encoder")

    def build_heads(self) -> None:
        self.lm_head = LMHead(self.config, self.stack().embeddings.tokens)
        self.track_accuracy("plm", self.config.vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The content stream's states [B, T, H]: the encoder, as fine-tuning reads it."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.encode({k: v for k, v in batch.items() if v is not None}).hidden

    def two_streams(self, batch: Batch) -> StackOutput:
        raise NotImplementedError

    def loss_parts(self, batch: Batch) -> LossParts:
        out = self.two_streams(batch)
        labels = batch["labels"]  # [B, P], -100 on padded slots
        predicted = labels != -100
        targets = labels[predicted]
        loss, predictions = self.lm_head.loss(out.query_hidden[predicted], targets, want_argmax=True)
        return LossParts(loss=loss, num_predicted=targets.numel(), parts={"plm": loss}, lm_loss=loss,
                         accuracies={"plm": (predictions, targets)}, aux=out.aux_losses)


class XLNet(PermutationLM):
    """XLNet's permutation LM (objectives.md "XLNet").

    Each window gets a random factorisation order over round(n / ``partial_prediction``) targets, chosen
    as whole-word n-grams (p(n) ~ 1/n, n <= ``max_ngram``), after every other token. The content stream
    reads the windows unchanged (no [MASK], any length) and sees itself and what precedes it in the
    order; the query stream of a target starts from a learned vector (``query_embedding``, XLNet's
    mask_emb) and sees only what precedes it. Needs ``position_embedding: xlnet_relative`` (its relative
    attention puts each query at its target's position) and takes ``token_type_ids`` as relative
    segments. Where it differs from XLNet: no Transformer-XL memory, no bidirectional data pipeline
    (``bi_data``), n-grams without XLNet's context spacing (``mask_alpha``)."""

    special_roles = ("cls", "sep")

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(), partial_prediction: float = 6,
                 max_ngram: int = 5, pretrained: str | None = None, compile: bool = False):
        if partial_prediction < 1:
            raise ConfigError(f"model.partial_prediction={partial_prediction} (K: the last 1/K of the order is predicted) must be >= 1")
        if max_ngram < 1:
            raise ConfigError(f"model.max_ngram={max_ngram} must be at least 1")
        if config.position_embedding != "xlnet_relative" and pretrained is None:
            raise ConfigError(
                f"model.config.position_embedding={config.position_embedding!r}: XLNet's query stream carries no position of "
                "its own, it reads its target's through relative attention: use xlnet_relative (configs/xlnet.yaml)")
        self.partial_prediction, self.max_ngram = partial_prediction, max_ngram
        super().__init__(config, optim, pretrained, compile)

    def data_recipe(self) -> DataRecipe:
        from lit_ptm.data.collate import XLNetCollator

        def collator(ids, seed, isolate_documents):
            return XLNetCollator(ids, seed, self.partial_prediction, self.max_ngram, isolate_documents)

        return DataRecipe(packings=("doc_sentences", "full_sentences"), collator=collator, name="the XLNet objective")

    def build_heads(self) -> None:
        super().build_heads()
        self.query_embedding = nn.Parameter(torch.empty(self.config.hidden_size).normal_(std=self.config.init_std))

    def two_streams(self, batch: Batch) -> StackOutput:
        ids, positions = batch["input_ids"], batch["target_positions"]  # [B, L], [B, P]
        (B, L), P = ids.shape, positions.size(1)
        allowed = ~batch["perm_mask"]  # [B, L, L]: i may see j
        documents, padding = batch.get("document_ids"), batch.get("attention_mask")
        if documents is not None:
            allowed = allowed & (documents[:, :, None] == documents[:, None, :])
        # The content stream also sees itself (a target's own token is its content); its query does not.
        content = AttentionMask(padding=padding.bool() if padding is not None else None,
                                explicit=allowed | torch.eye(L, dtype=torch.bool, device=ids.device))
        query = AttentionMask(explicit=allowed.gather(1, positions[:, :, None].expand(B, P, L)))  # [B, P, L]
        g0 = self.stack().embeddings.dropout(self.query_embedding.expand(B, P, -1))
        return self.stack()(ids, content, position_ids=batch.get("position_ids"), token_type_ids=batch.get("token_type_ids"),
                            query_stream=g0, query_mask=query, query_columns=positions)


class MPNet(PermutationLM):
    """MPNet's masked and permuted LM (objectives.md "MPNet").

    round(``mlm_probability`` n) tokens of each window are the last of a random order and predicted; the
    content input is [window | their [MASK] slots] (80/10/10), the slots at their targets' positions;
    the query stream starts from the slots' embeddings. The collator's masks: a query sees the tokens
    not predicted, the predicted ones earlier in the order and the slots at and after its own place, so
    it sees the positions of all n tokens (position compensation). Needs absolute positions; MPNet adds
    ``relative_attention_bias`` (configs/mpnet.yaml). Where it differs from MPNet's code: only real,
    non-special tokens are permuted and predicted (MPNet's permutes padding too)."""

    special_roles = ("cls", "sep", "mask")

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(), mlm_probability: float = 0.15,
                 pretrained: str | None = None, compile: bool = False):
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"model.mlm_probability={mlm_probability} must be in (0, 1)")
        if config.position_embedding != "learned" and pretrained is None:
            raise ConfigError(
                f"model.config.position_embedding={config.position_embedding!r}: MPNet's [MASK] slots carry their targets' "
                "positions in absolute position embeddings: use learned (configs/mpnet.yaml)")
        self.mlm_probability = mlm_probability
        super().__init__(config, optim, pretrained, compile)

    def data_recipe(self) -> DataRecipe:
        from lit_ptm.data.collate import MPNetCollator

        def collator(ids, seed, isolate_documents):
            return MPNetCollator(ids, seed, self.mlm_probability, isolate_documents)

        return DataRecipe(packings=("doc_sentences", "full_sentences"), collator=collator, name="the MPNet objective")

    def two_streams(self, batch: Batch) -> StackOutput:
        ids, query_ids = batch["input_ids"], batch["query_ids"]  # [B, L+C], [B, C]
        (B, T), C = ids.shape, query_ids.size(1)
        stack = self.stack()
        g0 = stack.embeddings(query_ids, batch["query_position_ids"])  # the slots' embeddings, as the content's
        slots = torch.arange(T - C, T, device=ids.device).expand(B, C)  # query k stands for content slot k
        return stack(ids, AttentionMask(explicit=batch["content_mask"]), position_ids=batch["position_ids"],
                     query_stream=g0, query_mask=AttentionMask(explicit=batch["query_mask"]), query_columns=slots)
