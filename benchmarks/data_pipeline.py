"""Data-pipeline cost: window assembly + MLM collation per batch, against HF's
DataCollatorForLanguageModeling on the same windows, and as a share of a training step; and the
span and encoder-decoder collators (SpanBERT on FULL-SENTENCES windows; T5, BART, MASS and GLM's
three blank variants on DOC-SENTENCES windows), each against MLM on the same windows; UniLM against the
pair + MLM collator (BERT's, without swapping) on the same SOP pairs; and the permutation-LM collators
(XLNet, MPNet) against MLM and HF's DataCollatorForPermutationLanguageModeling on the same
FULL-SENTENCES windows (HF's needs an even length: its inputs are padded to --seq).

    python benchmarks/data_pipeline.py            # built-in corpus, 32 x 128, BERT-small step for scale
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import allocator, bert_config  # noqa: E402

from lit_ptm.data.builtin import write_builtin_corpus  # noqa: E402
from lit_ptm.data.collate import (  # noqa: E402
    BARTCollator, GLMCollator, MASSCollator, MLMCollator, MPNetCollator, PairMLMCollator, SpanMLMCollator, T5Collator,
    UniLMCollator, XLNetCollator,
)
from lit_ptm.data.corpus import iter_documents  # noqa: E402
from lit_ptm.data.sampling import PairWindows, SentenceWindows, WindowDataset  # noqa: E402
from lit_ptm.data.store import open_store  # noqa: E402
from lit_ptm.objectives import MaskedLM  # noqa: E402
from lit_ptm.tokenizer import train_tokenizer  # noqa: E402


def per_call(fn, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp())
    corpus = write_builtin_corpus(tmp / "builtin.txt")
    tok = train_tokenizer((s for d in iter_documents(corpus) for s in d), "wordpiece", 30522)
    store = open_store([corpus], tok, tmp / "cache")
    ds = WindowDataset(SentenceWindows(store, np.arange(store.num_docs), args.seq, tok.ids, cross_documents=True))
    ours = MLMCollator(tok.ids, seed=0, whole_word_mask=False)
    ours_wwm = MLMCollator(tok.ids, seed=0, whole_word_mask=True)
    rng = np.random.default_rng(0)

    def keys():
        return [(0, int(i)) for i in rng.integers(0, len(ds), args.batch)]

    samples = [ds[k] for k in keys()]
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok.hf, pad_token="[PAD]", mask_token="[MASK]", cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]")
    hf = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, return_tensors="pt")
    hf_features = [{"input_ids": s["ids"].tolist()} for s in samples]

    pairs = WindowDataset(PairWindows(store, np.arange(store.num_docs), args.seq, tok.ids, task="nsp", seed=0))
    pair_samples = [pairs[(0, int(i))] for i in rng.integers(0, len(pairs), args.batch)]
    sop = WindowDataset(PairWindows(store, np.arange(store.num_docs), args.seq, tok.ids, task="sop", seed=0))  # UniLM's
    sop_samples = [sop[(0, int(i))] for i in rng.integers(0, len(sop), args.batch)]
    ours_nsp = PairMLMCollator(tok.ids, seed=0, task="nsp")
    ours_ngram = MLMCollator(tok.ids, seed=0, max_ngram=3)

    assemble = per_call(lambda: [ds[k] for k in keys()], args.repeats)
    t_nsp = per_call(lambda: ours_nsp(pair_samples), args.repeats)
    t_pairs_sop = per_call(lambda: ours_nsp(sop_samples), args.repeats)  # the pair + MLM collator on UniLM's pairs
    t_ngram = per_call(lambda: ours_ngram(samples), args.repeats)
    t_ours = per_call(lambda: ours(samples), args.repeats)
    t_wwm = per_call(lambda: ours_wwm(samples), args.repeats)
    t_hf = per_call(lambda: hf(hf_features), args.repeats)

    # Span and encoder-decoder collators, each against MLM on the same windows; tok/s counts the
    # windows' real tokens (DOC-SENTENCES windows end at their document, most short of 128).
    docs = WindowDataset(SentenceWindows(store, np.arange(store.num_docs), args.seq, tok.ids, cross_documents=False))
    doc_samples = [docs[(0, int(i))] for i in rng.integers(0, len(docs), args.batch)]
    start = tok.ids.bos
    t_mlm_docs = per_call(lambda: ours(doc_samples), args.repeats)
    span_rows = [  # name, windows, collator, MLM's time on those windows
        ("SpanBERT (FULL-SENTENCES)", samples, SpanMLMCollator(tok.ids, seed=0), t_ours),
        ("T5 span corruption (DOC-SENTENCES)", doc_samples, T5Collator(tok.ids, seed=0, decoder_start=start), t_mlm_docs),
        ("BART infilling (DOC-SENTENCES)", doc_samples, BARTCollator(tok.ids, seed=0, decoder_start=start), t_mlm_docs),
        ("BART + sentence permutation", doc_samples,
         BARTCollator(tok.ids, seed=0, permute_sentences=True, decoder_start=start), t_mlm_docs),
        ("MASS (DOC-SENTENCES)", doc_samples, MASSCollator(tok.ids, seed=0, decoder_start=start), t_mlm_docs),
        *((f"GLM {name} blanks (DOC-SENTENCES)", doc_samples, GLMCollator(tok.ids, seed=0, probabilities=p), t_mlm_docs)
          for name, p in (("token", (1, 0, 0)), ("sentence", (0, 1, 0)), ("document", (0, 0, 1)))),
        # UniLM against the NSP pair + MLM collator on the same pairs (its bidirectional batches are that collator's).
        *((f"UniLM {name} (SOP pairs; x = vs NSP+MLM)", sop_samples, UniLMCollator(tok.ids, seed=0, mix=mix), t_pairs_sop)
          for name, mix in (("bidirectional", (1, 0, 0, 0)), ("seq2seq", (0, 0, 0, 1)))),
    ]
    span_times = [per_call(lambda c=collate, w=windows: c(w), args.repeats) for _, windows, collate, _ in span_rows]

    # Permutation LM on the FULL-SENTENCES windows. HF's collator raises on an odd length, so its
    # features are padded to --seq (even) by hand; it writes [MASK] into the inputs and loops per example.
    from transformers import DataCollatorForPermutationLanguageModeling

    hf_plm = DataCollatorForPermutationLanguageModeling(hf_tok, plm_probability=1 / 6, max_span_length=5)
    hf_plm_features = [{"input_ids": f["input_ids"] + [tok.ids.pad] * (args.seq + args.seq % 2 - len(f["input_ids"]))}
                       for f in hf_features]
    plm_rows = [("lit_ptm XLNet (K=6, n-grams <= 5)", XLNetCollator(tok.ids, seed=0)),
                ("lit_ptm MPNet (15%, two-stream masks)", MPNetCollator(tok.ids, seed=0))]
    plm_times = [per_call(lambda c=collate: c(samples), args.repeats) for _, collate in plm_rows]
    t_hf_plm = per_call(lambda: hf_plm(hf_plm_features), args.repeats)

    torch.manual_seed(0)
    model = MaskedLM(config=bert_config(256, 4, 4, vocab=tok.vocab_size))
    model.configure_model()  # objectives build their stacks there, not in the constructor
    model.train()
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    batch = ours(samples)

    def step():
        model.loss_parts(batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t_step = per_call(step, 5)
    tokens = args.batch * args.seq
    print(f"batch {args.batch} x {args.seq}, built-in corpus, threads {torch.get_num_threads()}, {allocator()}")
    print(f"window assembly (dataset __getitem__ x {args.batch}): {assemble * 1e3:7.2f} ms")
    print(f"lit_ptm MLM collator:                 {t_ours * 1e3:7.2f} ms  ({tokens / t_ours / 1e6:5.1f} M tok/s)")
    print(f"lit_ptm whole-word MLM collator:      {t_wwm * 1e3:7.2f} ms  ({tokens / t_wwm / 1e6:5.1f} M tok/s)")
    print(f"lit_ptm n-gram (ALBERT) MLM collator: {t_ngram * 1e3:7.2f} ms")
    print(f"lit_ptm NSP pair + MLM collator:      {t_nsp * 1e3:7.2f} ms")
    print(f"HF DataCollatorForLanguageModeling:   {t_hf * 1e3:7.2f} ms  ({tokens / t_hf / 1e6:5.1f} M tok/s)")
    print(f"ratio HF / lit_ptm collator time:     {t_hf / t_ours:7.2f}x")
    print(f"{'lit_ptm MLM collator, DOC-SENTENCES:':37s} {t_mlm_docs * 1e3:7.2f} ms")
    for (name, windows, _, t_mlm), t in zip(span_rows, span_times):
        tokens_in = sum(len(w["ids"]) if "ids" in w else len(w["a"]) + len(w["b"]) for w in windows)  # pairs: A + B
        print(f"{name + ':':37s} {t * 1e3:7.2f} ms  ({tokens_in / t / 1e6:5.1f} M tok/s of {tokens_in} window tokens, "
              f"{t / t_mlm:4.1f}x MLM on the same windows)")
    for (name, _), t in zip(plm_rows, plm_times):
        print(f"{name + ':':37s} {t * 1e3:7.2f} ms  ({tokens / t / 1e6:5.1f} M tok/s, {t / t_ours:4.1f}x MLM on the same windows)")
    print(f"{'HF DataCollatorForPermutationLM:':37s} {t_hf_plm * 1e3:7.2f} ms  ({tokens / t_hf_plm / 1e6:5.1f} M tok/s, "
          f"{t_hf_plm / plm_times[0]:4.1f}x lit_ptm XLNet)")
    print(f"BERT-small training step:             {t_step * 1e3:7.1f} ms")
    print(f"data share of the step (assembly + collation): {(assemble + t_ours) / t_step * 100:.2f}%")


if __name__ == "__main__":
    main()
