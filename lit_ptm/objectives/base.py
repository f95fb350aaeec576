"""The shared LightningModule base: model building, optimizer and schedule, logging, checkpoint checks."""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from dataclasses import dataclass
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_ptm.callbacks import CheckpointMismatchError
from lit_ptm.errors import ConfigError
from lit_ptm.hf import family_of
from lit_ptm.data.batch import Batch, DataRecipe
from lit_ptm.nn import AttentionMask, Embeddings, ModelConfig, StackOutput, Transformer
from lit_ptm.nn.stack import upgrade_state_dict

CHECKPOINT_FORMAT = 1
SCHEDULES = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, then linear or cosine decay to ``min_lr_ratio * lr``, stepped per optimizer step."""

    lr: float = 1e-4
    weight_decay: float = 0.01  # never applied to biases and norm weights
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 10_000
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0
    # The token table's learning rate (and so its decoupled weight decay) as a multiple of lr. None: the
    # ratio of its init to the other weights', model.config.embedding_init_std / init_std, where the config
    # sets embedding_init_std (T5: 1.0 / 0.07 ~ 14 in the tiny recipe), else 1. AdamW steps every weight by
    # about lr whatever its size; T5's table starts at std 1.0 because Adafactor steps relative to a weight's
    # size. At lr the table barely moved (after 3,000 tiny T5 steps it was 96% its random init: median row
    # cosine 0.96), so T5's encoder read near-random token vectors (demo classification: 0.34 vs 0.64 scaled).
    embedding_lr_scale: float | None = None

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"model.optim.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.lr <= 0:
            raise ConfigError(f"model.optim.lr={self.lr} must be positive")
        if self.embedding_lr_scale is not None and self.embedding_lr_scale <= 0:
            raise ConfigError(f"model.optim.embedding_lr_scale={self.embedding_lr_scale} must be positive (or null: auto)")

    def table_lr_scale(self, config: ModelConfig | None) -> float:
        """The token table's learning-rate multiplier for a model of ``config`` (see ``embedding_lr_scale``)."""
        if self.embedding_lr_scale is not None:
            return self.embedding_lr_scale
        if config is None or config.embedding_init_std is None:
            return 1.0
        return config.embedding_init_std / config.init_std


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def save_plain_hyperparameters(module: L.LightningModule) -> None:
    """``save_hyperparameters`` of the caller's init arguments, with dataclass configs as plain dicts,
    however the module was built: its checkpoints then load with torch.load(weights_only=True) (as
    LightningCLI reads them) and parse as YAML config."""
    module.save_hyperparameters(frame=inspect.currentframe().f_back)
    for key, value in list(module.hparams.items()):
        if dataclasses.is_dataclass(value):
            module.hparams[key] = dataclasses.asdict(value)


def clip_gradients(module: L.LightningModule, optimizer, value, algorithm) -> None:
    """Gradient clipping that works under every strategy: FSDP shards the gradients, and Lightning's
    FSDPPrecision refuses norm clipping through the precision plugin; FSDP's own ``clip_grad_norm_``
    takes the norm over all shards."""
    from lightning.pytorch.strategies import FSDPStrategy

    if value and (algorithm or "norm") == "norm" and isinstance(module.trainer.strategy, FSDPStrategy):
        module.trainer.strategy.model.clip_grad_norm_(value)
        return
    module.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)


