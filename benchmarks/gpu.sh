#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one command of about 6 minutes, from the repository root:
#
#   python3 -m benchmarks.fetch_wheels           # here, with network: .whl/ (git-ignored, ~7 MiB)
#   bash benchmarks/gpu.sh [--cpu-smoke] [OUT_DIR]   # OUT_DIR: default $OUT, else benchmarks/gpu_results
#
# First the GPU rows, then, only while the budget lasts, the pipeline rows. Each part has its
# own time cap (`timeout`); all together stay within GPU_BUDGET_S seconds (default 360): a
# part gets at most what is left of the budget (less 15 s for the summary) and is skipped
# under 20 s. Every part writes its JSON as soon as it has a result (the step parts after
# every case), so a time limit loses only what it cut. OUT_DIR gets at most 6 files:
#   wheels         the wheels in GPU_WHEELS (default .whl/) installed without network into
#                  GPU_WORK/site (`pip install --no-index --no-deps --target`), put first on
#                  PYTHONPATH; none there: the installed packages are used
#   env            GPU, driver, CPU, package versions and where they come from  -> env.json
#   probe          ONE train step of the paper net at batch 32 (bf16): the GPU, JAX and the
#                  model work; if it fails, the other step parts are skipped   -> step_jax.json
#   step_bf16      JAX train step (benchmarks/train_step.py), paper net, bf16 compute and
#                  float32 params, batch 128, 256, 512, 1024 on one GPU; the bf16 matmul
#                  peak measured in the same run                                 -> step_jax.json
#   step_one_tower JAX: the one-tower net, bf16, batch 512                        -> step_jax.json
#   step_conv1     JAX: the paper net, bf16, batch 512, the shipped float32 conv1 against
#                  conv1 in bf16 in the same rounds (what keeping the lighting costs) -> step_jax.json
#   step_f32       JAX: float32 compute, paper net, batch 512, with JAX's default matmul
#                  precision (TF32 on NVIDIA GPUs) and with 'highest' (TF32 off) -> step_jax.json
#   --- pipeline rows, after the GPU rows and only if time is left:
#   data           a synthetic ImageFolder (benchmarks/synthetic_imagenet.py: 10 classes,
#                  5,120 train + 100 val images each) prepared by `python -m
#                  alexnet_jax.prepare` into 256x256 JPEG shards, on all cores
#   input          the grain train pipeline on those shards: 1 thread, all cores as threads,
#                  1 and all cores as processes, the decoder stubbed and the GIL counter
#                  (benchmarks/loader_baseline.py; the Amdahl projection for this host) -> input.json
#   e2e            `launch.py --config=configs/imagenet.py` on the shards, batch 512, 120 steps
#                  (100 per epoch: a checkpoint at 100), data.worker_count -1: images/s, loss,
#                  checkpoints, the final evaluation; then the eval step's images/s -> e2e.json
#   torch          PyTorch's step of the same net, bf16 autocast: eager NCHW and eager
#                  channels_last, batch 128..1024 (benchmarks/torch_step.py); then
#                  torch.compile at 512. Without torch: one line says so  -> step_torch.json
#   summary        the table (benchmarks/gpu_summary.py), printed last
# Everything printed also goes to OUT_DIR/log.txt, with each part's exit status and seconds
# (124: its cap cut it), listed again in the summary. Data and runs go to GPU_WORK (default
# /tmp/alexnet_gpu), never OUT_DIR. PYTHON picks the interpreter (default python3).
#
# --cpu-smoke: every part with tiny sizes on the CPU (JAX_PLATFORMS=cpu; an eighth-width
# net, batch 2, one step; 72x72 images; PyTorch eager only, torch.compile skipped): checks
# that the script runs end to end, not speed (tests/test_benchmarks.py runs it).
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0
if [[ "${1:-}" == --cpu-smoke ]]; then smoke=1; shift; fi
out="${1:-${OUT:-benchmarks/gpu_results}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="${GPU_WORK:-/tmp/alexnet_gpu}"
mkdir -p "$work"
py="${PYTHON:-python3}"
wheels="${GPU_WHEELS:-.whl}"
cores="$(nproc)"
export PYTHONUNBUFFERED=1

