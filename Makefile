# Two commands do all the set-up on a fresh machine:
#   make demo   # creates .venv, installs harstream (CPU torch), runs the demo on the embedded broker
#   make test   # same set-up, then the whole test suite
# Everything lives in the local virtual environment .venv; nothing is installed system-wide.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, as a CPU build: pip takes torch==2.13.0+cpu from this machine's disk; elsewhere PyPI
# has no "+cpu" build, so the PyTorch CPU index serves it. A plain `torch` (or torch==2.13.0) from PyPI
# would pull the multi-GB CUDA build on Linux. macOS builds carry no "+cpu" and are CPU builds anyway.
TORCH ?= torch==2.13.0+cpu
TORCH_MACOS ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_ARGS ?=

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)" || $(PY) -m pip install -q "$(TORCH)" --index-url $(TORCH_CPU_INDEX) \
	  || { [ "$$(uname)" = Darwin ] && $(PY) -m pip install -q "$(TORCH_MACOS)"; }
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/harstream demo $(DEMO_ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
