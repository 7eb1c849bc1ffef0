# `make run` is the lecture tour (every method trained briefly on embedded data, one
# report); `make test` runs the test suite.
# Each creates .venv from the pinned requirements.txt when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/tour

.PHONY: run test venv clean

# jax2onnx (the ONNX exporter) pins orbax-checkpoint below this project's version for
# code paths the exporter does not take, so it goes in without its dependencies; those
# it needs are pinned in requirements.txt.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps jax2onnx==0.17.1
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) -m vision_jax.tour --workdir $(WORKDIR) --budget quick

test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

clean:
	rm -rf runs .pytest_cache
