# Two commands on a fresh machine:
#   make demo   set everything up in .venv and run the main job on the built-in example (make demo-quick: < 2 min)
#   make test   set everything up in .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# auto_LiRPA's only PyPI release declares torch<1.13, so it goes in without its declared deps
# (lipaudit supplies its real run-time needs and patches it at run time: lipaudit/certify/_compat.py).
LIRPA  ?= auto-lirpa==0.3
# ONNX models go through onnx2torch, which imports torchvision: the release matching TORCH, without its deps (its
# PyPI wheel would otherwise pull another torch); lipaudit uses it for imports only (lipaudit/onnx_model.py).
TORCHVISION ?= torchvision==0.28.0
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: setup demo demo-quick test test-slow test-all lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,onnx,distributed]" scikit-learn
	$(PIP) install -q --no-deps "$(LIRPA)" mlxtend==0.25.0 onnx2torch==1.5.15 "$(TORCHVISION)"
	touch $@

demo: setup
	$(VENV)/bin/lipaudit demo

demo-quick: setup
	$(VENV)/bin/lipaudit demo --quick

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest $(PYTEST_ARGS) -m slow

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS) -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check lipaudit proofs tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/norms.py
	$(PY) benchmarks/attacks.py
	$(PY) -m benchmarks.certify
	$(PY) -m benchmarks.bab
	$(PY) -m benchmarks.speed
	$(PY) -m benchmarks.pipeline
	$(PY) -m benchmarks.distributed

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
