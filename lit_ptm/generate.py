"""Text generation from a causal LM run: greedy, sampling (temperature, top-k, top-p) and beam search,
over batched prompts (left padding), with the stack's KV cache.

    lit-ptm generate --ckpt_path checkpoints/gpt --prompt "The import statement" --max_new_tokens 40
    lit-ptm generate --ckpt_path checkpoints/gpt --prompts_file prompts.jsonl --output completions.jsonl --num_beams 4
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


class Generator:
    """Generation with a causal objective's backbone and LM head (``module.stack()``, ``module.lm_head``)."""

    def __init__(self, module, eos_id: int | None, pad_id: int):
        if not getattr(module, "causal", False):
            raise ConfigError(f"generation needs a causal LM; this run is a {type(module).__name__}, which reads bidirectionally")
        self.module, self.stack, self.head = module, module.stack(), module.lm_head
        self.eos_id, self.pad_id = eos_id, pad_id

    # -- the model, step by step ------------------------------------------------------------------
    def _left_pad(self, prompts: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=device)
        real = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
            real[b, width - len(p):] = True
        return ids, real

    def _next_logits(self, ids: torch.Tensor, real: torch.Tensor, cache, fed: int) -> torch.Tensor:
        """Log-probabilities (B, V) of the token after ``ids``; with a cache, only ids[:, fed:] are fed."""
        positions = (real.long().cumsum(1) - 1).clamp(min=0)  # left padding: each prompt's positions start at 0
        mask = AttentionMask(causal=True, padding=None if real.all() else real)
        if cache is None:
            hidden = self.stack(ids, mask, position_ids=positions).hidden
        else:
            hidden = self.stack(ids[:, fed:], mask, position_ids=positions[:, fed:], cache=cache).hidden
        return torch.log_softmax(self.head(hidden[:, -1]).float(), -1)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], config: GenerationConfig) -> list[list[int]]:
        """The new tokens for each prompt (up to and including EOS when it stops there)."""
        if any(len(p) == 0 for p in prompts):
            raise ConfigError("an empty prompt: give at least one token (e.g. the tokenizer's EOS)")
        longest = max(len(p) for p in prompts) + config.max_new_tokens
        if longest > self.stack.config.max_length:
            raise ConfigError(f"a prompt of {longest - config.max_new_tokens} tokens + {config.max_new_tokens} new ones exceeds "
                              f"the model's {self.stack.config.max_length} positions")
        was_training = self.module.training
        self.module.eval()
        try:
            if config.num_beams > 1:
                return [self._beam_search(p, config) for p in prompts]
            return self._sample(prompts, config)
        finally:
            self.module.train(was_training)

    def _new_cache(self, batch: int, length: int, config: GenerationConfig):
        return self.stack.new_cache(batch, length) if config.use_cache else None

    def _sample(self, prompts: list[list[int]], config: GenerationConfig) -> list[list[int]]:
        device = self.head.output_weight.device
        ids, real = self._left_pad(prompts, device)
        B = ids.size(0)
        cache = self._new_cache(B, ids.size(1) + config.max_new_tokens, config)
        generator = torch.Generator(device=device).manual_seed(config.seed) if config.seed is not None else None
        done = torch.zeros(B, dtype=torch.bool, device=device)
        out: list[torch.Tensor] = []
        fed = 0
        for _ in range(config.max_new_tokens):
            logprobs = self._next_logits(ids, real, cache, fed)  # (B, V)
            fed = ids.size(1)
            token = self._pick(logprobs, config, generator)
            token = torch.where(done, self.pad_id, token)
            out.append(token)
            if config.stop_at_eos and self.eos_id is not None:
                done |= token == self.eos_id
                if done.all():
                    break
            ids = torch.cat([ids, token[:, None]], 1)
            real = torch.cat([real, torch.ones(B, 1, dtype=torch.bool, device=device)], 1)
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
        """Beam search for one prompt: K beams share the prompt; each step ranks the K x V extensions,
        moves those ending in EOS (among the K best) to the finished list, keeps the K best others."""
        K, device = config.num_beams, self.head.output_weight.device
        ids, real = self._left_pad([prompt] * K, device)
        cache = self._new_cache(K, ids.size(1) + config.max_new_tokens, config)
        scores = torch.zeros(K, device=device)
        scores[1:] = float("-inf")  # the K copies of the prompt are one hypothesis until the first step
        finished: list[tuple[float, list[int]]] = []
        generated = torch.zeros(K, 0, dtype=torch.long, device=device)
        fed = 0
        stop_at_eos = config.stop_at_eos and self.eos_id is not None

        def normalised(score: float, length: int) -> float:
            return score / (length ** config.length_penalty)

        for step in range(config.max_new_tokens):
            logprobs = self._next_logits(ids, real, cache, fed)  # (K, V)
            fed = ids.size(1)
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
            ids = torch.cat([ids[index], token[:, None]], 1)
            real = torch.cat([real[index], torch.ones(K, 1, dtype=torch.bool, device=device)], 1)
            if cache is not None:
                cache.reorder(index)
        # Running beams compete only when they ran to max_new_tokens (or too few ended): a beam cut short
        # by the K-th finished hypothesis is a prefix, not a candidate (HF's finalize does the same).
        ran_out = generated.size(1) == config.max_new_tokens or len(finished) < K
        running = [(normalised(s, generated.size(1)), generated[k].tolist()) for k, s in enumerate(scores.tolist())
                   if generated.size(1) and ran_out]
        return max(finished + running, key=lambda hyp: hyp[0])[1]


