"""Which open documents are hb_compile configs: by file name, language id, or a first-line modeline.

Every other YAML file gets nothing from hblsp (no diagnostics, completion or hover): a server
attached to all YAML must stay silent on Kubernetes manifests and CI files.

A modeline is a comment on the first line naming the tool, e.g. ``# hb_compile config``,
``# hblsp``, or yaml-language-server's ``# yaml-language-server: $schema=.../hb_compile.schema.json``.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from urllib.parse import unquote, urlparse

from hblsp.settings import Settings

MODELINE = re.compile(r"^\s*#.*\b(hb_compile|hb_mapper|hblsp|hbcompile)\b", re.IGNORECASE)


def file_name(uri: str) -> str:
    return posixpath.basename(unquote(urlparse(uri).path))


def first_line(text: str) -> str:
    end = len(text)
    for sep in ("\n", "\r"):
        i = text.find(sep, 0, 4096)
        if i != -1:
            end = min(end, i)
    return text[:min(end, 4096)]


def is_hb_config(uri: str, text: str, language_id: str | None, settings: Settings) -> bool:
    if language_id and language_id in settings.language_ids:
        return True
    name = file_name(uri).lower()
    if any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in settings.file_patterns):
        return True
    return settings.modeline and bool(MODELINE.match(first_line(text)))
