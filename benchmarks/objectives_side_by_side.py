"""Objectives side by side at equal compute: each recipe pretrained as README's main job pretrains BERT
(configs/tiny.yaml: 2 layers x 64 per stack, the built-in corpus, 3,000 steps x 64 windows of 64 tokens),
then its backbone (an encoder-decoder's encoder) fine-tuned on the built-in demo task (200 examples,
mean pooling, 30 epochs) beside the same architecture from scratch; encoder-decoders (and GLM) also
fine-tune whole on the built-in seq2seq demo task beside their from-scratch twin.

    python benchmarks/objectives_side_by_side.py                       # bert spanbert mass t5 bart xlnet mpnet unilm glm
    python benchmarks/objectives_side_by_side.py --recipes t5 --out checkpoints/side_by_side

Run directories go to --out/<recipe>[-classify|-classify-scratch|-seq2seq|-seq2seq-scratch]; a run
that already has its test_metrics.json is not run again. Prints a markdown table of the test metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQ2SEQ = ("mass", "t5", "bart", "unilm", "glm")  # fine-tuned whole on the seq2seq demo too (UniLM, GLM in their own layouts)


def lit_ptm(*args: str) -> None:
    command = [sys.executable, "-m", "lit_ptm", *args, "--trainer.enable_progress_bar", "false"]
    print("$ lit-ptm " + " ".join(args), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def fit_and_test(configs: list[str], run: Path, *extra: str) -> dict:
    """Fit (unless done), test (unless done), and return the run's test metrics: a fine-tuning run's
    test_metrics.json, or a pretraining run's test scalars from its TensorBoard events."""
    config = [a for c in configs for a in ("--config", c)]
    if not (run / "last.ckpt").is_file():
        lit_ptm("fit", *config, *extra, "--trainer.default_root_dir", str(run))
    done = run / "tested"
    if not done.is_file():
        lit_ptm("test", *config, "--ckpt_path", str(run / "last.ckpt"), "--trainer.default_root_dir", str(run))
        done.touch()
    if (run / "test_metrics.json").is_file():
        return json.loads((run / "test_metrics.json").read_text())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = {}
    for events in sorted(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        metrics.update({tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"] if tag.startswith("test/")})
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["bert", "spanbert", "mass", "t5", "bart", "xlnet", "mpnet", "unilm", "glm"])
    p.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "side_by_side")
    p.add_argument("--steps", type=int, default=3000)
    args = p.parse_args()
    rows = []
    for recipe in args.recipes:
        start = time.perf_counter()
        pretrain = args.out / recipe
        recipe_configs = [f"configs/{recipe}.yaml", "configs/tiny.yaml"]
        pretrained = fit_and_test(recipe_configs, pretrain, "--data.batch_size", "64", "--trainer.max_steps", str(args.steps))
        classify = ["configs/finetune/classify.yaml", "configs/finetune/tiny.yaml"]
        common = ["--model.pretrained", str(pretrain), "--data.train_examples", "200", "--model.pooling", "mean",
                  "--trainer.max_epochs", "30"]
        row = {"recipe": recipe, "pretrain test/loss": pretrained.get("test/loss"),
               "classify": fit_and_test(classify, args.out / f"{recipe}-classify", *common)["test/acc"],
               "classify scratch": fit_and_test(classify, args.out / f"{recipe}-classify-scratch", *common,
                                                "--model.from_scratch", "true")["test/acc"]}
        if recipe in SEQ2SEQ:
            seq2seq = ["configs/finetune/seq2seq.yaml", "configs/finetune/tiny.yaml"]
            for name, extra in (("seq2seq", []), ("seq2seq scratch", ["--model.from_scratch", "true"])):
                m = fit_and_test(seq2seq, args.out / f"{recipe}-{name.replace(' ', '-')}", "--model.pretrained", str(pretrain), *extra)
                row[name] = {k.split("/")[1]: round(v, 3) for k, v in m.items() if k.split("/")[1] in ("rougeL", "bleu", "exact_match")}
        row["minutes"] = round((time.perf_counter() - start) / 60, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| recipe | pretrain test loss | demo task acc, pretrained | from scratch | seq2seq demo, pretrained | from scratch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['pretrain test/loss']:.3f} | {r['classify']:.3f} | {r['classify scratch']:.3f} | "
              f"{r.get('seq2seq', '-')} | {r.get('seq2seq scratch', '-')} |")


if __name__ == "__main__":
    main()
