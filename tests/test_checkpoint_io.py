import pytest
import torch

from lit_ptm.callbacks import AtomicCheckpointIO, CheckpointError


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dies_midway(obj, f, *a, **k):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is killed while writing

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1


def test_unreadable_checkpoints_are_named(tmp_path):
    io = AtomicCheckpointIO()
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt cannot be read: it is corrupt, truncated or not a plain-data checkpoint"):
        io.load_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(CheckpointError, match="missing.ckpt does not exist"):
        io.load_checkpoint(tmp_path / "missing.ckpt")
