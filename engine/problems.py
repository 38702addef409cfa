"""Problems: the one value every check returns, rendered by the CLI and the language server alike.

A check never raises for bad user input; it returns `Problem`s. Code that must stop (a stage that
cannot go on) raises `HbError` carrying its problems; the CLI prints them in one place and exits
non-zero, the language server turns them into diagnostics.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

KeyPath = tuple  # ("input_parameters", "input_type_rt") — str keys, int list indices


class Severity(enum.IntEnum):
    """Ordered like LSP's DiagnosticSeverity so conversion is a cast."""

    ERROR = 1
    WARNING = 2
    INFO = 3
    HINT = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Span:
    """A range in a text file, 0-based lines, columns in characters (code points)."""

    line: int
    col: int
    end_line: int
    end_col: int

    def human(self) -> str:
        return f"{self.line + 1}:{self.col + 1}"


@dataclass(frozen=True)
class Fix:
    """A replacement for `span` (or for the problem's own span) that resolves the problem."""

    title: str
    new_text: str
    span: Span | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth saying) about an input, with where it is.

    `code` is stable and documented (e.g. ``input-nv12-odd-size``); `message` uses hb_compile's
    wording where it has one; `path` is the config key path, `span` the token in the YAML text.
    """

    code: str
    severity: Severity
    message: str
    path: KeyPath = ()
    span: Span | None = None
    file: str | None = None
    fixes: tuple[Fix, ...] = ()
    data: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_error(self) -> bool:
        return self.severity == Severity.ERROR

    def at(self, span: Span | None, file: str | None = None) -> Problem:
        """The same problem placed on a token (used once spans are known)."""
        return Problem(self.code, self.severity, self.message, self.path, span or self.span,
                       file or self.file, self.fixes, self.data)

    def render(self) -> str:
        """One line: ``file:line:col: error: message`` (location parts only when known)."""
        where = ""
        if self.file:
            where = self.file + (f":{self.span.human()}" if self.span else "") + ": "
        return f"{where}{self.severity.label}: {self.message}"


def error(code: str, message: str, path: KeyPath = (), **kw) -> Problem:
    return Problem(code, Severity.ERROR, message, tuple(path), **kw)


def warning(code: str, message: str, path: KeyPath = (), **kw) -> Problem:
    return Problem(code, Severity.WARNING, message, tuple(path), **kw)


def info(code: str, message: str, path: KeyPath = (), **kw) -> Problem:
    return Problem(code, Severity.INFO, message, tuple(path), **kw)


def name_list(names: Sequence[str], limit: int, quote: bool = False) -> str:
    """The first `limit` names for a one-line message, then how many more: "a, b, c and 7 more"."""
    shown = ", ".join(f"'{n}'" if quote else str(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def errors(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]


class HbError(Exception):
    """A run cannot go on. Carries the problems that say why; never used for bugs."""

    def __init__(self, problems: Problem | Sequence[Problem]):
        if isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("; ".join(p.message for p in self.problems))


class ConfigError(HbError):
    """The YAML config is malformed or violates the schema / semantic rules."""


class ModelError(HbError):
    """The model file is missing, corrupt, or uses something we cannot convert."""


class CalibrationDataError(HbError):
    """Calibration samples are missing, of the wrong size, or hold NaN / Inf."""


class StageError(HbError):
    """A pipeline stage failed on valid-looking input (wrapped with the stage name)."""
