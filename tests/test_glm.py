"""GLM (lit_ptm.objectives.GLM, data.collate.GLMCollator): blank infilling as the paper lays it out,
what Part A and Part B see on the model, blank filling with and without the cache, the recipe."""

import math

import pytest
import torch

from conftest import long_windows, run_cli, run_module, tiny_args
from lit_ptm.data.collate import GLMCollator, SpanLengths
from lit_ptm.data.collate.glm import VARIANTS
from lit_ptm.errors import ConfigError
from lit_ptm.generate import BlankFiller, GenerationConfig
from lit_ptm.nn import ModelConfig
from lit_ptm.objectives import GLM
import test_collate_seq2seq
from test_collate_seq2seq import draw

data = test_collate_seq2seq.data  # the fixture: a tokenizer and DOC-SENTENCES windows of 128 tokens
ONLY = {"token": (1.0, 0.0, 0.0), "sentence": (0.0, 1.0, 0.0), "document": (0.0, 0.0, 1.0)}


@pytest.fixture(scope="module")
def windows(data):
    """A tokenizer and test_collate_seq2seq's DOC-SENTENCES windows, keyed as WindowDataset keys them."""
    tok, sentence_windows = data
    return tok, draw(sentence_windows)


def real_rows(batch):
    """Per row: (its real length, |A|)."""
    real = batch.get("attention_mask", torch.ones_like(batch["input_ids"], dtype=torch.bool))
    return list(zip(real.sum(1).tolist(), batch["prefix_length"].tolist()))


def original_spans(ids, span_id):
    """Per row, the selected spans' tokens in position order."""
    return [[ids[b][span_id[b] == k].tolist() for k in range(1, int(span_id[b].max()) + 1)] for b in range(len(ids))]


def check_layout(batch, samples, spans, ids, variant):
    """Part A is the window with each span one blank; Part B is a permutation of the spans, each
    [SOP] x1..xl predicting x1..xl [EOP]; 2D positions; labels only on Part B."""
    blank = {"token": ids.mask, "sentence": ids.smask, "document": ids.gmask}[variant]
    reordered = 0
    for b, (n, a) in enumerate(real_rows(batch)):
        window = samples[b]["ids"].tolist()
        inp, lab = batch["input_ids"][b, :n].tolist(), batch["labels"][b, :n].tolist()
        pos, blk = batch["position_ids"][b, :n].tolist(), batch["block_position_ids"][b, :n].tolist()
        assert n == len(window) + 2 * len(spans[b])  # |A| + |B| = n + 2 spans
        # Part A: positions 0..|A|-1, block 0, no labels; its blanks are the spans, in order.
        assert pos[:a] == list(range(a)) and blk[:a] == [0] * a and lab[:a] == [-100] * a
        blanks = [i for i in range(a) if inp[i] == blank]
        assert len(blanks) == len(spans[b])
        # Part B: split at [SOP]; each piece is one span, at its blank's position, block 1..l+1.
        starts = [i for i in range(a, n) if inp[i] == ids.sop]
        assert starts[0] == a
        pieces = []
        for s, e in zip(starts, starts[1:] + [n]):
            tokens = inp[s + 1 : e]
            pieces.append(tokens)
            assert lab[s:e] == tokens + [ids.eop]
            assert blk[s:e] == list(range(1, e - s + 1))
            assert len(set(pos[s:e])) == 1 and inp[pos[s]] == blank
            k = blanks.index(pos[s])  # the blank this span fills is the k-th: it is the k-th span
            assert tokens == spans[b][k]
        assert sorted(pieces) == sorted(spans[b])
        reordered += pieces != spans[b]
        # Part A with its blanks filled back is the window.
        filled = [t for i in range(a) for t in (spans[b][blanks.index(i)] if i in blanks else [inp[i]])]
        assert filled == window
    return reordered


def test_token_spans_are_separated_poisson_lengths_covering_15_percent(windows):
    tok, _ = windows
    collator = GLMCollator(tok.ids, seed=0, probabilities=ONLY["token"])
    samples = long_windows(tok, 64, length=512)
    ids, span_id, _ = collator.spans(samples, "token")
    lengths = []
    for b in range(len(ids)):
        text = 510
        covered = int((span_id[b] > 0).sum())
        assert abs(covered / text - 0.15) <= 0.01
        # Spans never touch: between two spans there is an unselected token.
        selected = span_id[b] > 0
        changes = span_id[b][1:] != span_id[b][:-1]
        assert not (selected[1:] & selected[:-1] & changes).any()
        lengths += torch.bincount(span_id[b])[1:].tolist()
    assert max(lengths) <= 39 and min(lengths) >= 1
    expected = SpanLengths("poisson", max_n=39, min_n=1, mean=3.0).probabilities().double()
    observed = torch.bincount(torch.tensor(lengths), minlength=40)[1:].double() / len(lengths)
    assert (observed - expected).abs().sum() / 2 < 0.05, observed[:8]  # total variation
    mean = (torch.arange(1, 40) * expected).sum().item()  # 3 / (1 - e^-3) = 3.157
    assert abs(sum(lengths) / len(lengths) - mean) < 0.15


