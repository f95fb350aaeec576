"""Peak memory of building the token store, for growing corpora: it should not grow with the corpus.

    python benchmarks/store_memory.py --copies 1 8 32

Each corpus is the built-in corpus repeated ``copies`` times; each store is built in a fresh
process (the tokenizer is trained once beforehand), whose peak resident memory is reported.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

BUILD = """
import resource, sys, time
from pathlib import Path
from lit_ptm.data.store import build_store
from lit_ptm.tokenizer import Tokenizer
tok = Tokenizer.load(sys.argv[1])
start = time.time()
store = build_store([Path(sys.argv[2])], tok, Path(sys.argv[3]))
print(store.num_tokens, time.time() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, nargs="+", default=[1, 8, 32])
    args = p.parse_args()
    from lit_ptm.data.builtin import write_builtin_corpus
    from lit_ptm.data.corpus import iter_documents
    from lit_ptm.tokenizer import train_tokenizer

    tmp = Path(tempfile.mkdtemp())
    base = write_builtin_corpus(tmp / "builtin.txt")
    train_tokenizer((s for d in iter_documents(base) for s in d), "wordpiece", 30522).save(tmp / "tok.json")
    text = base.read_text(encoding="utf-8")
    print(f"{'corpus MB':>10} {'tokens':>12} {'build s':>8} {'peak RSS MB':>12}")
    for n in args.copies:
        corpus = tmp / f"corpus{n}.txt"
        with open(corpus, "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(text)
        out = subprocess.run([sys.executable, "-c", BUILD, str(tmp / "tok.json"), str(corpus), str(tmp / f"store{n}")],
                             capture_output=True, text=True, check=True).stdout.split()
        tokens, seconds, rss_kb = int(out[0]), float(out[1]), int(out[2])
        print(f"{corpus.stat().st_size / 1e6:10.1f} {tokens:12,} {seconds:8.1f} {rss_kb / 1024:12.0f}")


if __name__ == "__main__":
    main()
