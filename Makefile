# hbcompile — every install step lives here so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: venv demo test test-fast bench lint docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: venv
	cd examples/digits && ../../$(VENV)/bin/hb_compile -c digits.hb.yaml

test: venv vsix browser
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

# Debian's Chromium renders the perf HTML in its test; the test skips (saying why) without it.
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the HTML rendering test will be skipped"; }

test-fast: venv
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q -m "not slow"

# The VS Code extension: npm ci from the committed lock file, then compile and package the .vsix.
VSCODE := editors/vscode
.PHONY: vsix
vsix: $(VSCODE)/node_modules/.package-lock.json
	cd $(VSCODE) && npm run --silent package

$(VSCODE)/node_modules/.package-lock.json: $(VSCODE)/package-lock.json $(VSCODE)/package.json
	cd $(VSCODE) && npm ci --no-audit --no-fund
	touch $@

bench: venv
	$(PY) bench/run.py

lint: venv
	$(VENV)/bin/ruff check engine hblsp tests bench docs

docs: venv
	$(PY) docs/gen_config_doc.py

clean:
	rm -rf $(VENV) .pytest_cache examples/digits/model_output
