#!/usr/bin/env bash
# GPU check (issue 13): the DEEMO-LLaMA 7B instruct train step on the lent GPU (one H200, 141 GB), measured by
# `benchmarks/train_step.py --gpu` in three variants - default (XLA attention), --cudnn (cuDNN flash attention
# in the ViT, ImageBind and LLM) and --remat (LLM layers rematerialised) - each in its own process under
# `timeout`, so that one failure (OOM, cuDNN unsupported, a slow compile) does not stop the others. Per variant:
#   - step time, tokens/s and useful MFU (batch 8 x 512 tokens, 8 frames, 8 audio clips; random weights,
#     frozen parts bf16, trainable fp32);
#   - the device's peak memory (memory_stats()) next to the fit planner's total for the same step
#     (deemo_jax.train.plan, compiled on the GPU; both written to plan_<variant>.json);
#   - greedy decode tokens/s (64 new tokens for each of the 8 prompts, encoders and prefill included).
# Within a variant the step line comes first, then the peak, the decode, the planner: a variant cut off by its
# time budget keeps what it printed. The budgets sum to under 8 minutes (time a variant leaves unused goes to the
# next one; GPU_CHECK_BUDGETS="200 125 125" seconds overrides them); a rerun reuses the compiles (XLA cache).
#
#   bash benchmarks/gpu_check.sh             # on the GPU box
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: the same code paths at the tiny_1layer preset on CPU
#
# All output goes to "${OUT:-/tmp/gpu_check}/gpu_check.log" (each variant also to step_<variant>.log), the JSONs
# next to it; nvidia-smi first (when present), a summary last. Exit status 0 when every variant succeeded.
# The measured figures go to BENCHMARKS.md ("Training step" and "Decoding").
set -u

MODE=gpu
for arg in "$@"; do
    case "$arg" in
        --dry-run) MODE=dry-run ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (only --dry-run)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Reruns (and, in the dry run, the cudnn variant, which falls back to the default's XLA attention) reuse compiles.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/gpu_check_xla_cache}"

VARIANTS=(default cudnn remat)
FLAGS=("" "--cudnn" "--remat")
if [ "$MODE" = dry-run ]; then
    export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
    # Cheap LLVM settings: the CPU compiles take a third of the time; the dry run's timings mean nothing anyway.
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    COMMON=(--gpu --dry-run --preset tiny_1layer --batch 2 --seq 64 --frames 2 --clips 2 --warmup 1 --iters 2
            --decode 4)
    BUDGETS=(400 400 400)
else
    COMMON=(--gpu --batch 8 --seq 512 --frames 8 --clips 8 --warmup 2 --iters 5 --decode 64)
    # shellcheck disable=SC2206  # three numbers
    BUDGETS=(${GPU_CHECK_BUDGETS:-200 125 125})  # + 5 s kill grace each: 465 s; a 7B step compiles in ~1-2 min
fi
if [ "${#BUDGETS[@]}" -ne "${#VARIANTS[@]}" ]; then
    echo "gpu_check.sh: GPU_CHECK_BUDGETS needs ${#VARIANTS[@]} numbers of seconds, got '${BUDGETS[*]}'" >&2
    exit 2
fi

run_variants() {
    echo "gpu_check ($MODE): $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit" \
        "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), python $PYTHON, output $OUT"
    if command -v nvidia-smi > /dev/null 2>&1; then
        nvidia-smi
    else
        echo "nvidia-smi: not present"
    fi
    local i name budget started rc carry=0 failed=0
    local -a status
    for i in "${!VARIANTS[@]}"; do
        name=${VARIANTS[$i]}
        budget=$((BUDGETS[i] + carry))
        started=$SECONDS
        # shellcheck disable=SC2086  # FLAGS entries are one flag or none
        set -- "${COMMON[@]}" ${FLAGS[$i]} --plan-json "$OUT/plan_$name.json"
        echo "=== variant $name: benchmarks/train_step.py $* (timeout ${budget} s)"
        (cd "$ROOT" && timeout --kill-after=5 "$budget" "$PYTHON" -u benchmarks/train_step.py "$@") 2>&1 \
            | tee "$OUT/step_$name.log"
        rc=${PIPESTATUS[0]}
        carry=$((budget - (SECONDS - started)))
        [ "$carry" -lt 0 ] && carry=0
        case "$rc" in
            0) status[i]="ok" ;;
            124 | 137) status[i]="TIMED OUT after ${budget} s"; failed=1 ;;
            *) status[i]="FAILED (exit $rc): $(tail -n 1 "$OUT/step_$name.log")"; failed=1 ;;
        esac
        echo "=== variant $name: ${status[i]} in $((SECONDS - started)) s"
    done
    echo "=== summary ($MODE, ${SECONDS} s in all)"
    for i in "${!VARIANTS[@]}"; do
        name=${VARIANTS[$i]}
        echo "$name: ${status[i]}"
        grep -E '^(attention: |step |peak device memory: |decode: |planner: )' "$OUT/step_$name.log" | sed 's/^/  /'
    done
    echo "log: $LOG; plans and measurements: $OUT/plan_*.json"
    return "$failed"
}

run_variants 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
