"""Fine-tuning and continued pretraining: features, loading pretrained weights, tasks through the CLI."""

import json
import math
import random

import pytest
import torch

from conftest import run_cli, scalars, tiny_args, write_corpus
from lit_ptm.tasks.features import align_word_labels, encode_texts, qa_windows, truncate_pair, word_predictions
from lit_ptm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def pretrained_runs(tmp_path_factory, cache_dir):
    """Briefly pretrained runs on the built-in corpus (tiny.yaml: 300 steps), each trained when a test first
    asks for it: an encoder (BERT: MLM + NSP), a decoder (GPT), the permutation LMs (XLNet, MPNet); UniLM and
    GLM for 10 steps (only their weights' loading is tested)."""
    root = tmp_path_factory.mktemp("pretrained")
    briefly = {"unilm", "glm"}

    class Runs(dict):
        def __missing__(self, recipe):
            run_cli(["fit", *tiny_args(recipe, root / recipe, *(("--trainer.max_steps", "10") if recipe in briefly else ()))])
            self[recipe] = root / recipe
            return self[recipe]

    return Runs()


# -- features: hand-made cases ----------------------------------------------------------------------
def test_word_labels_align_to_first_sub_tokens_and_back(pretrained_runs):
    tok = Tokenizer.load(pretrained_runs["bert"] / "tokenizer.json")
    words = ["Tokenization", "of", "unfathomably", "long", "words"]
    encoding = tok.hf.encode(words, is_pretokenized=True, add_special_tokens=False)
    word_ids = [None] + list(encoding.word_ids) + [None]
    assert len(word_ids) > len(words) + 2  # some words are split into several pieces
    labels = [3, 0, 1, 2, 4]
    aligned = align_word_labels(word_ids, labels)
    assert sum(a != -100 for a in aligned) == len(words)  # each word scored exactly once
    assert aligned[0] == -100 and aligned[-1] == -100
    assert word_predictions(word_ids, aligned, len(words)) == labels  # round trip
    assert word_predictions(word_ids[:3], aligned[:3], len(words))[-1] == -1  # truncated words are marked


def test_qa_windows_map_answers_to_tokens_and_back(pretrained_runs):
    tok = Tokenizer.load(pretrained_runs["bert"] / "tokenizer.json")
    context = " ".join(f"sentence {i} talks about the module number {i}." for i in range(40))
    answer_text = "the module number 17"
    start = context.index(answer_text)
    windows = qa_windows(tok, "which module?", context, max_length=48, stride=16, answer=(start, start + len(answer_text)))
    assert len(windows) > 3
    holding = [w for w in windows if w.start > 0]
    assert holding  # the stride makes sure at least one window holds the whole answer
    for w in holding:
        (a, _), (_, b) = w.offsets[w.start], w.offsets[w.end]
        assert context[a:b] == answer_text
        assert w.token_type[w.start] == 1 and len(w.ids) <= 48
    # Windows cover the context: every context token is in some window.
    covered = {o for w in windows for o in w.offsets if o is not None}
    assert len(covered) == len(tok.hf.encode(context, add_special_tokens=False).ids)
    assert all(w.start == 0 and w.end == 0 for w in windows if w not in holding)


def test_pair_layouts_for_encoders_and_causal_models(pretrained_runs):
    tok = Tokenizer.load(pretrained_runs["bert"] / "tokenizer.json")
    ids = tok.ids
    enc = encode_texts(tok, ["a first text"], ["and a second one"], 64, causal=False)[0]
    assert enc["ids"][0] == ids.cls and enc["ids"].count(ids.sep) == 2 and enc["ids"][-1] == ids.sep
    assert enc["token_type"][: enc["ids"].index(ids.sep) + 1] == [0] * (enc["ids"].index(ids.sep) + 1)
    assert set(enc["token_type"][enc["ids"].index(ids.sep) + 1 :]) == {1}
    dec = encode_texts(tok, ["a first text"], ["and a second one"], 64, causal=True)[0]
    assert dec["ids"][-1] == ids.eos and ids.cls not in dec["ids"]
    long = encode_texts(tok, ["word " * 100], ["other " * 10], 32, causal=False)[0]
    assert len(long["ids"]) == 32 and long["token_type"].count(1) == 11  # longest first: B keeps its 10 + [SEP]
    assert truncate_pair(10, 3, 8) == (5, 3) and truncate_pair(4, 4, 6) == (3, 3)


