"""How many threads of a budget an integer program uses: measured when the `.hbm` is built, honoured when it is opened.

Why: onnxruntime parallelizes a kernel whenever its work is large enough, and with more than one
thread every parallel kernel wakes a pool worker that does not spin (`session.NO_SPINNING`). A
program of many small kernels pays that wake-up per kernel and gains little: measured on the
loaded 2-core machine (bench_compile, session 6, ms per inference, wall) digits 0.054 → 0.077 and
PP-OCR cls 0.99 → 1.38 with a second thread, while PP-OCRv4 rec (15.7 → 13.0) and det (43.4 →
36.4) gain. Whether a program gains is a property of its kernels on this CPU, so it is measured.

`measure_plan` runs the program at 1, 2, 4 … threads up to the budget (one session each; blocks of
~10 ms of runs alternating between the sessions so that they share the machine's load, as in
bench_compile) and checks that every count gives the 1-thread bits. Per count it keeps the best and
the median block's wall time and the best block's CPU time of the busiest thread: the calling
thread (onnxruntime's main thread, `time.thread_time`) or a pool worker (the process's other CPU
time shared among them); a worker that does not spin costs no CPU while it waits, so with the
threads running side by side a run takes at least the busiest thread's CPU time. The `ThreadPlan`
it returns is stored in the `.hbm`'s manifest (``build.threads``) and applied by
`engine.runtime.load(path, threads=N)` / `open_session(..., plan=)`:
`ThreadPlan.threads_for(N)` takes, among the measured counts within the budget, the fewest threads,
and moves to a larger count only when that count gained over the count taken so far:

- by wall time: its best block more than `MARGIN` faster and its median block not slower (the best
  block is the program's speed when it has the cores; the median guards against one lucky block), or
- by the busiest thread's CPU time: more than `CPU_MARGIN` less, its best block no more than
  `WALL_TOLERANCE` slower. This is what the program gains
  when the cores are free, measured even while they are not: on the loaded 2-core machine (load
  7-11) PP-OCRv4 rec's busiest thread took 17.9 → 11.9 CPU ms per run with a second thread (the
  worker 8.1) and det's 48.3 → 33.5 (worker 18.8), while their wall times (48.7 → 45.5, 129 → 155
  ms) said only how busy the machine was; cls's took 1.31 → 1.33 (no gain). It is a lower bound:
  it leaves out the time a thread sleeps waiting for the other (rec on a quiet machine: 13.0 ms wall
  at 2 threads, 15.7 at 1, a gain of 17 % where the busiest thread promises 34 %), so `CPU_MARGIN`
  is 20 %, and the wall time must not contradict it: digits at batch 16 (30 kernels split in two,
  each paying a wake-up) promised 0.59 → 0.44 CPU ms while its best block went 1.7 → 3.0 ms; on a
  quiet machine it ran 0.568 ms at 1 thread, 0.573 at 2.

A tie keeps the cheaper count, so a budget of N threads is never slower (as measured) than a smaller
budget. A budget beyond the largest count measured gets the whole budget only when that largest
count was the one taken (the program was still gaining).

Measuring is skipped when the answer is known: a program whose kernels are small (`kernel_work` per
node below `SMALL_KERNEL_WORK`: digits, cls, every test-sized model) runs on 1 thread — a second
thread only adds wake-ups there, and the plan of such a program is the same on every build.

Scheduling only: every count computes the same values (`use_deterministic_compute`, integer
kernels); a count that does not is left out of the plan (`ThreadPlan.limit`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

PLAN_VERSION = 2  # of the measurement method and of ThreadMemo's key (2: the busiest thread's CPU time)
MARGIN = 0.05  # a larger thread count must be this much faster (best block) to be taken
CPU_MARGIN = 0.2  # … or its busiest thread take this much less CPU time (best block) …
WALL_TOLERANCE = 0.1  # … while its best block is at most this much slower
MEASURE_SECONDS = 0.15  # alternating blocks stop once this is spent (after MIN_ROUNDS blocks of each count)
BLOCK_SECONDS = 0.01  # a block: runs of one count timed together (mean per run), the best block counts
MIN_ROUNDS = 9
MAX_ROUNDS = 100
MEMO_KEEP = 64
# ops per node (`kernel_work`) below which a program runs on 1 thread unmeasured: digits (84 K, 0.054 →
# 0.077 ms with a 2nd thread) and PP-OCR cls (81 K, 0.99 → 1.38 ms) are below, PP-OCRv4 rec (1.5 M,
# 15.7 → 13.0 ms) and det (7 M, 43.4 → 36.4 ms) above (bench_compile, session 6)
SMALL_KERNEL_WORK = 150_000


@dataclass(frozen=True)
class ThreadPlan:
    """Best wall latency (ms per inference) by thread count, measured on the build machine, and the rule
    that turns a thread budget into the threads a session uses."""

    measured: dict[int, float]
    limit: int | None = None  # the most threads worth opening (None: no ceiling); `why` says why
    median: dict[int, float] = field(default_factory=dict, compare=False)
    rounds: int = 0
    machine: str = ""
    onnxruntime: str = ""
    work_per_kernel: float | None = None  # `kernel_work`'s ops per node, what decides whether to measure
    why: str = ""
    busiest_cpu: dict[int, float] = field(default_factory=dict, compare=False)  # CPU ms of the busiest thread

    def gains(self, more: int, fewer: int) -> bool:
        """Whether `more` threads were measured to gain over `fewer` (module docstring)."""
        by_wall = self.measured[more] < self.measured[fewer] * (1 - MARGIN) and \
            self.median.get(more, 0.0) <= self.median.get(fewer, 0.0)
        by_cpu = more in self.busiest_cpu and fewer in self.busiest_cpu and \
            self.busiest_cpu[more] < self.busiest_cpu[fewer] * (1 - CPU_MARGIN) and \
            self.measured[more] <= self.measured[fewer] * (1 + WALL_TOLERANCE)
        return by_wall or by_cpu

    def threads_for(self, budget: int) -> int:
        """The threads a session of this program uses when given `budget` threads (module docstring)."""
        budget = max(1, int(budget))
        counts = sorted(c for c in self.measured if c <= budget)
        if not counts:  # nothing measured (small kernels, or built with one thread)
            return min(budget, self.limit) if self.limit is not None else budget
        chosen = counts[0]
        for c in counts[1:]:
            if self.gains(c, chosen):
                chosen = c
        if chosen == max(self.measured) and budget > chosen:
            chosen = budget  # still gaining at the largest count measured: the budget is the user's to give
        return min(chosen, self.limit) if self.limit is not None else chosen

    def to_json(self) -> dict[str, Any]:
        return {"rule": f"fewest threads unless more are > {MARGIN:.0%} faster (best block) and not slower (median "
                        f"block), or their busiest thread takes > {CPU_MARGIN:.0%} less CPU (best block) and their best block is "
                        f"< {WALL_TOLERANCE:.0%} slower",
                "best ms": {str(c): round(v, 4) for c, v in sorted(self.measured.items())},
                "median ms": {str(c): round(v, 4) for c, v in sorted(self.median.items())},
                "busiest thread cpu ms": {str(c): round(v, 4) for c, v in sorted(self.busiest_cpu.items())},
                "rounds": self.rounds, "limit": self.limit, "why": self.why, "machine": self.machine,
                "onnxruntime": self.onnxruntime,
                "work per kernel": round(self.work_per_kernel) if self.work_per_kernel is not None else None,
                "uses": {str(c): self.threads_for(c) for c in sorted({1, 2, *self.measured})}}

    @classmethod
    def from_json(cls, data: Any) -> ThreadPlan | None:
        """The plan a manifest stores, or None when there is none or it is not one (then the budget is used)."""
        if not isinstance(data, Mapping):
            return None
        try:
            measured = {int(c): float(v) for c, v in data["best ms"].items()}
            median = {int(c): float(v) for c, v in (data.get("median ms") or {}).items()}
            busiest = {int(c): float(v) for c, v in (data.get("busiest thread cpu ms") or {}).items()}
            limit = data.get("limit")
            limit = int(limit) if limit is not None else None
            work = data.get("work per kernel")
            work = float(work) if work is not None else None
            rounds = int(data.get("rounds") or 0)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if (measured and min(measured) < 1) or (limit is not None and limit < 1):
            return None
        return cls(measured, limit, median, rounds, str(data.get("machine", "")), str(data.get("onnxruntime", "")),
                   work, str(data.get("why") or ""), busiest)

    def describe(self, budget: int | None = None) -> str:
        """One line for hb_model_info: what each budget gets, and the measurement or reason behind it."""
        uses = ", ".join(f"{c} → {self.threads_for(c)}" for c in sorted({1, 2, *self.measured}))
        if self.measured:
            basis = "measured when built (best / median block wall, busiest thread's CPU): " + ", ".join(
                f"{c} thread{'s' if c > 1 else ''} {v:.3f}" + (f" / {self.median[c]:.3f}" if c in self.median else "")
                + (f", {self.busiest_cpu[c]:.3f}" if c in self.busiest_cpu else "") + " ms"
                for c, v in sorted(self.measured.items()))
            if self.limit is not None:
                basis += f"; at most {self.limit}: {self.why}"
        else:
            basis = self.why or "not measured"
        line = f"threads (budget → used): {uses}; {basis}"
        if budget is not None:
            line += f"; a budget of {budget} uses {self.threads_for(budget)}"
        return line


def plan_of(manifest: Mapping[str, Any] | None) -> ThreadPlan | None:
    """The `ThreadPlan` an `.hbm` manifest records (``build.threads``), or None."""
    build = (manifest or {}).get("build")
    return ThreadPlan.from_json(build.get("threads")) if isinstance(build, Mapping) else None


def candidate_counts(budget: int) -> list[int]:
    """1, 2, 4 … below `budget`, and `budget` itself."""
    counts, c = [], 1
    while c < budget:
        counts.append(c)
        c *= 2
    return [*counts, max(1, budget)]


def measure_plan(program: bytes | onnx.ModelProto, budget: int, *, seconds: float = MEASURE_SECONDS,
                 min_rounds: int = MIN_ROUNDS, max_rounds: int = MAX_ROUNDS, seed: int = 0) -> ThreadPlan:
    """Measure `program` at `candidate_counts(budget)` threads (capped at this machine's cores)."""
    import numpy as np
    import onnxruntime as ort

    from engine.runtime.feeds import random_feeds
    from engine.runtime.session import available_threads, open_session

    if isinstance(program, onnx.ModelProto):
        program = program.SerializeToString()
    counts = candidate_counts(available_threads(budget))
    sessions = {c: open_session(program, c, "the program") for c in counts}
    feeds = random_feeds(sessions[1].get_inputs(), seed)
    reference = sessions[1].run(None, feeds)  # also each session's warm-up run
    limit, why = None, "measured"
    for c in counts[1:]:
        values = sessions[c].run(None, feeds)
        if not all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(values, reference)):
            limit = counts[counts.index(c) - 1]
            counts = counts[:counts.index(c)]
            why = f"{c} threads gave other values than 1 thread"
            break
    per_block = {}
    for c in counts:  # a block is one run or BLOCK_SECONDS of runs: a tiny program's run is a few µs
        t0 = time.perf_counter()
        sessions[c].run(None, feeds)
        per_block[c] = max(1, min(1000, int(BLOCK_SECONDS / max(time.perf_counter() - t0, 1e-6))))
    times: dict[int, list[float]] = {c: [] for c in counts}
    cpu: dict[int, list[float]] = {c: [] for c in counts}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < seconds):
        for c in (counts if rounds % 2 == 0 else counts[::-1]):  # alternating: both see the same load
            t0, main0, all0 = time.perf_counter(), time.thread_time(), time.process_time()
            for _ in range(per_block[c]):
                sessions[c].run(None, feeds)
            times[c].append((time.perf_counter() - t0) / per_block[c])
            main, others = time.thread_time() - main0, time.process_time() - all0 - (time.thread_time() - main0)
            cpu[c].append(max(main, others / (c - 1) if c > 1 else 0.0) / per_block[c])
        rounds += 1
    return ThreadPlan({c: min(t) * 1e3 for c, t in times.items()}, limit,
                      {c: statistics.median(t) * 1e3 for c, t in times.items()}, rounds,
                      platform.processor() or platform.machine(), ort.__version__, why=why,
                      busiest_cpu={c: min(t) * 1e3 for c, t in cpu.items()})


