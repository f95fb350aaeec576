"""Generation: greedy, sampling and beam search over the KV cache, batched prompts, the subcommand."""

import json

import pytest
import torch

from conftest import run_cli, run_module, tiny_args
from lit_ptm.errors import ConfigError
from lit_ptm.generate import GenerationConfig, Generator
from lit_ptm.nn import ModelConfig
from lit_ptm.objectives import CausalLM, MaskedLM

TINY = ModelConfig(vocab_size=60, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64,
                   dropout=0.0, attention_dropout=0.0, norm_position="pre", final_norm=True, embedding_norm=False)
EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def pattern_model():
    """A tiny GPT trained on the cycle 10, 11, ..., 29, 10, 11, ...: greedy decoding must continue it."""
    torch.manual_seed(0)
    model = CausalLM(config=TINY)
    model.configure_model()
    cycle = torch.arange(10, 30)
    rows = torch.stack([cycle.roll(-s).repeat(3)[:41] for s in range(20)])
    batch = {"input_ids": rows[:, :-1], "labels": rows[:, 1:]}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        model.loss_parts(batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(1)
    model = CausalLM(config=TINY)
    model.configure_model()
    return model.eval()


def test_greedy_continues_a_learned_pattern(pattern_model):
    new = Generator(pattern_model, EOS, PAD).generate([[14, 15, 16, 17]], GenerationConfig(max_new_tokens=12))[0]
    assert new == [18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29]


@pytest.mark.parametrize("config", [GenerationConfig(max_new_tokens=10), GenerationConfig(max_new_tokens=10, temperature=1.0, seed=3),
                                    GenerationConfig(max_new_tokens=10, num_beams=3)], ids=["greedy", "sampling", "beam"])
def test_the_cache_changes_nothing(random_model, config):
    gen = Generator(random_model, EOS, PAD)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    cached = gen.generate(prompts, config)
    uncached = gen.generate(prompts, GenerationConfig(**{**config.__dict__, "use_cache": False}))
    assert cached == uncached and all(len(row) for row in cached)


def test_a_prompt_batch_equals_the_prompts_one_by_one(random_model):
    """Left padding: every prompt's positions start at 0 and nobody attends to the padding."""
    gen = Generator(random_model, None, PAD)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]
    config = GenerationConfig(max_new_tokens=8)
    assert gen.generate(prompts, config) == [gen.generate([p], config)[0] for p in prompts]


def test_beam_size_one_is_greedy_and_wider_beams_score_at_least_as_high(random_model):
    gen = Generator(random_model, None, PAD)
    prompt = [5, 6, 7]
    greedy = gen.generate([prompt], GenerationConfig(max_new_tokens=8))[0]
    assert gen.generate([prompt], GenerationConfig(max_new_tokens=8, num_beams=1))[0] == greedy

    def log_likelihood(new):
        ids = torch.tensor([prompt + new])
        logprobs = torch.log_softmax(random_model(ids), -1)[0, len(prompt) - 1 : -1]
        return logprobs.gather(1, torch.tensor(new)[:, None]).sum().item()

    beam = gen.generate([prompt], GenerationConfig(max_new_tokens=8, num_beams=4, length_penalty=0.0))[0]
    assert len(beam) == 8 and log_likelihood(beam) >= log_likelihood(greedy) - 1e-5


def test_generation_stops_at_eos_and_pads_finished_rows(pattern_model):
    """The learned cycle reaches 29; call 29 the end of text: each row stops right after it."""
    gen = Generator(pattern_model, eos_id=29, pad_id=PAD)
    new = gen.generate([[24, 25], [20, 21, 22]], GenerationConfig(max_new_tokens=15))
    assert new == [[26, 27, 28, 29], [23, 24, 25, 26, 27, 28, 29]]
    assert gen.generate([[24, 25]], GenerationConfig(max_new_tokens=15, num_beams=2))[0] == [26, 27, 28, 29]