# -- loading pretrained weights ---------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["bert", "gpt", "xlnet", "mpnet", "unilm", "glm"])
def test_finetuning_starts_from_the_pretrained_weights(recipe, pretrained_runs):
    from lit_ptm.tasks import SequenceClassification

    run = pretrained_runs[recipe]
    state = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    model = SequenceClassification(pretrained=str(run), labels=["a", "b", "c"], pooler_from_pretrained=True)
    model.configure_model()
    own = model.transformer.state_dict()
    backbone = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    assert own.keys() == backbone.keys()
    assert all(torch.equal(own[k], backbone[k]) for k in own)
    assert model.reads_causally() == (recipe == "gpt")  # a GPT stays a causal reader and pools its last token
    if recipe == "bert":  # on request, the NSP-pretrained pooler initialises the classifier's dense layer
        assert torch.equal(model.head.dense.weight, state["pair_head.pooler.weight"])


def test_from_scratch_baseline_takes_the_architecture_but_not_the_weights(pretrained_runs, tmp_path):
    from lit_ptm.report import table
    from lit_ptm.tasks import SequenceClassification

    run = pretrained_runs["bert"]
    state = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    model = SequenceClassification(pretrained=str(run), labels=["a", "b"], from_scratch=True)
    model.configure_model()
    own = model.transformer.state_dict()
    assert {k: v.shape for k, v in own.items()} == {k[len("transformer."):]: v.shape for k, v in state.items() if k.startswith("transformer.")}
    assert not torch.equal(own["embeddings.tokens.weight"], state["transformer.embeddings.tokens.weight"])
    assert model.started_from.startswith("random weights in the architecture of")
    # The side-by-side report of test metrics.
    for name, acc in (("pre", 0.8), ("scratch", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test_metrics.json").write_text(json.dumps({"test/acc": acc, "test/loss": 1.0}))
    lines = table([tmp_path / "pre", tmp_path / "scratch"]).splitlines()
    assert "test/acc" in lines[0] and "0.8000" in lines[1] and "0.5000" in lines[2]


def test_pooling_reads_cls_last_token_or_the_mean_of_real_tokens():
    from lit_ptm.nn import ModelConfig
    from lit_ptm.tasks import SequenceClassification

    config = ModelConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    hidden = torch.randn(2, 5, 32)
    batch = {"attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool(), "lengths": torch.tensor([3, 5])}
    mean = SequenceClassification(config=config, labels=["a", "b"], pooling="mean").pool(hidden, batch)
    assert torch.allclose(mean[0], hidden[0, :3].mean(0)) and torch.allclose(mean[1], hidden[1].mean(0))
    assert torch.equal(SequenceClassification(config=config, labels=["a", "b"]).pool(hidden, batch), hidden[:, 0])
    causal = SequenceClassification(config=config, labels=["a", "b"], causal=True)
    assert torch.equal(causal.pool(hidden, batch), torch.stack([hidden[0, 2], hidden[1, 4]]))
    with pytest.raises(ValueError, match="model.pooling='max'"):
        SequenceClassification(config=config, labels=["a", "b"], pooling="max")


# -- tasks through the CLI --------------------------------------------------------------------------
def keyword_dataset(path, n, seed, pair=False):
    """Label = which keyword group the text contains (3 classes); regression target = count of 'alpha'."""
    rng = random.Random(seed)
    groups = {"network": ["socket", "server", "request"], "files": ["path", "directory", "file"], "text": ["string", "format", "unicode"]}
    filler = "the a of to is value object function module return with for and this that".split()
    rows = []
    for i in range(n):
        label = rng.choice(sorted(groups))
        words = [rng.choice(filler) for _ in range(rng.randint(6, 12))]
        for _ in range(2):
            words.insert(rng.randrange(len(words)), rng.choice(groups[label]))
        row = {"id": f"ex{i}", "text": " ".join(words), "label": label}
        if pair:
            row["text2"] = " ".join(rng.choice(filler) for _ in range(5))
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def finetune_args(run, root, *extra):
    return ["--config", "configs/finetune/classify.yaml", "--model.init_args.pretrained", str(run),
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--model.init_args.optim.lr", "1e-3",
            "--model.init_args.optim.warmup_steps", "10", "--data.init_args.batch_size", "16", "--data.init_args.max_length", "64",
            *extra]


@pytest.mark.parametrize("recipe", ["bert", "gpt"])
def test_classification_trains_well_above_chance_tests_and_predicts(recipe, pretrained_runs, tmp_path, monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    train = keyword_dataset(tmp_path / "train.jsonl", 400, 0, pair=True)
    dev = keyword_dataset(tmp_path / "dev.jsonl", 90, 1, pair=True)
    csv_test = tmp_path / "test.csv"  # CSV works as well as JSONL
    rows = [json.loads(line) for line in dev.read_text().splitlines()]
    csv_test.write_text("id,text,text2,label\n" + "".join(f"{r['id']},{r['text']},{r['text2']},{r['label']}\n" for r in rows))
    root = tmp_path / "cls"
    data = ["--data.init_args.train_file", str(train), "--data.init_args.val_file", str(dev), "--data.init_args.text_pair_field", "text2"]
    cli = run_cli(["fit", *finetune_args(pretrained_runs[recipe], root, *data, "--trainer.max_epochs", "16",
                                         "--data.init_args.train_examples", "360")])
    assert cli.model.labels == ["files", "network", "text"]
    assert len(cli.datamodule.datasets["train"]) == 360  # a subset of the 400 training records
    # Laid out, while fitting, for the reader the run was pretrained as (the data are built before the
    # stack is): encoders [CLS] A [SEP] B [SEP], causal models A [SEP] B [EOS].
    ids, special = cli.datamodule.datasets["train"].windows[0]["ids"].tolist(), cli.datamodule.tokenizer.ids
    assert (ids[0] == special.cls, ids[-1]) == ((True, special.sep) if recipe == "bert" else (False, special.eos))
    assert cli.trainer.callback_metrics["val/acc"].item() > 0.9  # chance: 1/3
    test = run_cli(["test", *finetune_args(pretrained_runs[recipe], root, *data, "--data.init_args.test_file", str(csv_test)),
                    "--ckpt_path", str(root / "last.ckpt")])
    assert test.trainer.callback_metrics["test/acc"].item() > 0.9
    assert json.loads((root / "test_metrics.json").read_text())["test/acc"] > 0.9
    assert {"test/f1", "test/mcc"} <= set(test.trainer.callback_metrics)
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "text2": r["text2"]}) + "\n" for r in rows[:20]))
    run_cli(["predict", *finetune_args(pretrained_runs[recipe], root, *data, "--data.init_args.predict_file", str(unlabelled)),
             "--ckpt_path", str(root / "last.ckpt")])
    predictions = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == [r["id"] for r in rows[:20]]
    assert sum(p["prediction"] == r["label"] for p, r in zip(predictions, rows)) >= 17


