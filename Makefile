# Two commands do all set-up on a fresh machine:
#   make demo   create .venv if missing, install xrayfm, run the demo on built-in phantom data
#   make test   same set-up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_output
PYTEST_ARGS ?= -n 2

.PHONY: install demo demo-adam demo-multitask test test-all lint gpu-wheels clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "xrayfm needs Python 3.11 or newer; $(PYTHON) is " + sys.version.split()[0] + ": run make PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/xrayfm demo --out $(DEMO_OUT)

# the demo with Adam (anatomy-aware MoCo-v2, ResNet-18, stages n = 0, 2) instead of EVA-X MIM
demo-adam: install
	$(VENV)/bin/xrayfm demo --pretrain anatomy --out $(DEMO_OUT)

# the demo with Foundation X (one ResNet-18, findings + organ masks + lesion boxes, Cyclic & Lock-Release)
demo-multitask: install
	$(VENV)/bin/xrayfm demo --pretrain multitask --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

# the packages bench/gpu/check.sh needs on a lent GPU machine (CPython 3.12) that its image lacks, as wheels in .whl/
GPU_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64,--platform $(p))
gpu-wheels: install
	rm -rf .whl
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(GPU_PLATFORMS) \
		-d .whl -r bench/gpu/requirements.txt
	$(PY) -m pip wheel --no-deps -w .whl -r bench/gpu/requirements-sdist.txt

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
