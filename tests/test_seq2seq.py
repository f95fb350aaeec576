"""Sequence-to-sequence fine-tuning: layouts, loading an encoder-decoder's decoder and head, teacher
forcing, generation metrics, predictions; causal runs; UniLM's seq2seq layout; refusals; the built-in demo task."""

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from conftest import run_cli, scalars
from lit_ptm.errors import ConfigError
from lit_ptm.nn import ModelConfig
from lit_ptm.objectives import BART, MASS, MPNet, T5, CausalLM, MaskedLM, UniLM, XLNet

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega value".split()
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64, dropout=0.0,
            attention_dropout=0.0, init_std=0.1)
CONFIGS = {
    "t5": (T5, ModelConfig(**TINY, position_embedding="relative", norm="rms", norm_position="pre", embedding_norm=False,
                           final_norm=True, bias=False, activation="relu", lm_head_transform=False, lm_head_bias=False,
                           scale_attention=False, lm_head_scale=True, norm_eps=1e-6, num_decoder_layers=3,
                           embedding_init_std=1.0)),
    "bart": (BART, ModelConfig(**{**TINY, "max_position_embeddings": 66}, position_offset=2, lm_head_transform=False, norm_eps=1e-5)),
    "mass": (MASS, ModelConfig(**TINY)),
    "gpt": (CausalLM, ModelConfig(**TINY, norm_position="pre", final_norm=True, embedding_norm=False, lm_head_transform=False,
                                  lm_head_bias=False)),
    "bert": (MaskedLM, ModelConfig(**TINY)),
    "xlnet": (XLNet, ModelConfig(**TINY, position_embedding="xlnet_relative", attention_bias=False, embedding_norm=False,
                                 lm_head_transform=False)),
    "mpnet": (MPNet, ModelConfig(**{**TINY, "max_position_embeddings": 66}, position_offset=2, relative_attention_bias=True)),
    "unilm": (UniLM, ModelConfig(**TINY, type_vocab_size=6)),
}


def tokenizer_file(directory):
    from lit_ptm.tokenizer import train_tokenizer

    rng = random.Random(0)
    tokenizer = train_tokenizer([" ".join(rng.choices(WORDS, k=8)) for _ in range(200)], "wordpiece", 300, min_frequency=1)
    tokenizer.save(directory / "tokenizer.json")
    return directory / "tokenizer.json"


def write_run(directory, kind: str, seed: int = 0):
    """A tiny pretrained run directory (last.ckpt + tokenizer.json) with random weights, its checkpoint
    written as a run's is (the objective's on_save_checkpoint: objective, backbone, decoder_start, ...)."""
    from lit_ptm.tokenizer import Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.load(tokenizer_file(directory))
    cls, config = CONFIGS[kind]
    torch.manual_seed(seed)
    module = cls(config=dataclasses.replace(config, vocab_size=tokenizer.vocab_size))
    module.configure_model()
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    checkpoint["lit_ptm"]["tokenizer_sha"] = tokenizer.sha
    torch.save(checkpoint, directory / "last.ckpt")
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("seq2seq-runs")
    return {kind: write_run(root / kind, kind) for kind in CONFIGS}


