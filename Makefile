# Two entry points: `make demo` runs the main job, `make test` passes the tests. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned so pip takes the local wheels where they exist (CPU CI machines);
# override TORCH_SPEC for another CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) tools/demo.py

test: venv
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) output
