# The two commands of README.md. Both do their own set-up on a fresh machine.
.PHONY: demo test lint

demo:
	bash scripts/setup_env.sh run
	.venv/bin/python scripts/forward_tiny.py

test:
	bash scripts/setup_env.sh test
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check .