# -- the subcommand -------------------------------------------------------------------------------------
def load_generator(ckpt_path: str, device: str = "cpu"):
    """A run (directory or checkpoint) as (Generator, tokenizer), read with weights_only=True."""
    from lit_ptm import objectives
    from lit_ptm.pretrained import read_run, tokenizer_of
    from lit_ptm.tokenizer import Tokenizer

    from lit_ptm.hf import is_hf_dir

    if is_hf_dir(ckpt_path):
        raise ConfigError(f"--ckpt_path={ckpt_path} is an HF model directory: import it first "
                          f"(lit-ptm import {ckpt_path} --out RUN_DIR), then generate from RUN_DIR")
    path, raw, config = read_run(ckpt_path, key="--ckpt_path")
    meta = raw["lit_ptm"]
    cls = getattr(objectives, meta["objective"], None)
    if cls is None or not getattr(cls, "causal", False):
        raise ConfigError(f"--ckpt_path={path} holds a {meta['objective']} run; generation needs a causal LM (e.g. configs/gpt.yaml)")
    tokenizer_file = tokenizer_of(path)
    if tokenizer_file is None:
        raise ConfigError(f"--ckpt_path={path}: no tokenizer.json beside it")
    tokenizer = Tokenizer.load(tokenizer_file)
    module = cls(config)
    module.configure_model()
    module.load_state_dict(raw["state_dict"])
    module.to(device)
    ids = tokenizer.ids
    return Generator(module, eos_id=ids.eos, pad_id=ids.pad if ids.pad is not None else (ids.eos or 0)), tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lit-ptm generate", description="Continue prompts with a causal LM run.")
    parser.add_argument("--ckpt_path", required=True, help="a run directory (its last.ckpt) or a checkpoint file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt; its continuation is printed")
    source.add_argument("--prompts_file", help='JSONL with a "prompt" field per line; other fields are copied to the output')
    parser.add_argument("--output", help="where --prompts_file's completions go (JSONL); default: standard output")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
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
    generator, tokenizer = load_generator(args.ckpt_path, args.device)
    rows = []
    for start in range(0, len(records), args.batch_size):
        chunk = records[start : start + args.batch_size]
        prompts = [tokenizer.hf.encode(r["prompt"], add_special_tokens=False).ids for r in chunk]
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
