# om2p — the two commands of the quick start are `make demo` and `make test`.
# Everything runs inside .venv; `setup` is idempotent (a stamp keyed on pyproject.toml).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-setup
ENV    ?= cooperative_navigation
CKPT   ?=
MODEL  ?=
JOBS   ?= 2
ARGS   ?=
PORT   ?= 8000

.PHONY: setup demo test lint data train export serve bench soak results gpu-check up down clean help

help:
	@echo "make demo | test | lint | data | train | export | serve | bench | soak | results | gpu-check | up | down | clean"
	@echo "variables: ENV=$(ENV) PORT=$(PORT) MODEL= CKPT= JOBS=$(JOBS) ARGS=  (e.g. make serve PORT=9000)"

setup: $(STAMP)

# torch is installed first and pinned: the local CPU wheel. An unpinned torch pulls several GB of CUDA wheels.
# pip runs quietly, so each step says what it installs: the first run takes minutes and would look stuck.
$(STAMP): pyproject.toml
	@echo "make setup: installing into $(VENV) (first run only: a few minutes, about 1.8 GB; later runs install nothing)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "make setup: 1/3 upgrading pip"
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "make setup: 2/3 torch==2.13.0, the CPU wheel (about 750 MB installed)"
	$(BIN)/python -m pip install --quiet torch==2.13.0
	@echo "make setup: 3/3 om2p and its extras: train (MPE and MuJoCo environments, ONNX), serve (FastAPI, uvicorn, ONNX Runtime), client (httpx, matplotlib), dev (pytest, ruff, tritonclient), grid (Ray)"
	$(BIN)/python -m pip install --quiet -e ".[train,serve,client,dev,grid]"
	touch $(STAMP)
	@echo "make setup: done"

demo: setup
	$(BIN)/python -m om2p.demo

test: setup
	$(BIN)/python -m pytest -q -ra

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The default small dataset set: cooperative_navigation in all four qualities.
data: setup
	$(BIN)/om2p data make-default --out data

# Measured 2026-12-04 with `time`: the default 8000 steps took 6.4 CPU-minutes (one core busy; 16.6 min of wall
# time at nice 15 on a machine shared with other jobs). A 1000-step run on the idle machine took 57 s.
train: setup
	@echo "make train: OM2P, 8000 steps on data/$(ENV)/expert.npz -> runs/$(ENV)-om2p; cooperative_navigation takes about 7 minutes on an idle 2-core machine, longer on a busy one"
	$(BIN)/om2p train --env $(ENV) --dataset data/$(ENV)/expert.npz --algo om2p --out runs/$(ENV)-om2p

export: setup
	$(BIN)/om2p export $(if $(CKPT),$(CKPT),--newest runs) --out models

serve: setup
	$(BIN)/om2p serve --port $(PORT) $(if $(MODEL),--model $(MODEL),)

bench: setup
	$(BIN)/python -m benchmarks.run_all

# Ten minutes of open-loop load at 30% of closed-loop capacity: errors on both sides, RSS -> benchmarks/results/soak.json.
soak: setup
	$(BIN)/python -m benchmarks.soak $(ARGS)

# The results grid (docs/grid.md): tuning, then the table; one record per run under benchmarks/results/records/,
# a recorded run is never retrained. ARGS="--report-only" rebuilds docs/results.md from the records alone;
# ARGS="--ray-address HOST:PORT" sends the runs to a Ray cluster instead of $(JOBS) local processes.
results: setup
	$(BIN)/python -m benchmarks.grid --jobs $(JOBS) $(ARGS)

# The GPU path (CUDA training step with and without CUDA graphs, a short run, the torch serving backend) ->
# benchmarks/results/gpu_check.json; one line and exit 0 on a machine without CUDA.
gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check $(ARGS)

up:
	docker compose -f docker/compose.yaml up -d --build

down:
	docker compose -f docker/compose.yaml down

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