def test_sampling_is_reproducible_with_a_seed_and_top_k_or_p_narrow_it(random_model):
    gen = Generator(random_model, None, PAD)
    prompts = [[5, 6, 7]] * 3
    hot = GenerationConfig(max_new_tokens=12, temperature=2.0, seed=7)
    first = gen.generate(prompts, hot)
    assert gen.generate(prompts, hot) == first
    assert len({tuple(r) for r in first}) > 1  # rows draw independently
    assert gen.generate(prompts, GenerationConfig(**{**hot.__dict__, "seed": 8})) != first
    greedy = gen.generate(prompts, GenerationConfig(max_new_tokens=12))
    assert gen.generate(prompts, GenerationConfig(**{**hot.__dict__, "top_k": 1})) == greedy
    assert gen.generate(prompts, GenerationConfig(**{**hot.__dict__, "top_p": 1e-6})) == greedy


def test_bad_settings_and_models_are_refused(random_model):
    with pytest.raises(ConfigError, match="--top_p=1.5"):
        GenerationConfig(top_p=1.5)
    with pytest.raises(ConfigError, match="exceeds the model's 64 positions"):
        Generator(random_model, EOS, PAD).generate([[5] * 60], GenerationConfig(max_new_tokens=10))
    with pytest.raises(ConfigError, match="reads bidirectionally"):
        Generator(MaskedLM(config=TINY), EOS, PAD)


def test_the_generate_subcommand_prints_and_writes_jsonl(tmp_path, cache_dir):
    run = tmp_path / "gpt"
    run_cli(["fit", *tiny_args("gpt", run, "--trainer.max_steps", "4", "--trainer.val_check_interval", "4")])
    printed = run_module(["generate", "--ckpt_path", str(run), "--prompt", "The import statement", "--max_new_tokens", "5",
                          "--no_stop_at_eos"])
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 1, "prompt": "def"}\n{"id": 2, "prompt": "The class"}\n')
    out = tmp_path / "out.jsonl"
    args = ["generate", "--ckpt_path", str(run / "last.ckpt"), "--prompts_file", str(prompts), "--output", str(out),
            "--max_new_tokens", "4", "--num_beams", "2", "--no_stop_at_eos"]
    assert run_module(args).returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2] and all(len(r["completion_ids"]) == 4 for r in rows)
    again = run_module(args)  # never overwrites without --overwrite
    assert again.returncode == 2 and "exists" in again.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    refused = run_module(["generate", "--ckpt_path", str(run), "--prompts_file", str(bad)])
    assert refused.returncode == 2 and f"{bad}:1" in refused.stderr


class _MarkovLM(torch.nn.Module):
    """A fixed bigram model (next-token log-probabilities by the last token), to test search exactly."""

    causal = True

    def __init__(self, probabilities: torch.Tensor):
        super().__init__()
        log_p = (probabilities / probabilities.sum(1, keepdim=True)).log()
        vocab = log_p.size(0)

        class Stack(torch.nn.Module):
            config = ModelConfig(vocab_size=vocab, hidden_size=8, num_heads=1, max_position_embeddings=64)

            def forward(self, ids, mask, position_ids=None, cache=None):
                return type("Out", (), {"hidden": torch.nn.functional.one_hot(ids, vocab).float()})

        class Head(torch.nn.Module):
            output_weight = torch.zeros(1)

            def forward(self, hidden):
                return hidden @ log_p

        self._stack, self.lm_head = Stack(), Head()

    def stack(self):
        return self._stack


def test_beam_search_returns_finished_hypotheses_not_prefixes_cut_short():
    """After token 0: 1 (0.55) or EOS (0.40); after 1: EOS or 3 (0.5 each). With 2 beams both end within
    two steps; the answer is the best finished one, [1, EOS] (mean log-p -0.65) over [EOS] (-0.92), never
    the unfinished prefix [1] that was still running when the second hypothesis ended."""
    V, eos = 5, 4
    p = torch.full((V, V), 1e-6)
    p[0, 1], p[0, eos], p[0, 2] = 0.55, 0.40, 0.05
    for t in (1, 2, 3):
        p[t, 3], p[t, eos] = 0.5, 0.5
    gen = Generator(_MarkovLM(p), eos, 0)
    assert gen.generate([[0]], GenerationConfig(max_new_tokens=5, num_beams=2, use_cache=False))[0] == [1, eos]
    # Without stopping at EOS, greedy runs to max_new_tokens and returns every token, EOS included.
    assert gen.generate([[0]], GenerationConfig(max_new_tokens=4, stop_at_eos=False, use_cache=False))[0] == [1, 3, 3, 3]
    p[3, eos] = 0.9  # now the chain ends: 0 -> 1 -> 3 -> EOS, then whatever follows EOS
    out = Generator(_MarkovLM(p), eos, 0).generate([[0]], GenerationConfig(max_new_tokens=5, stop_at_eos=False, use_cache=False))[0]
    assert len(out) == 5 and out[:2] == [1, 3] and out[2] == eos


