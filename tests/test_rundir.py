"""Hardening: checkpoints are untrusted input, run directories are never overwritten or mixed,
user errors are one clear message."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import CONFIGS, ROOT, run_cli, run_module, tiny_args
from lit_ptm.callbacks import AtomicCheckpointIO, CheckpointError
from lit_ptm.rundir import RunDirectoryError


@pytest.fixture(scope="module")
def trained_gpt(tmp_path_factory, cache_dir):
    """A tiny GPT run of a few steps: a run directory with last.ckpt, config.yaml and tokenizer.json."""
    root = tmp_path_factory.mktemp("trained") / "gpt"
    run_cli(["fit", *tiny_args("gpt", root, "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
                               "--trainer.limit_val_batches", "2")])
    return root


class WritesMarker:
    """Unpickling this runs ``os.system``: what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_checkpoint(path, marker, like=None):
    """A checkpoint whose loading (with full unpickling) would create ``marker``; optionally otherwise
    a copy of a real lit_ptm checkpoint, so that only the payload makes it hostile."""
    content = dict(torch.load(like, weights_only=True)) if like else {}
    content["payload"] = WritesMarker(marker)
    torch.save(content, path)
    return path


# -- 1. loading a checkpoint never runs code -----------------------------------------------------
def test_checkpoint_io_refuses_a_hostile_file_whatever_the_caller_asks(tmp_path):
    marker = tmp_path / "pwned"
    evil = hostile_checkpoint(tmp_path / "evil.ckpt", marker)
    for weights_only in (None, False, True):
        with pytest.raises(CheckpointError, match=r"evil.ckpt was refused: it asks to load posix.system"):
            AtomicCheckpointIO().load_checkpoint(evil, weights_only=weights_only)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["fit", "test", "predict", "pretrained-file", "pretrained-dir", "continued"])
def test_a_hostile_checkpoint_is_refused_by_every_command(case, trained_gpt, tmp_path, capsys, cache_dir):
    marker = tmp_path / "pwned"
    run = tmp_path / "hostile-run"
    run.mkdir()
    evil = hostile_checkpoint(run / "last.ckpt", marker, like=trained_gpt / "last.ckpt")
    (run / "tokenizer.json").write_bytes((trained_gpt / "tokenizer.json").read_bytes())
    root = tmp_path / "out"
    if case in ("fit", "test"):
        args = [case, *tiny_args("gpt", root, "--ckpt_path", str(evil))]
    elif case == "continued":
        args = ["fit", *tiny_args("gpt", root, "--model.init_args.pretrained", str(evil))]
    else:
        source = run if case == "pretrained-dir" else evil
        task = ["--config", str(CONFIGS / "finetune/classify.yaml"), "--config", str(CONFIGS / "finetune/tiny.yaml"),
                "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"]
        args = ["predict", *task, "--ckpt_path", str(evil)] if case == "predict" else ["fit", *task, "--model.init_args.pretrained", str(source)]
    with pytest.raises(CheckpointError) as e:
        run_cli(args)
    assert "was refused: it asks to load posix.system" in str(e.value) and str(evil) in str(e.value)
    assert not marker.exists()


def test_every_checkpoint_lit_ptm_writes_loads_safely(trained_gpt):
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(trained_gpt / name, weights_only=True)
        assert checkpoint["lit_ptm"]["objective"] == "CausalLM" and checkpoint["global_step"] == 3


