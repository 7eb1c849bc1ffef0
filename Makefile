# `make run` trains the main job on an embedded dataset; `make test` runs the test suite.
# Each creates .venv from the pinned requirements.txt when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/cnn_digits

.PHONY: run test venv clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) -m vision_jax.train --config experiments/classification/cnn_digits.py --workdir $(WORKDIR)

test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

clean:
	rm -rf runs .pytest_cache
