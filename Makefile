# Two commands do everything on a fresh machine:  `make run` (set up + default job), `make test`.
PY ?= python3
VENV ?= .venv
PYVER := $(shell $(PY) -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
CONSTRAINTS := $(wildcard constraints/py$(PYVER).txt)
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
WORKDIR ?= workdirs/lm_tiny
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: run test test-slow bench clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(PIP_C) -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/python -m launch.train --config configs/lm/tiny.py --workdir $(WORKDIR)

test: $(VENV)/.installed
	$(VENV)/bin/python -m ruff format --check --quiet .
	$(VENV)/bin/python -m ruff check --quiet .
	$(VENV)/bin/python -m pytest -n 2 -q

test-slow: $(VENV)/.installed   # also installs the hf (torch CPU + transformers) and tracr extras for the live parity tests
	$(VENV)/bin/python -m pip install -q $(PIP_C) -e ".[test,hf,tracr]"
	$(VENV)/bin/python -m pytest -n 2 -q -m slow

clean:
	rm -rf $(VENV) .jax_cache workdirs
