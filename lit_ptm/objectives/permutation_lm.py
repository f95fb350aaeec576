"""Permutation language modelling with two-stream attention: XLNet (Yang et al. 2019) and MPNet (Song et al. 2020).

Both predict tokens in a random factorisation order. The content stream h reads the real tokens (it is
the encoder that fine-tuning takes); the query stream g, one row per prediction, reads the position it
predicts and what the order lets it see, never its own token, through the same weights (``Transformer``'s
``query_stream``). The collators (data/collate/permute.py) build the order as masks, tokens in place;
the LM head runs on the query stream at the predictions only.

- ``XLNet``: partial prediction (the last ~1/K of the order, whole-word n-grams), Transformer-XL's
  relative attention (``position_embedding: xlnet_relative``) with relative segments, the query stream
  starting from one learned vector; Transformer-XL's segment recurrence as an option (``mem_len``).
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
    segments.

    ``mem_len`` > 0: Transformer-XL's segment recurrence, as XLNet pretrains. Batches become streams
    (row b continues the text of row b of the previous batch, ``sampling.StreamSampler``) and both
    streams also attend to the last ``mem_len`` content-stream inputs of every layer from the previous
    batches (no gradient through them), at the positions before the window. Training and evaluation
    keep memories of their own, emptied at each epoch's and each evaluation's start; checkpoints keep the
    training memory, so a resumed run continues exactly. Off by default (0): every window on its own, as
    HF's XLNet with ``use_mems=False``; fine-tuning never uses it. Needs windows that continue each other:
    the recipe's doc_sentences, or full_sentences with data.cross_document_attention (no document_ids).

    Where it differs from XLNet: no bidirectional data pipeline (``bi_data``), n-grams without XLNet's
    context spacing (``mask_alpha``), no dropout after the feed-forward's activation (HF's XLNet has one)."""

    special_roles = ("cls", "sep")

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(), partial_prediction: float = 6,
                 max_ngram: int = 5, mem_len: int = 0, pretrained: str | None = None, compile: bool = False):
        if mem_len < 0:
            raise ConfigError(f"model.mem_len={mem_len} must be >= 0 (0: no memory)")
        if partial_prediction < 1:
            raise ConfigError(f"model.partial_prediction={partial_prediction} (K: the last 1/K of the order is predicted) must be >= 1")
        if max_ngram < 1:
            raise ConfigError(f"model.max_ngram={max_ngram} must be at least 1")
        if config.position_embedding != "xlnet_relative" and pretrained is None:
            raise ConfigError(
                f"model.config.position_embedding={config.position_embedding!r}: XLNet's query stream carries no position of "
                "its own, it reads its target's through relative attention: use xlnet_relative (configs/xlnet.yaml)")
        self.partial_prediction, self.max_ngram, self.mem_len = partial_prediction, max_ngram, mem_len
        super().__init__(config, optim, pretrained, compile)
        # Transformer-XL memory per phase: "train", "eval" -> (per-layer inputs [(B, M, H)], padding [B, M] bool)
        self.memory: dict[str, tuple[list[torch.Tensor], torch.Tensor]] = {}
        self.memory_epoch = -1  # the epoch whose batches filled the training memory

    def data_recipe(self) -> DataRecipe:
        from lit_ptm.data.collate import XLNetCollator

        def collator(ids, seed, isolate_documents):
            return XLNetCollator(ids, seed, self.partial_prediction, self.max_ngram, isolate_documents)

        return DataRecipe(packings=("doc_sentences", "full_sentences"), collator=collator, name="the XLNet objective",
                          streams=self.mem_len > 0)

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
        phase = "train" if self.training else "eval"
        memory, memory_padding = self.memory.get(phase, (None, None)) if self.mem_len else (None, None)
        if self.mem_len and documents is not None:
            raise ConfigError(f"model.mem_len={self.mem_len}: the memory continues each row's text across windows, but these "
                              "windows isolate packed documents; use data.packing doc_sentences, or data.cross_document_attention true")
        if memory is not None and memory[0].size(0) != B:  # a batch of another size cannot continue these rows
            memory = memory_padding = None
        out = self.stack()(ids, content, position_ids=batch.get("position_ids"), token_type_ids=batch.get("token_type_ids"),
                           query_stream=g0, query_mask=query, query_columns=positions,
                           memory=memory, memory_padding=memory_padding, memory_length=self.mem_len)
        if self.mem_len:
            real = padding.bool() if padding is not None else torch.ones(B, L, dtype=torch.bool, device=ids.device)
            seen = real if memory_padding is None else torch.cat([memory_padding, real], 1)
            self.memory[phase] = (out.memory, seen[:, -self.mem_len:])
            if self.training:
                self.memory_epoch = self.current_epoch if self._trainer is not None else 0
        return out

    # Memory: emptied where its rows no longer continue (a new epoch's streams, each evaluation), kept in checkpoints.
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self.memory_epoch != self.current_epoch:  # kept only by a run resumed within the epoch that filled it
            self.memory.pop("train", None)

    def on_validation_epoch_start(self):
        self.memory.pop("eval", None)

    def on_test_epoch_start(self):
        self.memory.pop("eval", None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if "train" in self.memory:  # every rank's rows (their streams differ): [world, layers, B, M, H], [world, B, M]
            layers, padding = self.memory["train"]
            layers, padding = self.all_gather(torch.stack(layers)), self.all_gather(padding)
            if self.trainer.world_size == 1:
                layers, padding = layers[None], padding[None]
            checkpoint["lit_ptm"]["memory"] = {"layers": layers.cpu(), "padding": padding.cpu(), "epoch": self.memory_epoch}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint["lit_ptm"].get("memory")
        if saved is not None and self.mem_len:
            rank = self.global_rank if self._trainer is not None else 0
            if rank < saved["layers"].size(0):
                device = self.device
                self.memory["train"] = (list(saved["layers"][rank].to(device).unbind(0)), saved["padding"][rank].to(device))
                self.memory_epoch = saved["epoch"]


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
