# serkit: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.serkit-env
REQS := $(wildcard requirements/*.txt) tools/install_env.sh setup.py

.PHONY: install demo test test-fast bench lint clean

# GPU=1 puts faiss-gpu in front of faiss-cpu (tools/install_faiss_gpu.sh); the default is 1 when
# nvidia-smi lists a GPU. GPU=0 is the plain CPU environment, the same one as on a machine without GPU.
GPU ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)

# Re-runs only when requirements/, the install script or setup.py changed (the script itself is
# idempotent and reuses a cached base environment keyed by the requirement files' hash).
$(STAMP): $(REQS)
	bash tools/install_env.sh
	@touch $(STAMP)

install: $(STAMP)
ifeq ($(GPU),1)
	bash tools/install_faiss_gpu.sh
endif

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash recipes/IEMOCAP/run.sh

# Everything: tests/unit, tests/integration (recipes, training runs) and the docstring examples of
# plugins/serkit (--doctest-modules, pyproject.toml).
test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest tests plugins/serkit

# The fast part (about 95 s of CPU time), for the edit-test loop: tests/unit and the docstring examples.
# The folder is the speed: tests/conftest.py marks tests/integration `slow` and refuses a slow test in
# tests/unit, so this is also what `-m "not slow"` selects.
test-fast: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest tests/unit plugins/serkit

# `make bench BENCH="shift dump"` runs some; the README's benchmark section is regenerated.
bench: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash bench/run_all.sh $(BENCH)
	$(PY) tools/update_readme.py

lint: $(STAMP)
	$(VENV)/bin/ruff check plugins tests bench tools conftest.py setup.py
	$(VENV)/bin/ruff format --check plugins tests bench tools conftest.py setup.py
	$(VENV)/bin/shellcheck -x local/*.sh recipes/*/*.sh .ci/run tools/*.sh bench/*.sh

clean:
	rm -rf $(VENV) recipes/*/data recipes/*/exp recipes/*/dump
