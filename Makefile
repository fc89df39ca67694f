# The two commands a newcomer needs:
#   make demo   - the main job: a local real control plane with simulated nodes (and, as it
#                 grows, the operator, sample cells, a refused scale-up and live metrics)
#   make test   - every check: lint, format, types, layering, unit and end-to-end tests
# (and `make demo-real-node`: the story with real threads on one real kubelet node; root)
# Each installs what it needs: the Python venv, the Go-built control plane (cached under
# ~/.cache/cellguard, so only the first run builds) and Debian packages (prometheus;
# containerd, runc and the CNI plugins for the optional real node).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo demo-real-node test setup toolchain lint unit e2e crds clean

demo: setup
	$(BIN)/cellguard demo

# One real kubelet node on this machine (root; containerd, runc, CNI plugins, buildah):
# servers holding real threads, the replay refused, then the guard off and every server
# failing with EAGAIN. Everything it changes on the machine is undone when it stops.
demo-real-node: setup
	$(BIN)/cellguard demo --real-node

test: setup
	bash scripts/test.sh $(PYTEST_ARGS)

setup: $(VENV)/.installed toolchain

# Progress stays visible: a first run downloads and builds for minutes.
$(VENV)/.installed: pyproject.toml
	@echo "== Python virtualenv in $(VENV) (first run: about a minute) =="
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	touch $@

# build.sh reports numbered steps, an estimate and a heartbeat on stderr, and the bin
# directory on stdout's last line.
toolchain:
	@echo "== Control-plane toolchain (cached; a cold build takes about 10 minutes) =="
	bash toolchain/build.sh
	@echo "== Debian packages (prometheus, containerd, runc, CNI plugins) =="
	bash scripts/ensure-debian-packages.sh

lint: $(VENV)/.installed
	bash scripts/test.sh --lint-only

crds: $(VENV)/.installed
	$(BIN)/python -m cellguard.crdgen

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
