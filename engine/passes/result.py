"""What a pass reports: how many rewrites it made and, for every refused match, why.

A refusal is data (`Skip(node, reason)`), never a bare False, so the optimize stage can tell the
user why a BatchNormalization was not folded or a HardSwish was not fused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import onnx


@dataclass(frozen=True)
class Skip:
    """A match the pass found and refused: the node it is about and the reason, in plain words."""

    node: str
    reason: str


@dataclass
class PassResult:
    """`changed` counts rewrites (0 means the pass had nothing to do); `skipped` lists refusals."""

    changed: int = 0
    skipped: list[Skip] = field(default_factory=list)

    def skip(self, node: str, reason: str) -> None:
        self.skipped.append(Skip(node, reason))


class Pass(Protocol):
    """Every pass module: a name and version (for the optimize stage key) and `run`.

    `run` rewrites the model in place and returns what it did.
    """

    NAME: str
    VERSION: int

    def run(self, model: onnx.ModelProto) -> PassResult: ...
