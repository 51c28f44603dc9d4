# Postroom — the two commands: `make run` and `make test`. See README.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= ./var
PYTEST_ARGS ?=
BENCH_ARGS ?=
QUICK ?=

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

# The benchmark suite's own extra (matplotlib for REPORT.md's plots), on top of the venv.
$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

## make bench: every benchmark with its peers on loopback, then bench/results/REPORT.md (bench/README.md);
## QUICK=1 for the 2-minute smoke version, BENCH_ARGS="--only sftp,smtp" (or --help) for the rest.
bench: debs-test $(VENV)/.installed-bench
	$(BIN)/python -m bench $(if $(filter 1 yes true,$(QUICK)),--quick) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
