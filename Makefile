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
# requires-python of pyproject.toml: the Python that makes .venv is checked first, with a clear message
PYTHON_OK := import sys; v = sys.version_info; sys.exit(0 if v >= (3, 10) else "harstream needs Python >= 3.10 \
  (requires-python in pyproject.toml); %s is %d.%d: choose another, e.g. make PYTHON=python3.12 ..." \
  % (sys.executable, v[0], v[1]))
VENV_OK := import venv, ensurepip

.PHONY: demo test install clean

# .venv is (re)made only when its Python is missing, older than requires-python or without pip (a venv
# left by an older Python or an interrupted `python -m venv`); re-installs when pyproject.toml or this
# file (TORCH) change; .installed is written last, so an interrupted install is taken up again.
$(VENV)/.installed: pyproject.toml Makefile
	@if ! $(PY) -c 'import pip; $(PYTHON_OK)' >/dev/null 2>&1; then \
	  command -v $(PYTHON) >/dev/null || { echo "harstream: no $(PYTHON) here; it needs Python >= 3.10 (make PYTHON=...)" >&2; exit 1; }; \
	  $(PYTHON) -c '$(PYTHON_OK)' || exit 1; \
	  $(PYTHON) -c '$(VENV_OK)' 2>/dev/null || { echo "harstream: $(PYTHON) has no venv module with pip (ensurepip); \
	on Debian or Ubuntu: sudo apt install python3-venv (python3.X-venv for python3.X)" >&2; exit 1; }; \
	  echo "$(PYTHON) -m venv --clear $(VENV)"; $(PYTHON) -m venv --clear $(VENV); \
	fi
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
