# The two commands a newcomer needs: `make sandbox` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: install sandbox test test-fast lint bench clean

install: $(STAMP) $(CHROMIUM)

# The browser test (tests/browser) drives Debian's Chromium through Playwright; never `playwright install`.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "make install: the browser test needs Chromium at $(CHROMIUM): run 'sudo apt-get install chromium', then 'make install' again." >&2; \
		exit 1; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,sdk]'
	touch $(STAMP)

# The whole exchange on embedded defaults with a living market: page on http://127.0.0.1:8080/.
sandbox: install
	$(BIN)/gx sandbox $(ARGS)

# The whole suite, then the engine suites again with the JIT off so pure-Python paths stay correct.
# A file's tests stay on one worker (--dist loadfile): they share its fixtures (cluster, database).
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -q -m nojit -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -m 'not slow'

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy schemas matching streams exchange

bench: install
	$(BIN)/gx bench matching --peer lightmatchingengine

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
