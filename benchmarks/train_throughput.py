"""Training throughput of lit_ptm against HF transformers: same architecture, same batch, same optimizer.

    python benchmarks/train_throughput.py --model bert-small      # BertForMaskedLM H256/L4, 32 x 128
    python benchmarks/train_throughput.py --model bert-base --batch 8
    python benchmarks/train_throughput.py --model gpt-small       # GPT2LMHeadModel H256/L4, 32 x 128
    python benchmarks/train_throughput.py --model gpt2 --batch 8 --seq 1024 --bf16   # GPU
    python benchmarks/train_throughput.py --model gpt2 --batch 8 --seq 1024 --bf16 --compile   # both compiled
    python benchmarks/train_throughput.py --model t5-small --batch 16 --seq 128 --target 32    # T5ForConditionalGeneration
    python benchmarks/train_throughput.py --model bart-small --batch 16 --seq 128             # BartForConditionalGeneration H256/L4

Each step is forward + backward + AdamW (fused, for both). MLM batches mask 15% of the tokens with
lit_ptm's collator; HF's BertForMaskedLM runs its vocabulary-wide head on every token, lit_ptm only
on the masked ones. Encoder-decoders (t5-*, bart-*) read random sources of --seq tokens and learn
random targets of --target tokens (default: --seq), the loss on every target token for both.
Contenders alternate in rounds in one process; the ratio is what to report.
For CPU runs, preload jemalloc (see README) for both.

--compile: lit_ptm as ``--model.compile true`` compiles it (its stack and its fused loss), HF's whole
model with torch.compile. On a GPU, MFU = useful FLOPs / the measured bf16 matmul peak, with the same
useful FLOPs for both (6 x non-embedding parameters + 12 x layers x hidden x sequence per token, plus
6 x hidden x vocabulary per token the objective predicts), so the MFU ratio is the throughput ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import allocator, bart_config, bert_config, gpt2_config, hf_model, interleaved, n_params, t5_config  # noqa: E402

from lit_ptm.data.collate import MLMCollator  # noqa: E402
from lit_ptm.objectives import BART, T5, CausalLM, MaskedLM  # noqa: E402
from lit_ptm.tokenizer import SpecialIds  # noqa: E402

SIZES = {
    "bert-small": ("bert", 256, 4, 4), "bert-base": ("bert", 768, 12, 12), "gpt-small": ("gpt", 256, 4, 4),
    "gpt2": ("gpt", 768, 12, 12),  # GPT-2 small, 124M: the GPU comparison (e.g. --batch 8 --seq 1024 --bf16)
    "t5-small": ("t5", 512, 6, 8),  # T5-small, 60.5M
    "bart-small": ("bart", 256, 4, 4), "bart-base": ("bart", 768, 6, 12),  # BART-base, 139M
}
CONFIGS = {"bert": bert_config, "gpt": gpt2_config, "t5": t5_config, "bart": bart_config}
OBJECTIVES = {"bert": MaskedLM, "gpt": CausalLM, "t5": T5, "bart": BART}


def mlm_batch(vocab: int, batch: int, seq: int):
    """[CLS] random tokens [SEP] windows, masked by our collator (the same batch feeds both models)."""
    ids = SpecialIds(vocab_size=vocab, pad=0, unk=1, cls=2, sep=3, mask=4, bos=5, eos=6, special=tuple(range(111)))
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(batch):
        toks = torch.randint(111, vocab, (seq,), generator=g)
        toks[0], toks[-1] = ids.cls, ids.sep
        samples.append({"ids": toks, "word_start": torch.ones(seq, dtype=torch.bool), "document": torch.zeros(seq, dtype=torch.long), "epoch": 0, "index": i})
    return MLMCollator(ids, seed=0)(samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SIZES), default="bert-small")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--target", type=int, default=None, help="encoder-decoders: target length (default --seq)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile both contenders")
    args = p.parse_args()

    kind, hidden, layers, heads = SIZES[args.model]
    torch.manual_seed(0)
    cfg = CONFIGS[kind](hidden, layers, heads)
    ours = OBJECTIVES[kind](config=cfg, compile=args.compile)
    ours.configure_model()
    ours = ours.to(args.device).train()
    hf = hf_model(kind, cfg).to(args.device).train()
    if args.compile:
        hf.compile()
    if kind == "bert":
        batch = mlm_batch(cfg.vocab_size, args.batch, args.seq)
        hf_inputs = {"input_ids": batch["input_ids"], "labels": batch["labels"]}
    elif kind in ("t5", "bart"):
        g = torch.Generator().manual_seed(0)
        source = torch.randint(111, cfg.vocab_size, (args.batch, args.seq), generator=g)
        target = torch.randint(111, cfg.vocab_size, (args.batch, (args.target or args.seq) + 1), generator=g)
        batch = {"input_ids": source, "decoder_input_ids": target[:, :-1].contiguous(), "labels": target[:, 1:].contiguous()}
        hf_inputs = dict(batch)
    else:
        ids = torch.randint(111, cfg.vocab_size, (args.batch, args.seq + 1), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
        hf_inputs = {"input_ids": ids[:, :-1], "labels": ids[:, :-1]}  # HF shifts the labels itself
    batch = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    hf_inputs = {k: v.to(args.device) for k, v in hf_inputs.items()}

    def stepper(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
                loss = loss_fn()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
        return step

    steps = {
        "lit_ptm": stepper(ours, lambda: ours.loss_parts(batch).loss),
        "hf": stepper(hf, lambda: hf(**hf_inputs).loss),
    }
    for step in steps.values():  # warm-up: allocator pools, kernels, optimizer state
        step()
        step()
    sec = interleaved(steps, args.steps, args.rounds)
    tokens = args.batch * args.seq
    print(f"model {args.model} ({kind}, H{hidden}/L{layers}/A{heads}, V{cfg.vocab_size}), batch {args.batch} x {args.seq}, "
          f"device {args.device}, {'bf16 autocast' if args.bf16 else 'fp32'}, threads {torch.get_num_threads()}, {allocator()}")
    print(f"params: lit_ptm {n_params(ours):,}  hf {n_params(hf):,}")
    predicted = int((batch["labels"] != -100).sum())
    flops = useful_flops(cfg, args.batch, args.seq, predicted)
    # MFU for the single stacks only (the formula below does not count a decoder's cross-attention)
    peak = matmul_peak(args.device) if args.device.startswith("cuda") and args.bf16 and kind in ("bert", "gpt") else None
    for name, s in sec.items():
        mfu = f", MFU {flops / s / peak:.1%}" if peak else ""
        print(f"{name:>8}: {tokens / s:10,.0f} tok/s  ({s * 1000:.1f} ms/step{mfu})")
    if peak:
        print(f"useful FLOPs/step {flops:.3g}; measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s")
    print(f"ratio lit_ptm / hf: {sec['hf'] / sec['lit_ptm']:.2f}x{' (both compiled)' if args.compile else ''}")


def useful_flops(cfg, batch: int, seq: int, predicted: int) -> float:
    """Training FLOPs a step needs (forward + backward = 3 x forward): the stack's matmuls, attention
    scores and values, and the LM head on the positions the objective predicts."""
    H, L, V, F = cfg.hidden_size, cfg.num_layers, cfg.vocab_size, cfg.ffn_size
    per_token_matmuls = L * (4 * H * H + 2 * H * F)  # qkv + out, up + down (multiply-adds)
    tokens = batch * seq
    stack = 6 * per_token_matmuls * tokens + 12 * L * H * seq * tokens  # + attention scores and values (QK^T, AV)
    head = 6 * H * V * predicted + (6 * H * H * predicted if cfg.lm_head_transform else 0)
    return float(stack + head)


def matmul_peak(device: str) -> float:
    """The device's bf16 matmul throughput, measured (FLOP/s): the denominator of MFU."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 20 * 2 * 8192 ** 3 / (start.elapsed_time(end) / 1000)


if __name__ == "__main__":
    main()
