# The two commands of the README: `make demo` (the full loop on embedded services) and
# `make test` (the default test suite). Both bootstrap .venv first; a second run skips that.
.PHONY: demo demo-quick test test-slow lint bootstrap infra-up infra-down bench clean

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
	$(BIN)/python -m pytest -m slow

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
