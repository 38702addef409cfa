"""`make bench`: every benchmark, each printing ratios against a peer measured in the same run."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCHES = ["bench.bench_parse_optimize", "bench.bench_quantize", "bench.bench_compile", "bench.bench_lsp",
           "bench.bench_live", "bench.bench_accuracy"]


def main() -> int:
    only = sys.argv[1:]
    for name in BENCHES:
        if only and not any(o in name for o in only):
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"{name}: not present")
                continue
            raise
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