@pytest.mark.parametrize("variant", VARIANTS)
def test_parts_a_and_b_positions_and_labels(windows, variant):
    tok, samples = windows
    collator = GLMCollator(tok.ids, seed=3, probabilities=ONLY[variant])
    batch = collator(samples[:64])
    ids, span_id, _ = collator.spans(samples[:64], variant)
    spans = original_spans(ids, span_id)
    reordered = check_layout(batch, samples[:64], spans, tok.ids, variant)
    if variant != "document":  # one span a row: nothing to shuffle
        assert reordered > 10  # Part B's order is random, not the text's
    assert batch["num_tokens"] == sum(n for n, _ in real_rows(batch))


def test_sentence_blanks_are_whole_sentences_covering_at_least_15_percent(windows):
    tok, samples = windows
    collator = GLMCollator(tok.ids, seed=1, probabilities=ONLY["sentence"])
    ids, span_id, _ = collator.spans(samples, "sentence")
    for b, s in enumerate(samples):
        n = len(s["ids"])
        sentence, spans = s["sentence"], span_id[b, :n]
        text = n - 2
        covered = int((spans > 0).sum())
        assert covered >= 0.15 * text - 0.5  # round(0.15 n) at least
        for k in range(1, int(spans.max()) + 1):
            units = sentence[spans == k].unique()
            assert len(units) == 1 and torch.equal(spans[sentence == units[0]], torch.full_like(spans[sentence == units[0]], k))
        # No more than needed: without the last sentence taken (in random order, so at most the largest)
        # the budget would not be met.
        sizes = [int((spans == k).sum()) for k in range(1, int(spans.max()) + 1)]
        assert covered - max(sizes) < round(0.15 * text)


def test_document_blank_is_one_suffix_of_half_to_all_but_two(windows):
    tok, samples = windows
    collator = GLMCollator(tok.ids, seed=2, probabilities=ONLY["document"])
    ids, span_id, _ = collator.spans(samples, "document")
    ks = []
    for b, s in enumerate(samples):
        n = len(s["ids"]) - 2  # the text between [CLS] and [SEP]
        row = span_id[b, : n + 2]
        k = int((row > 0).sum())
        assert row.max() == 1 and bool((row[n + 2 - 1 - k : n + 1] == 1).all()) and row[n + 1] == 0  # ends the text
        assert math.ceil(n / 2) <= k <= max(n - 2, math.ceil(n / 2))
        ks.append(k / n)
    assert min(ks) < 0.6 and max(ks) > 0.9  # spread over the range


def test_an_unknown_token_in_the_text_is_text_to_every_variant(windows):
    """[UNK] (a rare character) is special to the tokenizer but part of the text: the selectors take the text as
    one run, so a [gMASK] suffix stays one span, token spans reach the text's end, and a one-sentence window
    holding an [UNK] is still blanked (a batch of only such rows once had nothing to predict)."""
    tok, samples = windows
    ids = tok.ids
    text = [40, 41, ids.unk, 42, 43, 44, 45, 46, 47, ids.unk, 48, 49]
    sample = {"ids": torch.tensor([ids.cls, *text, ids.sep]), "word_start": torch.ones(len(text) + 2, dtype=torch.bool),
              "document": torch.zeros(len(text) + 2, dtype=torch.long), "sentence": torch.tensor([0] + [1] * len(text) + [2]),
              "epoch": 0}
    rows = [{**sample, "index": i} for i in range(200)]
    reached_end = 0
    for variant in VARIANTS:
        collator = GLMCollator(ids, seed=5, probabilities=ONLY[variant])
        _, span_id, _ = collator.spans(rows, variant)
        assert (span_id[:, 0] == 0).all() and (span_id[:, -1] == 0).all()  # never the frame
        if variant == "document":  # one suffix, whole
            for row in span_id:
                k = int((row > 0).sum())
                assert row.max() == 1 and (row[len(text) + 1 - k : len(text) + 1] == 1).all()
        if variant == "token":
            reached_end = int((span_id[:, len(text)] > 0).sum())  # the last text token is blanked in some rows
        assert (collator(rows[:1])["labels"] != -100).any()  # a lone row always has something to predict
    assert reached_end > 0


