# Postroom — the two commands: `make run` and `make test`. See README.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= ./var
PYTEST_ARGS ?=
BENCH_ARGS ?=

# Debian packages the product needs at run time, and what the tests drive it with.
RUN_DEBS  := openssl ca-certificates
TEST_DEBS := $(RUN_DEBS) curl postgresql openssh-client openssh-server

.PHONY: run test lint bench clean venv debs-run debs-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { tools/ensure-debs python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall whenever the declared dependencies change.
$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,postgres]'
	touch $@

venv: $(VENV)/.installed

debs-run:
	@tools/ensure-debs $(RUN_DEBS)

debs-test:
	@tools/ensure-debs $(TEST_DEBS)

## make run: set everything up, create a demo home in ./var if there is none, serve in the foreground.
run: debs-run venv
	@test -f $(HOME_DIR)/postroom.toml || $(BIN)/postroom --home $(HOME_DIR) init --demo
	exec $(BIN)/postroom --home $(HOME_DIR) serve

## make test: set everything up and run the whole suite.
test: debs-test venv
	$(BIN)/pytest $(PYTEST_ARGS)

## make lint: architecture contracts and ruff.
lint: venv
	$(BIN)/lint-imports --config setup.cfg
	$(BIN)/ruff check .

## make bench: intake throughput on the real disk, with its peers (bench/README.md); BENCH_ARGS=--help for options.
bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