# -- 2. a run directory is never silently overwritten or mixed ------------------------------------
def test_a_fresh_fit_into_a_run_directory_is_refused_unless_overwrite(tmp_path, cache_dir):
    root = tmp_path / "run"
    short = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1"]
    run_cli(["fit", *tiny_args("gpt", root, *short)])
    assert (root / "best.ckpt").is_file()
    before = (root / "last.ckpt").read_bytes()
    with pytest.raises(RunDirectoryError) as e:
        run_cli(["fit", *tiny_args("gpt", root, *short)])
    message = str(e.value)
    assert f"--ckpt_path {root / 'last.ckpt'}" in message and "--trainer.default_root_dir" in message and "--overwrite true" in message
    assert (root / "last.ckpt").read_bytes() == before  # nothing touched
    # Resuming from a run in another directory into this one would mix two runs: refused too.
    other = tmp_path / "other"
    run_cli(["fit", *tiny_args("gpt", other, *short)])
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        run_cli(["fit", *tiny_args("gpt", root, "--trainer.max_steps", "4", "--ckpt_path", str(other / "last.ckpt"))])
    # --overwrite true starts over: the old run's checkpoints (best.ckpt of a run with validation) are gone.
    run_cli(["fit", *tiny_args("gpt", root, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--overwrite", "true")])
    assert not (root / "best.ckpt").exists()
    assert torch.load(root / "last.ckpt", weights_only=True)["global_step"] == 1
    # The recorded config does not start over again when it is reused.
    assert yaml.safe_load((root / "config.yaml").read_text())["overwrite"] is False


def test_evaluating_without_a_checkpoint_refuses_a_trained_run_and_warns_otherwise(trained_gpt, tmp_path, cache_dir):
    before = {p.name: p.read_bytes() for p in trained_gpt.iterdir()}
    for subcommand in ("test", "validate"):
        with pytest.raises(RunDirectoryError, match=rf"holds a trained run .*`{subcommand}` has no --ckpt_path"):
            run_cli([subcommand, *tiny_args("gpt", trained_gpt)])
    assert {p.name: p.read_bytes() for p in trained_gpt.iterdir() if p.name != ".lit_ptm.lock"} == {
        k: v for k, v in before.items() if k != ".lit_ptm.lock"}  # no events, config or metrics written
    with pytest.warns(UserWarning, match="without --ckpt_path evaluates the model as it is built"):
        run_cli(["validate", *tiny_args("gpt", tmp_path / "fresh", "--trainer.limit_val_batches", "1")])


def test_predict_never_overwrites_a_predictions_file(tmp_path, capsys):
    from lit_ptm.rundir import take_run_directory

    out = tmp_path / "predictions.jsonl"
    out.write_text("{}\n")
    with pytest.raises(RunDirectoryError, match="predictions.jsonl exists; `predict` would overwrite it"):
        take_run_directory("predict", tmp_path, "x.ckpt", overwrite=False, outputs=(out,))
    take_run_directory("predict", tmp_path, "x.ckpt", overwrite=True, outputs=(out,)).release()


def test_a_second_process_is_refused_a_directory_in_use(trained_gpt, tmp_path, cache_dir):
    root = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from lit_ptm.rundir import RunLock; lock = RunLock({str(root)!r}).acquire(); print('held', flush=True); "
                               "import time; time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryError, match=rf"run directory {root} is in use by process {holder.pid} on "):
            run_cli(["fit", *tiny_args("gpt", root, "--trainer.max_steps", "2")])
        assert [p.name for p in root.iterdir()] == [".lit_ptm.lock"]  # stopped before writing anything
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops a dead holder's lock: the directory is free again.
    run_cli(["fit", *tiny_args("gpt", root, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0")])
    assert (root / "last.ckpt").is_file()


def test_temporaries_of_a_killed_write_are_removed_when_the_run_resumes(tmp_path, cache_dir):
    root = tmp_path / "run"
    run_cli(["fit", *tiny_args("gpt", root, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0")])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = [root / f".last.ckpt.tmp{dead}", root / f".tokenizer.json.tmp{dead}"]  # a writer that has exited
    for path in stale:
        path.write_bytes(b"half a file")
    run_cli(["fit", *tiny_args("gpt", root, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
                               "--ckpt_path", str(root / "last.ckpt"))])
    assert not any(p.exists() for p in stale)
    assert not list(root.glob(".*.tmp[0-9]*"))


def test_only_temporaries_of_dead_writers_are_removed_and_user_files_stay(tmp_path):
    from lit_ptm.rundir import remove_temporaries

    keep = [tmp_path / ".page.tmpl", tmp_path / "notes.tmp123", tmp_path / f".live.tmp{os.getppid()}"]
    for path in keep:
        path.write_text("mine")
    (tmp_path / ".venv.tmp1").mkdir()
    (tmp_path / ".last.ckpt.tmp999999").write_text("half")
    assert [p.name for p in remove_temporaries(tmp_path)] == [".last.ckpt.tmp999999"]
    assert all(p.exists() for p in keep) and (tmp_path / ".venv.tmp1").is_dir()


def test_overwrite_never_removes_what_the_run_reads(tmp_path, cache_dir):
    root = tmp_path / "run"
    short = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]
    run_cli(["fit", *tiny_args("gpt", root, *short)])
    for reads in (["--ckpt_path", str(root / "last.ckpt")], ["--model.init_args.pretrained", str(root)]):
        with pytest.raises(RunDirectoryError, match="--overwrite true would remove .* but this run reads"):
            run_cli(["fit", *tiny_args("gpt", root, *short, "--overwrite", "true"), *reads])
        assert (root / "last.ckpt").is_file() and (root / "tokenizer.json").is_file()
    # Continued pretraining into its own run directory: refused without offering --overwrite.
    with pytest.raises(RunDirectoryError) as e:
        run_cli(["fit", *tiny_args("gpt", root, *short, "--model.init_args.pretrained", str(root))])
    assert "--overwrite" not in str(e.value)


def test_evaluating_into_another_runs_directory_is_refused_and_config_yaml_is_the_training_one(tmp_path, cache_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    short = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]
    for root in (a, b):
        run_cli(["fit", *tiny_args("gpt", root, *short)])
    with pytest.raises(RunDirectoryError, match=r"holds another run .* than .*b/last.ckpt"):
        run_cli(["test", *tiny_args("gpt", a, "--ckpt_path", str(b / "last.ckpt"))])
    recorded = (a / "config.yaml").read_text()
    run_cli(["test", *tiny_args("gpt", a, "--trainer.limit_test_batches", "1", "--ckpt_path", str(a / "last.ckpt"))])
    assert (a / "config.yaml").read_text() == recorded  # `test` did not replace the training config


def test_a_checkpoint_naming_a_foreign_class_or_a_lightning_keyword_is_refused(trained_gpt, tmp_path, monkeypatch, cache_dir):
    marker = tmp_path / "imported"
    (tmp_path / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass X: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    checkpoint = torch.load(trained_gpt / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "evil_module.X"
    torch.save(checkpoint, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="names the class 'evil_module.X', which is not a lit_ptm objective or task"):
        run_cli(["test", *tiny_args("gpt", tmp_path / "t", "--ckpt_path", str(tmp_path / "foreign.ckpt"))])
    assert not marker.exists()
    for keyword in ("last", "hpc", "registry"):
        with pytest.raises(CheckpointError, match="give the checkpoint file or run directory"):
            run_cli(["test", *tiny_args("gpt", tmp_path / "t", "--ckpt_path", keyword)])
    # A hostile file in torch's legacy (non-zip) format is refused by name too, not called "corrupt".
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"payload": WritesMarker(tmp_path / "pwned")}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy.ckpt was refused: it asks to load posix.system"):
        run_cli(["test", *tiny_args("gpt", tmp_path / "t", "--ckpt_path", str(legacy))])
    assert not (tmp_path / "pwned").exists()


def test_a_reused_config_yaml_writes_into_the_new_run_directory(trained_gpt, tmp_path, cache_dir):
    root = tmp_path / "new"
    before = sorted(p.name for p in trained_gpt.iterdir())
    run_cli(["fit", "--config", str(trained_gpt / "config.yaml"), "--trainer.default_root_dir", str(root),
             "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"])
    assert sorted(p.name for p in trained_gpt.iterdir()) == before
    assert (root / "config.yaml").is_file() and list(root.glob("events.out.tfevents.*"))


# -- 6. user errors are one clear message ---------------------------------------------------------
def test_user_errors_exit_with_one_message_and_no_traceback(tmp_path, cache_dir):
    env = {"LIT_PTM_CACHE": str(cache_dir)}
    args = ["fit", *tiny_args("gpt", tmp_path / "r", "--data.init_args.train_files", str(tmp_path / "none*.txt"))]
    r = run_module(args, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "lit-ptm: error: data.train_files: no corpus file matches" in r.stderr
    r = run_module(args, env={**env, "LIT_PTM_DEBUG": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr
    # An error raised while the classes are built (jsonargparse wraps it) is one message too, and leaves no run directory.
    r = run_module(["fit", *tiny_args("gpt", tmp_path / "v", "--data.init_args.batch_size", "0")], env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "lit-ptm: error: data.batch_size=0 must be at least 1" in r.stderr
    assert not (tmp_path / "v").exists()


def test_value_checks_name_the_key_before_any_work(tmp_path, monkeypatch, capsys):
    empty_cache = tmp_path / "cache"
    monkeypatch.setenv("LIT_PTM_CACHE", str(empty_cache))
    cases = {
        ("--data.init_args.batch_size", "0"): "data.batch_size=0",
        ("--data.init_args.seq_length", "-5"): "data.seq_length=-5",
        ("--data.init_args.num_workers", "-1"): "data.num_workers=-1",
    }
    for flag, message in cases.items():
        with pytest.raises(Exception) as e:
            run_cli(["fit", *tiny_args("bert", tmp_path / "r", *flag)])
        assert message in str(e.value), (flag, str(e.value))
    for flag, value in (("--model.init_args.mlm_probability", "1.5"), ("--data.init_args.tokenizer_kind", "sentencepiece"),
                        ("--model.init_args.pair_task", "nxp"), ("--data.init_args.packing", "docs")):
        with pytest.raises((SystemExit, Exception)) as e:
            run_cli(["fit", *tiny_args("bert", tmp_path / "r", flag, value)])
        shown = capsys.readouterr().err if isinstance(e.value, SystemExit) else str(e.value)
        assert flag.rsplit(".", 1)[-1] in shown and value in shown, (flag, shown[-500:])
    assert not (empty_cache / "tokenizers").exists() and not (empty_cache / "stores").exists()


def test_missing_pretrained_run_and_a_run_directory_as_ckpt_path(trained_gpt, tmp_path, cache_dir):
    with pytest.raises(CheckpointError, match=r"model.pretrained=.*nowhere does not exist"):
        run_cli(["fit", "--config", str(CONFIGS / "finetune/classify.yaml"), "--trainer.default_root_dir", str(tmp_path / "c"),
                 "--model.init_args.pretrained", str(tmp_path / "nowhere")])
    # --ckpt_path may name a run directory: its last.ckpt.
    cli = run_cli(["validate", *tiny_args("gpt", tmp_path / "v", "--ckpt_path", str(trained_gpt), "--trainer.limit_val_batches", "1")])
    assert cli.config.validate.ckpt_path == str(trained_gpt / "last.ckpt")


def test_quiet_by_default_and_a_resumed_max_steps_run_shows_its_progress(tmp_path, cache_dir):
    env = {"LIT_PTM_CACHE": str(cache_dir)}
    root = tmp_path / "run"
    common = [*tiny_args("gpt", root, "--trainer.limit_val_batches", "0"), "--trainer.enable_progress_bar", "true"]
    first = run_module(["fit", *common, "--trainer.max_steps", "3"], env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run_module(["fit", *common, "--trainer.max_steps", "5", "--ckpt_path", str(root / "last.ckpt")], env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for output in (first, resumed):
        text = output.stdout + output.stderr
        for noise in ("litlogger", "LeafSpec", "not resumable", "/-2"):
            assert noise not in text, noise
    assert "step 5/5" in resumed.stdout + resumed.stderr


def test_checkpoints_of_the_first_stack_resume_and_evaluate(tmp_path, cache_dir):
    """Checkpoints written before the stack's second edition: ModelConfig held ``causal`` and ALBERT's
    factorised projection was ``transformer.embeddings.project``. They resume and evaluate as they were."""
    from lit_ptm.cli import upgrade_hyperparameters

    root = tmp_path / "old"
    flags = ["--model.init_args.config.embedding_size", "32", "--trainer.limit_val_batches", "2"]
    run_cli(["fit", *tiny_args("gpt", root, "--trainer.max_steps", "2", *flags)])
    checkpoint = torch.load(root / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["config"]["causal"] = True
    checkpoint["lit_ptm"]["model_config"]["causal"] = True
    del checkpoint["lit_ptm"]["causal"]
    state = checkpoint["state_dict"]
    renamed = [k for k in state if k.startswith("transformer.project.")]
    assert renamed
    for key in renamed:
        state[key.replace("transformer.project.", "transformer.embeddings.project.")] = state.pop(key)
    torch.save(checkpoint, root / "last.ckpt")
    resumed = run_cli(["fit", *tiny_args("gpt", root, "--trainer.max_steps", "3", *flags, "--ckpt_path", str(root / "last.ckpt"))])
    assert resumed.trainer.global_step == 3 and resumed.model.causal
    tested = run_cli(["test", *tiny_args("gpt", root, *flags, "--ckpt_path", str(root / "last.ckpt"))])
    assert tested.trainer.callback_metrics["test/loss"].item() < 10
    # A fine-tuning task's old checkpoint: how its backbone reads moves from the config to the task.
    old_task = {"config": {"hidden_size": 8, "causal": True}}
    upgrade_hyperparameters(old_task, "lit_ptm.tasks.SequenceClassification")
    assert old_task == {"config": {"hidden_size": 8}, "causal": True}
    old_objective = {"config": {"hidden_size": 8, "causal": True}}
    upgrade_hyperparameters(old_objective, "lit_ptm.objectives.CausalLM")
    assert old_objective == {"config": {"hidden_size": 8}}


def test_a_t5_run_from_before_the_token_tables_own_rate_resumes_at_one_rate(tmp_path, cache_dir):
    """T5's token table now trains at lr * embedding_init_std / init_std, in an optimizer group of its own.
    A run from before that has no such group in its optimizer state: it resumes as it trained, at one rate."""
    root = tmp_path / "t5"
    flags = ["--trainer.limit_val_batches", "2"]
    run_cli(["fit", *tiny_args("t5", root, "--trainer.max_steps", "2", *flags, "--model.init_args.optim.embedding_lr_scale", "1")])
    checkpoint = torch.load(root / "last.ckpt", weights_only=True)
    del checkpoint["hyper_parameters"]["optim"]["embedding_lr_scale"]  # as an older run's checkpoint
    assert len(checkpoint["optimizer_states"][0]["param_groups"]) == 2
    torch.save(checkpoint, root / "last.ckpt")
    resumed = run_cli(["fit", *tiny_args("t5", root, "--trainer.max_steps", "3", *flags, "--ckpt_path", str(root / "last.ckpt"))])
    assert resumed.trainer.global_step == 3 and resumed.model.optim.embedding_lr_scale == 1.0
    assert {g["initial_lr"] for g in resumed.trainer.optimizers[0].param_groups} == {2e-3}
    # A new run takes the table's own rate: tiny.yaml's init_std 0.07 against T5's std 1.0.
    fresh = run_cli(["fit", *tiny_args("t5", tmp_path / "new", "--trainer.max_steps", "1", *flags)])
    assert sorted({round(g["initial_lr"], 9) for g in fresh.trainer.optimizers[0].param_groups}) == [2e-3, round(2e-3 / 0.07, 9)]
