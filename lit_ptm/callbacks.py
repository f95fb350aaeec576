"""Run-directory plumbing: checkpoints written atomically into the run directory, readable errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointError(RuntimeError):
    pass


class CheckpointMismatchError(ValueError):
    """A checkpoint that reads fine but does not fit this run (objective, tokenizer, sizes)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file and renames it into place: a run killed mid-write leaves the
    previous checkpoint intact. Reading a damaged file raises an error that names it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location or "cpu", weights_only=False)


def read_checkpoint(path, **load_kwargs) -> dict[str, Any]:
    """``torch.load`` that names the file when it is missing, truncated or corrupt."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, **load_kwargs)
    except Exception as e:  # zip errors, unpickling errors, EOF: all mean a damaged file, except ...
        # ... weights_only refusing an object it does not know (e.g. a dataclass in an older
        # checkpoint's hyper-parameters): Lightning itself loads with weights_only=False.
        if isinstance(e, pickle.UnpicklingError) and load_kwargs.get("weights_only") and "Weights only load failed" in str(e):
            return read_checkpoint(path, **{**load_kwargs, "weights_only": False})
        raise CheckpointError(f"checkpoint {path} cannot be read: it is corrupt or truncated ({type(e).__name__}: {e})") from e


class RunCheckpoint(ModelCheckpoint):
    """Checkpoints in the run directory itself: ``best.ckpt`` (lowest val/loss) and ``last.ckpt``,
    the latter also every ``every_n_steps`` optimizer steps and when fit ends, so a killed run
    loses little."""

    def __init__(self, every_n_steps: int = 200, monitor: str = "val/loss", dirpath: str | None = None):
        super().__init__(
            dirpath=dirpath, filename="best", monitor=monitor, mode="min", save_top_k=1, save_last=True,
            auto_insert_metric_name=False, enable_version_counter=False,
        )
        self.every_n_steps = every_n_steps

    def setup(self, trainer, pl_module, stage) -> None:
        # Runs before a checkpoint is restored: install atomic, checked checkpoint I/O unless the user chose their own.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if self.dirpath is None:
            self.dirpath = trainer.default_root_dir
        super().setup(trainer, pl_module, stage)

    def _save_last(self, trainer) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            trainer.save_checkpoint(os.path.join(self.dirpath, "last.ckpt"), weights_only=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != getattr(self, "_last_step_saved", -1):
            self._save_last(trainer)
            self._last_step_saved = step

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.global_step != getattr(self, "_last_step_saved", -1):
            self._save_last(trainer)