@pytest.mark.parametrize("recipe", ["xlnet", "mpnet"])
def test_a_permutation_lm_fine_tunes_as_an_encoder_and_xlnet_reads_segments(recipe, pretrained_runs, tmp_path, monkeypatch):
    """The content stream of an XLNet or MPNet run is the encoder a task takes: a few steps of the built-in
    demo task, then of the pair tasks (classification, QA), whose token types reach XLNet's relative segment
    term (they once did not: a batch carried them only with a segment table, which XLNet has not). MPNet
    has no segments."""
    from conftest import ROOT
    from lit_ptm.tasks.demo import PACKAGES

    monkeypatch.chdir(ROOT)
    run = pretrained_runs[recipe]
    demo = run_cli(["fit", *finetune_args(run, tmp_path / "demo", "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1")])
    assert demo.model.started_from == str(run / "last.ckpt") and not demo.model.reads_causally()
    assert set(demo.model.labels) == set(PACKAGES)  # the demo: which standard-library package a docstring is from
    losses = scalars(tmp_path / "demo", "train/loss")
    assert sorted(losses) == [0, 1, 2] and all(math.isfinite(v) for v in losses.values())
    pairs, questions = keyword_dataset(tmp_path / "pairs.jsonl", 48, 0, pair=True), qa_dataset(tmp_path / "qa.jsonl", 24, 0)
    for task, args in (("classify", finetune_args(run, tmp_path / "pair", "--data.init_args.train_file", str(pairs),
                                                  "--data.init_args.val_file", str(pairs), "--data.init_args.text_pair_field", "text2")),
                       ("qa", qa_args(run, tmp_path / "qa", questions, questions))):
        cli = run_cli(["fit", *args, "--trainer.max_steps", "2"])
        batch = next(iter(cli.datamodule.train_dataloader()))
        assert ("token_type_ids" in batch) == (recipe == "xlnet"), task
        if recipe == "xlnet":
            assert batch["token_type_ids"].any(), task  # B's (the context's) tokens are segment 1
            model = cli.model.eval()
            with torch.no_grad():
                moved = torch.stack([*model(batch)]) - torch.stack([*model({k: v for k, v in batch.items() if k != "token_type_ids"})])
            assert moved.abs().max() > 1e-4, task