_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "ConvTranspose": 1, "QLinearConv": 3}
_MATMUL_OPS = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


def kernel_work(program: onnx.ModelProto, types: Mapping[str, Any]) -> tuple[int, int]:
    """(ops, nodes) of the program: a conv counts its multiply-accumulates (output elements × weight
    elements per output channel), a matmul output elements × its inner dimension, any other node its
    largest output's elements. `types`: name → `engine.compile.program.TensorType` (the program's
    `tensor_types`); a value of unknown size counts 0."""
    import math

    weights = {t.name: list(t.dims) for t in program.graph.initializer}

    def elements(name: str) -> int:
        t = types.get(name)
        return int(t.elements or 0) if t is not None else 0

    total = 0
    for node in program.graph.node:
        out = max((elements(o) for o in node.output if o), default=0)
        if node.op_type in _WEIGHT_INPUT and len(node.input) > _WEIGHT_INPUT[node.op_type]:
            w = node.input[_WEIGHT_INPUT[node.op_type]]
            dims = weights.get(w) or list((types.get(w).shape or ()) if types.get(w) is not None else ())
            out *= math.prod(d for d in dims[1:] if isinstance(d, int)) if dims else 1
        elif node.op_type in _MATMUL_OPS:
            a = types.get(node.input[0])
            if a is not None and a.static and a.shape:
                out *= int(a.shape[-1])
        total += out
    return total, len(program.graph.node)


