"""Load the engine's modules before the first run needs them.

Stages import their heavy parts where they use them (`engine.compile`, the lowering, the report),
so a command-line run that stops early never pays for the rest. A long-lived process — the
language server once a config is open, the daemon once it listens — knows a run is coming: loading
every module then moves ~0.3–0.8 s (onnx, onnxruntime, the stage modules and what they import
lazily) off the user's first save.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger("hbcompile")


def engine_modules() -> list[str]:
    """Every module of the `engine` package, by name (packages before their modules)."""
    import engine

    return [m.name for m in pkgutil.walk_packages(engine.__path__, "engine.")]


def preload() -> list[str]:
    """Import every engine module; the names of those that could not be imported (an optional
    frontend's dependency missing: the run that needs it reports the failure where it happens)."""
    failed = []
    for name in engine_modules():
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a preload never takes the process down
            log.debug("preload: %s not loaded: %s", name, exc)
            failed.append(name)
    return failed
