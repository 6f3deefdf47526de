#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md in one command, from the repository root:
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # default OUT_DIR: $OUT, else benchmarks/gpu_results
#
# 1. the train step (benchmarks/train_step.py): paper and one-tower nets, bfloat16 compute,
#    batch 128..1024, one GPU, against PyTorch eager when torch is installed, with the GEMM
#    peak measured in the same run; then float32 at batch 128 and 256 for reference;
# 2. the input pipeline (benchmarks/input_pipeline.py) with all host cores, which needs the
#    data stack (grain, simplejpeg, array-record, ml-collections, scikit-learn): install it
#    first where the image lacks it, e.g. `pip install --no-index --find-links=WHEELS
#    grain simplejpeg array-record ml-collections`, else this step is skipped with a note.
# Writes OUT_DIR/*.txt (what was printed) and OUT_DIR/*.json (the rows). ~10 min on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/gpu_results}}"
mkdir -p "$out"
status=0

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv \
  > "$out/gpu.txt" 2>&1 || echo "nvidia-smi not found" > "$out/gpu.txt"
{ echo "host cores: $(nproc)"; python -c 'import jax; print("jax", jax.__version__, jax.devices())'; } \
  >> "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

python -m benchmarks.train_step --nets=paper,one_tower --dtypes=bfloat16 \
  --batches=128,256,512,1024 --meshes=1x1 --rounds=5 --steps=20 \
  --json="$out/train_step_bf16.json" 2>&1 | tee "$out/train_step_bf16.txt" || status=1

python -m benchmarks.train_step --nets=paper --dtypes=float32 --batches=128,256 --meshes=1x1 \
  --rounds=3 --steps=10 --json="$out/train_step_f32.json" 2>&1 | tee "$out/train_step_f32.txt" \
  || status=1

if python -c 'import grain, simplejpeg, array_record, ml_collections, sklearn' 2>/dev/null; then
  python -m benchmarks.input_pipeline --cores="$(nproc)" --num_images=1024 --batches=40 \
    --batch_size=256 --repeats=2 2>&1 | tee "$out/input_pipeline.txt" || status=1
else
  echo "input pipeline skipped: the data stack (grain, simplejpeg, array-record, ml-collections," \
       "scikit-learn) is not installed here" | tee "$out/input_pipeline.txt"
fi
exit $status
