# potluck: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test install install-dev browser lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned, so no resolver step pulls a CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/potluck demo --compare

# The dashboard's browser tests drive Debian's chromium through playwright (dev extras); they
# never run `playwright install` (it downloads a browser). Without chromium they are skipped.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq chromium) || \
			echo "note: could not install chromium: the browser tests will be skipped"; \
	else \
		echo "note: the dashboard's browser tests need Debian's chromium and will be skipped;"; \
		echo "      install it with: sudo apt-get install chromium"; \
	fi

# Three workers on CI's 2 cores: the cluster tests spend much of their time waiting (on
# emulated device speeds, timeouts, links), so a third worker fills the cores (the suite uses
# about 9 CPU-minutes); worksteal keeps every worker busy while the long tests run.
test: install-dev browser
	$(PY) -m pytest -q -n 3 --dist worksteal --durations=15

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src/potluck

bench: install-dev
	$(PY) benchmarks/balance.py

clean:
	rm -rf $(VENV) experiments .pytest_cache
