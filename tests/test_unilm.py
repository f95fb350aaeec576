"""UniLM: the collator's statistics and sub-task draw, the attention patterns (as masks and on the model),
per-task logging through the CLI, generation in both modes with and without the KV cache."""

import numpy as np
import pytest
import torch

from conftest import run_cli, scalars, tiny_args
from lit_ptm.data.collate import UniLMCollator
from lit_ptm.data.collate import mask_budget, select_spans
from lit_ptm.data.collate.unilm import NGRAMS, SEGMENTS, TASKS
from lit_ptm.errors import ConfigError
from lit_ptm.generate import GenerationConfig, Generator
from lit_ptm.nn import AttentionMask, ModelConfig
from lit_ptm.objectives import TaskMix, UniLM
from lit_ptm.tokenizer import SpecialIds

IDS = SpecialIds(vocab_size=60, pad=0, unk=1, cls=2, sep=3, mask=4, bos=None, eos=5, special=(0, 1, 2, 3, 4, 5))
TINY = ModelConfig(vocab_size=60, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64,
                   type_vocab_size=6, dropout=0.0, attention_dropout=0.0)


def pairs(n, epoch=0, start=0, length=(20, 60), seed=0, documents=None):
    """SOP-packing samples of random regular tokens (A and B of random lengths, label 0), each row its own
    document unless ``documents`` says."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        la, lb = (int(torch.randint(*length, (1,), generator=g)) for _ in range(2))
        a, b = torch.randint(6, 60, (la,), generator=g), torch.randint(6, 60, (lb,), generator=g)
        out.append({"a": a, "b": b, "a_word_start": torch.ones(la, dtype=torch.bool), "b_word_start": torch.ones(lb, dtype=torch.bool),
                    "label": 0, "max_tokens": 125, "epoch": epoch, "index": start + i,
                    "document": start + i if documents is None else documents[i]})
    return out


def test_task_mix_selection_rate_and_ngrams_over_many_batches():
    collate = UniLMCollator(IDS, seed=3)
    samples = pairs(8 * 1200)
    counts, selected, candidates = torch.zeros(4), 0, 0
    for k in range(0, len(samples), 8):
        batch = collate(samples[k : k + 8])
        counts[batch["task"]] += 1
        ids = batch["input_ids"]
        labels = batch["labels"]
        real = batch.get("attention_mask", torch.ones_like(ids, dtype=torch.bool))
        candidates += int((real & (labels != -100)).sum() + (real & (ids > 5) & (labels == -100)).sum())
        chosen = labels != -100
        selected += int(chosen.sum())
        # The segment ids of the batch's sub-task; NSP labels on bidirectional batches only; the seq2seq prefix.
        a, b = SEGMENTS[TASKS[batch["task"]]]
        types = batch["token_type_ids"][real]
        assert set(types.tolist()) <= {a, b}
        assert ("pair_labels" in batch) == (TASKS[batch["task"]] == "bidirectional")
        if TASKS[batch["task"]] == "seq2seq":
            first_sep = (ids == IDS.sep) | ((labels == IDS.sep) & chosen)
            assert torch.equal(batch["prefix_length"], first_sep.float().argmax(1) + 1)
    share = counts / counts.sum()
    assert torch.allclose(share, torch.tensor([1 / 3, 1 / 6, 1 / 6, 1 / 3]), atol=0.04), share
    assert selected / candidates == pytest.approx(0.15, abs=0.01)


def test_selections_are_80_percent_tokens_10_bigrams_10_trigrams():
    """The collator's span lengths (select_spans with NGRAMS; touching spans keep their own ids)."""
    g = torch.Generator().manual_seed(0)
    candidate = torch.ones(64, 512, dtype=torch.bool)
    noise = torch.rand(2, 64, 512, generator=g)
    span_id = select_spans(candidate, mask_budget(candidate, 0.15), noise[0], noise[1], NGRAMS).span_id
    sizes = torch.cat([torch.bincount(row)[1:] for row in span_id])  # tokens per span
    share = torch.bincount(sizes, minlength=4)[1:4].float() / len(sizes)
    assert torch.allclose(share, torch.tensor([0.8, 0.1, 0.1]), atol=0.02), share
    assert (span_id > 0).float().mean() == pytest.approx(0.15, abs=0.002)


