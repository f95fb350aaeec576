"""`python -m lit_ptm.report RUN_DIR...`: the test metrics of runs side by side (from their test_metrics.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(runs: list[str | Path]) -> str:
    metrics = {}
    for run in runs:
        path = Path(run) / "test_metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run `lit-ptm test ... --trainer.default_root_dir {run}` first")
        metrics[str(run)] = json.loads(path.read_text())
    names = sorted({k for m in metrics.values() for k in m})
    width = max(len(r) for r in metrics)
    lines = [" " * width + "".join(f"{n:>16}" for n in names)]
    for run, m in metrics.items():
        lines.append(f"{run:<{width}}" + "".join(f"{m[n]:>16.4f}" if n in m else f"{'-':>16}" for n in names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    runs = sys.argv[1:] if argv is None else argv
    if not runs:
        raise SystemExit("usage: python -m lit_ptm.report RUN_DIR [RUN_DIR ...]")
    print(table(runs))


if __name__ == "__main__":
    main()
