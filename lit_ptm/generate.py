"""Text generation: greedy, sampling (temperature, top-k, top-p) and beam search, with the stack's KV
cache, from a causal LM run (prompts are continued) or an encoder-decoder run (T5 / BART / MASS: the
prompt is the source, encoded once; the decoder writes the target from its start token). A GLM run
fills the [MASK] / [sMASK] blanks of a prompt and continues after a final [gMASK] (``BlankFiller``).

    lit-ptm generate --ckpt_path checkpoints/gpt --prompt "The import statement" --max_new_tokens 40
    lit-ptm generate --ckpt_path checkpoints/gpt --prompts_file prompts.jsonl --output completions.jsonl --num_beams 4
    lit-ptm generate --ckpt_path checkpoints/t5 --prompt "Return the sum of the values."
    lit-ptm generate --ckpt_path checkpoints/glm --prompt "The [MASK] statement loads a module. It [gMASK]"

One search serves both kinds of model: it asks a *session* (``CausalModel.start`` /
``EncoderDecoderModel.start``) for the log-probabilities of each row's next token, appends the tokens
it picks, and keeps the rows (beams) it wants; how a model reads its rows, and what its cache holds,
stays inside the session.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lit_ptm.errors import ConfigError, LitPtmError
from lit_ptm.nn import AttentionMask


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick each next token.

    temperature 0 is greedy; above 0, tokens are sampled from the softmax at that temperature, after
    keeping the ``top_k`` most likely (0: all) and the smallest set whose probability reaches ``top_p``.
    ``num_beams`` > 1 is beam search (deterministic; sampling settings do not apply): a hypothesis'
    score is its summed log-probability over ``new tokens ** length_penalty``; a prompt is done when it
    has ``num_beams`` finished hypotheses. ``seed`` makes sampling reproducible.
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    stop_at_eos: bool = True
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self):
        checks = (("max_new_tokens", self.max_new_tokens >= 1, "must be at least 1"),
                  ("temperature", self.temperature >= 0, "must be >= 0 (0: greedy)"),
                  ("top_k", self.top_k >= 0, "must be >= 0 (0: no limit)"),
                  ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
                  ("num_beams", self.num_beams >= 1, "must be at least 1"))
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"--{key}={getattr(self, key)}: {why}")


# -- the two kinds of model, as the search sees them ---------------------------------------------------
def _padded(rows: list[list[int]], pad_id: int, device, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """rows as ids (B, L) padded with ``pad_id`` on the left or the right, and where the real tokens are (B, L)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    real = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[b, span] = torch.tensor(r, dtype=torch.long, device=device)
        real[b, span] = True
    return ids, real


