"""`engine.pipeline.preload`: a fresh process has the modules a run imports lazily loaded after it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

LAZY = ("engine.compile.optimize", "engine.compile.perf_html", "engine.quantize.lower.conv", "engine.tools.verifier")


def _loaded_after(code: str) -> dict[str, bool]:
    script = f"import json, sys\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {LAZY!r}}}))"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_preload_imports_what_the_stages_import_only_when_they_run():
    before = _loaded_after("import engine.pipeline, engine.stages")
    assert not any(before.values()), before  # else this test proves nothing
    after = _loaded_after("from engine.pipeline import preload\nassert preload() == []")
    assert all(after.values()), after


def test_every_engine_module_is_listed_and_imports():
    from engine.pipeline.preload import engine_modules

    names = engine_modules()
    assert set(LAZY) <= set(names)
    assert "engine.pipeline.preload" in names and len(names) == len(set(names))