def test_variants_mix_per_batch_and_batches_are_a_function_of_seed_epoch_index(windows):
    tok, samples = windows
    collator = GLMCollator(tok.ids, seed=0)  # 0.5 / 0.3 / 0.2
    drawn = [collator.variant([{"epoch": e, "index": i}]) for e in range(4) for i in range(0, 1000, 2)]
    for variant, p in zip(VARIANTS, (0.5, 0.3, 0.2)):
        assert abs(drawn.count(variant) / len(drawn) - p) < 0.04, variant
    batch = samples[8:16]
    first, again = collator(batch), GLMCollator(tok.ids, seed=0)(batch)
    assert first.keys() == again.keys() and all(torch.equal(torch.as_tensor(first[k]), torch.as_tensor(again[k])) for k in first)
    other_epoch = collator([{**s, "epoch": 1} for s in batch])
    assert not torch.equal(first["input_ids"], other_epoch["input_ids"]) or first["input_ids"].shape != other_epoch["input_ids"].shape


def tiny_glm(vocab: int = 400) -> GLM:
    config = ModelConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                         max_position_embeddings=160, norm_position="pre", final_norm=True, embedding_norm=False,
                         lm_head_transform=False, lm_head_bias=False, block_position_embedding=True, dropout=0.0,
                         attention_dropout=0.0)
    torch.manual_seed(0)
    model = GLM(config)
    model.configure_model()
    return model.eval()


