# make run    - install everything the project needs, then run the whole pipeline
# make test   - install everything (and Chromium, for the browser tests), then run the test suite
# make quick  - the linter and the unit tests alone (no dvc, Visdom or browser runs): the contributor's loop
# make audit  - do the tests bite? planted bugs and mutation testing (about three hours on 2 cores; not in CI)
# make bench  - the benchmarks' full runs, which rewrite benchmarks/*.md (hours; not in CI)
# make visdom - start the live view on http://127.0.0.1:8097 (offline; see README)
# make push   - share outputs, the run-cache and experiments through the DVC remote (docs/sharing.md)
# make pull   - restore what the DVC remote holds (make run does it first when a remote is configured)
# make compare - the experiments side by side, in 120 columns (dvc exp show)
# Both create (or reuse) the virtual environment .venv/ in the repo.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray
DATASET_DIR := /usr/share/datasets/fashion-mnist
NEED_GB := 8
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# DVC runs `python stages/...`: it must be the venv's python.
export PATH := $(BIN):$(PATH)
# visdom 0.2.4 builds only with setuptools<81, also inside pip's build env.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# Telemetry cannot reach its server offline; don't try.
export DVC_NO_ANALYTICS := 1

.PHONY: run test quick lint audit mutation bench visdom system browser sshd push pull compare clean

PLOTS_TEMPLATE := .foldwise/plots/offline.html

# dvc status first: per stage, what differs from dvc.lock (in a fresh clone: outputs
# not in DVC's cache yet), i.e. why it will run; stages it does not list are reused.
# With a DVC remote configured, what it holds is restored first (`foldwise pull` says which stages);
# a remote that fails is one line, and the stages then run here.
run: $(STAMP) $(PLOTS_TEMPLATE)
	@$(BIN)/foldwise pull || echo "(running here what could not be pulled)"
	@echo "== dvc status: what changed since dvc.lock (stages not listed are reused) =="
	@dvc status
	dvc repro
	@echo "== Stages that \"didn't change\" or were \"cached\" were reused, not recomputed. Run them all again: dvc repro -f =="

# the 20 slowest tests are printed last, so a test that grows slow is seen.
# Two pytest-xdist workers, a module's tests in order on one of them: most e2e time is single-threaded
# (Python start-up, DVC), so two modules side by side use both cores (tests/conftest.py). One torch
# thread per process: two workers' stages with torch's default of one thread per core oversubscribe the
# 2 cores, and a pair of digits `dvc repro`s side by side took 36 s instead of 39-46 s.
test: $(STAMP) $(RAY_STAMP) $(PLOTS_TEMPLATE) browser sshd lint
	OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=20

# tests/e2e/ and tests marked slow left out (pyproject.toml's markers); docs/development.md.
# Two workers, one torch thread each, as in make test: 55 s instead of 72-80 s in one process.
quick: $(STAMP) $(PLOTS_TEMPLATE) lint
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 -m "not e2e and not slow"

# ruff, configured in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .

# Do the tests bite? Each planted bug must fail a unit test (benchmarks/planted_bugs.md), then
# mutmut over every module that decides results (benchmarks/mutation.md). Both match source text,
# so they live here and not in CI: a rename cannot fail `make test`.
audit: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,mutation]'
	$(BIN)/python -m benchmarks.planted_bugs
	$(BIN)/python -m benchmarks.mutation

# mutation testing alone (the second half of make audit)
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,mutation]'
	$(BIN)/python -m benchmarks.mutation

# The benchmarks' full runs (CI runs only their smoke modes): each rewrites its report in benchmarks/
bench: $(STAMP) $(RAY_STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/experiments.py --out benchmarks/experiments.md
	$(BIN)/python benchmarks/scale_out.py --out benchmarks/scale_out.md

visdom: $(STAMP)
	$(BIN)/foldwise-visdom

# Debian packages: Fashion-MNIST (a local mirror the download stage tries
# first, no network needed) and venv support. Skipped where present or where
# there is no apt-get (the download stage then tries the official URLs).
system:
	@need=""; \
	[ -d $(DATASET_DIR) ] || need="$$need dataset-fashion-mnist"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || need="$$need python3-venv"; \
	git --version >/dev/null 2>&1 || need="$$need git"; \
	if [ -n "$$need" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$need"; \
	    $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$need; \
	  else echo "warning: no apt-get; not installing$$need" >&2; fi; \
	fi

# Debian's OpenSSH server: the sharing tests start one on 127.0.0.1 as an SSH remote.
sshd:
	@[ -x /usr/sbin/sshd ] || { \
	  if command -v apt-get >/dev/null; then \
	    echo "installing Debian package: openssh-server"; \
	    $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q openssh-server; \
	  else echo "warning: no apt-get; install OpenSSH's server yourself (the sharing tests need it)" >&2; fi; }

# Sharing through a DVC remote (docs/sharing.md). push also sends the experiments to git's origin, if any.
push: $(STAMP)
	$(BIN)/foldwise push $$(git remote get-url origin >/dev/null 2>&1 && echo --git-remote origin)

pull: $(STAMP)
	$(BIN)/foldwise pull

# `dvc exp show` lists ~140 columns (every code and data dependency, 46 params, 20 metrics): this keeps
# the experiment, the chosen variant, the headline metrics and the params that differ (docs/iterating.md).
# More rows or another order: make compare ARGS="-A --sort-by test.accuracy"
COMPARE_DROP := (src|stages|data|models|reports)/|variants\.|.*_std$$|valid_loss|test\.loss|.*ece_before|Created|.*macro_f1|.*mcnemar|best_epoch|epochs_run
compare: $(STAMP)
	@dvc exp show --no-pager --only-changed --drop '$(COMPARE_DROP)' $(ARGS)

# Debian's Chromium: the tests load the live view in a real headless browser.
browser:
	@command -v chromium >/dev/null || { \
	  if command -v apt-get >/dev/null; then \
	    echo "installing Debian package: chromium"; \
	    $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; \
	  else echo "warning: no apt-get; install Chromium yourself (the browser tests need it)" >&2; fi; }

# Visdom's page assets come from the npm registry (pinned, sha512-checked),
# so its server never downloads at start.
# torch's wheels need about 7 GB in .venv plus room to unpack them: say so before pip fails midway.
$(STAMP): pyproject.toml constraints.txt | system
	@[ -d $(VENV)/lib/python3.11/site-packages/torch ] || { \
	  free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  [ "$$free" -ge $(NEED_GB) ] || { echo "error: $$free GB free on the disk of $(CURDIR); installing needs about $(NEED_GB) GB (torch). Free some space (old clones, pip's cache) and run make again." >&2; exit 1; }; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(BIN)/foldwise-visdom install-assets
	touch $(STAMP)

# Ray (an optional extra, ~80 MB): the scale-out tests need it; `make run` does without.
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	touch $(RAY_STAMP)

# `dvc plots show/diff` pages that need no network: .dvc/config points at this
# template, which inlines pinned vega, vega-lite and vega-embed from npm.
$(PLOTS_TEMPLATE): src/foldwise/reporting/plots_html.py | $(STAMP)
	rm -f $@
	$(BIN)/python -m foldwise.reporting.plots_html

clean:
	rm -rf $(VENV)
