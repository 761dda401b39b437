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

.PHONY: setup demo test lint data train export serve bench soak results up down clean help

help:
	@echo "make demo | test | lint | data | train | export | serve | bench | soak | results | up | down | clean"

setup: $(STAMP)

# torch is installed first and pinned: the local CPU wheel. An unpinned torch pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[train,serve,client,dev,grid]"
	touch $(STAMP)

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

train: setup
	$(BIN)/om2p train --env $(ENV) --dataset data/$(ENV)/expert.npz --algo om2p --out runs/$(ENV)-om2p

export: setup
	$(BIN)/om2p export $(if $(CKPT),$(CKPT),--newest runs) --out models

serve: setup
	$(BIN)/om2p serve $(if $(MODEL),--model $(MODEL),)

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

up:
	docker compose -f docker/compose.yaml up -d --build

down:
	docker compose -f docker/compose.yaml down

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
