# Every target bootstraps .venv/ when it is missing or stale (pyproject.toml changed) and
# reuses it otherwise. A fresh machine needs only Python 3.11/3.12, g++ and these commands.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEPS_HASH := $(shell $(PYTHON) -c "import hashlib;print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest()[:16])")
STAMP  := $(VENV)/.deps-$(DEPS_HASH)

# nvcc for the CUDA kernel lives here on our machines; harmless where it does not exist.
CUDA_HOME ?= $(wildcard /usr/local/cuda)
export CUDA_HOME
export PYTHONUNBUFFERED := 1

.PHONY: demo reproduce notebooks test lab bench venv clean

venv: $(STAMP)

$(STAMP):
	@echo "[make] installing the pinned stack into $(VENV) (first time: ~2 min and ~5 GB; torch ships its CUDA libraries)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.deps-*
	@touch $@

# Today's demo figures, then the quick reproduction (data -> deform -> train -> baseline ->
# evaluate -> figures; resumable, runs/quick holds it) writing the paper's figures into figures/.
# The demo's own "training" stage is skipped: the reproduction's figures stage draws Figure 3
# (figures/training_loss.png) from the model it trained, and would overwrite it anyway.
demo: $(STAMP)
	$(PY) -m dmnt_lib demo --only uv_fragment transform data deformation
	$(PY) -m dmnt_lib reproduce --quick --out runs/quick --figures figures

# The full configuration (runs/full; figures into figures/full). Resumable: rerun after an interruption.
reproduce: $(STAMP)
	$(PY) -m dmnt_lib reproduce --preset full --out runs/full --figures figures/full

# Re-execute notebooks 00-07 in their full configuration, seeded, and write them back with outputs.
# After `make reproduce`, notebooks 04-07 show that run (runs/full) instead of small ones of their own.
NB_RUNS := $(if $(wildcard runs/full/summary.json),--runs runs/full,)
notebooks: $(STAMP)
	$(PY) -m dmnt_lib.notebooks $(NB_RUNS) notebooks/0[0-7]_*.ipynb

test: $(STAMP)
	DMNT_QUICK=1 $(PY) -m pytest

lab: $(STAMP)
	$(PY) -m jupyter lab notebooks/

bench: $(STAMP)
	$(PY) benchmarks/bench_transform.py

clean:
	rm -rf $(VENV) .pytest_cache
