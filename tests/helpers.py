"""Callbacks the tests inject through --trainer.callbacks (importable with tests/ on PYTHONPATH)."""

import os

from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    """Simulates a killed run: the process dies at once after optimizer step ``step`` (no cleanup)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os._exit(3)