def test_regression_layer_decay_and_frozen_embeddings(pretrained_runs, tmp_path, monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    rng = random.Random(3)
    words = "alpha beta gamma delta the of".split()
    for name, n in (("train", 400), ("dev", 80)):
        lines = []
        for _ in range(n):
            text = [rng.choice(words) for _ in range(rng.randint(5, 15))]
            lines.append(json.dumps({"text": " ".join(text), "score": text.count("alpha") / 3}))
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    root = tmp_path / "reg"
    run = pretrained_runs["bert"]
    cli = run_cli(["fit", *finetune_args(run, root, "--data.init_args.train_file", str(tmp_path / "train.jsonl"),
                                         "--data.init_args.val_file", str(tmp_path / "dev.jsonl"), "--data.init_args.label_field", "score",
                                         "--model.init_args.regression", "true", "--model.init_args.layer_decay", "0.5",
                                         "--model.init_args.freeze_embeddings", "true", "--trainer.max_epochs", "12")])
    assert cli.trainer.callback_metrics["val/pearson"].item() > 0.75  # chance: 0
    # Layer-wise decay: the head at lr, block i of 2 at lr * 0.5 ** (2 - i), nothing for frozen embeddings.
    groups = cli.trainer.optimizers[0].param_groups
    assert sorted({round(g["initial_lr"] / 1e-3, 6) for g in groups}) == [0.25, 0.5, 1.0]  # block 1, block 2, head
    pretrained = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    tuned = cli.model.state_dict()
    assert torch.equal(tuned["transformer.embeddings.tokens.weight"], pretrained["transformer.embeddings.tokens.weight"])
    assert not torch.equal(tuned["transformer.blocks.1.ffn.up.weight"], pretrained["transformer.blocks.1.ffn.up.weight"])


def test_another_tokenizer_is_refused(pretrained_runs, tmp_path, monkeypatch, capsys):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    train = keyword_dataset(tmp_path / "train.jsonl", 50, 0)
    with pytest.raises(Exception) as e:
        run_cli(["fit", *finetune_args(pretrained_runs["bert"], tmp_path / "x", "--data.init_args.train_file", str(train),
                                       "--data.init_args.val_file", str(train),
                                       "--data.init_args.tokenizer", str(pretrained_runs["gpt"] / "tokenizer.json"))])
    assert "was trained with another tokenizer" in str(e.value) and "leave data.tokenizer unset" in str(e.value)
    with pytest.raises(ValueError) as e:  # longer inputs than the pretrained model has positions for
        run_cli(["fit", *finetune_args(pretrained_runs["bert"], tmp_path / "y", "--data.init_args.train_file", str(train),
                                       "--data.init_args.val_file", str(train), "--data.init_args.max_length", "256")])
    assert "data.max_length=256 exceeds the model's 128 positions" in str(e.value)


# -- continued pretraining --------------------------------------------------------------------------
def test_continued_pretraining_starts_from_the_run_with_a_fresh_optimizer(pretrained_runs, tmp_path):
    domain = write_corpus(tmp_path / "domain.txt", n_docs=60, seed=4)
    run = pretrained_runs["bert"]
    common = ["--data.init_args.train_files", str(domain), "--trainer.max_steps", "20", "--trainer.val_check_interval", "10",
              "--trainer.log_every_n_steps", "1"]
    cont = run_cli(["fit", *tiny_args("bert", tmp_path / "cont", *common, "--model.init_args.pretrained", str(run))])
    assert cont.datamodule.tokenizer.sha == Tokenizer.load(run / "tokenizer.json").sha  # the run's tokenizer, not a new one
    assert cont.trainer.global_step == 20  # a fresh schedule: steps count from zero
    first_loss = scalars(tmp_path / "cont", "train/loss")[0]
    state = torch.load(tmp_path / "cont" / "last.ckpt", weights_only=True)
    assert state["hyper_parameters"]["pretrained"] is None and state["lit_ptm"]["started_from"].endswith("last.ckpt")
    # From scratch on the same data and tokenizer, the first loss is that of a random model.
    scratch = run_cli(["fit", *tiny_args("bert", tmp_path / "scratch", *common, "--data.init_args.tokenizer", str(run / "tokenizer.json"))])
    assert scratch.trainer.global_step == 20
    assert first_loss < scalars(tmp_path / "scratch", "train/loss")[0] - 0.5
    assert scalars(tmp_path / "scratch", "train/loss")[0] > math.log(cont.datamodule.tokenizer.vocab_size) - 1.5


# -- token classification and extractive QA ---------------------------------------------------------
def test_bio_entities_follow_conlleval():
    from lit_ptm.tasks.tag import bio_entities

    assert bio_entities(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 5)}
    assert bio_entities(["O", "I-ORG", "I-ORG", "I-PER"]) == {("ORG", 1, 2), ("PER", 3, 3)}  # I- without B- starts one
    assert bio_entities(["O", "O"]) == set()


