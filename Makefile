# The two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo soak bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

soak: $(STAMP)
	$(BIN)/python -m pytest -q -m soak -p no:cacheprovider -o addopts=''

demo: $(STAMP)
	$(BIN)/agentflow demo

bench: $(STAMP)
	mkdir -p bench/results
	$(BIN)/python bench/transport.py --json bench/results/transport.json
	$(BIN)/python bench/raft.py --json bench/results/raft.json
	$(BIN)/python bench/tasks.py --json bench/results/tasks.json
	$(BIN)/python bench/locks.py --json bench/results/locks.json
	$(BIN)/python bench/messaging.py --json bench/results/messaging.json
	$(BIN)/python bench/executor.py --json bench/results/executor.json

clean:
	rm -rf $(VENV) .venv-peers build *.egg-info
