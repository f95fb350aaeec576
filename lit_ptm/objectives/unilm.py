"""UniLM (Dong et al., 2019): one bidirectional stack pretrained as a bidirectional, left-to-right,
right-to-left and sequence-to-sequence LM, one of them per batch, chosen by the self-attention mask."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lit_ptm.data.batch import Batch, DataRecipe
from lit_ptm.data.collate.unilm import SEGMENTS, TASKS, UniLMCollator
from lit_ptm.errors import ConfigError
from lit_ptm.nn import AttentionMask, ModelConfig
from lit_ptm.objectives.base import OptimConfig
from lit_ptm.objectives.masked_lm import MaskedLM


@dataclass(frozen=True)
class TaskMix:
    """The probability of each sub-task per batch (UniLM's: 1/3, 1/6, 1/6, 1/3). They must sum to 1."""

    bidirectional: float = 1 / 3
    l2r: float = 1 / 6
    r2l: float = 1 / 6
    seq2seq: float = 1 / 3

    def __post_init__(self):
        for key in TASKS:
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.mix.{key}={value} must be a probability in [0, 1]")
        total = sum(self.probabilities())
        if abs(total - 1.0) > 1e-3:
            raise ConfigError(f"model.mix (bidirectional, l2r, r2l, seq2seq) = {self.probabilities()} sums to {total:.4f}, not 1")

    def probabilities(self) -> tuple[float, float, float, float]:
        return tuple(getattr(self, key) for key in TASKS)


def cloze_reader(module, stack, head, ids, mode: str):
    """A ``CausalModel`` reading ``stack`` as UniLM's ``mode`` (l2r or seq2seq) reads: the sub-task's segment
    ids, the prompt a bidirectional prefix in seq2seq, each new token predicted at a [MASK] slot."""
    from lit_ptm.generate import CausalModel

    return CausalModel(module, stack, head, ids.pad, types=SEGMENTS[mode], prefix=mode == "seq2seq", slot_id=ids.mask)


class UniLM(MaskedLM):
    """UniLM v1: every batch is a cloze task over sentence pairs (15% selected, 80% single tokens and 20%
    bigrams or trigrams, 80/10/10), read under the attention pattern and with the segment ids of the
    batch's sub-task, drawn from ``mix``: bidirectional (+ NSP on the pooled [CLS]), left-to-right,
    right-to-left, or seq2seq (``[CLS] A [SEP]`` a bidirectional source, B the target, read left to right
    with the source in view). Logs ``{split}/loss_{task}`` for the batch's sub-task besides the MLM / NSP
    parts. The stack reads bidirectionally (``causal`` False): fine-tuning takes it as any BERT encoder,
    and a run exports as ``BertForPreTraining`` (type_vocab_size 6). ``lit-ptm generate`` runs it left to
    right (``--mode l2r``, segment 2) or from a source (``--mode seq2seq``, segments 4 / 5)."""

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(), mlm_probability: float = 0.15,
                 mix: TaskMix = TaskMix(), pretrained: str | None = None, compile: bool = False):
        self.mix = TaskMix(**mix) if isinstance(mix, dict) else mix
        self.require_architecture(config)
        super().__init__(config, optim, mlm_probability, whole_word_mask=False, max_ngram=1, pair_task="nsp",
                         pretrained=pretrained, compile=compile)

    @staticmethod
    def require_architecture(config: ModelConfig) -> None:
        """What UniLM's inputs index (also asked by a fresh Seq2Seq in UniLM's layout)."""
        needed = max(b for a, b in SEGMENTS.values()) + 1
        if config.type_vocab_size < needed:
            raise ConfigError(f"UniLM gives each sub-task segment ids of its own (0 .. {needed - 1}): it needs "
                              f"model.config.type_vocab_size >= {needed} (got {config.type_vocab_size})")

    def data_recipe(self) -> DataRecipe:
        def collator(ids, seed, isolate_documents):
            return UniLMCollator(ids, seed, self.mix.probabilities(), self.mlm_probability)

        return DataRecipe(packings=("sop_pairs",), collator=collator, name="the UniLM objective")  # contiguous; NSP in the collator

    def configure_model(self) -> None:
        dm = self._datamodule()
        if dm is not None and getattr(dm, "batch_size", 2) < 2 and self.mix.bidirectional > 0:
            raise ConfigError(f"data.batch_size={dm.batch_size}: UniLM's NSP takes a NotNext B from another row of the batch; "
                              "with one row a device NSP only ever sees IsNext (use data.batch_size >= 2, or model.mix.bidirectional 0)")
        super().configure_model()

    generation_modes = ("l2r", "seq2seq")

    def generation(self, mode: str, ids):
        """How ``lit-ptm generate --mode`` reads this run: (CausalModel, end token, prompt layout). l2r: the
        prompt ``[CLS] text`` continued left to right (segment 2) up to [EOS] or max_new_tokens; seq2seq:
        ``[CLS] text [SEP]`` a bidirectional source (segment 4), the target written left to right (segment 5)
        up to [SEP]. Each step predicts at a [MASK] slot, as the model was trained (a cloze task)."""
        model = cloze_reader(self, self.stack(), self.lm_head, ids, mode)
        if mode == "l2r":
            return model, ids.eos, lambda text: [ids.cls, *text]
        return model, ids.sep, lambda text: [ids.cls, *text, ids.sep]

    def attention_mask(self, batch: Batch) -> AttentionMask:
        """Bidirectional: padding only; l2r: causal; r2l: its mirror; seq2seq: causal after a bidirectional
        prefix (the batch's ``prefix_length``)."""
        task = TASKS[batch.get("task", 0)]
        mask = AttentionMask.from_batch(batch, causal=task in ("l2r", "seq2seq"))
        return dataclasses.replace(mask, anticausal=True) if task == "r2l" else mask

    def loss_parts(self, batch):
        out = self.encode(batch)
        parts = self.mlm_loss_parts(batch, out)
        if "pair_labels" not in batch:  # NSP on bidirectional batches only; the head joins the graph at 0
            parts.loss = parts.loss + 0.0 * self.pair_head(out.hidden).sum()  # (DDP expects every parameter's gradient)
        return parts

    def _log_parts(self, split, parts, batch) -> None:
        """The base's, plus ``{split}/loss_{task}``, and ``{split}/mlm_loss`` on every batch (the base logs
        parts only where there are two: here, on bidirectional batches). In training, the sub-task's loss
        goes straight to the logger at this step: ``self.log`` would repeat a key's last value at every
        later logging step of the epoch, also where its sub-task did not run. So do NSP's loss and accuracy
        (bidirectional batches only)."""
        step, n = split == "train", len(batch["input_ids"])
        own = {f"{split}/loss_{TASKS[batch.get('task', 0)]}": parts.total}
        if step and self.pair_task in parts.parts:
            predictions, targets = parts.accuracies[self.pair_task]
            own.update({f"train/{self.pair_task}_loss": parts.parts[self.pair_task],
                        f"train/{self.pair_task}_acc": (predictions == targets).float().mean()})
            parts = dataclasses.replace(parts, parts={"mlm": parts.parts["mlm"]}, accuracies={"mlm": parts.accuracies["mlm"]})
        super()._log_parts(split, parts, batch)
        if len(parts.parts) == 1:
            self.log(f"{split}/mlm_loss", parts.parts["mlm"], on_step=step, on_epoch=not step, batch_size=n)
        if not step:
            for name, value in own.items():
                self.log(name, value, on_epoch=True, batch_size=n)
        elif self.logger is not None and self.global_step % max(self.trainer.log_every_n_steps, 1) == 0:
            self.logger.log_metrics({name: value.item() for name, value in own.items()}, step=self.global_step)