def test_part_a_never_sees_part_b_and_part_b_never_sees_later_part_b(windows):
    tok, samples = windows
    model = tiny_glm(tok.vocab_size)
    batch = GLMCollator(tok.ids, seed=5, probabilities=ONLY["token"])(samples[:4])
    hidden = model.encode(batch).hidden
    for b, (n, a) in enumerate(real_rows(batch)):
        for cut in (a, a + (n - a) // 2, n - 1):  # change every Part B token from ``cut`` on
            changed = {**batch, "input_ids": batch["input_ids"].clone()}
            changed["input_ids"][b, cut:n] = (changed["input_ids"][b, cut:n] + 17) % tok.vocab_size
            other = model.encode(changed).hidden
            assert torch.allclose(hidden[b, :cut], other[b, :cut], atol=1e-6)  # Part A, earlier Part B: unchanged
            assert not torch.allclose(hidden[b, cut:n], other[b, cut:n])
        changed = {**batch, "input_ids": batch["input_ids"].clone()}
        changed["input_ids"][b, 1] = (changed["input_ids"][b, 1] + 17) % tok.vocab_size
        assert not torch.allclose(hidden[b, n - 1], model.encode(changed).hidden[b, n - 1])  # Part B reads Part A


def test_blank_filling_with_the_cache_equals_without(windows):
    tok, _ = windows
    ids = tok.ids
    model = tiny_glm(tok.vocab_size)
    filler = BlankFiller(model, ids)
    words = tok.hf.encode("w1b w2cc w3ddd w4e", add_special_tokens=False).ids
    prompts = [[ids.cls, *words[:2], ids.mask, *words[2:], ids.mask, ids.sep],
               [ids.cls, ids.smask, *words, ids.gmask, ids.sep]]
    for config in (GenerationConfig(max_new_tokens=6), GenerationConfig(max_new_tokens=5, temperature=1.0, seed=3)):
        cached = filler.generate(prompts, config)
        recomputed = filler.generate(prompts, GenerationConfig(**{**config.__dict__, "use_cache": False}))
        assert cached == recomputed
    # The blanks are filled in place; the frame is dropped.
    assert cached[0][:2] == words[:2] and cached[1][-1] != ids.sep
    with pytest.raises(ConfigError, match="has none"):
        filler.generate([[ids.cls, *words, ids.sep]], GenerationConfig())
    with pytest.raises(ConfigError, match="beam"):
        filler.generate(prompts, GenerationConfig(num_beams=2))


def test_greedy_fill_is_the_argmax_of_the_full_forward(windows):
    """One blank, greedy: each written token is the argmax of the model's forward over [A | B so far]."""
    tok, _ = windows
    ids = tok.ids
    model = tiny_glm(tok.vocab_size)
    words = tok.hf.encode("w1b w2cc w3ddd", add_special_tokens=False).ids
    prompt = [ids.cls, *words, ids.mask, ids.sep]
    filled = BlankFiller(model, ids).generate([prompt], GenerationConfig(max_new_tokens=4))[0]
    span = filled[len(words):]
    seq, pos, blk = list(prompt), list(range(len(prompt))), [0] * len(prompt)
    for step, token in enumerate([ids.sop, *span]):
        seq, pos, blk = seq + [token], pos + [len(words) + 1], blk + [step + 1]
        logits = model(torch.tensor([seq]), torch.tensor([pos]), torch.tensor([blk]), torch.tensor([len(prompt)]))
        expected = int(logits[0, -1].argmax())
        if step < len(span):
            assert span[step] == expected
        else:
            assert len(span) == 4 or expected == ids.eop


def test_bad_settings_are_refused_naming_the_key():
    good = ModelConfig(block_position_embedding=True)
    for kwargs, key in (({"mask_ratio": 0.0}, "model.mask_ratio"), ({"poisson_mean": 0.0}, "model.poisson_mean"),
                        ({"max_span_length": 0}, "model.max_span_length"), ({"sentence_probability": 1.5}, "model.sentence_probability"),
                        ({"sentence_probability": 0.6, "document_probability": 0.6}, "model.document_probability")):
        with pytest.raises(ConfigError, match=key):
            GLM(good, **kwargs)
    with pytest.raises(ConfigError, match="block_position_embedding"):
        GLM(ModelConfig())


def test_a_run_fills_blanks_from_the_command_line_fine_tunes_on_seq2seq_and_refuses_export(tmp_path, cache_dir, monkeypatch):
    """(The recipe lowering its validation loss is test_cli's, with every recipe's.)"""
    from conftest import ROOT
    from lit_ptm.hf import HFError, export_hf
    from test_seq2seq import args, copy_dataset

    root = tmp_path / "glm"
    run_cli(["fit", *tiny_args("glm", root, "--trainer.max_steps", "20", "--trainer.val_check_interval", "20")])
    printed = run_module(["generate", "--ckpt_path", str(root), "--prompt", "The [MASK] is here. It [gMASK]",
                          "--max_new_tokens", "5"])
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout.strip()
    assert text.startswith("the") and "[MASK]" not in text and "[gMASK]" not in text and "[SEP]" not in text
    refused = run_module(["generate", "--ckpt_path", str(root), "--prompt", "No blank here."])
    assert refused.returncode == 2 and "has none" in refused.stderr
    with pytest.raises(HFError, match="GLM run does not export"):
        export_hf(root, tmp_path / "hf")
    # Sequence to sequence in GLM's layout: [CLS] source [gMASK] [SEP] | [SOP] target -> target [EOP].
    monkeypatch.chdir(ROOT)
    train, dev = copy_dataset(tmp_path / "train.jsonl", 64, 0), copy_dataset(tmp_path / "dev.jsonl", 8, 1)
    cli = run_cli(["fit", *args(root, tmp_path / "s2s", "--data.init_args.train_file", str(train), "--data.init_args.val_file",
                                str(dev), "--trainer.max_epochs", "1")])
    task, ids = cli.model, cli.datamodule.tokenizer.ids
    assert task.glm and not task.encoder_decoder and not task.reads_causally()
    batch = task.collate([{**w, "index": i} for i, w in enumerate(cli.datamodule.datasets["train"].windows[:2])])
    a = int(batch["prefix_length"][0])
    row, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert row[0] == ids.cls and row[a - 2 : a + 1] == [ids.gmask, ids.sep, ids.sop] and labels[:a] == [-100] * a
    t = labels.index(ids.eop) - a + 1  # the target and its [EOP]
    assert row[a + 1 : a + t] == labels[a : a + t - 1]
    assert batch["position_ids"][0, a : a + t].tolist() == [a - 2] * t and batch["block_position_ids"][0, a : a + t].tolist() == list(range(1, t + 1))
    assert "val/rougeL" in cli.trainer.callback_metrics
    # Beam search is refused when the run is read, not when the first evaluation starts.
    with pytest.raises(ValueError, match="model.num_beams=2: a GLM run fills its .gMASK. greedily"):
        run_cli(["fit", *args(root, tmp_path / "beams", "--data.init_args.train_file", str(train), "--data.init_args.val_file",
                              str(dev), "--model.init_args.num_beams", "2")])
