# cpcrl: `make run` trains the default experiment, `make test` runs the suite.
# Both create .venv and install everything on first use (the Ray launcher and POPGym included: they share the venv).
# GPU users: make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" install
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# pytest-xdist workers: the suite is mostly single-threaded CLI runs, so one per core
JOBS ?= 2
# `make test-learning` reruns the learning tests on ATen's portable kernels (CI: other kernels than the machine's)
ATEN_CPU_CAPABILITY ?= default

.PHONY: install run lint test test-slow test-learning bench clean

$(STAMP): pyproject.toml Makefile cpcrl/envs/_cube_step.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so nothing below resolves to a CUDA build
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,sweep,ray,popgym]"
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/cpcrl $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check cpcrl tests benchmarks

# CPCRL_EXPECT_RAY: the Ray test fails instead of skipping when the `ray` extra is missing
test: $(STAMP)
	CPCRL_EXPECT_RAY=1 $(PY) -m pytest -q -n $(JOBS) -m "not slow" $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) -m slow $(ARGS)

# No test marked `learning` collected (pytest's exit status 5) is an error too.
test-learning: $(STAMP)
	ATEN_CPU_CAPABILITY=$(ATEN_CPU_CAPABILITY) $(PY) -c \
	  "import torch; print('ATen CPU capability:', torch.backends.cpu.get_cpu_capability())"
	ATEN_CPU_CAPABILITY=$(ATEN_CPU_CAPABILITY) $(PY) -m pytest -q -n $(JOBS) -m "learning and not slow" $(ARGS) \
	  || { rc=$$?; [ $$rc -ne 5 ] || echo "make test-learning: no test marked learning was collected" >&2; exit $$rc; }

bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