def plan_for(program: onnx.ModelProto, budget: int, types: Mapping[str, Any], *, digest: str | None = None,
             memo: ThreadMemo | None = None) -> ThreadPlan:
    """The program's thread plan for a build with `budget` threads (compile's `jobs`, capped at the
    cores): 1 thread without measuring when its kernels are small (`SMALL_KERNEL_WORK`), nothing to
    decide with one thread, else `measure_plan` (through `memo` when given)."""
    from dataclasses import replace

    from engine.runtime.session import available_threads

    work, nodes = kernel_work(program, types)
    per_kernel = work / max(nodes, 1)
    if per_kernel < SMALL_KERNEL_WORK:
        return ThreadPlan({}, 1, work_per_kernel=per_kernel,
                          why=f"small kernels ({per_kernel:,.0f} ops per node < {SMALL_KERNEL_WORK:,}): "
                              "a second thread only adds wake-ups")
    if available_threads(budget) < 2:
        return ThreadPlan({}, None, work_per_kernel=per_kernel, why="built with one thread: not measured")
    plan = memo.plan(program, budget, digest) if memo is not None else measure_plan(program, budget)
    return replace(plan, work_per_kernel=per_kernel)


@dataclass(frozen=True)
class ThreadMemo:
    """Plans kept in `folder` by (program structure, counts measured, onnxruntime, machine): a program
    of the same operators and wiring (`engine.compile.perf.program_structure`; other constants) is not
    measured again. Only an accelerator: a missing or unreadable entry is measured."""

    folder: Path

    def key(self, program: onnx.ModelProto, budget: int, digest: str | None = None) -> str:
        import onnxruntime as ort

        from engine.compile.perf import program_structure
        from engine.runtime.session import available_threads

        what = [PLAN_VERSION, program_structure(program, digest), candidate_counts(available_threads(budget)),
                ort.__version__, platform.machine(), platform.processor()]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]

    def plan(self, program: bytes | onnx.ModelProto, budget: int, digest: str | None = None) -> ThreadPlan:
        """`measure_plan(program, budget)`, from the memo when there. `digest`: the sha256 of the program's bytes."""
        from engine.pipeline.cache import atomic_write_text

        model = onnx.load_from_string(program) if isinstance(program, bytes) else program
        path = Path(self.folder) / f"{self.key(model, budget, digest)}.json"
        try:
            kept = ThreadPlan.from_json(json.loads(path.read_text()))
            if kept is not None:
                return kept
        except (OSError, ValueError):
            pass
        plan = measure_plan(program, budget)
        try:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(plan.to_json()))
            self._cap()
        except OSError:
            pass
        return plan

    def _cap(self) -> None:
        """Keep the newest MEMO_KEEP plans (keyed by program, not owned by a stage entry)."""
        try:
            files = sorted(Path(self.folder).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:
            return
        for old in files[MEMO_KEEP:]:
            old.unlink(missing_ok=True)
