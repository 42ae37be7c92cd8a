#!/usr/bin/env bash
# The checks that need a GPU, as one prepared run for a lent device machine (CI has none).
#
#   bash bench/device_check.sh [MODEL.onnx ...]
#
# 1. tests/test_gpu.py on the real CuPy (solver, Hessian, quantization, N:M and blocks:
#    CuPy against NumPy);
# 2. bench/device_parity.py, 50% sparsity and then 4 bits, on the shipped models and on the
#    models named (each NAME.onnx beside its NAME.calib.npz; e.g. copies of some of
#    bench/real/, in that order): per layer the same masks / codes? the same losses? seconds
#    on each device;
# 3. bench/device_crossover.py: one layer's solve on each device over widths, per job;
# 4. bench/cost_model.py --wide --device cuda --wide-time 60 (WIDE_TIME): the 128 x 65,536 conv
#    within the memory budget, the plan choosing per layer under that time budget.
# STEPS (default "pytest parity crossover wide") picks some of them.
# Each step under its own timeout (STEP_S, default 150 s; WIDE_S for step 4, default 120 s),
# its log in $OUT (or /tmp/device_out).
# Wheels in .whl/ (e.g. onnx-graphsurgeon, which the device image lacks) are put on PYTHONPATH.
# As run through the device tool (one H200, 2026-12-04; docs/numerics.md, GPU): .whl holding
# onnx_graphsurgeon-0.6.1-py2.py3-none-any.whl, .gpu holding copies of bench/real's ppocr_cls,
# ppocr_rec and crepe_tiny (.onnx + .calib.npz, 42 MB), both in .git/info/exclude and carried:
#   STEP_S=150 bash bench/device_check.sh .gpu/ppocr_cls.onnx .gpu/ppocr_rec.onnx .gpu/crepe_tiny.onnx
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import cupy, numpy, onnx, onnxruntime as o, os
print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'onnx', onnx.__version__,
      'onnxruntime', o.__version__, cupy.cuda.runtime.getDeviceProperties(0)['name'].decode(),
      os.cpu_count(), 'CPUs')"

step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "=== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s"
}

models=()
for m in models/digits_cnn models/digits_vit "$@"; do
    m=${m%.onnx}
    [ -f "$m.calib.npz" ] && models+=("$m.onnx" "$m.calib.npz")
done
STEPS=${STEPS:-pytest parity crossover wide}
if [[ $STEPS == *pytest* ]]; then
    step pytest_gpu "${STEP_S:-150}" python3 -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_gpu.py
fi
if [[ $STEPS == *parity* ]]; then
    step parity_s50 "${STEP_S:-150}" python3 bench/device_parity.py "${models[@]}"
    step parity_w4 "${STEP_S:-150}" python3 bench/device_parity.py --bits 4 "${models[@]}"
fi
if [[ $STEPS == *crossover* ]]; then
    step crossover "${STEP_S:-150}" python3 bench/device_crossover.py
fi
if [[ $STEPS == *wide* ]]; then
    step wide "${WIDE_S:-120}" python3 bench/cost_model.py --wide --device cuda \
        --wide-time "${WIDE_TIME:-60}"
fi
