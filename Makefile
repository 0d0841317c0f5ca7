# Two entry points for a fresh machine: `make demo` (the whole pipeline, laptop mode) and
# `make test` (the suite). Both create .venv, install the package, a redis-server and PostgreSQL.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?= -q
# The suite on two pytest-xdist workers, each module whole on one of them, in file order: most of its
# time is spent waiting on real services (Ray, PostgreSQL, Serve, subprocesses). XDIST= runs it in one process.
XDIST  ?= -n 2 --dist loadfile --no-loadscope-reorder
ARGS   ?=

.PHONY: install redis postgresql chromium demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# System packages from apt when their command is not on PATH yet: redis-server (the stats
# cache, demo and tests) and chromium (the page test drives a real headless browser).
APT_INSTALL = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

redis:
	@command -v redis-server >/dev/null 2>&1 || { echo "installing redis-server (apt-get)"; $(APT_INSTALL) redis-server >/dev/null; }

# PostgreSQL for the trade ledger: the tests start private servers from its binaries, the
# demo uses it when TRADPAL_DB_URL names one (else the store's SQLite file).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "installing postgresql (apt-get)"; $(APT_INSTALL) postgresql >/dev/null; }

chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium (apt-get)"; $(APT_INSTALL) chromium >/dev/null; }

demo: install redis postgresql
	$(BIN)/tradpal-ray demo $(ARGS)

test: install redis postgresql chromium
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

bench: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis tradpal-data