def copy_dataset(path, n, seed):
    """Copy the source's words (3-6 of 12): learnable in a few epochs by a tiny model from scratch."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = " ".join(rng.choices(WORDS, k=rng.randint(3, 6)))
        rows.append({"id": f"ex{i}", "source": words, "target": words})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def args(run, root, *extra):
    return ["--config", "configs/finetune/seq2seq.yaml", "--config", "configs/finetune/tiny.yaml",
            "--model.init_args.pretrained", str(run), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.init_args.optim.lr", "1e-2", "--model.init_args.optim.warmup_steps", "10",
            "--model.init_args.max_target_length", "12", "--data.init_args.max_length", "32",
            "--trainer.log_every_n_steps", "1", *extra]


@pytest.fixture
def copy_files(tmp_path, monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    return copy_dataset(tmp_path / "train.jsonl", 320, 0), copy_dataset(tmp_path / "dev.jsonl", 40, 1)


# -- layouts -----------------------------------------------------------------------------------------
def set_up(run, train, max_length=8, **kwargs):
    """A Seq2Seq task on ``run`` and its data module over ``train``, its features built, outside a Trainer."""
    from types import SimpleNamespace

    from lit_ptm.tasks import FinetuneDataModule, Seq2Seq

    data = FinetuneDataModule(train_file=str(train), val_file=str(train), tokenizer=str(run / "tokenizer.json"), max_length=max_length)
    task = Seq2Seq(pretrained=str(run), **kwargs)
    data.trainer = SimpleNamespace(lightning_module=task, is_global_zero=True, default_root_dir=None)
    data.setup("fit")
    task.configure_model()
    task.trainer = SimpleNamespace(datamodule=data)  # collate reads the tokenizer through the trainer
    return task, data


@pytest.mark.parametrize("kind", ["t5", "bart", "mass", "gpt"])
def test_each_run_kind_lays_sources_and_targets_out_as_it_was_pretrained(kind, runs, tmp_path, copy_files, monkeypatch):
    train, _ = copy_files
    task, data = set_up(runs[kind], train, max_target_length=5)
    ids = data.tokenizer.ids
    record = json.loads(train.read_text().splitlines()[0])
    words = data.tokenizer.hf.encode(record["source"], add_special_tokens=False).ids
    f = data.datasets["train"].windows[0]
    if kind == "t5":  # text [EOS]; the decoder starts from [PAD]
        assert (task.objective, task.decoder_start) == ("T5", "pad")
        assert f["source"].tolist() == [*words[:7], ids.eos] and f["target"].tolist() == [*words[:4], ids.eos]
        start = ids.pad
    elif kind in ("bart", "mass"):  # [CLS] text [SEP]; the decoder starts from [EOS] (BART) or [BOS] (MASS)
        assert (task.objective, task.decoder_start) == (("BART", "eos") if kind == "bart" else ("MASS", "bos"))
        assert f["source"].tolist() == [ids.cls, *words[:6], ids.sep] and f["target"].tolist() == [ids.cls, *words[:3], ids.sep]
        start = ids.eos if kind == "bart" else ids.bos
    else:  # source [SEP] target [EOS] in one sequence, max_target_length of room for the target
        assert task.objective is None and task.reads_causally()
        assert f["source"].tolist() == [*words[:2], ids.sep] and f["target"].tolist() == [*words[:4], ids.eos]
    batch = task.collate([{**w, "index": i} for i, w in enumerate(data.datasets["train"].windows[:3])])
    if kind == "gpt":  # the target's tokens are predicted from the position before each; the source's are not
        row, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        assert row[: len(f["source"]) + len(f["target"]) - 1] == [*f["source"].tolist(), *f["target"][:-1].tolist()]
        assert labels[: len(f["source"]) - 1] == [-100] * (len(f["source"]) - 1)
        assert [t for t in labels if t != -100] == f["target"].tolist()
    else:
        assert batch["decoder_input_ids"][0, : len(f["target"])].tolist() == [start, *f["target"][:-1].tolist()]
        assert [t for t in batch["labels"][0].tolist() if t != -100] == f["target"].tolist()
        assert batch["attention_mask"][0].sum() == len(f["source"])


def test_a_unilm_run_fine_tunes_in_its_seq2seq_layout(runs, copy_files):
    """[CLS] source [SEP] target [SEP], segments 4 / 5, the source a prefix; 70% of each target masked (its
    [SEP] can be), predicted at the [MASK]; the LM head continues from the run; a draw per (seed, epoch, index)."""
    train, _ = copy_files
    task, data = set_up(runs["unilm"], train, max_length=12, max_target_length=5)
    ids = data.tokenizer.ids
    assert task.objective == "UniLM" and task.unilm and not task.encoder_decoder and not task.reads_causally()
    state = torch.load(runs["unilm"] / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[f"lm_head.{k}"]) for k, v in task.lm_head.state_dict().items())
    records = [json.loads(line) for line in train.read_text().splitlines()]
    windows = data.datasets["train"].windows
    for r, f in zip(records[:20], windows):  # room for the target and generation's [MASK] slot: 12 - 5 - 1 - 2 source tokens
        words = data.tokenizer.hf.encode(r["source"], add_special_tokens=False).ids
        target = data.tokenizer.hf.encode(r["target"], add_special_tokens=False).ids
        assert f["source"].tolist() == [ids.cls, *words[:4], ids.sep] and f["target"].tolist() == [*target[:4], ids.sep]
    samples = [{**w, "index": i} for i, w in enumerate(windows[:64])]
    batch = task.collate(samples)
    assert torch.equal(batch["prefix_length"], torch.tensor([len(s["source"]) for s in samples]))
    masked_sep = 0
    for i, s in enumerate(samples):
        source, target, n = s["source"].tolist(), s["target"].tolist(), len(s["source"]) + len(s["target"])
        row, labels, types = batch["input_ids"][i].tolist(), batch["labels"][i].tolist(), batch["token_type_ids"][i, :n].tolist()
        assert types == [4] * len(source) + [5] * len(target) and batch["attention_mask"][i].sum() == n
        assert row[: len(source)] == source and labels[: len(source)] == [-100] * len(source)  # the source is never masked
        chosen = [j for j in range(len(target)) if labels[len(source) + j] != -100]
        assert len(chosen) == max(1, round(0.7 * len(target)))
        for j, token in enumerate(target):
            assert row[len(source) + j] == (ids.mask if j in chosen else token)
            assert labels[len(source) + j] == (token if j in chosen else -100)
        masked_sep += (len(target) - 1) in chosen
        assert row[n:] == [ids.pad] * (len(row) - n) and labels[n:] == [-100] * (len(row) - n)
    assert 0 < masked_sep < len(samples)
    assert torch.equal(task.collate(samples)["input_ids"], batch["input_ids"])  # (seed, epoch, index) decide
    again = task.collate([{**s, "epoch": 1} for s in samples])["input_ids"]
    assert not torch.equal(again, batch["input_ids"])
    # The source never sees the target; a target token sees the source and the target up to itself.
    task.eval()
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    first = batch["prefix_length"][0].item()
    changed["input_ids"][0, first + 2 :] = ids.unk  # the target from its third token on
    with torch.no_grad():
        before, after = task(batch)[0], task(changed)[0]
    assert torch.allclose(before[: first + 2], after[: first + 2], atol=1e-6)
    assert not torch.allclose(before[first + 2 :], after[first + 2 :], atol=1e-6)
    from lit_ptm.errors import ConfigError
    from lit_ptm.tasks import Seq2Seq

    for bad, match in ((dict(causal=True), "a UniLM run: it takes UniLM's own layout"),
                       (dict(objective="BART"), "a UniLM run: it takes UniLM's own layout"),
                       (dict(target_mask_probability=0.0), "target_mask_probability=0.0 must be in")):
        with pytest.raises(ConfigError, match=match):
            Seq2Seq(pretrained=str(runs["unilm"]), **bad).architecture()


def test_the_decoder_and_lm_head_come_from_the_run_or_start_fresh(runs):
    from lit_ptm.tasks import Seq2Seq

    state = torch.load(runs["t5"] / "last.ckpt", weights_only=True)["state_dict"]
    task = Seq2Seq(pretrained=str(runs["t5"]))
    task.configure_model()
    own = task.state_dict()
    for name, value in state.items():  # the run's encoder is the backbone; its decoder and head are ours
        mine = "transformer." + name[len("encoder."):] if name.startswith("encoder.") else name
        assert torch.equal(own[mine], value), name
    assert len(task.decoder.blocks) == 3 and task.decoder.embeddings.tokens is task.transformer.embeddings.tokens
    scratch = Seq2Seq(pretrained=str(runs["t5"]), from_scratch=True)
    scratch.configure_model()
    assert {k: v.shape for k, v in scratch.state_dict().items()} == {k: v.shape for k, v in own.items()}
    assert not torch.equal(scratch.decoder.blocks[0].ffn.up.weight, own["decoder.blocks.0.ffn.up.weight"])
    assert scratch.started_from.startswith("random weights in the architecture of")


def test_a_fresh_model_without_a_pretrained_run():
    from lit_ptm.errors import ConfigError
    from lit_ptm.tasks import Seq2Seq

    config = dataclasses.replace(CONFIGS["bart"][1], vocab_size=120)
    task = Seq2Seq(config=config)  # an encoder-decoder in EncoderDecoderLM's layout ([CLS] text [SEP], from [BOS])
    task.configure_model()
    assert len(task.decoder.blocks) == 2 and (task.layout.__class__.__name__, task.decoder_start) == ("EncoderDecoderLM", "bos")
    assert task.hparams["objective"] == "EncoderDecoderLM"
    causal = Seq2Seq(config=config, causal=True)
    causal.configure_model()
    assert not hasattr(causal, "decoder") and causal.lm_head.output_weight is causal.transformer.embeddings.tokens.weight
    for bad, match in ((dict(objective="GPT"), "model.objective='GPT' is not one of"), (dict(num_beams=0), "model.num_beams=0"),
                       (dict(max_target_length=1), "model.max_target_length=1")):
        with pytest.raises(ConfigError, match=match):
            Seq2Seq(config=config, **bad)


@pytest.mark.parametrize("kind", ["bert", "xlnet", "mpnet"])
def test_an_encoder_only_run_is_refused(kind, runs, tmp_path, copy_files):
    train, dev = copy_files
    with pytest.raises(ValueError, match=f"{CONFIGS[kind][0].__name__} run, an encoder only: sequence-to-sequence fine-tuning needs a decoder"):
        run_cli(["fit", *args(runs[kind], tmp_path / "x", "--data.init_args.train_file", str(train),
                              "--data.init_args.val_file", str(dev))])


# -- through the CLI: fit, test, predict -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["t5", "bart", "gpt", "unilm"])
def test_finetuning_learns_a_copy_task_evaluates_by_generation_and_predicts(kind, runs, tmp_path, copy_files):
    """Copying is learnt within 10 epochs from random weights by the BART-like model (perfectly) and the
    GPT-like one (mostly); the tiny T5-like one (relative positions only, no position information in its
    cross-attention) aligns target and source positions more slowly (ROUGE-L 0.57, no exact copies yet).
    UniLM: its seq2seq layout, 70% of each target masked (loss 4.6 -> 1.2, ROUGE-L 0.62), generating with its
    cloze reader (a [MASK] slot at a time, up to [SEP]); the fine-tuned checkpoint keeps the layout."""
    train, dev = copy_files
    root = tmp_path / kind
    data = ["--data.init_args.train_file", str(train), "--data.init_args.val_file", str(dev)]
    cli = run_cli(["fit", *args(runs[kind], root, *data, "--trainer.max_epochs", "10")])
    losses = list(scalars(root, "train/loss").values())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])  # teacher forcing learns
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {"val/loss", "val/rougeL", "val/bleu", "val/exact_match"} <= set(metrics)
    assert all(0 <= metrics[f"val/{k}"] <= 1 for k in ("rougeL", "bleu", "exact_match"))
    learnt = {"bart": (0.95, 0.9), "gpt": (0.7, 0.1), "t5": (0.4, 0.0), "unilm": (0.5, 0.0)}[kind]
    assert metrics["val/rougeL"] >= learnt[0] and metrics["val/exact_match"] >= learnt[1], metrics
    tested = run_cli(["test", *args(runs[kind], root, *data, "--data.init_args.test_file", str(dev), "--model.init_args.num_beams", "2"),
                      "--ckpt_path", str(root / "last.ckpt")])
    assert tested.model.generation.num_beams == 2
    if kind == "unilm":
        assert tested.model.unilm and cli.model.hparams["target_mask_probability"] == 0.7
    assert json.loads((root / "test_metrics.json").read_text())["test/rougeL"] >= learnt[0]
    rows = [json.loads(line) for line in dev.read_text().splitlines()[:8]]
    sources = tmp_path / "sources.jsonl"
    sources.write_text("".join(json.dumps({"id": r["id"], "source": r["source"]}) + "\n" for r in rows))  # no targets
    run_cli(["predict", *args(runs[kind], root, *data, "--data.init_args.predict_file", str(sources)),
             "--ckpt_path", str(root / "last.ckpt")])
    predictions = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == [r["id"] for r in rows] and all(isinstance(p["prediction"], str) for p in predictions)
    if kind == "bart":
        assert [p["prediction"] for p in predictions] == [r["target"] for r in rows]
        # The baseline: the run's architecture with random weights, fitted the same way.
        scratch = run_cli(["fit", *args(runs[kind], tmp_path / "scratch", *data, "--trainer.max_epochs", "1",
                                        "--model.init_args.from_scratch", "true")])
        assert scratch.model.started_from.startswith("random weights")
        assert torch.load(tmp_path / "scratch" / "last.ckpt", weights_only=True)["lit_ptm"]["started_from"].startswith("random weights")


def test_the_built_in_demo_task_is_a_docstring_summary(runs, tmp_path, cache_dir, monkeypatch):
    from conftest import ROOT

    from lit_ptm.tasks.demo import write_summary_task

    monkeypatch.chdir(ROOT)
    paths = write_summary_task(tmp_path / "demo", max_examples=300)
    splits = {k: [json.loads(line) for line in p.read_text().splitlines()] for k, p in paths.items()}
    assert sum(map(len, splits.values())) == 300 and len(splits["train"]) > 200 and splits["val"] and splits["test"]
    example = splits["train"][0]
    assert set(example) == {"id", "source", "target"} and len(example["source"].split()) <= 64
    assert write_summary_task(tmp_path / "demo", max_examples=300) == paths  # cached
    # No data files: the Seq2Seq task fits on the built-in demo (2,500 examples; the 300 above are its first,
    # each in the same split: the order and the split are hashes of the docstring's module path and index).
    cli = run_cli(["fit", *args(runs["bart"], tmp_path / "demo-run", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                                "--trainer.limit_val_batches", "1", "--model.init_args.max_new_tokens", "4")])
    files = cli.datamodule.files
    assert "stdlib_summary" in files["train"] and "val/rougeL" in cli.trainer.callback_metrics
    full = {k: {json.loads(line)["id"] for line in Path(files[k]).read_text().splitlines()} for k in ("train", "val", "test")}
    assert 2000 <= sum(map(len, full.values())) <= 2500
    assert all({e["id"] for e in rows} <= full[k] for k, rows in splits.items())


def test_a_fresh_glm_or_unilm_layout_needs_the_tables_its_inputs_index():
    """Without a pretrained run, objective GLM / UniLM lays out block positions / segments 4-5: a config without
    the block position table or six segment rows is refused (the embeddings would drop them silently)."""
    from lit_ptm.tasks import Seq2Seq

    with pytest.raises(ConfigError, match="block_position_embedding=false: GLM's 2D positions need the second position table"):
        Seq2Seq(objective="GLM", config=ModelConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2)).architecture()
    with pytest.raises(ConfigError, match=r"model.config.type_vocab_size >= 6 \(got 2\)"):
        Seq2Seq(objective="UniLM", config=ModelConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2,
                                                      type_vocab_size=2)).architecture()
    assert Seq2Seq(objective="GLM", config=ModelConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2,
                                                       block_position_embedding=True)).architecture().block_position_embedding
