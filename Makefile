# Two commands do all the set-up on a fresh machine (Debian/Ubuntu, Python >= 3.11):
#   make demo   the main job on the embedded default
#   make test   the test suite
# Both create their own virtual environment (.venv) and install what they need.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
DEMO_OUT ?= $(CURDIR)/demo-out

.PHONY: demo test lint bench system-deps run-example clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

NODE_PEER := tests/peers/node_opcua

# Debian packages the tests use as real peers: socat (serial pair for Modbus RTU), systemd-analyze (unit checks),
# Chromium (the status page in a real browser), PostgreSQL's server binaries (the local L4E service's fleet mode;
# the tests start their own server), Node.js + npm (node-opcua, a third-party OPC-UA server, installed from npm
# into $(NODE_PEER)).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@[ -d $(NODE_PEER)/node_modules/node-opcua-server ] || \
	  (cd $(NODE_PEER) && npm install --no-audit --no-fund --no-package-lock --loglevel=error)

demo: $(STAMP)
	$(BIN)/l4e-agent demo --out $(DEMO_OUT)

# The shipped replay example (config/replay/) at 120x into a local folder store, 30 simulated minutes.
run-example: $(STAMP)
	rm -rf $(DEMO_OUT)/replay
	L4E_AGENT_LOOKOUT__INPUT=file://$(DEMO_OUT)/replay/store/plant-l4e/pump-07/input/ \
	  $(BIN)/l4e-agent run config/replay/pump-07.toml --state-dir $(DEMO_OUT)/replay/state \
	  --clock-start 2025-12-31T23:58:00Z --speed 120 --until 2026-01-01T00:30:30Z
	@ls -1 $(DEMO_OUT)/replay/store/plant-l4e/pump-07/input/

test: $(STAMP) system-deps
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check agent connectors tests

bench: $(STAMP)
	for f in tests/bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