if (( smoke )); then
  export JAX_PLATFORMS=cpu
  # The probe and step_bf16 compile the same program here: compile it once.
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$work/jax_cache}"
  budget="${GPU_BUDGET_S:-900}"
  cap_scale=3  # a loaded 2-core CPU compiles slower than the GPU machine's host
  net=tiny one_tower=tiny_one_tower
  step_common=(--rounds=1 --steps=1 --gemm=128)
  probe=(--batches=2)
  step_bf16=(--batches=2)
  step_one_tower=(--batches=2)
  step_conv1=(--batches=2)
  step_f32=(--batches=2)
  data=(--classes=2 --train_per_class=8 --val_per_class=2)
  image_size=72
  input=(--batch_size=4 --batches=2 --repeats=1 --image_size=72 --crop_size=64)
  e2e=(--batch_size=4 --steps=2 --log_every=1 --eval_batches=0)
  e2e_extra=(--config.model.width=0.125 --config.data.image_size=72 --config.data.crop_size=64
             --config.model.dtype=bfloat16 --config.final_eval_crops=1)
  torch_eager=(--batches=2 --rounds=1 --steps=1 --warmup=1)
  torch_compile=(--batches=2 --rounds=1 --steps=1 --warmup=1)
else
  # A JAX whose CUDA plugin fails would fall back to the CPU with a warning; fail instead.
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
  budget="${GPU_BUDGET_S:-360}"
  cap_scale=1
  net=paper one_tower=one_tower
  step_common=(--rounds=3 --steps=20)
  probe=(--batches=32 --rounds=1 --steps=1)
  step_bf16=(--batches=128,256,512,1024)
  step_one_tower=(--batches=512)
  step_conv1=(--batches=512)
  step_f32=(--batches=512 --steps=10)
  data=(--classes=10 --train_per_class=5120 --val_per_class=100)  # 100 steps per epoch at 512
  image_size=256
  input=(--batch_size=512 --batches=16 --repeats=1)
  e2e=(--batch_size=512 --steps=120 --log_every=10 --eval_batches=10)
  e2e_extra=(--config.final_eval_crops=1)
  torch_eager=(--batches=128,256,512,1024 --rounds=3 --steps=10 --warmup=3)
  torch_compile=(--batches=512 --rounds=3 --steps=10 --warmup=3)
fi
raw="$work/synthetic"
prepared="$work/synthetic_prepared_$image_size"
start=$SECONDS
parts="$work/parts.txt"
: > "$parts"

part() {  # part NAME CAP_SECONDS COMMAND...: COMMAND under `timeout`, within the budget
  local name=$1 cap=$(( $2 * cap_scale ))
  shift 2
  local left=$(( budget - (SECONDS - start) - 15 ))
  (( cap > left )) && cap=$left
  if (( cap < 20 )); then
    echo "=== $name: skipped, the budget (${budget} s) is spent"
    echo "$name skipped 0" >> "$parts"
    return 1
  fi
  echo "=== $name: cap ${cap} s, $(date +%T), $(( SECONDS - start )) s into the run"
  local t0=$SECONDS
  timeout -k 10 "$cap" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $(( SECONDS - t0 )) s"
  echo "$name $rc $(( SECONDS - t0 ))" >> "$parts"
  return $rc
}

