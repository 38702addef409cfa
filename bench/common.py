"""Small helpers shared by the benchmarks: timing, peak RSS in a child, ratio tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Median wall time (s) over `repeat` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def float_pass_seconds(model_path: Path, feeds_list: list[dict], threads: int = 2) -> float:
    """The peer every compile-time number is measured against: a plain float inference pass."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    for feeds in feeds_list:
        sess.run(None, feeds)
    return time.perf_counter() - t


def print_table(title: str, rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n== {title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
