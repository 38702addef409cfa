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


RESULT_MARK = "@@bench-result "
OUT_OF_MEMORY = ("MemoryError", "bad_alloc", "Failed to allocate memory", "Cannot allocate memory",
                 "Unable to allocate")


def child_result(result: dict) -> None:
    """Hand a child's result back to `run_child` (one marked JSON line on stdout)."""
    import json
    import sys

    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_child(module: str, payload: dict, memory_gb: float | None = None, timeout: float = 600.0) -> dict:
    """Run `python -m module '<payload json>'` in a fresh process and return the dict it reported.

    Numbers measured there (time, peak RSS via `ru_maxrss`) do not mix with this process or with
    other jobs. `memory_gb` caps the address space (RLIMIT_AS): a peer that runs out of it reports
    ``{"error": "out of memory"}`` instead of taking the machine down; `timeout` gives
    ``{"error": "timeout"}``. Any other failure: ``{"error": <last stderr line>}``.
    """
    import json
    import os
    import resource
    import subprocess
    import sys

    def limit() -> None:
        if memory_gb is not None:
            cap = int(memory_gb * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", module, json.dumps(payload)], cwd=REPO, env=env, text=True,
                              capture_output=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"error": "timeout", "seconds": timeout}
    wall = time.perf_counter() - t0
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    text = done.stderr + done.stdout
    if any(k in text for k in OUT_OF_MEMORY) or done.returncode in (-9, 137):
        return {"error": "out of memory", "seconds": wall}
    tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [f"exit code {done.returncode}"]
    return {"error": tail[0][:200], "seconds": wall}