install_wheels() {  # the carried wheels first on PYTHONPATH, installed without network
  local found=("$wheels"/*.whl)
  if [[ ! -e "${found[0]}" ]]; then
    echo "=== wheels: none in $wheels; the installed packages are used"
    return 0
  fi
  echo "=== wheels: installing ${#found[@]} from $wheels into $work/site (no network)"
  rm -rf "$work/site"
  if ! "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --disable-pip-version-check --target "$work/site" "${found[@]}"; then
    echo "=== wheels: pip install failed; the installed packages are used"
    return 1
  fi
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
}

step() {  # step NAME CAP ARGS...: benchmarks/train_step.py on one device, rows into step_jax.json
  local name=$1 cap=$2
  shift 2
  part "$name" "$cap" "$py" -m benchmarks.train_step --meshes=1x1 --torch=no \
    "${step_common[@]}" "$@" --json="$out/step_jax.json"
}

gpu_rows() {
  part env 30 "$py" -m benchmarks.gpu_summary env "$out"
  if ! step probe 60 --nets=$net --dtypes=bfloat16 "${probe[@]}"; then
    echo "=== step_bf16, step_one_tower, step_conv1, step_f32: skipped, the probe step failed"
    return
  fi
  step step_bf16 120 --nets=$net --dtypes=bfloat16 "${step_bf16[@]}" --json_append
  step step_one_tower 45 --nets=$one_tower --dtypes=bfloat16 "${step_one_tower[@]}" --json_append
  step step_conv1 45 --nets=$net --dtypes=bfloat16 --variants=shipped,conv1=bf16 \
    "${step_conv1[@]}" --json_append
  step step_f32 75 --nets=$net --dtypes=float32 --matmul_precision=default,highest \
    "${step_f32[@]}" --json_append
}

pipeline_rows() {
  local have_data=0
  if [[ -f "$prepared/dataset.json" ]]; then
    echo "=== data: $prepared is already prepared"
    have_data=1
  elif part data 60 env JAX_PLATFORMS=cpu bash -c "rm -rf '$raw' '$prepared' && \
      '$py' -m benchmarks.synthetic_imagenet --output='$raw' ${data[*]} --workers=$cores && \
      '$py' -m alexnet_jax.prepare --source='$raw' --output='$prepared' --workers=$cores \
        --image_size=$image_size"; then
    have_data=1
  fi
  if (( have_data )); then
    part input 90 env JAX_PLATFORMS=cpu "$py" -m benchmarks.loader_baseline \
      --prepared="$prepared" --modes=grain_1,grain_n,grain_1p,grain_p,stub_1,gil_1 \
      --cores="$cores" "${input[@]}" --json="$out/input.json"
    part e2e 120 "$py" -m benchmarks.launch_run --data="$prepared" --workdir="$work/run_paper" \
      "${e2e[@]}" --json="$out/e2e.json" -- "${e2e_extra[@]}"
  else
    echo "=== input, e2e: skipped, no prepared data"
  fi
  if ! "$py" -c 'import torch' 2>/dev/null; then
    echo "=== torch: skipped, torch is not installed for $py"
    return
  fi
  part torch 60 env JAX_PLATFORMS=cpu "$py" -m benchmarks.torch_step --nets=paper \
    --modes=eager,channels_last "${torch_eager[@]}" --json="$out/step_torch.json"
  if (( smoke )); then  # compiling the full-size net on a CPU takes minutes: not a smoke test
    echo "=== torch_compile: skipped in the CPU smoke run"
    return
  fi
  part torch_compile 90 env JAX_PLATFORMS=cpu "$py" -m benchmarks.torch_step --nets=paper \
    --modes=compile "${torch_compile[@]}" --json="$out/step_torch.json" --json_append
}

main() {
  echo "gpu.sh: out $out, work $work, budget ${budget} s, smoke $smoke, $cores cores, $py" \
    "($("$py" --version 2>&1))"
  install_wheels
  gpu_rows
  pipeline_rows
  echo
  echo "=== summary ($(( SECONDS - start )) s)"
  "$py" -m benchmarks.gpu_summary table "$out" "$parts"
}

main 2>&1 | tee "$out/log.txt"
exit "${PIPESTATUS[0]}"