@dataclass
class CausalModel:
    """A causal stack and its LM head: each prompt is the start of its row's sequence.

    UniLM reads the same way with three settings: ``types`` (the prompt's and the new tokens' segment
    ids), ``prefix`` (the prompt is a bidirectional prefix: seq2seq's source) and ``slot_id`` (a cloze
    model predicts the token at a position that holds [MASK]: each step appends that slot, reads the
    prediction there and drops the slot from the cache, so that the token picked takes its place)."""

    module: torch.nn.Module  # put in eval mode while generating
    stack: torch.nn.Module
    head: torch.nn.Module
    pad_id: int
    types: tuple[int, int] | None = None
    prefix: bool = False
    slot_id: int | None = None

    def check(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        if any(len(p) == 0 for p in prompts):
            raise ConfigError("an empty prompt: give at least one token (e.g. the tokenizer's EOS)")
        longest = max(len(p) for p in prompts) + max_new_tokens + (self.slot_id is not None)
        if longest > self.stack.config.max_length:
            raise ConfigError(f"a prompt of {max(len(p) for p in prompts)} tokens + {max_new_tokens} new ones exceeds "
                              f"the model's {self.stack.config.max_length} positions")

    def start(self, prompts: list[list[int]], copies: int, max_new_tokens: int, use_cache: bool) -> _CausalSession:
        return _CausalSession(self, [p for p in prompts for _ in range(copies)], max_new_tokens, use_cache)


class _CausalSession:
    """Rows being extended: prompts left-padded (each row's positions start at its first real token);
    with a cache each step feeds only the tokens appended since the last, without one everything."""

    def __init__(self, model: CausalModel, rows: list[list[int]], max_new_tokens: int, use_cache: bool):
        self.model = model
        self.ids, self.real = _padded(rows, model.pad_id, model.head.output_weight.device, left=True)  # (B, L)
        self.prompt_width = self.ids.size(1)
        slot = model.slot_id is not None
        self.cache = model.stack.new_cache(len(rows), self.ids.size(1) + max_new_tokens + slot) if use_cache else None
        self.fed = 0

    def logprobs(self) -> torch.Tensor:
        """(B, V): the log-probabilities of each row's next token."""
        model, ids, real = self.model, self.ids, self.real
        if model.slot_id is not None:  # the position to predict holds [MASK]
            ids = torch.cat([ids, torch.full_like(ids[:, :1], model.slot_id)], 1)
            real = torch.cat([real, torch.ones_like(real[:, :1])], 1)
        B, L = ids.shape
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        prefix = torch.full((B,), self.prompt_width, device=ids.device) if model.prefix else None
        mask = AttentionMask(causal=True, padding=None if real.all() else real, prefix_length=prefix)
        types = None
        if model.types is not None:  # (B, L): the prompt's segment, then the new tokens'
            types = torch.where(torch.arange(L, device=ids.device) < self.prompt_width, *model.types).expand(B, L)
        start = self.fed if self.cache is not None else 0
        extra = {"token_type_ids": types[:, start:]} if types is not None else {}
        hidden = model.stack(ids[:, start:], mask, position_ids=positions[:, start:], cache=self.cache, **extra).hidden
        self.fed = self.ids.size(1)
        if self.cache is not None and model.slot_id is not None:
            self.cache.length -= 1  # the slot's keys: the token picked there is fed at the next step
        return torch.log_softmax(model.head(hidden[:, -1]).float(), -1)

    def append(self, token: torch.Tensor) -> None:
        self.ids = torch.cat([self.ids, token[:, None]], 1)
        self.real = torch.cat([self.real, torch.ones_like(self.real[:, :1])], 1)

    def keep(self, index: torch.Tensor) -> None:
        """Row i becomes row ``index[i]`` (beam search: each surviving beam takes its parent's state)."""
        self.ids, self.real = self.ids[index], self.real[index]
        if self.cache is not None:
            self.cache.reorder(index)


@dataclass
class EncoderDecoderModel:
    """An encoder-decoder (``EncoderDecoderLM``'s API: ``encoder`` and ``decoder`` stacks,
    ``encode_source``, ``decode``, ``new_cache``) and its LM head: each prompt is a source, and the
    decoder writes a new sequence from ``start_id``."""

    module: torch.nn.Module
    head: torch.nn.Module
    start_id: int
    pad_id: int

    def check(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        if any(len(p) == 0 for p in prompts):
            raise ConfigError("an empty source: give at least one token (frame it as the model was trained: frame_source)")
        source, target = self.module.encoder.config.max_length, self.module.decoder.config.max_length
        if max(len(p) for p in prompts) > source:
            raise ConfigError(f"a source of {max(len(p) for p in prompts)} tokens exceeds the encoder's {source} positions")
        if max_new_tokens > target:  # the decoder reads its start token and all new tokens but the last
            raise ConfigError(f"{max_new_tokens} new tokens exceed the decoder's {target} positions")

    def start(self, prompts: list[list[int]], copies: int, max_new_tokens: int, use_cache: bool) -> _EncoderDecoderSession:
        return _EncoderDecoderSession(self, prompts, copies, max_new_tokens, use_cache)


class _EncoderDecoderSession:
    """Sources right-padded and encoded once (their ``copies`` share the encoding); the decoder's rows
    start from the start token; with a cache, the encoder's cross-attention keys are computed at the
    first step and each step feeds only the new tokens."""

    def __init__(self, model: EncoderDecoderModel, sources: list[list[int]], copies: int, max_new_tokens: int, use_cache: bool):
        self.model = model
        source, real = _padded(sources, model.pad_id, model.head.output_weight.device, left=False)  # (P, S)
        memory = model.module.encode_source(source, None if real.all() else real).hidden  # (P, S, H)
        self.memory = memory.repeat_interleave(copies, 0)  # (B, S, H)
        self.source_mask = None if real.all() else real.repeat_interleave(copies, 0)
        B = self.memory.size(0)
        self.ids = torch.full((B, 1), model.start_id, dtype=torch.long, device=source.device)  # (B, T)
        self.cache = model.module.new_cache(B, max_new_tokens + 1, source.size(1)) if use_cache else None
        self.fed = 0

    def logprobs(self) -> torch.Tensor:
        start = self.fed if self.cache is not None else 0
        hidden = self.model.module.decode(self.ids[:, start:], self.memory, self.source_mask, cache=self.cache).hidden
        self.fed = self.ids.size(1)
        return torch.log_softmax(self.model.head(hidden[:, -1]).float(), -1)

    def append(self, token: torch.Tensor) -> None:
        self.ids = torch.cat([self.ids, token[:, None]], 1)

    def keep(self, index: torch.Tensor) -> None:
        self.ids, self.memory = self.ids[index], self.memory[index]
        if self.source_mask is not None:
            self.source_mask = self.source_mask[index]
        if self.cache is not None:
            self.cache.reorder(index)  # the cross-attention keys too


def model_for_generation(module, pad_id: int, start_id: int | None = None) -> CausalModel | EncoderDecoderModel:
    """A pretraining objective as the search sees it: a causal LM (``module.causal``) or an encoder-decoder
    (``EncoderDecoderLM``, whose decoder starts from ``start_id``: ``module.decoder_start_id(tokenizer.ids)``)."""
    from lit_ptm.objectives.encoder_decoder import EncoderDecoderLM
    from lit_ptm.objectives.glm import GLM

    if isinstance(module, EncoderDecoderLM):
        if start_id is None:
            raise ConfigError("an encoder-decoder generates from its decoder's start token: give start_id "
                              "(module.decoder_start_id(tokenizer.ids))")
        return EncoderDecoderModel(module, module.lm_head, start_id, pad_id)
    if getattr(module, "generate_refusal", None):
        raise ConfigError(f"a {type(module).__name__} run {module.generate_refusal}")
    if getattr(module, "generation_modes", None):
        raise ConfigError(f"a {type(module).__name__} run generates in a mode ({', '.join(module.generation_modes)}): "
                          "Generator(module.generation(mode, tokenizer.ids)[0], ...)")
    if isinstance(module, GLM):
        raise ConfigError("a GLM run fills the blanks of its prompts: use lit_ptm.generate.BlankFiller(module, tokenizer.ids)")
    if not getattr(module, "causal", False):
        raise ConfigError(f"generation needs a causal LM or an encoder-decoder; this run is a {type(module).__name__}, "
                          "which reads bidirectionally")
    return CausalModel(module, module.stack(), module.lm_head, pad_id)


class BlankFiller:
    """GLM's blank filling: each blank of a prompt ([MASK], [sMASK], or [gMASK] ending it) is written as
    GLM's Part B writes a span: [SOP] at the blank's position (block positions 1, 2, ..), token by token
    until [EOP] or ``max_new_tokens``. The prompt (Part A, framed ``[CLS] text [SEP]`` as in pretraining)
    is read bidirectionally once; the blanks are filled in order of appearance, each reading Part A and
    the spans written before it (causally), as GLM's autoregressive blank infilling. With the cache,
    Part A's keys are computed once and each step feeds one token; without it, every step reads the whole
    sequence again (the same numbers). Greedy or sampled (``GenerationConfig``; no beam search).
    ``generate`` returns the prompt with its blanks replaced by their spans (``[EOP]`` dropped), ``spans``
    the spans. ``stack`` / ``head``: the module's (a fine-tuning task's); None: a GLM run's."""

    eos_id = None  # what ``main`` trims: the filled prompt has no end token

    def __init__(self, module, ids, stack=None, head=None):
        self.module, self.ids = module, ids
        self.stack, self.head = stack or module.stack(), head or module.lm_head
        self.blanks = {ids.mask, ids.smask, ids.gmask} - {None}

    def check(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        if any(not self.blanks.intersection(p) for p in prompts):
            raise ConfigError("a GLM run fills the [MASK] / [sMASK] blanks of a prompt and continues after a final [gMASK]: "
                              "a prompt has none")
        if max_new_tokens + 1 >= self.stack.config.max_position_embeddings:
            raise ConfigError(f"--max_new_tokens={max_new_tokens}: a span's block positions exceed the model's "
                              f"{self.stack.config.max_position_embeddings} positions")
        longest = max(len(p) for p in prompts)  # Part A's positions; Part B's tokens take their blank's
        if longest > self.stack.config.max_length:
            raise ConfigError(f"a prompt of {longest} tokens (framed) exceeds the model's {self.stack.config.max_length} positions")

    def generate(self, prompts: list[list[int]], config: GenerationConfig) -> list[list[int]]:
        """Each prompt (Part A: framed token ids) with its blanks filled, without the frame's first and last token."""
        out = []
        for prompt, spans in zip(prompts, self.spans(prompts, config)):
            blanks = [i for i, t in enumerate(prompt) if t in self.blanks]
            out.append([t for i, token in enumerate(prompt[1:-1], 1) for t in (spans[blanks.index(i)] if i in blanks else [token])])
        return out

    @torch.no_grad()
    def spans(self, prompts: list[list[int]], config: GenerationConfig) -> list[list[list[int]]]:
        """The span written for each blank of each prompt, in order of appearance."""
        if config.num_beams > 1:
            raise ConfigError("--num_beams: GLM's blank filling is greedy or sampled (no beam search)")
        self.check(prompts, config.max_new_tokens)
        was_training = self.module.training
        self.module.eval()
        generator = torch.Generator(device=self.head.output_weight.device).manual_seed(config.seed) if config.seed is not None else None
        try:
            return [self._fill(p, config, generator) for p in prompts]
        finally:
            self.module.train(was_training)

    def _fill(self, prompt: list[int], config: GenerationConfig, generator) -> list[list[int]]:
        device = self.head.output_weight.device
        blanks = [i for i, t in enumerate(prompt) if t in self.blanks]
        # The sequence so far, (1, T) each: Part A, then every span's [SOP] x1 x2 .. as written.
        ids = torch.tensor([prompt], device=device)
        positions, blocks = torch.arange(len(prompt), device=device)[None], torch.zeros_like(ids)
        mask = AttentionMask(causal=True, prefix_length=torch.tensor([len(prompt)], device=device))
        cache = self.stack.new_cache(1, len(prompt) + len(blanks) * (config.max_new_tokens + 1)) if config.use_cache else None
        fed, spans = 0, []
        for at in blanks:
            span, token = [], self.ids.sop
            while True:  # feed ``token`` as the span's next input (block position len(span) + 1), pick the next
                ids, positions = torch.cat([ids, ids.new_tensor([[token]])], 1), torch.cat([positions, positions.new_tensor([[at]])], 1)
                blocks = torch.cat([blocks, blocks.new_tensor([[len(span) + 1]])], 1)
                start = fed if cache is not None else 0  # with the cache, only what it does not hold yet
                hidden = self.stack(ids[:, start:], mask, position_ids=positions[:, start:], block_position_ids=blocks[:, start:],
                                    cache=cache).hidden
                fed = ids.size(1)
                token = int(Generator._pick(torch.log_softmax(self.head(hidden[:, -1]).float(), -1), config, generator)[0])
                if token == self.ids.eop or len(span) == config.max_new_tokens:
                    break
                span.append(token)
            spans.append(span)
        return spans


def layout_ids(layout, ids, what: str) -> tuple[int, int]:
    """An encoder-decoder layout's (decoder start id, end-of-target id) in a tokenizer's ``SpecialIds``,
    once every special token its sources and targets are framed with is known to be there. ``layout``:
    an ``EncoderDecoderLM`` (its ``decoder_start_id``, ``frame_source``, ``frame_target``, ``end_of_target``)."""
    start = layout.decoder_start_id(ids)  # names the missing role itself
    framed = [*layout.frame_source([], ids), *layout.frame_target([], ids), layout.end_of_target(ids)]
    if None in framed:
        roles = [r for r in ("cls", "sep", "eos", "bos") if getattr(ids, r) is None]
        raise ConfigError(f"{what} frames its texts with special tokens this tokenizer lacks ({' / '.join(roles)})")
    return start, layout.end_of_target(ids)


class Generator:
    """Generation with a causal LM or an encoder-decoder.

    ``model``: a pretraining objective (see ``model_for_generation``), or a ``CausalModel`` /
    ``EncoderDecoderModel`` made of any module's parts (a fine-tuning task's stacks). ``eos_id``: the token
    that ends a sequence (an encoder-decoder's ``end_of_target``); None: none does.
    """

    def __init__(self, model, eos_id: int | None, pad_id: int, start_id: int | None = None):
        self.model = model if isinstance(model, (CausalModel, EncoderDecoderModel)) else model_for_generation(model, pad_id, start_id)
        self.module = self.model.module
        self.eos_id, self.pad_id = eos_id, pad_id

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], config: GenerationConfig) -> list[list[int]]:
        """The new tokens for each prompt (up to and including EOS when it stops there)."""
        self.model.check(prompts, config.max_new_tokens)
        was_training = self.module.training
        self.module.eval()
        try:
            if config.num_beams > 1:
                return [self._beam_search(p, config) for p in prompts]
            return self._sample(prompts, config)
        finally:
            self.module.train(was_training)

    def _sample(self, prompts: list[list[int]], config: GenerationConfig) -> list[list[int]]:
        rows = self.model.start(prompts, 1, config.max_new_tokens, config.use_cache)
        device = self.model.head.output_weight.device
        B = len(prompts)
        generator = torch.Generator(device=device).manual_seed(config.seed) if config.seed is not None else None
        done = torch.zeros(B, dtype=torch.bool, device=device)
        out: list[torch.Tensor] = []
        for _ in range(config.max_new_tokens):
            token = self._pick(rows.logprobs(), config, generator)  # (B,)
            token = torch.where(done, self.pad_id, token)
            out.append(token)
            if config.stop_at_eos and self.eos_id is not None:
                done |= token == self.eos_id
                if done.all():
                    break
            rows.append(token)
        new = torch.stack(out, 1).tolist()
        return [self._trim(row) for row in new] if config.stop_at_eos else new

    def _trim(self, row: list[int]) -> list[int]:
        """Up to and including the first EOS (what follows it is padding)."""
        if self.eos_id is not None and self.eos_id in row:
            return row[: row.index(self.eos_id) + 1]
        return row

    @staticmethod
    def _pick(logprobs: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
        if config.temperature == 0:
            return logprobs.argmax(-1)
        scores = logprobs / config.temperature
        if config.top_k:
            kth = scores.topk(min(config.top_k, scores.size(-1)), -1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if config.top_p < 1.0:
            probs, order = torch.softmax(scores, -1).sort(-1, descending=True)
            # Keep a token while the probability before it is below top_p (the most likely is always kept).
            drop = (probs.cumsum(-1) - probs) >= config.top_p
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)[:, 0]

    def _beam_search(self, prompt: list[int], config: GenerationConfig) -> list[int]:
        """Beam search for one prompt: K beams share the prompt (an encoder-decoder's source is encoded
        once for all of them); each step ranks the K x V extensions,
        moves those ending in EOS (among the K best) to the finished list, keeps the K best others."""
        K, device = config.num_beams, self.model.head.output_weight.device
        rows = self.model.start([prompt], K, config.max_new_tokens, config.use_cache)
        scores = torch.zeros(K, device=device)
        scores[1:] = float("-inf")  # the K copies of the prompt are one hypothesis until the first step
        finished: list[tuple[float, list[int]]] = []
        generated = torch.zeros(K, 0, dtype=torch.long, device=device)
        stop_at_eos = config.stop_at_eos and self.eos_id is not None

        def normalised(score: float, length: int) -> float:
            return score / (length ** config.length_penalty)

        for step in range(config.max_new_tokens):
            logprobs = rows.logprobs()  # (K, V)
            V = logprobs.size(-1)
            candidates = (scores[:, None] + logprobs).flatten()  # (K * V)
            top_scores, top = candidates.topk(2 * K)
            beams, tokens = top // V, top % V
            keep_beams, keep_tokens, keep_scores = [], [], []
            for rank, (beam, token, score) in enumerate(zip(beams.tolist(), tokens.tolist(), top_scores.tolist())):
                if stop_at_eos and token == self.eos_id:
                    if rank < K:  # an EOS outside the K best is not a hypothesis the search would keep
                        finished.append((normalised(score, step + 1), generated[beam].tolist() + [token]))
                    continue
                keep_beams.append(beam)
                keep_tokens.append(token)
                keep_scores.append(score)
                if len(keep_beams) == K:
                    break
            if len(finished) >= K:
                break
            index = torch.tensor(keep_beams, device=device)
            scores = torch.tensor(keep_scores, device=device)
            token = torch.tensor(keep_tokens, device=device)
            generated = torch.cat([generated[index], token[:, None]], 1)
            rows.keep(index)
            rows.append(token)
        # Running beams compete only when they ran to max_new_tokens (or too few ended): a beam cut short
        # by the K-th finished hypothesis is a prefix, not a candidate (HF's finalize does the same).
        ran_out = generated.size(1) == config.max_new_tokens or len(finished) < K
        running = [(normalised(s, generated.size(1)), generated[k].tolist()) for k, s in enumerate(scores.tolist())
                   if generated.size(1) and ran_out]
        return max(finished + running, key=lambda hyp: hyp[0])[1]


# -- the subcommand -------------------------------------------------------------------------------------
def load_generator(ckpt_path: str, device: str = "cpu", mode: str | None = None):
    """A run (directory or checkpoint) as (Generator, tokenizer, prompt layout), read with weights_only=True.
    The layout turns a prompt's token ids into the model's input: as they are for a causal LM, framed as
    the objective framed its sources for an encoder-decoder (``frame_source``: T5 ``text [EOS]``, BART /
    MASS ``[CLS] text [SEP]``). ``mode``: how a run with ``generation_modes`` (UniLM: l2r, seq2seq) generates
    (None: its first)."""
    from lit_ptm import objectives
    from lit_ptm.hf import is_hf_dir
    from lit_ptm.objectives.encoder_decoder import EncoderDecoderLM
    from lit_ptm.pretrained import read_run, tokenizer_of
    from lit_ptm.tokenizer import Tokenizer

    if is_hf_dir(ckpt_path):
        raise ConfigError(f"--ckpt_path={ckpt_path} is an HF model directory: import it first "
                          f"(lit-ptm import {ckpt_path} --out RUN_DIR), then generate from RUN_DIR")
    path, raw, config = read_run(ckpt_path, key="--ckpt_path")
    meta = raw["lit_ptm"]
    if meta["objective"] == "Seq2Seq":  # a fine-tuned run: its layout and decoder are the task's
        raise ConfigError(f"--ckpt_path={path} is a fine-tuned Seq2Seq run: generate with its task, "
                          f"`lit-ptm predict --config configs/finetune/seq2seq.yaml --ckpt_path {path} --data.predict_file FILE`")
    cls = getattr(objectives, meta["objective"], None)
    encoder_decoder = isinstance(cls, type) and issubclass(cls, EncoderDecoderLM)
    if getattr(cls, "generate_refusal", None):
        raise ConfigError(f"--ckpt_path={path} holds a {meta['objective']} run, which cannot generate: a {meta['objective']} run "
                          f"{cls.generate_refusal}")
    modes = getattr(cls, "generation_modes", ())
    if mode is not None and mode not in modes:
        raise ConfigError(f"--mode={mode}: a {meta['objective']} run " + (f"generates in modes {', '.join(modes)}" if modes
                                                                          else "takes no --mode"))
    glm = cls is objectives.GLM
    if cls is None or not (encoder_decoder or glm or getattr(cls, "causal", False) or modes):
        raise ConfigError(f"--ckpt_path={path} holds a {meta['objective']} run; generation needs a causal LM (e.g. configs/gpt.yaml) "
                          "or an encoder-decoder (T5, BART, MASS)")
    tokenizer_file = tokenizer_of(path)
    if tokenizer_file is None:
        raise ConfigError(f"--ckpt_path={path}: no tokenizer.json beside it")
    tokenizer = Tokenizer.load(tokenizer_file)
    ids = tokenizer.ids
    if encoder_decoder:  # the decoder starts from the token the run recorded (its class's default before it did)
        start = meta.get("decoder_start") or cls.default_decoder_start()
        module = cls(config, decoder_start=start)
    else:
        module = cls(config)
    module.configure_model()
    module.load_state_dict(raw["state_dict"])
    module.to(device)
    if modes:  # UniLM: a causal reading of its stack (``generation``: the model, its end token, its prompt layout)
        model, end_id, layout = module.generation(mode or modes[0], ids)
        return Generator(model, eos_id=end_id, pad_id=ids.pad), tokenizer, layout
    if glm:  # the prompt is Part A, framed as in pretraining: [CLS] text [SEP]
        return BlankFiller(module, ids), tokenizer, lambda text: [ids.cls, *text, ids.sep]
    if encoder_decoder:
        start_id, end_id = layout_ids(module, ids, f"a {meta['objective']} run")
        generator = Generator(module, eos_id=end_id, pad_id=ids.pad, start_id=start_id)
        return generator, tokenizer, lambda text: module.frame_source(text, ids)
    generator = Generator(module, eos_id=ids.eos, pad_id=ids.pad if ids.pad is not None else (ids.eos or 0))
    return generator, tokenizer, lambda text: text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lit-ptm generate", description="Continue prompts with a causal LM run, or "
                                     "write the target of each prompt (the source) with an encoder-decoder run (T5, BART, MASS).")
    parser.add_argument("--ckpt_path", required=True, help="a run directory (its last.ckpt) or a checkpoint file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt; its continuation is printed")
    source.add_argument("--prompts_file", help='JSONL with a "prompt" field per line; other fields are copied to the output')
    parser.add_argument("--output", help="where --prompts_file's completions go (JSONL); default: standard output")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=("l2r", "seq2seq"), help="UniLM runs: continue the prompt left to right (default) "
                        "or write a target for it as a source")
    defaults = GenerationConfig()
    for name in ("max_new_tokens", "top_k", "num_beams", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("temperature", "top_p", "length_penalty"):
        parser.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
    parser.add_argument("--no_stop_at_eos", action="store_true", help="generate max_new_tokens whatever comes")
    args = parser.parse_args(argv)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              num_beams=args.num_beams, length_penalty=args.length_penalty, seed=args.seed,
                              stop_at_eos=not args.no_stop_at_eos)
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size={args.batch_size} must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device={args.device}: no CUDA device is available here (--device cpu)")
    if args.output and Path(args.output).exists() and not args.overwrite:
        raise LitPtmError(f"--output={args.output} exists: choose another file or pass --overwrite")
    records = [{"prompt": args.prompt}] if args.prompt is not None else read_prompts(args.prompts_file)
    generator, tokenizer, layout = load_generator(args.ckpt_path, args.device, args.mode)
    rows = []
    for start in range(0, len(records), args.batch_size):
        chunk = records[start : start + args.batch_size]
        prompts = [layout(tokenizer.hf.encode(r["prompt"], add_special_tokens=False).ids) for r in chunk]
        if not all(prompts) and generator.eos_id is None:
            raise ConfigError("an empty prompt, and the tokenizer has no [EOS] to start from: give some text")
        prompts = [p or [generator.eos_id] for p in prompts]  # an empty prompt: a new text after end-of-text
        for record, new in zip(chunk, generator.generate(prompts, config)):
            text = tokenizer.hf.decode(new[:-1] if config.stop_at_eos and new and new[-1] == generator.eos_id else new)
            rows.append({**record, "completion": text, "completion_ids": new})
    if args.prompt is not None:
        print(rows[0]["completion"])
        return 0
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.output:
        from lit_ptm.rundir import atomic_write

        with atomic_write(Path(args.output)) as tmp:
            tmp.write_text(lines, encoding="utf-8")
        print(f"{len(rows)} completions written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(lines)
    return 0


def read_prompts(path: str) -> list[dict]:
    from lit_ptm.data.corpus import CorpusError

    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise CorpusError(f"--prompts_file={path} does not exist") from None
    except UnicodeDecodeError as e:
        raise CorpusError(f"--prompts_file={path} is not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CorpusError(f"--prompts_file={path} cannot be read ({e.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise CorpusError(f'{path}:{number}: needs a "prompt" field holding a string')
        records.append(record)
    if not records:
        raise CorpusError(f"--prompts_file={path} holds no prompts")
    return records