def test_the_task_is_a_function_of_seed_epoch_and_the_first_index():
    collate = UniLMCollator(IDS, seed=3)
    samples = pairs(8)
    batch = collate(samples)
    again = UniLMCollator(IDS, seed=3)(samples)  # a resumed run, another worker
    assert batch["task"] == again["task"] and torch.equal(batch["input_ids"], again["input_ids"])
    tasks = {UniLMCollator(IDS, seed=3)(pairs(8, start=s))["task"] for s in range(0, 400, 8)}
    assert tasks == {0, 1, 2, 3}
    epochs = [UniLMCollator(IDS, seed=3)(pairs(8, epoch=e))["task"] for e in range(40)]
    assert len(set(epochs)) > 1


def unmasked(batch, sep=IDS.sep):
    """Each row's (A, B) token lists, the masking undone."""
    ids = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    out = []
    for row in ids.tolist():
        seps = [j for j, t in enumerate(row) if t == sep]
        out.append((row[1 : seps[0]], row[seps[0] + 1 : seps[1]]))
    return out


def within(part, whole) -> bool:
    """``part`` is a contiguous run of ``whole``."""
    return any(whole[k : k + len(part)] == part for k in range(len(whole) - len(part) + 1))


@pytest.fixture(scope="module")
def sop_windows(tmp_path_factory):
    from conftest import corpus_store
    from lit_ptm.data.sampling import PairWindows, WindowDataset

    store, tok = corpus_store(tmp_path_factory.mktemp("unilm-pairs"), n_docs=60, sentences=(2, 10))
    return store, tok.ids, WindowDataset(PairWindows(store, np.arange(store.num_docs), 64, tok.ids, task="sop", seed=1))


@pytest.mark.parametrize("task", ["l2r", "r2l", "seq2seq"])
def test_the_causal_sub_tasks_read_contiguous_pairs(sop_windows, task):
    """UniLM's packing is SOP's: B follows A in A's document; the collator keeps them so (no swap, no NSP)."""
    store, ids, windows = sop_windows
    plan = windows.windows.plan(0)
    assert (plan[:, 1] == plan[:, 2]).all() and (plan[:, 4] == 0).all()  # b0 == a1: B starts where A ends
    docs = np.searchsorted(store.doc_offsets, plan[:, [0, 3]] - [0, 1], side="right") - 1
    assert (docs[:, 0] == docs[:, 1]).all()  # ... within A's document
    mix = [0.0] * 4
    mix[TASKS.index(task)] = 1.0
    collate = UniLMCollator(ids, seed=0, mix=tuple(mix))
    for start in range(0, 96, 16):
        samples = [windows[(0, k)] for k in range(start, start + 16)]
        batch = collate(samples)
        assert TASKS[batch["task"]] == task and "pair_labels" not in batch
        for (a, b), s in zip(unmasked(batch, ids.sep), samples):
            assert within(a, s["a"].tolist()) and within(b, s["b"].tolist())


