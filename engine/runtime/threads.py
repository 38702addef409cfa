"""How many threads of a budget an integer program uses: decided when the `.hbm` is built, honoured when it is opened.

Why: onnxruntime parallelizes a kernel whenever its work is large enough, and with more than one
thread every parallel kernel wakes a pool worker that does not spin (`session.NO_SPINNING`). A
program of many small kernels pays that wake-up per kernel and gains nothing: measured on the
2-core machine (bench_compile, session 6, ms per inference, wall) digits 0.054 → 0.077 and PP-OCR
cls 0.99 → 1.38 with a second thread, while PP-OCRv4 rec (15.7 → 13.0) and det (43.4 → 36.4) gain.

The rule is static — the program's work per kernel (`kernel_work`: conv and matmul multiply-accumulates,
other nodes' output elements, per node): below `SMALL_KERNEL_WORK` (digits 84 K, cls 81 K) one thread,
above it (rec 1.5 M, det 7 M) the whole budget. Session 7 first measured each large program at 1, 2, 4 …
threads when it was built; that cost the compile stage 1.5–2.6 s on det (a compiler_parameters edit
went from 3.6 % to 15 % of the full run, issue #8), made two builds of one config differ in their
`.hbm` bytes (timings in the manifest), and on the loaded machine the answer for rec flipped between
builds; for every program measured on a quiet machine it agreed with this rule.

The `ThreadPlan` is stored in the `.hbm`'s manifest (``build.threads``) and applied by
`engine.runtime.load(path, threads=N)`: `ThreadPlan.threads_for(N)`. Scheduling only: every thread
count computes the same values (`use_deterministic_compute`, integer kernels; `.bc` == `.hbm` at 1 and
2 threads is tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx

SMALL_KERNEL_WORK = 150_000  # ops per node below which a second thread only adds wake-ups


@dataclass(frozen=True)
class ThreadPlan:
    """The most threads worth opening for a program (None: the whole budget) and why."""

    limit: int | None = None
    work_per_kernel: float | None = None  # `kernel_work`'s ops per node, what decided
    why: str = ""

    def threads_for(self, budget: int) -> int:
        """The threads a session of this program uses when given `budget` threads."""
        budget = max(1, int(budget))
        return min(budget, self.limit) if self.limit is not None else budget

    def to_json(self) -> dict[str, Any]:
        return {"rule": f"1 thread below {SMALL_KERNEL_WORK:,} ops per node, else the whole budget",
                "limit": self.limit, "why": self.why,
                "work per kernel": round(self.work_per_kernel) if self.work_per_kernel is not None else None,
                "uses": {str(c): self.threads_for(c) for c in (1, 2, 4)}}

    @classmethod
    def from_json(cls, data: Any) -> ThreadPlan | None:
        """The plan a manifest stores, or None when there is none or it is not one (then the budget is used)."""
        if not isinstance(data, Mapping):
            return None
        try:
            limit = data.get("limit")
            limit = int(limit) if limit is not None else None
            work = data.get("work per kernel")
            work = float(work) if work is not None else None
        except (TypeError, ValueError):
            return None
        if limit is not None and limit < 1:
            return None
        return cls(limit, work, str(data.get("why") or ""))

    def describe(self, budget: int | None = None) -> str:
        """One line for hb_model_info: what each budget gets, and why."""
        uses = ", ".join(f"{c} → {self.threads_for(c)}" for c in (1, 2, 4))
        line = f"threads (budget → used): {uses}; {self.why or 'no reason recorded'}"
        if budget is not None:
            line += f"; a budget of {budget} uses {self.threads_for(budget)}"
        return line


def plan_of(manifest: Mapping[str, Any] | None) -> ThreadPlan | None:
    """The `ThreadPlan` an `.hbm` manifest records (``build.threads``), or None."""
    build = (manifest or {}).get("build")
    return ThreadPlan.from_json(build.get("threads")) if isinstance(build, Mapping) else None


def kernel_work(program: onnx.ModelProto, types: Mapping[str, Any]) -> tuple[int, int]:
    """(ops, nodes) of the program: a conv or matmul counts its multiply-accumulates, any other node its
    work as the static estimate counts it (`engine.compile.perf.node_work`: output elements, a pool's
    window). `types`: the program's `tensor_types`; a value of unknown size counts 0."""
    from engine.compile.perf import node_work

    total = 0
    for node in program.graph.node:
        macs, ops, _ = node_work(node, types)
        total += macs or int(ops)
    return total, len(program.graph.node)


def plan_for(program: onnx.ModelProto, types: Mapping[str, Any]) -> ThreadPlan:
    """The program's thread plan (module docstring): 1 thread for small kernels, else the whole budget."""
    work, nodes = kernel_work(program, types)
    per_kernel = work / max(nodes, 1)
    if per_kernel < SMALL_KERNEL_WORK:
        return ThreadPlan(1, per_kernel, f"small kernels ({per_kernel:,.0f} ops per node < {SMALL_KERNEL_WORK:,}): "
                                         "a second thread only adds wake-ups")
    return ThreadPlan(None, per_kernel, f"large kernels ({per_kernel:,.0f} ops per node ≥ {SMALL_KERNEL_WORK:,}): "
                                        "every thread of the budget")