# -- encoder-decoders: the source is encoded once, the decoder steps with its cache --------------------
START, END = 1, 3


def copy_batch(g: torch.Generator, n: int = 32) -> dict:
    """Sources of 3-8 tokens; the target is the source, then END; the decoder is fed START, then the target."""
    lengths = torch.randint(3, 9, (n,), generator=g).tolist()
    source, decoder_input, labels = torch.full((n, 8), PAD), torch.full((n, 9), PAD), torch.full((n, 9), -100)
    for b, length in enumerate(lengths):
        tokens = torch.randint(5, 40, (length,), generator=g)
        source[b, :length], labels[b, :length], labels[b, length] = tokens, tokens, END
        decoder_input[b, 0], decoder_input[b, 1 : length + 1] = START, tokens
    return {"input_ids": source, "attention_mask": source != PAD, "decoder_input_ids": decoder_input, "labels": labels}


@pytest.fixture(scope="module", params=["t5", "bart"])
def copy_model(request):
    """A tiny T5-like or BART-like model trained briefly to copy its source (BART learns it; T5 half-way):
    a model whose tokens depend on the source, the position and the tokens before, unlike a random one's."""
    from test_encoder_decoder import BART_LIKE, T5_LIKE

    from lit_ptm.objectives import BART, T5

    torch.manual_seed(0)
    model = T5(config=T5_LIKE) if request.param == "t5" else BART(config=BART_LIKE)
    model.configure_model()
    opt, g = torch.optim.AdamW(model.parameters(), lr=1e-2), torch.Generator().manual_seed(0)
    for _ in range(600):
        model.loss_parts(copy_batch(g)).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


SOURCES = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 20], [14, 15, 16, 17, 18]]  # different lengths: the batch is padded


@pytest.mark.parametrize("config", [GenerationConfig(max_new_tokens=10), GenerationConfig(max_new_tokens=10, temperature=1.0, seed=3),
                                    GenerationConfig(max_new_tokens=10, num_beams=3)], ids=["greedy", "sampling", "beam"])
def test_encoder_decoder_cache_changes_nothing(copy_model, config):
    gen = Generator(copy_model, None, PAD, start_id=START)
    cached = gen.generate(SOURCES, config)
    assert cached == gen.generate(SOURCES, GenerationConfig(**{**config.__dict__, "use_cache": False}))
    assert all(len(row) == 10 for row in cached) and len({tuple(row) for row in cached}) == 3


def test_encoder_decoder_greedy_is_the_argmax_of_the_full_forward_and_a_batch_is_its_rows(copy_model):
    """Each greedy token is the argmax of the model's own teacher-forced logits (the decoder fed its start
    token and the tokens before); padded sources in a batch give what each gives alone (greedy and beams)."""
    gen = Generator(copy_model, END, PAD, start_id=START)
    config = GenerationConfig(max_new_tokens=10)
    batch = gen.generate(SOURCES, config)
    assert batch == [gen.generate([s], config)[0] for s in SOURCES]
    for source, new in zip(SOURCES, batch):
        logits = copy_model(torch.tensor([source]), torch.tensor([[START, *new[:-1]]]))
        assert logits[0].argmax(-1).tolist() == new
    beams = GenerationConfig(max_new_tokens=10, num_beams=3)
    assert gen.generate(SOURCES, beams) == [gen.generate([s], beams)[0] for s in SOURCES]


