# The two commands of README.md: `make demo` (the main job) and `make test` (every test).
# Both install what they need first: Debian's nats-server (when missing) and a virtualenv in .venv with
# torch==2.13.0 (the CPU wheel) and this project with its test extras.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install nats-server lint typecheck bench clean

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

nats-server:
	@command -v nats-server >/dev/null 2>&1 || test -x /usr/sbin/nats-server || { \
	  echo "nats-server not found: installing Debian's nats-server package"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nats-server; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy schemas bus supervisors config ops run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
