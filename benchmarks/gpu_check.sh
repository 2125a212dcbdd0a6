#!/usr/bin/env bash
# Every GPU figure docs/benchmarks.md asks for, in one run of under 8 minutes on one GPU (so that it can run twice
# within a short loan of a GPU machine). Run from the repository root:
#
#     REFERENCE=/path/to/NVIDIA/tacotron2 bash benchmarks/gpu_check.sh [OUT_DIR]
#
# What it covers, in order (each step with its own time limit, so that one slow step cannot eat the others' time):
#   device            torch sees a CUDA device (nothing else runs without one)
#   corpus            the demo corpus and its features (synthesized locally with eSpeak NG)
#   vs_reference      our fast path against NVIDIA's tacotron2 at LJSpeech shapes (only with REFERENCE set)
#   train_speed_*     steps/s of both presets, stepwise and fast paths (the tacotron2 preset also in fp32)
#   trial_packing     summed steps/s of K = 1, 2, 4, 8 demo trainings sharing the GPU (optimize --trials-per-gpu)
#   cuda_train        a 60-step demo training on CUDA through the `train` command, adapters active
#   cuda_synthesize   speech from that run's checkpoint on CUDA through the `synthesize` command
# The test suite is not here: it runs on CPU and never needs a GPU.
# Prints each step's last lines and keeps its whole output in OUT_DIR (default ./gpu_check). Exits 1 when any step
# failed or ran out of time, and names those steps last.
set -u
OUT=${1:-gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
failed=()
run() {  # run NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    grep -v "^\s*$" "$OUT/$name.txt" | tail -n 12
    echo "=== $name: exit $rc, $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
    return "$rc"
}
run device 60 $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0))" || { echo "gpu_check: no usable CUDA device" >&2; exit 1; }
run corpus 120 $PY -m smart_tuner data demo
if [ -n "${REFERENCE:-}" ]; then
    # LJSpeech-like shapes: batch 64, 150 tokens, 570 frames.
    run vs_reference 120 $PY benchmarks/vs_reference.py --reference "$REFERENCE" --device cuda --repeats 4
fi
run train_speed_tacotron2 100 $PY benchmarks/train_speed.py --preset tacotron2 --steps 20 --warmup 5 \
    --compare stepwise,fast --rounds 1 --compare-fp32 --set train.device=cuda --set train.batch_size=32
run train_speed_demo 60 $PY benchmarks/train_speed.py --preset demo --steps 40 --warmup 10 --compare stepwise,fast \
    --rounds 1 --set train.device=cuda
run trial_packing 120 $PY benchmarks/shared_cores.py --counts 1,2,4,8 --rounds 1 --steps 40 --warmup 10 \
    --set train.device=cuda
rm -rf "$OUT/cuda_run" "$OUT/speech"
if run cuda_train 90 $PY -m smart_tuner train --config objectives/demo.yaml --set train.device=cuda --max-steps 60 \
        --run-dir "$OUT/cuda_run" --no-progress; then
    run cuda_synthesize 60 $PY -m smart_tuner synthesize --checkpoint "$OUT/cuda_run/checkpoints/last.pt" \
        --text "The tool tuned this voice." --out "$OUT/speech" --device cuda
fi
if [ "${#failed[@]}" -gt 0 ]; then
    echo "gpu_check: FAILED: ${failed[*]} (outputs in $OUT/)" >&2
    exit 1
fi
echo "gpu_check: every step passed (outputs in $OUT/)"
