# ragline: `make demo` ingests the example PDFs and searches them; `make test` runs lint, types and tests.
# Both set up .venv from scratch when needed (torch first, from its pinned CPU wheel).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist, one test file each at a time): each has its own embedded Postgres, Prefect
# server and model, and much of a test is spent waiting on them, so two overlap well even on two cores.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

.PHONY: demo test test-fast lint install sysdeps clean

install: $(STAMP)  ## create .venv with ragline and its pinned dependencies

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,int8]"
	touch $(STAMP)

demo: $(STAMP)  ## ingest examples/pdfs on the embedded defaults, then search
	$(BIN)/ragline ingest pdf examples/pdfs
	$(BIN)/ragline search "how is a flattened device tree blob passed to the kernel" -k 5

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

sysdeps:  ## system packages the tests use: a real MediaWiki (PHP + SQLite), Chromium (the Prefect UI test), Prometheus and its Pushgateway
	@command -v php >/dev/null && [ -f /usr/share/mediawiki/maintenance/install.php ] && command -v chromium >/dev/null \
	  && [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && command -v prometheus >/dev/null \
	  && command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends mediawiki php-sqlite3 php-cli chromium fonts-dejavu-core \
	    prometheus prometheus-pushgateway >/dev/null \
	  && if [ -d /run/systemd/system ]; then \
	    $$SUDO systemctl disable --now prometheus prometheus-pushgateway >/dev/null 2>&1 || true; fi; }

test: lint sysdeps  ## lint, then the whole test suite against the real Postgres, model, PDFs and MediaWiki
	$(PYTEST)

test-fast: $(STAMP)  ## the inner loop: the suite without lint, CLI subprocesses, the browser and the real wiki
	$(PYTEST) -m "not slow and not browser and not integration"

clean:  ## remove the virtual environment
	rm -rf $(VENV)