def test_bidirectional_batches_take_half_their_bs_from_other_rows():
    """NSP built per batch: ~50% NotNext; a NotNext B is another row's B, from another document; an IsNext
    B is the row's own; a function of (seed, epoch, the first index); rows with no other document keep theirs."""
    collate = UniLMCollator(IDS, seed=5, mix=(1, 0, 0, 0))
    labels = []
    for start in range(0, 8 * 300, 8):
        samples = pairs(8, start=start, documents=[start + i // 2 for i in range(8)])  # two rows a document
        batch = collate(samples)
        labels += batch["pair_labels"].tolist()
        for (a, b), s, label in zip(unmasked(batch), samples, batch["pair_labels"].tolist()):
            assert a == s["a"].tolist()
            donors = [o for o in samples if o["b"].tolist() == b]
            assert len(donors) == 1 and (donors[0] is s) == (label == 0)
            assert label == 0 or donors[0]["document"] != s["document"]
        if start == 0:
            again = UniLMCollator(IDS, seed=5, mix=(1, 0, 0, 0))(samples)
            assert torch.equal(again["pair_labels"], batch["pair_labels"]) and torch.equal(again["input_ids"], batch["input_ids"])
    assert sum(labels) / len(labels) == pytest.approx(0.5, abs=0.03)
    epochs = {tuple(collate(pairs(8, epoch=e))["pair_labels"].tolist()) for e in range(10)}
    assert len(epochs) > 1
    alone = collate(pairs(8, documents=[7] * 8))  # one document: no donor
    assert alone["pair_labels"].tolist() == [0] * 8
    assert collate(pairs(1))["pair_labels"].tolist() == [0]


def test_mix_is_validated_by_key():
    with pytest.raises(ConfigError, match="model.mix.l2r"):
        TaskMix(l2r=-0.1)
    with pytest.raises(ConfigError, match="sums to"):
        TaskMix(bidirectional=0.5)
    with pytest.raises(ConfigError, match="type_vocab_size >= 6"):
        UniLM(ModelConfig(type_vocab_size=2))
    only = UniLMCollator(IDS, seed=0, mix=TaskMix(0, 0, 1, 0).probabilities())
    assert {only(pairs(4, start=s))["task"] for s in range(0, 80, 4)} == {TASKS.index("r2l")}


def dense(mask, L):
    return mask.dense(L, L).reshape(-1, L, L)  # (B or 1, L, L)


def test_seq2seq_source_never_sees_the_target_and_r2l_mirrors_l2r():
    L, prefix = 10, torch.tensor([4, 7])
    padding = torch.ones(2, L, dtype=torch.bool)
    padding[1, 9:] = False
    s2s = dense(AttentionMask(padding=padding, causal=True, prefix_length=prefix), L)
    for b, p in enumerate(prefix.tolist()):
        n = int(padding[b].sum())
        assert not s2s[b, :p, p:].any()  # source rows never see the target
        assert s2s[b, :p, :p].all()  # ... and see the whole source
        for i in range(p, n):  # target rows: the source, earlier target and themselves, nothing later
            assert s2s[b, i, :i + 1].all() and not s2s[b, i, i + 1:].any()
    l2r = dense(AttentionMask(causal=True), L)
    r2l = dense(AttentionMask(anticausal=True), L)
    assert torch.equal(r2l, l2r.flip(-1).flip(-2)) and torch.equal(r2l, l2r.transpose(-1, -2))
    assert AttentionMask(anticausal=True).lower(L, L).kernel == "sdpa-masked"  # never is_causal
    # Right padding under right-to-left: a padding row would see nothing; it sees itself.
    r2l_padded = dense(AttentionMask(padding=padding, anticausal=True), L)
    assert r2l_padded.any(-1).all() and not r2l_padded[1, :9, 9:].any()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    module = UniLM(TINY)
    module.configure_model()
    return module.eval()


@pytest.mark.parametrize("task", TASKS)
def test_no_leakage_on_the_model(model, task):
    """A token a position may not see leaves its output unchanged; one it may see moves it."""
    L, p = 16, 6
    ids = torch.randint(6, 60, (1, L))
    batch = {"input_ids": ids, "token_type_ids": torch.full_like(ids, SEGMENTS[task][1]), "task": TASKS.index(task)}
    if task == "seq2seq":
        batch["prefix_length"] = torch.tensor([p])

    def hidden(changed_at):
        x = ids.clone()
        x[0, changed_at] = (x[0, changed_at] - 5) % 54 + 6
        with torch.no_grad():
            return model.encode({**batch, "input_ids": x}).hidden[0], model.encode(batch).hidden[0]

    moved = lambda at: (lambda a, b: (a - b).abs().amax(-1) > 1e-6)(*hidden(at))  # noqa: E731  (L,) positions that moved
    if task == "bidirectional":
        assert moved(10).all()
    elif task == "l2r":
        assert not moved(10)[:10].any() and moved(10)[10:].all()
    elif task == "r2l":
        assert not moved(5)[6:].any() and moved(5)[:6].all()
    else:
        assert not moved(10)[:10].any() and moved(10)[10:].all()  # a target token: neither source nor earlier target
        assert moved(3).all()  # a source token: every row


@pytest.mark.parametrize("mode", ["l2r", "seq2seq"])
@pytest.mark.parametrize("beams", [1, 3])
def test_generation_with_the_cache_equals_without_it(model, mode, beams):
    gen_model, end, layout = model.generation(mode, IDS)
    gen = Generator(gen_model, end, IDS.pad)
    prompts = [layout([7, 8, 9]), layout([10, 11, 12, 13, 14, 15])]
    config = GenerationConfig(max_new_tokens=8, num_beams=beams, stop_at_eos=False)
    cached = gen.generate(prompts, config)
    assert cached == gen.generate(prompts, GenerationConfig(**{**config.__dict__, "use_cache": False}))
    if beams == 1:  # a batch equals its prompts one by one (left padding, the prefix of each row)
        assert cached == [gen.generate([p], config)[0] for p in prompts]


@pytest.mark.parametrize("mode", ["l2r", "seq2seq"])
def test_each_greedy_token_is_the_training_layouts_prediction(model, mode):
    """Generation reads the model as training laid it out: the prompt (segment a), the new tokens (b) and a
    [MASK] at the position predicted, under the sub-task's attention pattern."""
    gen_model, end, layout = model.generation(mode, IDS)
    prompt = layout([7, 8, 9, 10])
    new = Generator(gen_model, end, IDS.pad).generate([prompt], GenerationConfig(max_new_tokens=4, stop_at_eos=False))[0]
    a, b = SEGMENTS[mode]
    for k in range(4):
        ids = torch.tensor([[*prompt, *new[:k], IDS.mask]])
        types = torch.tensor([[a] * len(prompt) + [b] * (k + 1)])
        batch = {"input_ids": ids, "token_type_ids": types, "task": TASKS.index(mode)}
        if mode == "seq2seq":
            batch["prefix_length"] = torch.tensor([len(prompt)])
        with torch.no_grad():
            logits = model.lm_head(model.encode(batch).hidden[:, -1])
        assert int(logits.argmax()) == new[k]


def test_recipe_logs_each_sub_task_and_generates_from_the_cli(tmp_path, cache_dir, capsys):
    from lit_ptm.generate import main

    root = tmp_path / "unilm"
    run_cli(["fit", *tiny_args("unilm", root, "--trainer.max_steps", "24", "--trainer.val_check_interval", "24",
                               "--trainer.limit_val_batches", "12", "--trainer.log_every_n_steps", "1")])
    for task in TASKS:
        assert scalars(root, f"train/loss_{task}") and scalars(root, f"val/loss_{task}"), task
    for tag in ("train/mlm_loss", "train/nsp_loss", "train/nsp_acc", "val/mlm_loss"):
        assert scalars(root, tag), tag
    for mode in ("l2r", "seq2seq"):
        assert main(["--ckpt_path", str(root), "--prompt", "the import statement", "--max_new_tokens", "5", "--mode", mode]) == 0


def test_one_row_a_device_is_refused_while_nsp_is_in_the_mix(tmp_path, cache_dir):
    """NotNext takes another row's B: at batch size 1 NSP would only ever see IsNext."""
    with pytest.raises(ValueError, match="data.batch_size=1: UniLM's NSP takes a NotNext B from another row"):
        run_cli(["fit", *tiny_args("unilm", tmp_path / "one", "--data.init_args.batch_size", "1", "--trainer.max_steps", "1")])
