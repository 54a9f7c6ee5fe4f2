# The two set-up commands of the README: `make demo` and `make test`. Both create .venv if it is
# missing and install the package with the pins of constraints.txt (torch==2.13.0, the CPU wheel).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/faceinfer demo -i $(SHARED)/data/faceswap_samples/test.mp4 -o demo_output

lint: $(STAMP)
	$(BIN)/ruff check faceinfer tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/geometry.py
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/detect_align.py
	$(BIN)/python bench/identity.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache .mypy_cache .ruff_cache