def test_encoder_decoder_beam_one_is_greedy_and_wider_beams_score_at_least_as_high(copy_model):
    gen = Generator(copy_model, None, PAD, start_id=START)
    source = SOURCES[0]
    greedy = gen.generate([source], GenerationConfig(max_new_tokens=8))[0]
    assert gen.generate([source], GenerationConfig(max_new_tokens=8, num_beams=1))[0] == greedy

    def log_likelihood(new):
        logprobs = torch.log_softmax(copy_model(torch.tensor([source]), torch.tensor([[START, *new[:-1]]])), -1)[0]
        return logprobs.gather(1, torch.tensor(new)[:, None]).sum().item()

    beam = gen.generate([source], GenerationConfig(max_new_tokens=8, num_beams=4, length_penalty=0.0))[0]
    assert len(beam) == 8 and log_likelihood(beam) >= log_likelihood(greedy) - 1e-5


def test_encoder_decoder_stops_at_its_end_token_and_checks_its_lengths(copy_model):
    gen = Generator(copy_model, END, PAD, start_id=START)
    for config in (GenerationConfig(max_new_tokens=12), GenerationConfig(max_new_tokens=12, num_beams=3)):
        rows = gen.generate(SOURCES, config)
        assert all(row[-1] == END and END not in row[:-1] for row in rows)
    if type(copy_model).__name__ == "BART":  # learnt: it copies each source, then ends
        assert gen.generate(SOURCES, GenerationConfig(max_new_tokens=12, num_beams=3)) == [[*s, END] for s in SOURCES]
    with pytest.raises(ConfigError, match="start_id"):
        Generator(copy_model, END, PAD)
    with pytest.raises(ConfigError, match="exceed the decoder's 40 positions"):
        gen.generate(SOURCES, GenerationConfig(max_new_tokens=41))
    with pytest.raises(ConfigError, match="exceeds the encoder's 40 positions"):
        gen.generate([[5] * 41], GenerationConfig(max_new_tokens=4))


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_the_generate_subcommand_frames_an_encoder_decoders_source(kind, tmp_path, cache_dir, capsys):
    """An encoder-decoder run: the prompt, framed as the objective framed its sources, is encoded; the decoder
    writes from the start token the run recorded. What it prints is what the Generator gives for that source."""
    from test_seq2seq import write_run

    from lit_ptm.generate import load_generator, main

    run = write_run(tmp_path / kind, kind)
    generator, tokenizer, layout = load_generator(str(run))
    ids = tokenizer.ids
    text = tokenizer.hf.encode("alpha beta gamma", add_special_tokens=False).ids
    assert layout(text) == ([*text, ids.eos] if kind == "t5" else [ids.cls, *text, ids.sep])
    assert generator.model.start_id == (ids.pad if kind == "t5" else ids.eos)
    assert generator.eos_id == (ids.eos if kind == "t5" else ids.sep)
    new = generator.generate([layout(text)], GenerationConfig(max_new_tokens=5, stop_at_eos=False))[0]
    assert main(["--ckpt_path", str(run), "--prompt", "alpha beta gamma", "--max_new_tokens", "5", "--no_stop_at_eos"]) == 0
    assert capsys.readouterr().out.strip() == tokenizer.hf.decode(new).strip()
    with pytest.raises(ConfigError, match="holds a MaskedLM run; generation needs a causal LM .* or an encoder-decoder"):
        load_generator(str(write_run(tmp_path / "bert", "bert")))


@pytest.mark.parametrize("kind", ["xlnet", "mpnet"])
def test_a_permutation_lm_is_refused_with_its_reason(kind, tmp_path, cache_dir):
    """XLNet and MPNet predict in a sampled order, not left to right: the subcommand and model_for_generation
    both refuse them, saying why and what generates instead."""
    import dataclasses

    from test_seq2seq import CONFIGS, write_run

    from lit_ptm.generate import model_for_generation
    from lit_ptm.objectives import PermutationLM

    cls, config = CONFIGS[kind]
    refused = run_module(["generate", "--ckpt_path", str(write_run(tmp_path / kind, kind)), "--prompt", "alpha beta"])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"holds a {cls.__name__} run, which cannot generate" in refused.stderr
    assert PermutationLM.generate_refusal in " ".join(refused.stderr.split())  # however the message is wrapped
    with pytest.raises(ConfigError) as e:
        model_for_generation(cls(config=dataclasses.replace(config, vocab_size=60)), PAD)
    assert str(e.value) == f"a {cls.__name__} run {PermutationLM.generate_refusal}"
