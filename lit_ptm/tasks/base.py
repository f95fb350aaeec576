"""The shared base of fine-tuning tasks: a pretrained backbone (or a fresh one), a task head, layer-wise
learning-rate decay, frozen embeddings, metrics per split and predictions written to a file."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import lightning as L
import torch

from lit_ptm.callbacks import CheckpointMismatchError
from lit_ptm.errors import ConfigError
from lit_ptm.hf import family_of
from lit_ptm.nn import AttentionMask, ModelConfig, Transformer
from lit_ptm.nn.stack import upgrade_state_dict
from lit_ptm.objectives.base import (
    CHECKPOINT_FORMAT, OptimConfig, adamw_with_schedule, apply_configured_optim, clip_gradients, restore_rng_state, rng_state,
    save_plain_hyperparameters,
)
from lit_ptm.pretrained import check_tokenizer, load_pretrained
from lit_ptm.rundir import atomic_write

FINETUNE_OPTIM = OptimConfig(lr=5e-5, weight_decay=0.01, warmup_steps=100)


class FinetuneTask(L.LightningModule):
    """Subclasses build their head in ``build_head``, turn records into features in ``build_features``,
    batch them in ``collate`` and compute ``step`` (loss + what the metrics need).

    Args:
        pretrained: a run directory or checkpoint of any objective; its backbone's weights are loaded.
            None: the backbone starts from random weights (``config``), e.g. as a baseline.
        config: the backbone when there is no pretrained run (dropout is taken from it in any case).
        layer_decay: layer-wise learning-rate decay (ELECTRA, BEiT): the head trains at ``optim.lr``,
            block i of L at ``lr * layer_decay ** (L - i)``, the embeddings at ``lr * layer_decay ** (L + 1)``.
        freeze_embeddings: keep the embeddings (tokens, positions, types, their norm) fixed.
        predictions_file: where ``predict`` writes (JSONL); default ``<run dir>/predictions.jsonl``.
        from_scratch: take only the pretrained run's architecture (and tokenizer), not its weights: the
            baseline "same model, no pretraining" to compare a fine-tuned run with.
        causal: whether the backbone reads causally (GPT) or bidirectionally; None: as the pretrained
            run was trained to read (bidirectionally for a fresh backbone). Inputs are laid out for it.
    """

    def __init__(
        self, pretrained: str | None = None, config: ModelConfig = ModelConfig(), optim: OptimConfig = FINETUNE_OPTIM,
        layer_decay: float = 1.0, freeze_embeddings: bool = False, predictions_file: str | None = None,
        from_scratch: bool = False, causal: bool | None = None,
    ):
        super().__init__()
        if not 0.0 < layer_decay <= 1.0:
            raise ConfigError(f"model.layer_decay={layer_decay} must be in (0, 1]")
        save_plain_hyperparameters(self)
        self.pretrained, self.optim, self.layer_decay = pretrained, optim, layer_decay
        self.freeze_embeddings, self.predictions_file, self.from_scratch = freeze_embeddings, predictions_file, from_scratch
        self.config, self.causal = config, causal
        self.transformer: Transformer | None = None
        self.started_from: str | None = None
        self._run = None  # the pretrained run, read once (see architecture())
        self._predictions: list[dict] = []

    special_roles: tuple[str, ...] = ()  # the special tokens its inputs need; () for the pooled layouts' defaults

    @property
    def labels_known(self) -> bool:
        return True

    def _datamodule(self):
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    # -- building -------------------------------------------------------------------------------
    def reads_causally(self) -> bool:
        """How the backbone reads, which decides the input layout and the pooled position."""
        self.architecture()
        return bool(self.causal)

    def architecture(self) -> ModelConfig:
        """The model's config, the pretrained run's once known. The data module builds features (laid out
        for a bidirectional or a causal reader) before Lightning calls configure_model, so the run's
        config is read here, on first use, not in configure_model."""
        if self.pretrained is not None and self._run is None:
            self._run = load_pretrained(self.pretrained)
            # The run's architecture as a bidirectional or causal reader, as it was pretrained; dropout from this config.
            self.config = dataclasses.replace(self._run.config, dropout=self.config.dropout, attention_dropout=self.config.attention_dropout)
            if self.causal is None:
                self.causal = self._run.causal
                self.hparams["causal"] = self.causal
        return self.config

    def configure_model(self) -> None:
        dm = self._datamodule()
        tokenizer = getattr(dm, "tokenizer", None)
        if self.transformer is None:
            pretrained_heads = {}
            if self.pretrained is not None:
                self.architecture()
                run = self._run
                check_tokenizer(run, tokenizer)
                self.transformer = Transformer(self.config)
                if self.from_scratch:
                    self.started_from = f"random weights in the architecture of {run.checkpoint}"
                else:  # strict: every weight of the stack comes from the run
                    self.transformer.load_state_dict(run.backbone_state())
                    pretrained_heads = run.state_dict
                    self.started_from = str(run.checkpoint)
                # This run's checkpoints rebuild from their own config and weights, without the old run.
                self.hparams["config"], self.hparams["pretrained"], self.pretrained = self.config.to_dict(), None, None
                self._run = None  # its tensors are in the stack now
            else:
                if self.config.vocab_size is None:
                    if tokenizer is None:
                        raise ConfigError("model.config.vocab_size is unknown: give model.pretrained or data.tokenizer")
                    self.config = dataclasses.replace(self.config, vocab_size=tokenizer.vocab_size)
                    self.hparams["config"] = self.config.to_dict()
                self.transformer = Transformer(self.config)
            self.build_head(pretrained_heads)
            if self.freeze_embeddings:
                self.transformer.embeddings.requires_grad_(False)
        if tokenizer is not None and tokenizer.vocab_size != self.config.vocab_size:
            raise CheckpointMismatchError(
                f"the model's vocabulary ({self.config.vocab_size}) does not match the tokenizer "
                f"{tokenizer.source} ({tokenizer.vocab_size} tokens)"
            )
        max_length = getattr(dm, "max_length", None)
        if max_length and max_length > self.config.max_length:
            raise ConfigError(
                f"data.max_length={max_length} exceeds the model's {self.config.max_length} positions "
                f"(max_position_embeddings={self.config.max_position_embeddings}, position_offset={self.config.position_offset})"
            )

    def require_special_tokens(self, tokenizer) -> None:
        """The special tokens this task's inputs are laid out with (tasks.features) must be in the tokenizer;
        checked before any feature is built."""
        causal = self.reads_causally()
        roles = self.special_roles or (("eos",) if causal else ("cls", "sep"))
        tokenizer.require(*roles, purpose=f"fine-tuning a {'causal' if causal else 'bidirectional'} model")

    def build_head(self, pretrained_state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def demo_task(self, directory: Path) -> dict[str, Path]:
        """The built-in task's train / val / test files (written once into ``directory``), used when
        data.train_file is unset: which standard-library package a docstring comes from."""
        from lit_ptm.tasks.demo import write_demo_task

        return write_demo_task(directory)

    def text_fields(self, data) -> tuple[str, ...]:
        """The record fields that hold the input text (an empty one is reported, see data.empty_texts)."""
        return ()

    def build_features(self, records: list[dict], split: str, data) -> list[dict]:
        raise NotImplementedError

    def collate(self, samples: list[dict]) -> dict:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------------
    def encode(self, batch: dict) -> torch.Tensor:
        """Hidden states (B, T, H) of the batch, read as the backbone was pretrained to read."""
        mask = AttentionMask.from_batch(batch, causal=self.reads_causally())
        return self.transformer(batch["input_ids"], mask, token_type_ids=batch.get("token_type_ids")).hidden

    pooling = "auto"

    def pool(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """One vector per example (B, H). auto: [CLS] (the first token) for encoders, the last real token
        for causal models (the only one that saw everything); mean: the mean over real tokens."""
        if self.pooling == "mean":
            real = batch.get("attention_mask")
            if real is None:
                return hidden.mean(1)
            weights = real.to(hidden.dtype)[..., None]
            return (hidden * weights).sum(1) / weights.sum(1)
        if not self.reads_causally():
            return hidden[:, 0]
        last = batch["lengths"] - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]

    # -- steps: subclasses implement ``step`` (and ``epoch_end`` for metrics over a whole split) -----
    def step(self, split: str, batch: dict) -> torch.Tensor:
        """Loss of a batch; logs ``{split}/loss`` and feeds the split's metrics."""
        raise NotImplementedError

    def epoch_end(self, split: str) -> None:
        """Metrics that need the whole evaluation split (entity F1, answers over windows)."""

    def log_loss(self, split: str, loss: torch.Tensor, batch_size: int) -> None:
        train = split == "train"
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=train, on_epoch=not train, batch_size=batch_size)
        if train:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])

    def training_step(self, batch, batch_idx):
        return self.step("train", batch)

    def validation_step(self, batch, batch_idx):
        self.step("val", batch)

    def test_step(self, batch, batch_idx):
        self.step("test", batch)

    def on_validation_epoch_end(self):
        self.epoch_end("val")

    def on_test_epoch_end(self):
        self.epoch_end("test")

    # -- optimization ---------------------------------------------------------------------------
    def lr_scale(self, name: str) -> float:
        if self.layer_decay == 1.0:
            return 1.0
        L_ = self.config.num_layers
        if name.startswith(("transformer.embeddings.", "transformer.project.")):  # the embeddings and their projection
            depth = 0
        elif match := re.match(r"transformer\.blocks\.(\d+)\.(\w+)", name):
            # A shared sub-layer (ALBERT) is listed once, under block 0, but serves every depth: it trains
            # at the rate of the deepest block that uses it, not the most-decayed one.
            shared = {"all": True, "attention": match.group(2) in ("attention", "attention_norm"),
                      "ffn": match.group(2) in ("ffn", "ffn_norm")}.get(self.config.share, False)
            depth = L_ if shared else int(match.group(1)) + 1
        elif name.startswith("transformer."):  # the final norm sits with the last block
            depth = L_
        else:  # the task head
            depth = L_ + 1
        return self.layer_decay ** (L_ + 1 - depth)

    def configure_optimizers(self):
        return adamw_with_schedule(self, self.optim, self.lr_scale)

    def on_train_start(self) -> None:
        apply_configured_optim(self)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- checkpoints and predictions ------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        tokenizer = getattr(self._datamodule(), "tokenizer", None)
        checkpoint["lit_ptm"] = {
            "format": CHECKPOINT_FORMAT, "objective": type(self).__name__, "backbone": "transformer", "family": family_of(self.config, self.reads_causally()),
            "causal": self.reads_causally(),
            "model_config": self.config.to_dict(),
            "tokenizer_sha": tokenizer.sha if tokenizer is not None else None, "started_from": self.started_from,
            **rng_state(),  # dropout: a resumed fine-tuning run continues the very run it was
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("lit_ptm") or {}
        upgrade_state_dict(checkpoint.get("state_dict", {}))
        if meta.get("objective") not in (None, type(self).__name__):
            raise CheckpointMismatchError(
                f"the checkpoint holds a {meta['objective']} model, but this run's task is {type(self).__name__}; "
                "to fine-tune a pretrained run, pass it as model.pretrained (not --ckpt_path)"
            )
        tokenizer = getattr(self._datamodule(), "tokenizer", None)
        if tokenizer is not None and meta.get("tokenizer_sha") not in (None, tokenizer.sha):
            raise CheckpointMismatchError(
                f"the checkpoint was fine-tuned with another tokenizer (sha {meta['tokenizer_sha']}) than "
                f"{tokenizer.source} (sha {tokenizer.sha})"
            )
        restore_rng_state(meta)

    def on_predict_epoch_start(self) -> None:
        self._predictions = []

    def on_predict_epoch_end(self) -> None:
        path = Path(self.predictions_file or Path(self.trainer.default_root_dir) / "predictions.jsonl")
        if self.trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{self.trainer.global_rank}{path.suffix}")
        rows = sorted(self._predictions, key=lambda r: r["index"])
        with atomic_write(path) as tmp:
            tmp.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "index"}) + "\n" for r in rows), encoding="utf-8")
        print(f"{len(rows)} predictions written to {path}")

    def on_test_end(self) -> None:
        """The test metrics also go to <run dir>/test_metrics.json, for scripts and reports."""
        if self.trainer.is_global_zero and self.trainer.default_root_dir:
            metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
            with atomic_write(Path(self.trainer.default_root_dir) / "test_metrics.json") as tmp:
                tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
