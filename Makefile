# make quickstart   set up .venv (first time only) and run the main job
# make test         set up .venv (first time only), lint, and run the tests
# make lock         recompile requirements.lock from pyproject.toml, keeping its pins where
#                   they still fit (make lock UPGRADE=1: the newest releases it allows)
.PHONY: setup quickstart test lint bench lock

setup:
	@scripts/setup.sh

quickstart: setup
	.venv/bin/p2med quickstart

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: lint
	.venv/bin/pytest

# The lock is for Python 3.11 on x86_64 Linux (not universal). torch is left out of it
# (scripts/setup.sh installs it first); its CPU wheel, from TORCH_WHEELS, is resolved so
# that the lock holds that wheel's dependencies and no CUDA packages. Not `lock: setup`:
# setup installs from the lock, so it fails when pyproject.toml has moved past it.
UV ?= .venv/bin/uv
TORCH_WHEELS ?= /opt/wheels
LOCK_TORCH ?= torch==2.13.0+cpu

lock:
	@test -x $(UV) || { echo "make lock: no $(UV); run scripts/setup.sh first or pass UV=<uv>"; exit 1; }
	echo "$(LOCK_TORCH)" | $(UV) pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --find-links $(TORCH_WHEELS) \
		-c /dev/stdin --no-emit-package torch $(if $(UPGRADE),--upgrade) \
		--custom-compile-command "make lock" -o requirements.lock

bench: setup
	.venv/bin/python bench/synth.py
	.venv/bin/python bench/deid.py
	.venv/bin/python bench/hostile.py
	.venv/bin/python bench/ingest.py
	.venv/bin/python bench/stream.py
	.venv/bin/python bench/generate.py
	.venv/bin/python bench/train.py
	.venv/bin/python bench/serve.py
