#!/usr/bin/env bash
# Every GPU figure the README asks for, in one run of under 8 minutes on one GPU (so that it can run twice within a
# short loan of a GPU machine). Run from the repository root:
#
#     REFERENCE=/path/to/NVIDIA/tacotron2 bash benchmarks/gpu_check.sh [OUT_DIR]
#
# REFERENCE (optional): a checkout of github.com/NVIDIA/tacotron2 for the side-by-side step (skipped without it).
# Prints each benchmark's lines and keeps them in OUT_DIR (default ./gpu_check). Each step has its own time limit,
# so that one slow benchmark cannot eat the others' time.
set -u
OUT=${1:-gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
run() {  # run NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt" | grep -v "^\s*$" | tail -n 12
    echo "=== $name: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s"
}
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
# The demo corpus and its features, once (synthesized locally with eSpeak NG).
run corpus 120 $PY -m smart_tuner data demo
if [ -n "${REFERENCE:-}" ]; then
    # LJSpeech-like shapes: batch 64, 150 tokens, 570 frames.
    run vs_reference 120 $PY benchmarks/vs_reference.py --reference "$REFERENCE" --device cuda --repeats 4
fi
run train_speed_tacotron2 100 $PY benchmarks/train_speed.py --preset tacotron2 --steps 20 --warmup 5 \
    --compare eager,fast --rounds 1 --compare-fp32 --set train.device=cuda --set train.batch_size=32
run train_speed_demo 60 $PY benchmarks/train_speed.py --preset demo --steps 40 --warmup 10 --compare eager,fast \
    --rounds 1 --set train.device=cuda
# Trial packing on one GPU (optimize --trials-per-gpu K): summed steps/s of K demo trainings against K = 1.
run trial_packing 120 $PY benchmarks/shared_cores.py --counts 1,2,4,8 --rounds 1 --steps 40 --warmup 10 \
    --set train.device=cuda
# The GPU code paths of the tests (CUDA is used where present).
run tests 60 $PY -m pytest -q -x tests/test_model.py tests/test_trainer.py -m "not slow"
