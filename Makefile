# make quickstart   set up .venv (first time only) and run the main job
# make test         set up .venv (first time only), lint, and run the tests
.PHONY: setup quickstart test lint bench

setup:
	@scripts/setup.sh

quickstart: setup
	.venv/bin/p2med quickstart

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: lint
	.venv/bin/pytest

bench: setup
	.venv/bin/python bench/synth.py
	.venv/bin/python bench/ingest.py
	.venv/bin/python bench/stream.py
	.venv/bin/python bench/generate.py
	.venv/bin/python bench/train.py
	.venv/bin/python bench/serve.py
