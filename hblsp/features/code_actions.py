"""Code actions (quick fixes) for the problems under the cursor, each checked before it is offered.

From the problems of this version (the ones published as diagnostics; their `data` carries the
hints):
- missing keys (`missing`): add them under their mapping, with values the config accepts;
- an invalid value (`allowed`, closest first): one action per allowed value;
- a misspelt key (`did_you_mean`): rename it;
- a deprecated key (`replacement`): rename it to its replacement; remove it (it has no effect);
- a layout that contradicts the shape (`replace_item`, and nv12 inputs with odd H/W because the
  layout picks the wrong axes): use the other layout.

Keys added to a flow-style mapping (`input_parameters: {…}`) go inside its braces as `, key: value`.
Every candidate edit is applied to the text and checked again with the same analysis: it is
offered only if the text still reads as YAML, the problem is gone and it adds no error that the other candidates for the same
problem do not add too (errors every candidate reveals were hidden behind the first one — the
CLI stops at schema errors — and are not the fix's doing).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from lsprotocol import types

from engine.config import values as V
from engine.config.yamltree import YamlDoc, YNode
from engine.problems import Problem, Span
from hblsp import schema_view as sv
from hblsp.analysis import Analysis, analyse, is_error, load_text, to_diagnostic
from hblsp.cursor import indent_unit
from hblsp.documents import ConfigDoc
from hblsp.models import ModelState

if TYPE_CHECKING:
    from hblsp.server import HbServer

# The nv12 rule reads H and W from input_shape through this key's layout (reference §5).
LAYOUT_KEY = ("input_parameters", "input_layout_train")
MAX_CANDIDATES = 16


@dataclass(frozen=True)
class Edit:
    start: int  # text offsets
    end: int
    text: str


@dataclass(frozen=True)
class Candidate:
    title: str
    edits: tuple[Edit, ...]


def apply(text: str, edits: tuple[Edit, ...]) -> str:
    for e in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[:e.start] + e.text + text[e.end:]
    return text


def yaml_scalar(value: str) -> str:
    """`value` as a YAML scalar that reads back as the same string (quoted only when needed)."""
    try:
        plain_ok = yaml.safe_load(value) == value and "\n" not in value and value == value.strip()
    except yaml.YAMLError:
        plain_ok = False
    return value if plain_ok else "'" + value.replace("'", "''") + "'"


def yaml_flow_scalar(value: str) -> str:
    """`value` as a scalar inside `{…}` / `[…]`, where `,` and brackets end a plain scalar."""
    text = yaml_scalar(value)
    if text == value and any(c in value for c in ",[]{}"):
        return "'" + value.replace("'", "''") + "'"
    return text


class Fixer:
    """Builds and checks the candidate fixes for the problems of one document version."""

    def __init__(self, doc: ConfigDoc, model: ModelState | None):
        self.doc = doc
        self.model = model
        self.text = doc.text
        self.p = doc.positions
        self.tree: YamlDoc | None = doc.load().doc
        self.analysis = doc.analysis(model)
        self.errors = {(q.code, q.message) for q in self.analysis.problems if is_error(q)}

    # ---- locations
    def offsets(self, span: Span) -> tuple[int, int]:
        return self.p.yaml_offset(span.line, span.col), self.p.yaml_offset(span.end_line, span.end_col)

    def token_edit(self, span: Span, new: str) -> Edit:
        """Replace a value token, keeping its quotes when it had them."""
        start, end = self.offsets(span)
        raw = self.text[start:end]
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            return Edit(start + 1, end - 1, new)
        return Edit(start, end, yaml_scalar(new))

    def after_line(self, offset: int) -> int:
        """Offset of the start of the line after the one holding `offset` (or the text's end)."""
        line = self.p.lsp_line_of(offset)
        starts = self.p.line_starts
        return starts[line + 1] if line + 1 < len(starts) else len(self.text)

    def block_end(self, key: YNode, value: YNode) -> int:
        """Start of the line after the last line of `key: value` (comments below it stay below)."""
        if value.kind in ("map", "seq") and value.items:
            last = value.items[-1]
            return self.block_end(*last) if value.kind == "map" else self.block_end(last, last)
        node = value
        if value.kind == "scalar" and value.value is None and \
                (value.span.line, value.span.col) == (value.span.end_line, value.span.end_col):
            node = key  # an empty value: its mark may sit on a later line
        end = self.p.yaml_offset(node.span.end_line, node.span.end_col)
        if end > 0 and self.text[end - 1] in "\r\n":
            return end  # a block scalar ends at the start of the next line
        line_start = self.p.line_starts[self.p.lsp_line_of(end)]
        if not self.text[line_start:end].strip():
            return line_start
        return self.after_line(end)

    def flow_insertion(self, node: YNode, additions: dict[str, Any]) -> Edit | None:
        """`, key: value` before the `}` of a flow mapping (`{a: 1}`): a block line there would not parse."""
        end = self.p.yaml_offset(node.span.end_line, node.span.end_col)
        close = self.text.rfind("}", 0, end)
        if close < 0:
            return None
        at = len(self.text[:close].rstrip())
        sep = "" if self.text[at - 1] in "{" else (" " if self.text[at - 1] == "," else ", ")
        return Edit(at, at, sep + self.render_flow(additions))

    def insertion(self, path: tuple, lines: list[str], additions: dict[str, Any] | None = None) -> Edit | None:
        """An edit adding `lines` (already `key: value`) as the last keys of the mapping at `path`
        (`additions`, the same keys as a dict, when that mapping is written in flow style)."""
        if self.tree is None or self.tree.root is None:
            return None
        node = self.tree.node_at(path)
        unit = indent_unit(self.p.lines)
        if node is not None and node.kind == "map" and node.flow:
            return self.flow_insertion(node, additions) if additions is not None else None
        if node is not None and node.kind == "map" and node.items:
            key, value = node.items[-1]
            indent, at = key.span.col, self.block_end(key, value)
        elif path and (node is None or (node.kind == "scalar" and node.value is None)):
            key_span = self.tree.key_span(path)
            if key_span is None:
                return None
            indent = key_span.col + unit
            at = self.after_line(self.p.yaml_offset(key_span.line, key_span.col))
        else:
            return None
        body = "".join(" " * indent + line + "\n" for line in lines)
        if at == len(self.text) and self.text and not self.text.endswith(("\n", "\r")):
            body = "\n" + body.rstrip("\n")
        return Edit(at, at, body)

    # ---- checking a candidate
    def check(self, edits: tuple[Edit, ...]) -> Analysis:
        text = apply(self.text, edits)
        result = load_text(text, self.doc.base_dir, self.doc.check_files)
        return analyse(result, result.data, self.model)

    def _new_errors(self, after: Analysis) -> set[tuple[str, str]]:
        return {(q.code, q.message) for q in after.problems if is_error(q)} - self.errors

    def _breaks_yaml(self, after: Analysis) -> bool:
        """The edit made text that no longer reads as YAML: every other check stopped there, so the
        problem looks gone; such a candidate is never offered."""
        return any(code.startswith("yaml-") for code, _ in self._new_errors(after))

    @staticmethod
    def _same(a: Problem, b: Problem) -> bool:
        return a.code == b.code and a.path == b.path and a.data.get("item") == b.data.get("item")

    def verified(self, problem: Problem, candidates: list[Candidate]) -> list[Candidate]:
        checked = []
        for c in candidates[:MAX_CANDIDATES]:
            after = self.check(c.edits)
            if self._breaks_yaml(after) or any(self._same(problem, q) for q in after.problems):
                continue
            checked.append((c, self._new_errors(after)))
        if not checked:
            return []
        revealed = set.intersection(*(new for _, new in checked))
        return [c for c, new in checked if not (new - revealed)]

    # ---- candidates per hint
    def candidates(self, problem: Problem) -> Iterator[Candidate]:
        hints = problem.data
        if problem.span is not None:
            for fix in problem.fixes:
                s, e = self.offsets(fix.span or problem.span)
                yield Candidate(fix.title, (Edit(s, e, fix.new_text),))
        if hints.get("did_you_mean") and problem.span is not None:
            yield self.rename(problem, hints["did_you_mean"], f"Rename '{problem.path[-1]}' to "
                              f"'{hints['did_you_mean']}'")
        if hints.get("allowed") and problem.span is not None:
            yield from self.replacements(problem, hints["allowed"])
        if hints.get("replace_item") and problem.span is not None:
            new = hints["replace_item"]
            yield Candidate(f"Use {new} in {problem.path[-1]}", (self.token_edit(problem.span, new),))
        if problem.code == "input-nv12-odd-size" and "item" in hints:
            yield from self.switch_layout(hints["item"])
        if problem.code == "deprecated-key" and problem.span is not None and not hints.get("in_use"):
            yield from self.deprecated(problem, hints.get("replacement"))  # not a key hbcompile still applies
        missing = hints.get("missing")
        if not missing and hints.get("inputs") and len(problem.path) == 1:  # input names the model needs
            missing = [k for k in sv.key_names(problem.path) if self.names_inputs(problem.path + (k,))][:1]
        if missing:
            c = self.add_missing(problem.path, list(missing))
            if c is not None:
                yield c

    def rename(self, problem: Problem, new_key: str, title: str) -> Candidate:
        s, e = self.offsets(problem.span)
        return Candidate(title, (Edit(s, e, new_key),))

    def replacements(self, problem: Problem, allowed: list[Any]) -> Iterator[Candidate]:
        s = sv.at(tuple(str(x) for x in problem.path))
        public = [c.value for c in sv.value_choices(s)]
        start, end = self.offsets(problem.span)
        current = self.text[start:end].strip("'\"")
        sep = sv.separator(s)
        if sep and sep in current:
            return  # the problem sits on a whole list; a single value would drop the others
        for value in allowed:
            value = str(value)
            if public and value not in public:
                continue
            if value == current:
                continue
            yield Candidate(f"Replace '{current}' with '{value}'", (self.token_edit(problem.span, value),))

    def switch_layout(self, item: int) -> Iterator[Candidate]:
        if self.tree is None:
            return
        span = self.tree.item_span(LAYOUT_KEY, item)
        if span is None:
            return
        s, e = self.offsets(span)
        current = self.text[s:e]
        for other in sv.value_choices(sv.at(LAYOUT_KEY)):
            if other.value != current:
                yield Candidate(f"Use {other.value} in {LAYOUT_KEY[-1]} (input {item})",
                                (self.token_edit(span, other.value),))

    def deprecated(self, problem: Problem, replacement: str | None) -> Iterator[Candidate]:
        section, key = problem.path[0], problem.path[-1]
        if replacement:
            parts = replacement.split(".")
            parent = self.tree.node_at(problem.path[:-1]) if self.tree else None
            if len(parts) == 2 and parts[0] == section and parent is not None and parent.get(parts[1]) is None:
                yield self.rename(problem, parts[1], f"Rename deprecated '{key}' to '{parts[1]}'")
        parent = self.tree.node_at(problem.path[:-1]) if self.tree else None
        key_node = parent.key_node(key) if parent is not None else None
        value = parent.get(key) if parent is not None else None
        if key_node is not None and value is not None:
            key_start = self.offsets(key_node.span)[0]
            start = self.p.line_starts[self.p.lsp_line_of(key_start)]
            if not self.text[start:key_start].strip():  # the key starts its line: remove whole lines
                yield Candidate(f"Remove deprecated '{key}'", (Edit(start, self.block_end(key_node, value), ""),))

    # ---- missing keys
    @staticmethod
    def names_inputs(path: tuple[str, ...]) -> bool:
        """A per-input list of the model's input names (the key that orders the inputs)."""
        s = sv.at(path) or {}
        return sv.model_values(s) == "input_name" and s.get("x-hb-list") == "per-input"

    def count_inputs(self) -> int:
        data = self.analysis.data or {}
        counts = [len(V.split_list(body.get(key))) for section, body in data.items() if isinstance(body, dict)
                  for key in body if (sv.at((section, key)) or {}).get("x-hb-list") == "per-input"]
        if self.model is not None and self.model.info is not None:
            counts.append(len(self.model.info.inputs))
        return max(counts + [1])

    def value_candidates(self, path: tuple[str, ...]) -> list[str]:
        s = sv.at(path) or {}
        n = self.count_inputs() if s.get("x-hb-list") == "per-input" else 1
        out: list[str] = []
        info = self.model.info if self.model is not None else None
        if sv.model_values(s) == "input_name" and info is not None:
            out.append("; ".join(info.input_names))
        default = s.get("default")
        if default not in (None, "", {}, []):
            out.append(str(default).lower() if isinstance(default, bool) else str(default))
        out += [str(e) for e in s.get("examples") or [] if isinstance(e, (str, int, float))]  # march: nash-e first
        for c in sv.value_choices(s):
            out.append(";".join([c.value] * n))
        return list(dict.fromkeys(out))

    @staticmethod
    def render(additions: dict[str, Any], unit: int) -> list[str]:
        """Nested `key: value` lines (a dict value is a mapping indented one step)."""
        lines = []
        for key, value in additions.items():
            if isinstance(value, dict):
                lines.append(f"{key}:")
                lines += [" " * unit + line for line in Fixer.render(value, unit)]
            else:
                lines.append(f"{key}: {yaml_scalar(value)}")
        return lines

    @staticmethod
    def render_flow(additions: dict[str, Any]) -> str:
        """The same keys in flow style: `a: 1, b: {c: 2}`."""
        return ", ".join(f"{key}: {{{Fixer.render_flow(value)}}}" if isinstance(value, dict)
                         else f"{key}: {yaml_flow_scalar(str(value))}" for key, value in additions.items())

    @staticmethod
    def slot(additions: dict[str, Any], path: tuple, mapping: tuple) -> dict[str, Any] | None:
        """The dict in `additions` that holds keys of the document mapping at `mapping`."""
        if mapping == path:
            return additions
        if mapping[:len(path)] == path and len(mapping) == len(path) + 1 and isinstance(additions.get(mapping[-1]), dict):
            return additions[mapping[-1]]
        return None

    def add_missing(self, path: tuple, missing: list[str]) -> Candidate | None:
        """Add the missing keys (a missing section comes with what it needs), each value checked."""
        while path and not set(missing) <= set(sv.key_names(tuple(path))):
            path = path[:-1]  # dependentRequired sits on the trigger key; keys go to its mapping
        path = tuple(path)
        unit = indent_unit(self.p.lines)
        additions: dict[str, Any] = {}
        pending = [(path, key) for key in missing]

        def edit() -> Edit | None:
            return self.insertion(path, self.render(additions, unit), additions)

        for _ in range(4):  # a new key may make others required (input_type_train → input_layout_train)
            while pending:
                mapping, key = pending.pop(0)
                target = self.slot(additions, path, mapping)
                if target is None or key in target:
                    continue
                if sv.types_of(sv.at(mapping + (key,)) or {}) == ["object"]:
                    target[key] = {}
                    pending += [(mapping + (key,), child) for child in sv.required(mapping + (key,))]
                    continue
                for option in self.value_candidates(mapping + (key,))[:MAX_CANDIDATES]:
                    target[key] = option
                    trial = edit()
                    if trial is None:
                        return None
                    after = self.check((trial,))
                    if not any(is_error(q) and q.path[:len(mapping) + 1] == mapping + (key,) for q in after.problems):
                        break
                else:
                    return None  # no value the config accepts
            trial = edit()
            if trial is None:
                return None
            for q in self.check((trial,)).problems:
                if q.code == "missing-key" and is_error(q) and self.slot(additions, path, tuple(q.path)) is not None:
                    pending += [(tuple(q.path), key) for key in q.data.get("missing", [])]
            if not pending:
                break
        final = edit()
        if final is None:
            return None
        shown = ", ".join(f"{k}: {v}" if not isinstance(v, dict) else k for k, v in additions.items())
        return Candidate(f"Add missing key{'s' if len(additions) > 1 else ''}: {shown}", (final,))

    # ---- the result
    def actions(self, problem: Problem, diagnostic: types.Diagnostic) -> list[types.CodeAction]:
        out = []
        for i, c in enumerate(self.verified(problem, list(self.candidates(problem)))):
            edits = [types.TextEdit(range=types.Range(start=self.p.position_at(e.start),
                                                      end=self.p.position_at(e.end)), new_text=e.text)
                     for e in c.edits]
            out.append(types.CodeAction(
                title=c.title, kind=types.CodeActionKind.QuickFix, diagnostics=[diagnostic], is_preferred=i == 0,
                edit=types.WorkspaceEdit(changes={self.doc.uri: edits})))
        return out


def _overlaps(a: types.Range, b: types.Range) -> bool:
    def key(p: types.Position) -> tuple[int, int]:
        return p.line, p.character
    return key(a.start) <= key(b.end) and key(b.start) <= key(a.end)


def actions_for(doc: ConfigDoc, rng: types.Range, model: ModelState | None) -> list[types.CodeAction]:
    """Pure core: the checked quick fixes for the problems overlapping `rng`."""
    if not doc.is_config:
        return []
    fixer = Fixer(doc, model)
    out: dict[tuple, types.CodeAction] = {}
    for problem in fixer.analysis.problems:
        diagnostic = to_diagnostic(problem, doc.positions)
        if not _overlaps(diagnostic.range, rng):
            continue
        for action in fixer.actions(problem, diagnostic):
            key = (action.title, repr(action.edit))
            if key in out:  # the same edit fixes two problems on one token: one entry, both named
                out[key].diagnostics = list(out[key].diagnostics or []) + [diagnostic]
            else:
                out[key] = action
    return list(out.values())


def register(ls: HbServer) -> None:
    @ls.feature(types.TEXT_DOCUMENT_CODE_ACTION,
                types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix]))
    async def on_code_action(ls: HbServer, params: types.CodeActionParams) -> list[types.CodeAction] | None:
        doc = ls.documents.get(params.text_document.uri)
        if doc is None or not doc.is_config:
            return None
        model = ls.models.peek(ls.model_sources.get(doc.uri))
        return await ls.in_pool(actions_for, doc, params.range, model)
