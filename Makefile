# The two commands of the README: `make run` and `make test`. Everything else is set-up they share.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: on a plain machine PyPI's wheel is the CUDA build; on a machine whose pip
# finds a local CPU build of the same version (as our CI does), that one is taken.
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test install install-dev browser-deps engines lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The browser tests drive Debian's Chromium (Playwright's own browser download needs a server that is
# not reachable everywhere). Installed with apt when missing; needs root or sudo.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium fonts-noto-color-emoji; }

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	$(PY) app.py

# The real-engine tests (tests/test_publish_vllm.py) need vLLM in its own environment: built once per
# machine by the studio's own code path (~2.5 min), reused while its version is unchanged.
engines: install
	$(VENV)/bin/studio engines install vllm

test: install-dev browser-deps engines
	$(PY) -m pytest -q

lint: install-dev
	$(PY) -m ruff check studio tests app.py bench

clean:
	rm -rf $(VENV)
