"""Encoder-decoder pretraining: MASS, T5 span corruption and BART denoising on one stack pair.

The encoder reads the corrupted text bidirectionally; the decoder reads the target causally and
attends to the encoder's output (cross-attention never sees encoder padding). Both stacks share
one token table, and the tied LM head projects onto it. The three objectives differ only in their
corruption (the collator) and in the architecture their recipes choose (T5: relative position
buckets, pre-LN RMSNorm without biases; BART and MASS: learned positions, post-LN).
"""

from __future__ import annotations

import inspect
from typing import Literal

import torch

from lit_ptm.data.batch import Batch, DataRecipe
from lit_ptm.errors import ConfigError
from lit_ptm.hf import family_of
from lit_ptm.nn import AttentionMask, KVCache, LMHead, ModelConfig, StackOutput, Transformer
from lit_ptm.objectives.base import LossParts, OptimConfig, PretrainObjective

DecoderStart = Literal["bos", "eos", "pad", "cls", "sep", "mask"]


class EncoderDecoderLM(PretrainObjective):
    """The shared base: stacks "encoder" (the backbone that fine-tuning on classification, tagging
    and QA takes) and "decoder", the LM head, the loss on the decoder's labels.

    ``decoder_start``: the tokenizer role of the token the decoder starts from (pretraining shifts
    targets right behind it; fine-tuning and generation start from it too); recorded in checkpoints.
    """

    backbone = "encoder"
    window_roles: tuple[str, ...] = ("cls", "sep")  # SentenceWindows frame each window with them

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(),
                 decoder_start: DecoderStart = "bos", pretrained: str | None = None, compile: bool = False):
        if decoder_start not in DecoderStart.__args__:
            raise ConfigError(f"model.decoder_start={decoder_start!r} is not one of {', '.join(DecoderStart.__args__)}")
        self.decoder_start = decoder_start
        self.special_roles = (*self.window_roles, decoder_start)
        super().__init__(config, optim, pretrained, compile)

    # -- building -------------------------------------------------------------------------------
    def build_stacks(self) -> dict[str, Transformer]:
        encoder = Transformer(self.config)
        decoder = Transformer(self.config.decoder(), cross_attention=True, tokens=encoder.embeddings.tokens)
        return {"encoder": encoder, "decoder": decoder}

    def build_heads(self) -> None:
        self.lm_head = LMHead(self.config, self.encoder.embeddings.tokens)
        self.track_accuracy("lm", self.config.vocab_size)

    @classmethod
    def default_decoder_start(cls) -> str:
        """The decoder start role this objective takes when none is given (or recorded, by older checkpoints)."""
        return inspect.signature(cls).parameters["decoder_start"].default

    def decoder_start_id(self, ids) -> int:
        """The decoder's first token in a tokenizer's ids (``SpecialIds``)."""
        value = getattr(ids, self.decoder_start)
        if value is None:
            raise ConfigError(f"model.decoder_start={self.decoder_start}: the tokenizer has no such token")
        return value

    # -- how texts are laid out (fine-tuning and generation lay theirs out as pretraining did; no state:
    # static, so that export reads them from the class) -----------------------------------------
    @staticmethod
    def frame_source(text: list[int], ids) -> list[int]:
        """An encoder input from a text's token ids: ``[CLS] text [SEP]``, as the pretraining windows."""
        return [ids.cls, *text, ids.sep]

    @staticmethod
    def frame_target(text: list[int], ids) -> list[int]:
        """A decoder target from a text's ids: what the decoder learns to emit, ending in ``end_of_target``."""
        return [ids.cls, *text, ids.sep]

    @staticmethod
    def end_of_target(ids) -> int:
        """The token that ends a generated target."""
        return ids.sep

    # -- the two stacks -------------------------------------------------------------------------
    def encode_source(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> StackOutput:
        """The encoder's states (B, S, H) of the source, read bidirectionally over its real tokens."""
        padding = attention_mask.bool() if attention_mask is not None else None
        return self.encoder(input_ids, AttentionMask(padding=padding))

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, source_mask: torch.Tensor | None = None,
               decoder_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
               cache: KVCache | None = None) -> StackOutput:
        """The decoder's states (B, T, H): causal self-attention over its inputs (with a cache: after
        the positions it holds), cross-attention to ``memory`` (B, S, H) except its padding."""
        padding = decoder_mask.bool() if decoder_mask is not None else None
        context = AttentionMask(padding=source_mask.bool() if source_mask is not None else None)
        return self.decoder(decoder_input_ids, AttentionMask(padding=padding, causal=True), position_ids=position_ids,
                            context=memory, context_mask=context, cache=cache)

    def new_cache(self, batch_size: int, max_length: int, source_length: int) -> KVCache:
        """A decoder cache: self-attention keys for ``max_length`` positions, cross-attention keys for the source."""
        return self.decoder.new_cache(batch_size, max_length, cross_length=source_length)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] at every decoder position (for inspection and parity tests)."""
        memory = self.encode_source(input_ids, attention_mask).hidden
        return self.lm_head(self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask).hidden)

    # -- the loss -------------------------------------------------------------------------------
    def loss_parts(self, batch: Batch) -> LossParts:
        source = self.encode_source(batch["input_ids"], batch.get("attention_mask"))
        target = self.decode(batch["decoder_input_ids"], source.hidden, batch.get("attention_mask"),
                             batch.get("decoder_attention_mask"), batch.get("decoder_position_ids"))
        labels = batch["labels"]  # (B, T), -100 on padding
        predicted = labels != -100
        targets = labels[predicted]
        loss, predictions = self.lm_head.loss(target.hidden[predicted], targets, want_argmax=True)  # (P, H) rows only
        aux = dict(source.aux_losses)  # an expert layer's balance loss, summed over both stacks
        for name, value in target.aux_losses.items():
            aux[name] = aux[name] + value if name in aux else value
        return LossParts(loss=loss, num_predicted=targets.numel(), parts={"lm": loss}, lm_loss=loss,
                         accuracies={"lm": (predictions, targets)}, aux=aux)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lit_ptm"]["decoder_start"] = self.decoder_start
        # An encoder-decoder is T5 or BART (for export) or nothing, never an encoder family its config also fits.
        checkpoint["lit_ptm"]["family"] = family_of(self.config, encoder_decoder=True)


class MASS(EncoderDecoderLM):
    """MASS (Song et al., 2019): one contiguous fragment of ~50% of each window is masked in the
    encoder input (80/10/10); the decoder is fed only the fragment shifted right, at its original
    positions, and predicts it."""

    window_roles = ("cls", "sep", "mask")

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(), fragment_ratio: float = 0.5,
                 decoder_start: DecoderStart = "bos", pretrained: str | None = None, compile: bool = False):
        if not 0.0 < fragment_ratio < 1.0:
            raise ConfigError(f"model.fragment_ratio={fragment_ratio} must be in (0, 1)")
        if config.position_embedding != "learned":
            raise ConfigError("MASS feeds the decoder the fragment at its original positions: it needs "
                              f"model.config.position_embedding=learned (got {config.position_embedding})")
        self.fragment_ratio = fragment_ratio
        super().__init__(config, optim, decoder_start, pretrained, compile)

    def data_recipe(self) -> DataRecipe:
        from lit_ptm.data.collate.seq2seq import MASSCollator

        def collator(ids, seed, isolate_documents):
            return MASSCollator(ids, seed, self.fragment_ratio, decoder_start=self.decoder_start_id(ids))

        return DataRecipe(packings=("doc_sentences",), collator=collator, name="the MASS objective")


class T5(EncoderDecoderLM):
    """T5 span corruption (Raffel et al., 2020): 15% of the tokens in spans of mean length 3, each
    span replaced by one sentinel in the input; the target is the sentinels each followed by their
    span, then [EOS]."""

    window_roles = ("eos", "sentinels")  # its collator strips the windows' frame: HF's T5 tokenizer has no [CLS] / [SEP]

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(), noise_density: float = 0.15,
                 mean_span_length: float = 3.0, decoder_start: DecoderStart = "pad", pretrained: str | None = None,
                 compile: bool = False):
        if not 0.0 < noise_density < 1.0:
            raise ConfigError(f"model.noise_density={noise_density} must be in (0, 1)")
        if mean_span_length < 1.0:
            raise ConfigError(f"model.mean_span_length={mean_span_length} must be at least 1")
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        super().__init__(config, optim, decoder_start, pretrained, compile)

    def data_recipe(self) -> DataRecipe:
        from lit_ptm.data.collate.seq2seq import T5Collator

        def collator(ids, seed, isolate_documents):
            return T5Collator(ids, seed, self.noise_density, self.mean_span_length, decoder_start=self.decoder_start_id(ids))

        return DataRecipe(packings=("doc_sentences",), collator=collator, name="the T5 objective")

    @staticmethod
    def frame_source(text: list[int], ids) -> list[int]:
        return [*text, ids.eos]  # T5: text, then end-of-sequence (no [CLS])

    @staticmethod
    def frame_target(text: list[int], ids) -> list[int]:
        return [*text, ids.eos]

    @staticmethod
    def end_of_target(ids) -> int:
        return ids.eos


class BART(EncoderDecoderLM):
    """BART text infilling (Lewis et al., 2020): 30% of the tokens in whole-word spans of Poisson(3)
    lengths, each span (an empty one too) replaced by one [MASK]; optionally the window's sentences
    shuffled first; the decoder reconstructs the whole original window."""

    window_roles = ("cls", "sep", "mask")

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(), mask_probability: float = 0.3,
                 poisson_mean: float = 3.0, permute_sentences: bool = False, decoder_start: DecoderStart = "eos",
                 pretrained: str | None = None, compile: bool = False):
        if not 0.0 < mask_probability < 1.0:
            raise ConfigError(f"model.mask_probability={mask_probability} must be in (0, 1)")
        if poisson_mean <= 0:
            raise ConfigError(f"model.poisson_mean={poisson_mean} must be positive")
        self.mask_probability, self.poisson_mean, self.permute_sentences = mask_probability, poisson_mean, permute_sentences
        super().__init__(config, optim, decoder_start, pretrained, compile)

    def data_recipe(self) -> DataRecipe:
        from lit_ptm.data.collate.seq2seq import BARTCollator

        def collator(ids, seed, isolate_documents):
            return BARTCollator(ids, seed, self.mask_probability, self.poisson_mean, permute_sentences=self.permute_sentences,
                                decoder_start=self.decoder_start_id(ids))

        return DataRecipe(packings=("doc_sentences",), collator=collator, name="the BART objective")
