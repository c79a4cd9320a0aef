# The two commands of README.md. Both do their own set-up on a fresh machine.
.PHONY: demo test lint

# Demo corpus (skipped when complete) -> tiny DEEMO-LLaMA training -> test-split evaluation (runs/demo).
demo:
	bash scripts/setup_env.sh run
	.venv/bin/python scripts/make_demo_data.py --output demo_data
	.venv/bin/python scripts/train.py --config=configs/instruct.py:demo

test:
	bash scripts/setup_env.sh test
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check .
