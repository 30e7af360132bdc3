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

# Two test processes with one thread each: the tests' tiny models gain nothing from intra-op threads, and two
# threaded processes on 2 cores wait on each other.
test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 tests

# The open-world table (BMIP Table 1 layout) of CoOp, MaPLe and BMIP on miniature datasets with a tiny random CLIP,
# on the CPU; docs/protocols.md gives the same command for real data and a real CLIP on GPUs.
.PHONY: open-world-mini
open-world-mini: venv
	test -d output/mini/data || $(PY) tools/make_fixture_data.py --root output/mini/data --dataset caltech101 oxford_pets dtd eurosat ucf101
	B2N_EVAL=all OMP_NUM_THREADS=1 $(PY) tools/sweep.py --protocol base2new --trainers CoOp MaPLe BMIP --datasets caltech101 oxford_pets dtd eurosat ucf101 --seeds 1 2 3 --root output/mini/data --output output/mini --cpu --jobs 2 --table open_world MODEL.BACKBONE.NAME vlprompt-tiny DATALOADER.NUM_WORKERS 0 OPTIM.MAX_EPOCH 1

clean:
	rm -rf $(VENV) output
