# The two commands of the README:
#   make run    start a central platform, two nodes and simulated PUs on embedded defaults
#   make test   lint and run the whole test suite
# Both create .venv and install the project into it when needed.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# compat editable mode: a .pth puts the checkout on sys.path, so twistd finds
	# twisted/plugins/ (the default editable finder hides it).
	$(BIN)/python -m pip install -q --config-settings editable_mode=compat -e ".[test,redis,postgres]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check vss tests bench twisted

test: $(STAMP) lint
	set -o pipefail; $(BIN)/trial --jobs=2 tests 2>&1 | tee .trial.log; status=$$?; \
	$(BIN)/python -m vss.testing.summary .trial.log; exit $$status

run: $(STAMP)
	$(BIN)/python -m vss.demo

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info