def rng_state() -> dict:
    """Dropout draws from the global generators: a checkpoint keeps them, so that a resumed run is exact."""
    return {"rng_cpu": torch.get_rng_state(), "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_state(meta: dict) -> None:
    if meta.get("rng_cpu") is not None:
        torch.set_rng_state(meta["rng_cpu"])
    if meta.get("rng_cuda") is not None and torch.cuda.is_available() and len(meta["rng_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(meta["rng_cuda"])


def adamw_with_schedule(module: L.LightningModule, o: OptimConfig, lr_scale=None):
    """AdamW over the module's trainable parameters, with the warmup/decay schedule stepped per optimizer step.

    Biases and norm weights (all 1-D parameters) are not decayed; embeddings and matrices are.
    ``lr_scale(name) -> float`` multiplies the learning rate per parameter (layer-wise decay); the token
    tables also take ``o.table_lr_scale(module.config)`` (T5's table, which starts larger than the rest).
    """
    tables = {id(m.tokens.weight) for m in module.modules() if isinstance(m, Embeddings)}
    table_scale = o.table_lr_scale(getattr(module, "config", None))
    groups: dict[tuple[float, bool], list] = {}
    for name, p in module.named_parameters():  # a shared parameter is listed once
        if p.requires_grad:
            scale = (lr_scale(name) if lr_scale else 1.0) * (table_scale if id(p) in tables else 1.0)
            groups.setdefault((scale, p.ndim >= 2), []).append(p)
    param_groups = [
        {"params": params, "lr": o.lr * scale, "weight_decay": o.weight_decay if decayed else 0.0}
        for (scale, decayed), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))
    ]
    # Fused AdamW (one kernel over all parameters) except under AMP, where Lightning refuses
    # gradient clipping for optimizers that unscale gradients themselves.
    fused = not isinstance(module.trainer.precision_plugin, MixedPrecision)
    optimizer = torch.optim.AdamW(param_groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)
    total = int(module.trainer.estimated_stepping_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, o.warmup_steps, total, o.schedule, o.min_lr_ratio)
    )
    # What this run asked for, per group: a resumed run re-applies it over the checkpoint's (see below).
    module._configured_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def apply_configured_optim(module: L.LightningModule) -> None:
    """On a resume, Lightning loads the optimizer and scheduler states after configure_optimizers, and with
    them the old run's learning rate, betas, eps and weight decay. The settings this run gives (a new
    ``model.optim.lr``, say) must be the ones that train: put them back, keeping the moments and the step
    count. Without a change this sets the very values that were there, so an exact resume stays exact."""
    groups = getattr(module, "_configured_groups", None)
    if not groups or not module.trainer.optimizers:
        return
    optimizer = module.trainer.optimizers[0]
    scheduler = module.trainer.lr_scheduler_configs[0].scheduler if module.trainer.lr_scheduler_configs else None
    for group, configured in zip(optimizer.param_groups, groups):
        group.update({k: configured[k] for k in ("initial_lr", "weight_decay", "betas", "eps") if k in configured})
    if scheduler is not None:
        scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr


@dataclass
class LossParts:
    """What an objective's step computes, for the base to optimise and log generically.

    loss: the objective's loss (mean over its predicted units); the base adds ``aux`` to it once.
    num_predicted: its weight in an evaluation mean (predicted tokens).
    parts: named losses that make up ``loss`` ({"mlm": ..., "nsp": ...}), logged as ``{split}/{name}_loss``
        when there are two or more.
    accuracies: {name: (predictions, targets)}, logged as ``{split}/{name}_acc``.
    lm_loss: the language-model part, for perplexity (default: ``loss``).
    aux: the stacks' auxiliary losses (StackOutput.aux_losses: an MoE balance loss), logged as ``{split}/{name}``.
    """

    loss: torch.Tensor
    num_predicted: int
    parts: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    accuracies: dict[str, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)
    lm_loss: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor:
        return self.loss + sum(self.aux.values()) if self.aux else self.loss


