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

# The demo: a real extraction with the default plugins (mtcnn -> dlib-68, re-aligned) of the
# samples in examples/ (see examples/NOTICE.txt), faces and alignments under demo-output/.
DEMO := demo-output
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/faceinfer extract -i examples/test.mp4 -o $(DEMO)/test -p $(DEMO)/test_alignments.fia
	$(BIN)/faceinfer extract -i examples/photos -o $(DEMO)/photos -p $(DEMO)/photos_alignments.fia

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
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/identity.py
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/compile.py
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/profiler.py

clean:
	rm -rf $(VENV) $(DEMO) demo_output .pytest_cache .mypy_cache .ruff_cache