def ner_dataset(path, n, seed):
    rng = random.Random(seed)
    people, places = ["alice", "bob", "carol", "dave"], [["paris"], ["new", "york"], ["rio", "de", "janeiro"], ["oslo"]]
    filler = "the a met in visited from with saw today and then".split()
    lines = []
    for i in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 6)):
            r = rng.random()
            if r < 0.25:
                words.append(rng.choice(people)); tags.append("B-PER")
            elif r < 0.5:
                place = rng.choice(places)
                words.extend(place); tags.extend(["B-LOC"] + ["I-LOC"] * (len(place) - 1))
            else:
                words.append(rng.choice(filler)); tags.append("O")
        lines.append(json.dumps({"id": f"s{i}", "tokens": words, "tags": tags}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_token_classification_reaches_high_entity_f1_and_predicts_word_tags(pretrained_runs, tmp_path, monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    train, dev = ner_dataset(tmp_path / "train.jsonl", 300, 0), ner_dataset(tmp_path / "dev.jsonl", 60, 1)
    root = tmp_path / "ner"
    args = ["--config", "configs/finetune/tag.yaml", "--model.init_args.pretrained", str(pretrained_runs["bert"]),
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.init_args.optim.lr", "1e-3", "--model.init_args.optim.warmup_steps", "10", "--data.init_args.batch_size", "16",
            "--data.init_args.max_length", "64", "--data.init_args.train_file", str(train), "--data.init_args.val_file", str(dev)]
    cli = run_cli(["fit", *args, "--trainer.max_epochs", "8"])
    assert cli.model.labels[0] == "O" and set(cli.model.labels) == {"O", "B-PER", "B-LOC", "I-LOC"}
    assert cli.trainer.callback_metrics["val/f1"].item() > 0.9
    assert {"val/precision", "val/recall"} <= set(cli.trainer.callback_metrics)
    unlabelled = tmp_path / "words.jsonl"
    rows = [json.loads(line) for line in dev.read_text().splitlines()[:10]]
    unlabelled.write_text("".join(json.dumps({"id": r["id"], "tokens": r["tokens"]}) + "\n" for r in rows))
    run_cli(["predict", *args, "--data.init_args.predict_file", str(unlabelled), "--ckpt_path", str(root / "last.ckpt")])
    predictions = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert [len(p["tags"]) for p in predictions] == [len(r["tokens"]) for r in rows]  # one tag per word, not per token
    assert sum(p["tags"] == r["tags"] for p, r in zip(predictions, rows)) >= 8


def qa_dataset(path, n, seed):
    """Contexts of filler text holding two facts, "the colour is <colour> ." and "the size is <size> .",
    at random places (often longer than one window); the question asks for one of them."""
    rng = random.Random(seed)
    filler = "the a of to is value object function module return with for and this that".split()
    answers = {"colour": ["red", "blue", "green", "yellow", "purple", "orange"], "size": ["big", "small", "tiny", "huge", "large"]}
    lines = []
    for i in range(n):
        gap = lambda: " ".join(rng.choice(filler) for _ in range(rng.randint(0, 25)))  # noqa: E731
        facts = {key: rng.choice(values) for key, values in answers.items()}
        first, second = rng.sample(sorted(facts), 2)
        context = f"{gap()} the {first} is {facts[first]} . {gap()} the {second} is {facts[second]} . {gap()}".strip()
        key = rng.choice(sorted(facts))
        start = context.index(f"the {key} is {facts[key]} .") + len(f"the {key} is ")
        lines.append(json.dumps({"id": f"q{i}", "question": f"what {key} ?", "context": context,
                                 "answers": {"text": [facts[key]], "answer_start": [start]}}))
    path.write_text("\n".join(lines) + "\n")
    return path


def qa_args(run, root, train, dev, *extra):
    return ["--config", "configs/finetune/qa.yaml", "--model.init_args.pretrained", str(run),
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.init_args.optim.lr", "3e-3", "--model.init_args.optim.warmup_steps", "20",
            "--data.init_args.max_length", "48", "--data.init_args.stride", "16",
            "--data.init_args.train_file", str(train), "--data.init_args.val_file", str(dev), *extra]


def test_extractive_qa_over_windows_reaches_high_exact_match(pretrained_runs, tmp_path, monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    train, dev = qa_dataset(tmp_path / "train.jsonl", 400, 0), qa_dataset(tmp_path / "dev.jsonl", 60, 1)
    root = tmp_path / "qa"
    args = qa_args(pretrained_runs["bert"], root, train, dev, "--data.init_args.batch_size", "16")
    cli = run_cli(["fit", *args, "--trainer.max_epochs", "10"])
    windows_per_example = len(cli.datamodule.datasets["val"]) / 60
    assert windows_per_example > 1.3  # many contexts are longer than a window: answers are found across windows
    assert cli.trainer.callback_metrics["val/exact_match"].item() > 75  # chance: well under 5%
    assert cli.trainer.callback_metrics["val/f1"].item() >= cli.trainer.callback_metrics["val/exact_match"].item()
    tested = run_cli(["test", *args, "--data.init_args.test_file", str(dev), "--ckpt_path", str(root / "last.ckpt")])
    assert tested.trainer.callback_metrics["test/exact_match"].item() > 75
    rows = [json.loads(line) for line in dev.read_text().splitlines()[:12]]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": r["id"], "question": r["question"], "context": r["context"]}) + "\n" for r in rows))
    run_cli(["predict", *args, "--data.init_args.predict_file", str(questions), "--ckpt_path", str(root / "last.ckpt")])
    predictions = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == [r["id"] for r in rows]
    assert sum(p["prediction"] == r["answers"]["text"][0] for p, r in zip(predictions, rows)) >= 8


def test_extractive_qa_under_ddp_gathers_every_window(pretrained_runs, tmp_path, cache_dir):
    """Two processes each see half of the windows; an example's best span is chosen over both ranks'
    windows, so exact match is as high as in one process (were it not, about half would be missing)."""
    from conftest import run_module
    from test_ddp import loopback_env

    train, dev = qa_dataset(tmp_path / "train.jsonl", 400, 0), qa_dataset(tmp_path / "dev.jsonl", 60, 1)
    root = tmp_path / "qa-ddp"
    args = qa_args(pretrained_runs["bert"], root, train, dev, "--data.init_args.batch_size", "8", "--trainer.accelerator", "cpu",
                   "--trainer.strategy", "ddp", "--trainer.devices", "2")
    r = run_module(["fit", *args, "--trainer.max_epochs", "10"], env=loopback_env(cache_dir))
    assert r.returncode == 0, r.stderr[-4000:]
    assert list(scalars(root, "val/exact_match").values())[-1] > 75
    # predict under DDP writes per-rank files (QA gathers every answer on rank 0), and a second predict refuses
    # to overwrite them.
    predict = ["predict", *args, "--data.init_args.predict_file", str(dev), "--ckpt_path", str(root / "last.ckpt")]
    r = run_module(predict, env=loopback_env(cache_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    assert len((root / "predictions.rank0.jsonl").read_text().splitlines()) == 60
    r = run_module(predict, env=loopback_env(cache_dir))
    assert r.returncode == 2 and "predictions.rank0.jsonl exists; `predict` would overwrite it" in r.stderr, r.stderr[-3000:]


def test_train_examples_is_a_seeded_subset_in_file_order(tmp_path):
    from lit_ptm.data.corpus import CorpusError
    from lit_ptm.tasks import FinetuneDataModule
    from lit_ptm.tasks.records import read_records

    records = read_records(keyword_dataset(tmp_path / "train.jsonl", 50, 0), "auto")
    pick = lambda seed, n=20: [r["id"] for r in FinetuneDataModule(train_examples=n, seed=seed)._subset(records)]  # noqa: E731
    ids = pick(1)
    assert len(ids) == len(set(ids)) == 20 and ids == pick(1) and ids != pick(2)
    order = [r["id"] for r in records]
    assert ids == sorted(ids, key=order.index)
    assert len(pick(1, 50)) == 50
    with pytest.raises(CorpusError, match="data.train_examples=51 exceeds the 50 records"):
        pick(1, 51)
    with pytest.raises(ValueError, match="data.train_examples=0"):
        FinetuneDataModule(train_examples=0)


@pytest.mark.parametrize("task", ["classify", "tag"])
def test_a_training_subset_keeps_the_whole_files_label_set(task, pretrained_runs, tmp_path):
    """One training record cannot show every class: the label set (the head's outputs, and what val/test
    labels may be) still comes from the whole training file."""
    from types import SimpleNamespace

    from lit_ptm.nn import ModelConfig
    from lit_ptm.tasks import FinetuneDataModule, SequenceClassification, TokenClassification

    files = keyword_dataset(tmp_path / "train.jsonl", 40, 0) if task == "classify" else ner_dataset(tmp_path / "train.jsonl", 40, 0)
    data = FinetuneDataModule(train_file=str(files), val_file=str(files), tokenizer=str(pretrained_runs["bert"] / "tokenizer.json"),
                              max_length=32, train_examples=1)
    config = ModelConfig(vocab_size=None, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    module = SequenceClassification(config=config) if task == "classify" else TokenClassification(config=config)
    data.trainer = SimpleNamespace(lightning_module=module, is_global_zero=True, default_root_dir=None)
    data.setup("fit")
    assert len(data.datasets["train"]) == 1 and len(data.datasets["val"]) == 40
    expected = ["files", "network", "text"] if task == "classify" else ["O", "B-LOC", "I-LOC", "B-PER"]
    assert module.labels == expected


def test_a_resumed_finetuning_run_with_dropout_is_the_run_it_continues(pretrained_runs, tmp_path, monkeypatch):
    """4 steps, then resumed to 8, with dropout in the stack and the head: the same losses as 8 straight
    (fine-tuning checkpoints keep the RNG state, as pretraining's do)."""
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    train, dev = keyword_dataset(tmp_path / "train.jsonl", 200, 0), keyword_dataset(tmp_path / "dev.jsonl", 40, 1)
    common = ["--data.init_args.train_file", str(train), "--data.init_args.val_file", str(dev), "--trainer.limit_val_batches", "0",
              "--model.init_args.classifier_dropout", "0.1", "--model.init_args.config.dropout", "0.1",
              "--model.init_args.optim.schedule", "constant", "--trainer.log_every_n_steps", "1"]
    straight, more = tmp_path / "straight", tmp_path / "more"
    run_cli(["fit", *finetune_args(pretrained_runs["bert"], straight, *common, "--trainer.max_steps", "8")])
    run_cli(["fit", *finetune_args(pretrained_runs["bert"], more, *common, "--trainer.max_steps", "4")])
    run_cli(["fit", *finetune_args(pretrained_runs["bert"], more, *common, "--trainer.max_steps", "8"),
             "--ckpt_path", str(more / "last.ckpt")])
    a, b = scalars(straight, "train/loss"), scalars(more, "train/loss")
    assert sorted(a) == sorted(b) == list(range(8))
    for step in range(4, 8):
        assert a[step] == pytest.approx(b[step], abs=1e-6), (step, a[step], b[step])


@pytest.mark.parametrize("share", ["none", "all", "attention", "ffn"])
def test_layer_decay_gives_shared_layers_the_rate_of_the_deepest_block_using_them(share):
    from lit_ptm.nn import ModelConfig
    from lit_ptm.tasks import SequenceClassification

    config = ModelConfig(vocab_size=120, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64, share=share)
    task = SequenceClassification(config=config, labels=["a", "b"], layer_decay=0.5)
    task.configure_model()
    scales = {name: task.lr_scale(name) for name, _ in task.named_parameters()}
    assert scales["transformer.embeddings.tokens.weight"] == 0.5 ** 4 and scales["head.out.weight"] == 1.0
    top = 0.5  # block L of L
    assert scales["transformer.blocks.0.attention.qkv.weight"] == (top if share in ("all", "attention") else 0.5 ** 3)
    assert scales["transformer.blocks.0.ffn.up.weight"] == (top if share in ("all", "ffn") else 0.5 ** 3)
    if share != "all":  # the sub-layer each block keeps of its own follows its depth
        unshared = "attention.qkv" if share == "ffn" else "ffn.up"
        assert scales[f"transformer.blocks.2.{unshared}.weight"] == top
