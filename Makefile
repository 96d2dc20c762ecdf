# One-command entry points. Each target creates .venv when it is missing.
# GPU users: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124" venv
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_ARGS ?=
# notebooks run by `make test` keep their run folders here (ignored by git), one per checkout
SGC_RUN_DIR ?= $(CURDIR)/runs/notebooks

.PHONY: venv demo test reports bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,notebooks]"
	touch $(STAMP)

# writes runs/digits/ (ignored by git); reruns reuse its model
demo: venv
	$(VENV)/bin/sgc demo $(DEMO_ARGS)

test: venv
	SGC_RUN_DIR=$(SGC_RUN_DIR) $(PY) -m pytest tests notebooks --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg

# the committed results: the demo model and the five digits notebooks into reports/ (long)
reports: venv
	$(VENV)/bin/sgc demo --run-dir reports/runs/digits --overwrite
	$(VENV)/bin/sgc batch --dataset digits --out reports/runs --reports-dir reports

bench: venv
	$(PY) benchmarks/likelihood.py

clean-venv:
	rm -rf $(VENV)
