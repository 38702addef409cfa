"""One config text → the problems the CLI would report, placed on tokens, plus the model's.

This is the only place hblsp calls the engine's checks: `load_text` (YAML, schema, semantic
rules; guarded against inputs the engine does not expect from an editor) and `model_problems`
(the model-aware rules once the model is read). `to_diagnostic` converts a `Problem` at the edge,
carrying what code actions need in `data` so they never re-analyse.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsprotocol import types

from engine.config import load_config_text
from engine.config.inputs import check_with_model
from engine.config.loader import MAX_CONFIG_BYTES, LoadResult, locate
from engine.config.values import resolve_path
from engine.problems import Problem, Severity, Span, error
from hblsp.models import MP, ModelSource, ModelState
from hblsp.positions import YAML_BREAK, Positions

log = logging.getLogger(__name__)

SOURCE = "hb_compile"
SURROGATE = re.compile("[\ud800-\udfff]")


def load_text(text: str, base_dir: Path, check_files: bool = True) -> LoadResult:
    """The engine's `load_config_text`, after the checks `read_config` does on bytes. The rules do not parse
    the model here (a check thread: protobuf holds the GIL, an 80 MB model froze the event loop for 0.77 s);
    `ModelCache` reads it in a child process and `merge` lets the model rules' count decide."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        return LoadResult(None, [error("config-too-big", f"The config is {size} bytes; a config is expected to be "
                                       f"under {MAX_CONFIG_BYTES} bytes", span=_first_char())])
    bad = SURROGATE.search(text)
    if bad is not None:  # undecodable bytes reach us as lone surrogates: say where the first one is
        before = YAML_BREAK.split(text[:bad.start()])
        line, col = len(before) - 1, len(before[-1])
        return LoadResult(None, [error("config-encoding", f"The config is not UTF-8 text (byte "
                                       f"{len(text[:bad.start()].encode('utf-8', 'surrogatepass'))})",
                                       span=Span(line, col, line, col + 1))])
    return load_config_text(text, base_dir, check_files=check_files, read_model=False)


def _first_char() -> Span:
    return Span(0, 0, 0, 1)


def model_source(data: dict[str, Any] | None, base_dir: Path) -> ModelSource | None:
    """The model files a config names, resolved like the CLI resolves them."""
    mp = (data or {}).get(MP)
    if not isinstance(mp, dict):
        return None

    def path(key: str) -> Path | None:
        v = mp.get(key)
        if not isinstance(v, str) or not v.strip():
            return None
        return resolve_path(v.strip(), base_dir)

    onnx_path = path("onnx_model")
    if onnx_path is not None:
        return ModelSource("onnx_model", (onnx_path,))
    caffe, proto = path("caffe_model"), path("prototxt")
    if caffe is not None and proto is not None:
        return ModelSource("caffe_model", (caffe, proto))
    return None


def model_problems(result: LoadResult, data: dict[str, Any] | None, state: ModelState | None) -> list[Problem]:
    """Problems that need the model, placed on their tokens (none while the model is unknown)."""
    if state is None or result.doc is None or data is None:
        return []
    problems = list(state.problems)
    if state.info is not None:
        refused = result.refused_paths()
        try:
            problems += [p for p in check_with_model(result.accepted(), state.info) if not _about_refused(p, refused)]
        except Exception:  # rules written for schema-valid input may trip over a half-typed one
            log.info("model rules skipped on this version", exc_info=True)
    return locate(problems, result.doc, None)


def _about_refused(p: Problem, refused: frozenset[tuple]) -> bool:
    """A model problem on a refused key, or one on its whole section (a key the model needs is
    missing) while that section has a refused key: told already, or not true (the key is there)."""
    path = tuple(p.path or ())
    return path[:2] in refused or (len(path) == 1 and any(r[0] == path[0] for r in refused))


@dataclass(frozen=True)
class Analysis:
    """Everything known about one document version: its problems, in document order."""

    problems: tuple[Problem, ...]
    data: dict[str, Any] | None
    model: ModelState | None


def merge(result: LoadResult, extra: list[Problem]) -> tuple[Problem, ...]:
    """The config's problems and the model's, each once. When the model rules counted the per-input lists
    against the model's inputs, the count errors the config rules derived from the other lists (a model
    they could not read: check_files off, a Caffe model) give way: the model's count decides. Likewise a shape
    that is not 4-D on an input the model has as 4-D is told by the model's rank, not by the config rule's advice
    to make the input a featuremap."""
    seen, out = set(), []
    model_counted = any(_counted_by(p, "model") for p in extra)
    wrong_rank = {p.data.get("item") for p in extra if p.code == "input-shape-rank"}
    own = [p for p in result.problems if not (model_counted and _counted_by(p, "lists"))
           and not (p.code == "input-not-4d" and p.data.get("item") in wrong_rank)]  # the model's rank says more
    for p in own + extra:
        key = (p.code, p.message, p.span)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return tuple(sorted(out, key=lambda p: (p.span.line, p.span.col) if p.span else (-1, -1)))


def _counted_by(p: Problem, by: str) -> bool:
    return p.code == "list-count" and p.data.get("by") == by


def analyse(result: LoadResult, data: dict[str, Any] | None, state: ModelState | None) -> Analysis:
    return Analysis(merge(result, model_problems(result, data, state)), data, state)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def to_diagnostic(p: Problem, positions: Positions) -> types.Diagnostic:
    """Same message, code and place as the CLI's line; `data` keeps the key path and fix hints."""
    tags = [types.DiagnosticTag.Deprecated] if p.code == "deprecated-key" else None
    return types.Diagnostic(
        range=positions.range(p.span),
        message=p.message,
        severity=types.DiagnosticSeverity(int(p.severity)),
        code=p.code,
        source=SOURCE,
        tags=tags,
        data={"path": _jsonable(p.path), "hints": _jsonable(p.data),
              "fixes": [{"title": f.title, "newText": f.new_text} for f in p.fixes]},
    )


def is_error(p: Problem) -> bool:
    return p.severity == Severity.ERROR
