# The two commands a fresh machine needs: `make demo` (the whole DAG, embedded defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned and installed alone, first, so a resolver never swaps in another build. Plain PyPI serves the
# CUDA build on Linux (GBs): with internet, `make TORCH_INDEX=https://download.pytorch.org/whl/cpu venv` gets
# the CPU wheel. Left empty it uses pip's configured sources (here: a local CPU wheel via PIP_FIND_LINKS).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: venv test test-fast lint demo tiny-model images image-test clean clean-images constraints
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[answer,load,local,dev]"
	touch $@

# Everything CI runs: the suite, then both images built and run (image-test). test-fast: the suite without the
# end-to-end and image tests, for a quick loop while editing.
test: venv
	$(PY) -m pytest -q
	$(MAKE) image-test

test-fast: venv
	$(PY) -m pytest -q -m 'not slow and not images'

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: venv
	$(PY) scripts/demo.py

# No model hub here? A tiny random BERT QA model, for trying the plumbing: QA_MODEL=.demo/tiny-model make demo
tiny-model: venv
	$(PY) scripts/make_tiny_model.py .demo/tiny-model

# Both images as pachyderm-qa-answer:local and pachyderm-qa-load:local, with docker, else podman (installed when
# missing, state in .containers/); prints sizes and the code layer. QA_MODEL_DIR=DIR bakes that saved model
# folder instead of downloading the hub model. Details: docker/build-images.sh.
images: venv
	PY=$(PY) QA_MODEL_DIR="$(QA_MODEL_DIR)" docker/build-images.sh

# Builds both images with the tiny model baked and runs them from outside (tests/test_images.py).
image-test: tiny-model
	PY=$(PY) QA_MODEL_DIR=.demo/tiny-model docker/build-images.sh
	$(PY) -m pytest -q -m images tests/test_images.py

clean:
	rm -rf .pachyderm-local .demo

# The images, their layers and podman's state kept in .containers/ (a few GB).
clean-images:
	if [ -f .containers/engine.env ] && grep -q '^ENGINE=podman' .containers/engine.env; then \
	  set -a; . .containers/engine.env; set +a; podman system reset --force; fi
	rm -rf .containers

# Re-pin docker/constraints.txt (what the images install) to the versions in .venv, after an intended upgrade
# that the test suite has passed with.
constraints: venv
	{ sed -n '1,2p' docker/constraints.txt; $(PY) -m pip freeze --exclude-editable \
	  | grep -viE '^(torch|nvidia-|triton|pachyderm-qa)' | LC_ALL=C sort -f; } > docker/constraints.txt.new
	mv docker/constraints.txt.new docker/constraints.txt
