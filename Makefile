# One-command entry points. Each target creates .venv when it is missing.
# torch comes from TORCH_SPEC, as pip finds it (from PyPI on Linux x86-64 that is a CUDA build;
# elsewhere, or from a local wheel, it may be the CPU build). Pick a build explicitly with e.g.
#   make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" venv
#   make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" venv
# A TORCH_SPEC other than the one recorded in $(VENV)/.torch-spec reinstalls torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_STAMP := $(VENV)/.torch-spec

DEMO_ARGS ?=
# notebooks run by `make test` keep their run folders here (ignored by git), one per checkout
SGC_RUN_DIR ?= $(CURDIR)/runs/notebooks

.PHONY: venv demo test reports bench clean-venv FORCE

venv: $(STAMP)

# Rechecked on every run; the file changes (and $(STAMP) follows) only when the spec changes.
# A venv made before this stamp existed adopts the default spec without reinstalling torch.
$(TORCH_STAMP): FORCE
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$$(cat $@ 2>/dev/null)" = '$(TORCH_SPEC)' ]; then :; \
	elif [ ! -f $@ ] && [ -f $(STAMP) ] && [ "$(origin TORCH_SPEC)" = file ]; then \
	    echo "$(VENV): recording the installed torch as '$(TORCH_SPEC)'"; echo '$(TORCH_SPEC)' > $@; \
	else \
	    echo "$(VENV): installing $(TORCH_SPEC) (was: $$(cat $@ 2>/dev/null || echo none))"; \
	    $(PY) -m pip install --quiet --upgrade pip && \
	    $(PY) -m pip uninstall --quiet --yes torch >/dev/null 2>&1; \
	    $(PY) -m pip install --quiet $(TORCH_SPEC) && echo '$(TORCH_SPEC)' > $@; \
	fi
	@test "$$(cat $@ 2>/dev/null)" = '$(TORCH_SPEC)'

$(STAMP): pyproject.toml $(TORCH_STAMP)
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
	$(VENV)/bin/sgc batch --dataset digits --runs-dir reports/runs --reports-dir reports

bench: venv
	$(PY) benchmarks/likelihood.py

clean-venv:
	rm -rf $(VENV)
