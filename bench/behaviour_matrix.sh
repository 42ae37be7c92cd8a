#!/usr/bin/env bash
# The behaviour matrix: 12 commands x both shipped models, printing each output's sha256 prefix.
# Run it before and after a refactor and diff the two listings (outputs are deterministic).
#   bash bench/behaviour_matrix.sh OUTDIR > listing.txt
set -u
repo=$(cd "$(dirname "$0")/.." && pwd); out=${1:?usage: behaviour_matrix.sh OUTDIR}; mkdir -p "$out"
cd "$repo"
run() { name=$1; shift
  for m in digits_cnn digits_vit; do
    PYTHONPATH="$repo" timeout 900 python3 cli.py "models/$m.onnx" "$out/$m.$name.onnx" \
      --calib "models/$m.calib.npz" -q "$@" > "$out/$m.$name.log" 2>&1
    echo "$m.$name rc=$? $(sha256sum "$out/$m.$name.onnx" 2>/dev/null | cut -c1-16)"
  done
}
run s50 --sparsity 0.5 --allocate uniform
run dp70 --sparsity 0.7 --allocate dp
run nm24 --nm 2:4
run blk4 --sparsity 0.5 --block 4
run w4 --bits 4
run w8a8 --bits 8 --act-bits 8
run s50w4 --sparsity 0.5 --bits 4 --allocate uniform
run gptq --bits 4 --method gptq
run cscale --sparsity 0.5 --correct-scale --allocate uniform
run seq --sparsity 0.5 --sequential --allocate uniform
run bops32 --allocate dp --budget bops --target 32 --act-bits 8
run correct --sparsity 0.5 --correct --allocate uniform
