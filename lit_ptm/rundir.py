"""The run directory: one run's checkpoints, config.yaml, tokenizer.json and TensorBoard events.

It is a user's work, so nothing here overwrites or mixes it without being asked:
- a fresh ``fit`` into a directory that holds a run stops (resume it, choose another directory,
  or ``--overwrite true``, which first removes the old run's files);
- a process that trains (or tests, validates, predicts) into a directory holds a lock on it for
  its lifetime: a second process stops at once, naming the holder. DDP ranks of one run are one
  holder: only the launching process (global rank 0) takes it;
- ``test`` / ``validate`` / ``predict`` without ``--ckpt_path`` on a trained run refuse to write an
  untrained model's metrics into it;
- files are written to a temporary ``.<name>.tmp<pid>`` and renamed into place, so a killed write
  leaves the previous file whole; the temporaries a killed run left are removed when the next run
  takes the directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lit_ptm.errors import LitPtmError

LOCK_FILE = ".lit_ptm.lock"
# What a run writes into its directory (and `--overwrite true` removes); anything else stays.
RUN_FILES = ("*.ckpt", "config.yaml", "tokenizer.json", "special_tokens_map.json", "events.out.tfevents.*", "hparams.yaml",
             "test_metrics.json", "predictions*.jsonl")
TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")  # .<name>.tmp<pid>, as atomic_write names them


class RunDirectoryError(LitPtmError):
    pass


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block ends without an error it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # the write failed: the previous file stays as it was
            tmp.unlink()


def checkpoints_in(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.ckpt")) if directory.is_dir() else []


def is_global_rank_zero() -> bool:
    """True in the process that launches a run (before Lightning knows the ranks): every launcher
    (Lightning's own, torchrun, SLURM, a node started by hand with NODE_RANK) sets one of these."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


class RunLock:
    """An exclusive ``flock`` on ``<run dir>/.lit_ptm.lock`` for as long as the process holds it;
    the file names the holder (pid, host, command) for whoever is refused. The kernel drops the
    lock when the process dies, so a killed run never leaves a directory locked."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._file = None

    def acquire(self) -> RunLock:
        if self.directory.exists() and not self.directory.is_dir():
            raise RunDirectoryError(f"run directory {self.directory} is a file: choose another --trainer.default_root_dir")
        self.directory.mkdir(parents=True, exist_ok=True)
        f = open(self.directory / LOCK_FILE, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                holder = json.loads(f.read())
                who = f"process {holder['pid']} on {holder['host']} ({holder['command']}, since {holder['since']})"
            except (ValueError, KeyError):
                who = "another process"
            f.close()
            raise RunDirectoryError(
                f"run directory {self.directory} is in use by {who}; wait for it to finish, or choose another "
                "--trainer.default_root_dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["lit-ptm", *sys.argv[1:]])[:300],
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def remove_temporaries(directory: Path) -> list[Path]:
    """The ``.<name>.tmp<pid>`` files of writes that a killed process never finished (files only, and
    only those whose process is gone: the caller holds the directory's lock, so no live writer remains)."""
    removed = []
    for path in directory.iterdir() if directory.is_dir() else ():
        match = TEMPORARY.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers from an earlier run in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_run(directory: Path) -> list[Path]:
    """The files a run wrote into ``directory`` (``--overwrite true``); other files are left alone."""
    removed = sorted({p for pattern in RUN_FILES for p in directory.glob(pattern) if p.is_file()})
    for path in removed:
        path.unlink()
    return removed


def inside(path, directory: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(directory.resolve())


def take_run_directory(subcommand: str, directory: Path, ckpt_path: str | None, overwrite: bool,
                       outputs: tuple[Path, ...] = (), reads: tuple = ()) -> RunLock:
    """Checks that ``subcommand`` may write into ``directory`` (and create ``outputs``, files that must not
    exist yet unless ``overwrite``) and locks it; the caller releases the lock. ``reads``: other paths the run
    reads from (model.pretrained), which --overwrite must not remove."""
    directory = Path(directory)
    lock = RunLock(directory).acquire()
    try:
        checkpoints = checkpoints_in(directory)
        names = ", ".join(p.name for p in checkpoints)
        sources = [p for p in (ckpt_path, *reads) if inside(p, directory)]
        if subcommand == "fit" and checkpoints and overwrite and sources:
            raise RunDirectoryError(
                f"--overwrite true would remove {directory}'s run, but this run reads {sources[0]} from it: choose "
                "another --trainer.default_root_dir for the new run"
            )
        if subcommand == "fit" and checkpoints and overwrite:
            removed = remove_run(directory)
            print(f"--overwrite true: removed the previous run in {directory} ({len(removed)} files: {names}, ...)", file=sys.stderr)
        elif subcommand == "fit" and checkpoints:
            resumes_here = ckpt_path is not None and Path(ckpt_path).resolve().parent == directory.resolve()
            if not resumes_here:
                started = f"a run from {ckpt_path}" if ckpt_path else "a new run"
                last = directory / ("last.ckpt" if (directory / "last.ckpt").is_file() else checkpoints[-1].name)
                start_over = "" if sources else (", or start over with --overwrite true (removes the old run's checkpoints, "
                                                 "config.yaml, tokenizer.json and events first)")
                raise RunDirectoryError(
                    f"run directory {directory} already holds a run ({names}); {started} would overwrite or mix with it. "
                    f"Either resume it (--ckpt_path {last}) or choose another --trainer.default_root_dir{start_over}"
                )
        elif subcommand != "fit" and checkpoints and ckpt_path is not None and not inside(ckpt_path, directory):
            raise RunDirectoryError(
                f"run directory {directory} holds another run ({names}) than {ckpt_path}: `{subcommand}` would write its "
                "figures over that run's; pass --trainer.default_root_dir (e.g. the checkpoint's own directory)"
            )
        elif subcommand != "fit" and ckpt_path is None:
            if checkpoints:
                raise RunDirectoryError(
                    f"run directory {directory} holds a trained run ({names}), but `{subcommand}` has no --ckpt_path: it "
                    f"would evaluate the model's initial weights and write their figures over the run's. Pass "
                    f"--ckpt_path {directory / checkpoints[-1].name}, or choose another --trainer.default_root_dir"
                )
            warnings.warn(
                f"`{subcommand}` without --ckpt_path evaluates the model as it is built (random weights, or "
                "model.pretrained's backbone with a fresh head), not a trained run"
            )
        for output in outputs:
            if Path(output).exists() and not overwrite:
                raise RunDirectoryError(
                    f"{output} exists; `{subcommand}` would overwrite it: choose another file (e.g. "
                    "--model.predictions_file) or pass --overwrite true"
                )
        for path in remove_temporaries(directory):
            print(f"removed {path.name}, left by a write that did not finish", file=sys.stderr)
    except BaseException:
        lock.release()
        raise
    return lock