class PretrainObjective(L.LightningModule):
    """Base of every objective: owns its named stacks, the optimizer and the logging.

    Subclasses say how they read (``causal``), which stacks they own (``build_stacks``; one named
    "transformer" by default) and which of them is ``backbone`` (the one fine-tuning, continued
    pretraining and export take), build their heads in ``build_heads``, hand the data side its
    ``data_recipe`` and compute ``loss_parts``.
    """

    causal = False  # how the backbone reads: recorded in checkpoints, so fine-tuning lays inputs out for it
    special_roles: tuple[str, ...] = ()  # the special tokens its windows and collator place (tokenizer roles)
    backbone = "transformer"  # the name of the stack that fine-tuning, continued pretraining and export take

    def __init__(self, config: ModelConfig = ModelConfig(), optim: OptimConfig = OptimConfig(), pretrained: str | None = None,
                 compile: bool = False):
        """``pretrained``: a run directory or checkpoint to start from (continued pretraining, e.g. on a
        new domain's corpus): its architecture and weights, with a fresh optimizer and schedule. The
        data must use its tokenizer (the run's tokenizer.json is taken when data.tokenizer is unset).
        ``compile``: compile the training step with torch.compile (the stacks; the heads' fused loss).
        The stacks are built in ``configure_model`` (Lightning calls it), once the vocabulary is known."""
        super().__init__()
        save_plain_hyperparameters(self)
        self.config, self.optim, self.pretrained, self.compile_step = config, optim, pretrained, compile
        self.stack_names: tuple[str, ...] = ()
        self._last_step_time: float | None = None

    # -- building -------------------------------------------------------------------------------
    def _datamodule(self):
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def data_recipe(self) -> DataRecipe:
        """The packing and collator this objective needs, handed to the data module."""
        raise NotImplementedError

    def build_stacks(self) -> dict[str, Transformer]:
        """The objective's stacks by name (encoder / decoder, generator / discriminator); one by default."""
        return {"transformer": Transformer(self.config)}

    def stack(self, name: str | None = None) -> Transformer:
        """The stack called ``name``; the backbone by default."""
        return getattr(self, name or self.backbone)

    @property
    def is_built(self) -> bool:
        return bool(self.stack_names)

    def configure_model(self) -> None:
        """Build the stacks and heads once the vocabulary is known (from the data's tokenizer), and
        check the model against the data even when it was built before (from hyper-parameters)."""
        dm = self._datamodule()
        tokenizer = getattr(dm, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.require(*self.special_roles, purpose=f"the {type(self).__name__} objective")
        if tokenizer is not None and self.config.vocab_size not in (None, tokenizer.vocab_size):
            raise CheckpointMismatchError(
                f"model.config.vocab_size={self.config.vocab_size} (from the config, or from the checkpoint being "
                f"loaded) does not match the tokenizer ({tokenizer.source}, {tokenizer.vocab_size} tokens); "
                "a checkpoint needs the tokenizer.json of its run (data.tokenizer)"
            )
        if dm is not None and getattr(dm, "seq_length", None) and dm.seq_length > self.config.max_length:
            offset = f" less position_offset={self.config.position_offset}" if self.config.position_offset else ""
            raise ConfigError(
                f"data.seq_length={dm.seq_length} exceeds model.config.max_position_embeddings="
                f"{self.config.max_position_embeddings}{offset}"
            )
        if self.is_built:
            return
        run = None
        if self.pretrained is not None:
            from lit_ptm.pretrained import check_tokenizer, load_pretrained

            run = load_pretrained(self.pretrained)
            check_tokenizer(run, tokenizer)
            # The pretrained run's architecture, with this config's dropout; this run's checkpoints
            # rebuild from their own config and weights, without the old checkpoint.
            self.config = dataclasses.replace(run.config, dropout=self.config.dropout, attention_dropout=self.config.attention_dropout)
            self.hparams["config"], self.hparams["pretrained"] = self.config.to_dict(), None
            self.started_from = str(run.checkpoint)
        elif self.config.vocab_size is None:
            if tokenizer is None:
                raise ConfigError("model.config.vocab_size is unknown: give it, or train with a data module (its tokenizer sets it)")
            self.config = dataclasses.replace(self.config, vocab_size=tokenizer.vocab_size)
            # Record the resolved size, so that the checkpoint's hyper-parameters rebuild the same model.
            self.hparams["config"]["vocab_size"] = tokenizer.vocab_size
        # "{split}_{part}" -> accuracy of that part (keys are not "train": ModuleDict forbids Module attribute names)
        self.accuracy = torch.nn.ModuleDict()
        stacks = self.build_stacks()
        for name, stack in stacks.items():
            setattr(self, name, stack)
        self.stack_names = tuple(stacks)
        self.build_heads()
        if self.compile_step:
            self.compile_for_training()
        # Per evaluation split: the objective's loss, and the LM part of it (for perplexity).
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_lm_loss, self.test_lm_loss = MeanMetric(), MeanMetric()
        if run is not None:
            self._load_pretrained_weights(run)

    def _load_pretrained_weights(self, run) -> None:
        """Continued pretraining: the backbone's weights all come from the run's backbone (whatever each
        objective names it); heads this objective shares with the checkpoint's (the LM head) continue,
        others start fresh."""
        backbone = self.stack()
        missing, _ = backbone.load_state_dict(run.backbone_state(), strict=False)
        if missing:
            raise CheckpointMismatchError(
                f"model.pretrained={run.checkpoint} lacks weights this model's stack needs: {', '.join(missing[:5])}"
            )
        own = self.state_dict()
        prefix = run.backbone + "."
        heads = {k: v for k, v in run.state_dict.items()
                 if not k.startswith(prefix) and k in own and own[k].shape == v.shape}
        self.load_state_dict(heads, strict=False)
        loaded = {f"{self.backbone}.{k}" for k in backbone.state_dict()} | set(heads)
        fresh = sorted({k.split(".")[0] for k in own if k not in loaded})
        print(f"continued pretraining from {run.checkpoint} ({run.objective}): {len(loaded)} tensors loaded"
              + (f"; new: {', '.join(fresh)}" if fresh else ""))

    def compile_for_training(self) -> None:
        """torch.compile the stacks (in place: parameter names and checkpoints are unchanged) and every
        head's fused loss. The glue between them (gathering the predicted rows, whose number varies
        from batch to batch) stays eager; the stacks trace without graph breaks (tests/test_stack.py)."""
        for name in self.stack_names:
            self.stack(name).compile()
        for module in self.modules():
            if hasattr(module, "compile_loss"):
                module.compile_loss()

    def build_heads(self) -> None:
        """Build the heads (and declare their accuracies with ``track_accuracy``)."""
        raise NotImplementedError

    def track_accuracy(self, name: str, num_classes: int) -> None:
        """Accuracy of the loss part ``name`` per split: LossParts.accuracies[name] feeds it."""
        for split in ("train", "val", "test"):
            self.accuracy[f"{split}_{name}"] = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)

    # -- steps ----------------------------------------------------------------------------------
    def attention_mask(self, batch: Batch) -> AttentionMask:
        """The batch's attention pattern as this objective reads it (causal or not, prefix, documents)."""
        return AttentionMask.from_batch(batch, causal=self.causal)

    def encode(self, batch: Batch, stack: str | None = None) -> StackOutput:
        """A stack's output (hidden states (B, T, H), auxiliary losses) for a collated batch."""
        return self.stack(stack)(
            batch["input_ids"], self.attention_mask(batch), position_ids=batch.get("position_ids"),
            token_type_ids=batch.get("token_type_ids"), block_position_ids=batch.get("block_position_ids"),
        )

    def loss_parts(self, batch: Batch) -> LossParts:
        raise NotImplementedError

    def _log_parts(self, split: str, parts: LossParts, batch: Batch) -> None:
        step = split == "train"
        n = len(batch["input_ids"])  # epoch means weight batches by their size
        if len(parts.parts) > 1 or parts.aux:
            for name, value in {**{f"{k}_loss": v for k, v in parts.parts.items()}, **parts.aux}.items():
                self.log(f"{split}/{name}", value, on_step=step, on_epoch=not step, batch_size=n)
        for name, (predictions, targets) in parts.accuracies.items():
            metric = self.accuracy[f"{split}_{name}"]
            metric(predictions, targets)
            self.log(f"{split}/{name}_acc", metric, on_step=step, on_epoch=not step, batch_size=n)

    def training_step(self, batch, batch_idx):
        parts = self.loss_parts(batch)
        loss = parts.total
        self.log("train/loss", loss, prog_bar=True)
        self._log_parts("train", parts, batch)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self._tokens_in_step = batch.get("num_tokens", batch["input_ids"].numel())
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._last_step_time is not None:
            tokens = self._tokens_in_step * self.trainer.world_size
            self.log("train/tokens_per_sec", tokens / max(now - self._last_step_time, 1e-9), prog_bar=True)
        self._last_step_time = now

    def on_train_epoch_start(self):
        self._last_step_time = None

    def _eval_step(self, split: str, batch):
        parts = self.loss_parts(batch)
        getattr(self, f"{split}_loss").update(parts.total.detach(), weight=parts.num_predicted)
        lm_loss = parts.lm_loss if parts.lm_loss is not None else parts.loss
        getattr(self, f"{split}_lm_loss").update(lm_loss.detach(), weight=parts.num_predicted)
        self._log_parts(split, parts, batch)

    def _eval_epoch_end(self, split: str):
        loss, lm_loss = getattr(self, f"{split}_loss"), getattr(self, f"{split}_lm_loss")
        # compute() already reduced over ranks; sync_dist only averages identical values (and silences the warning).
        self.log(f"{split}/loss", loss.compute(), prog_bar=split == "val", sync_dist=True)
        self.log(f"{split}/ppl", torch.exp(lm_loss.compute().clamp(max=50)), sync_dist=True)
        loss.reset()
        lm_loss.reset()

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    # -- optimization ---------------------------------------------------------------------------
    def configure_optimizers(self):
        return adamw_with_schedule(self, self.optim)

    def on_train_start(self) -> None:
        apply_configured_optim(self)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        dm = self._datamodule()
        tokenizer = getattr(dm, "tokenizer", None)
        checkpoint["lit_ptm"] = {
            "format": CHECKPOINT_FORMAT,
            "objective": type(self).__name__,
            "backbone": self.backbone,
            "stacks": list(self.stack_names),
            "causal": self.causal,  # how the backbone reads: fine-tuning lays its inputs out for it
            "family": family_of(self.config, self.causal),  # the HF architecture it matches (export), or None
            "started_from": getattr(self, "started_from", None),
            "model_config": self.config.to_dict(),
            "tokenizer_sha": tokenizer.sha if tokenizer is not None else None,
            **rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("lit_ptm")
        upgrade_state_dict(checkpoint.get("state_dict", {}))
        if meta is None:
            raise CheckpointMismatchError("the checkpoint was not written by lit_ptm (no 'lit_ptm' entry)")
        if meta["objective"] != type(self).__name__:
            raise CheckpointMismatchError(
                f"the checkpoint holds a {meta['objective']} model, but this run's objective is {type(self).__name__} "
                f"(choose the matching --config, or start a new run from its weights)"
            )
        tokenizer = getattr(self._datamodule(), "tokenizer", None)
        if tokenizer is not None and meta["tokenizer_sha"] not in (None, tokenizer.sha):
            raise CheckpointMismatchError(
                f"the checkpoint was trained with another tokenizer (sha {meta['tokenizer_sha']}, vocabulary "
                f"{meta['model_config']['vocab_size']}) than this run's {tokenizer.source} (sha {tokenizer.sha}, "
                f"vocabulary {tokenizer.vocab_size}); pass the run's tokenizer.json as data.tokenizer"
            )
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads"):
            ours = getattr(self.config, key)
            if meta["model_config"][key] != ours:
                raise CheckpointMismatchError(
                    f"the checkpoint's model.config.{key}={meta['model_config'][key]} differs from this run's {ours}"
                )
        restore_rng_state(meta)
