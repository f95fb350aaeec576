"""Run-directory plumbing: checkpoints written atomically into the run directory, readable errors."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_ptm.errors import LitPtmError
from lit_ptm.rundir import atomic_write


class CheckpointError(LitPtmError, RuntimeError):
    """A checkpoint that is missing, damaged, or refused by the safe loader."""


class CheckpointMismatchError(LitPtmError, ValueError):
    """A checkpoint that reads fine but does not fit this run (objective, tokenizer, sizes)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file and renames it into place: a run killed mid-write leaves the
    previous checkpoint intact. Reads only with the safe loader (see ``read_checkpoint``), whatever
    the caller asks for, and names a damaged or refused file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_write(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location or "cpu")


def read_checkpoint(path, map_location="cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a file a user names, never anything less safe.

    A checkpoint is untrusted input: full unpickling would run whatever code its author put in it.
    lit_ptm's own checkpoints hold only tensors and plain data (hyper-parameters are plain dicts), so
    the safe loader reads them all; a file that asks for anything else is refused, naming the file
    and the object it asked for. Missing, truncated or corrupt files are named too.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory: give a .ckpt file (e.g. {path / 'last.ckpt'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # mmap needs torch's zip format; a legacy file is read whole, by the same safe loader.
        return torch.load(path, map_location=map_location, mmap=mmap and zipfile.is_zipfile(path), weights_only=True)
    except pickle.UnpicklingError as e:
        # The safe unpickler names the global or function it refused; anything else it trips on is damage.
        match = re.search(r"(?:unsupported (?:global: )?GLOBAL|unrecognized function)\s*([^\s]+)", str(e), re.IGNORECASE)
        if match:
            raise CheckpointError(
                f"checkpoint {path} was refused: it asks to load {match.group(1).rstrip('.,')}, and lit_ptm loads "
                "checkpoints with torch.load(weights_only=True) only (tensors and plain data), since full unpickling "
                "would run code from the file. Do not load it unless you know who made it and what it holds"
            ) from None
        # torch's message goes on to advise weights_only=False: keep only what the unpickler tripped on.
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        raise CheckpointError(
            f"checkpoint {path} cannot be read: it is corrupt, truncated or not a plain-data checkpoint "
            f"({reason.group(1).strip() if reason else type(e).__name__})"
        ) from None
    except Exception as e:  # zip errors, EOF, bad headers: a damaged file
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
        periodic = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        # The last step of a max_steps run is saved here too, not when fit ends: by then the fit loop has
        # closed the epoch, and a run resumed from it with a larger max_steps ("train some more") would
        # start the next epoch instead of continuing this one with the very next batch.
        final = 0 < trainer.max_steps <= step
        if (periodic or final) and step != getattr(self, "_last_step_saved", -1):
            self._save_last(trainer)
            self._last_step_saved = step

    def _saved_final_step(self, trainer) -> bool:
        return 0 < trainer.max_steps <= trainer.global_step == getattr(self, "_last_step_saved", -1)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # A max_steps run ends by closing its epoch, and ModelCheckpoint would write last.ckpt again (here
        # and when training ends), epoch closed: the last step's checkpoint, saved above, is the one a
        # longer run resumes from.
        if not self._saved_final_step(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._saved_final_step(trainer):
            return
        super().on_train_end(trainer, pl_module)
        if trainer.global_step != getattr(self, "_last_step_saved", -1):
            self._save_last(trainer)


class RunProgressBar(TQDMProgressBar):
    """Lightning's progress bar, saying where the run stands: ``Epoch 3/9`` for a max_epochs run,
    ``Epoch 3, step 1200/3000`` for a max_steps run (Lightning's own shows ``Epoch 3/-2`` there)."""

    def where(self, trainer) -> str:
        if trainer.max_steps > 0:
            return f"Epoch {trainer.current_epoch}, step {trainer.global_step}/{trainer.max_steps}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            return f"Epoch {trainer.current_epoch}/{trainer.max_epochs - 1}"
        return f"Epoch {trainer.current_epoch}"

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(self.where(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._should_update(batch_idx + 1, self.train_progress_bar.total):
            self.train_progress_bar.set_description(self.where(trainer), refresh=False)  # shown by the update below
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
