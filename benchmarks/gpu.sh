#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md (issue 17) in one command, from the repository root:
#
#   bash benchmarks/gpu.sh [--cpu-smoke] [OUT_DIR]   # OUT_DIR: default $OUT, else benchmarks/gpu_results
#
# Parts, the most important first. Each has its own time cap (`timeout`), and all together
# stay within GPU_BUDGET_S seconds (default 500): a part gets at most what is left of the
# budget (less 15 s for the summary) and is skipped under 20 s. Each part writes its JSON as
# soon as it has a result (the step parts after every case), so a time limit loses only what
# it cut. OUT_DIR gets 7 files (the device tool returns at most 8):
#   env            GPU, driver, CPU, package versions and where they come from  -> env.json
#   step_bf16      JAX train step (benchmarks/train_step.py), paper net, bf16 compute and
#                  float32 params, batch 128, 256, 512, 1024 on one GPU; the bf16 matmul
#                  peak measured in the same run                                  -> step_jax.json
#   data           a synthetic ImageFolder (benchmarks/synthetic_imagenet.py: 10 classes,
#                  5,120 train + 100 val images each) prepared by `python -m
#                  alexnet_jax.prepare` into 256x256 JPEG shards, on all cores
#   input          the grain train pipeline on those shards: 1 thread, all cores as threads,
#                  all cores as processes (benchmarks/input_pipeline.py)        -> input.json
#   e2e            `launch.py --config=configs/imagenet.py` on the shards, batch 512, 200 steps,
#                  mesh.model=1: images/s, loss, checkpoints (epoch end at step 100, final),
#                  the final center and 10-crop evaluations; then the 10-crop eval step's
#                  images/s (benchmarks/launch_run.py)                        -> e2e.json
#   e2e_learn      the same for 100 steps with he init (the paper's init keeps the loss
#                  flat for a long time): does the bf16 path learn?           -> e2e_learn.json
#   torch          PyTorch's step of the same net, bf16 autocast: eager NCHW and eager
#                  channels_last, batch 128..1024 (benchmarks/torch_step.py)   -> step_torch.json
#   step_more      JAX: the one-tower net at 512                                 -> step_jax.json
#   step_host_feed JAX: a fresh host batch every step against the batch kept on the
#                  device, paper net at 512, interleaved                         -> step_jax.json
#   step_f32       JAX: float32 compute, paper net, batch 512, 1024, 256, 128     -> step_jax.json
#   torch_compile  torch.compile (channels_last) at 512, then 256               -> step_torch.json
#   summary        the table (benchmarks/gpu_summary.py), printed last
# Everything printed also goes to OUT_DIR/log.txt, with each part's exit status and seconds
# (124: its cap cut it), listed again in the summary. Data and runs go to GPU_WORK (default
# /tmp/alexnet_gpu), never OUT_DIR. PYTHON picks the interpreter (default python3).
#
# --cpu-smoke: every part with tiny sizes on the CPU (JAX_PLATFORMS=cpu; model.dtype forced
# to bfloat16 as on a GPU): checks that the script runs end to end, not speed.
#
# On a machine whose image lacks the data stack, install carried wheels first, e.g.
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
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
cores="$(nproc)"
export PYTHONUNBUFFERED=1

if (( smoke )); then
  export JAX_PLATFORMS=cpu
  budget="${GPU_BUDGET_S:-1200}"
  cap_scale=3  # a 2-core CPU compiles slower than the GPU machine's host
  step_bf16=(--batches=2,4 --rounds=1 --steps=1)
  step_more=(--batches=4 --rounds=1 --steps=1)
  step_f32=(--batches=4 --rounds=1 --steps=1)
  data=(--classes=4 --train_per_class=24 --val_per_class=4)
  input=(--batch_size=8 --batches=2 --repeats=1)
  e2e=(--batch_size=8 --steps=14 --log_every=2 --eval_batches=2)  # epoch end (a save) at 12
  learn=(--batch_size=8 --steps=4 --log_every=2 --eval_batches=0)
  e2e_extra=(--config.model.dtype=bfloat16)
  torch_eager=(--batches=2,4 --rounds=1 --steps=1 --warmup=1)
  torch_compile=(--batches=4 --rounds=1 --steps=1 --warmup=1)
else
  # A JAX whose CUDA plugin fails would fall back to the CPU with a warning; fail instead.
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
  budget="${GPU_BUDGET_S:-500}"
  cap_scale=1
  step_bf16=(--batches=128,256,512,1024 --rounds=5 --steps=20)
  step_more=(--batches=512 --rounds=5 --steps=20)
  step_f32=(--batches=512,1024,256,128 --rounds=3 --steps=10)
  data=(--classes=10 --train_per_class=5120 --val_per_class=100)  # 100 steps per epoch at 512
  input=(--batch_size=512 --batches=32 --repeats=2)
  e2e=(--batch_size=512 --steps=200 --log_every=20 --eval_batches=20)
  learn=(--batch_size=512 --steps=100 --log_every=10 --eval_batches=0)
  e2e_extra=()
  torch_eager=(--batches=128,256,512,1024 --rounds=3 --steps=10 --warmup=3)
  torch_compile=(--batches=512,256 --rounds=3 --steps=10 --warmup=3)
fi
raw="$work/synthetic"
prepared="$work/synthetic_prepared"
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

main() {
  echo "gpu.sh: out $out, work $work, budget ${budget} s, smoke $smoke, $cores cores, $py"
  part env 60 "$py" -m benchmarks.gpu_summary env "$out"
  part step_bf16 220 "$py" -m benchmarks.train_step --nets=paper --dtypes=bfloat16 \
    "${step_bf16[@]}" --meshes=1x1 --torch=no --json="$out/step_jax.json"

  local have_data=0
  if [[ -f "$prepared/dataset.json" ]]; then
    echo "=== data: $prepared is already prepared"
    have_data=1
  elif part data 150 env JAX_PLATFORMS=cpu bash -c "rm -rf '$raw' '$prepared' && \
      '$py' -m benchmarks.synthetic_imagenet --output='$raw' ${data[*]} --workers=$cores && \
      '$py' -m alexnet_jax.prepare --source='$raw' --output='$prepared' --workers=$cores"; then
    have_data=1
  fi
  if (( have_data )); then
    part input 90 env JAX_PLATFORMS=cpu "$py" -m benchmarks.input_pipeline \
      --prepared="$prepared" --modes=grain_1,grain_n,grain_p --cores="$cores" "${input[@]}" \
      --json="$out/input.json"
    part e2e 220 "$py" -m benchmarks.launch_run --data="$prepared" --workdir="$work/run_paper" \
      "${e2e[@]}" --json="$out/e2e.json" -- "${e2e_extra[@]}"
    part e2e_learn 120 "$py" -m benchmarks.launch_run --data="$prepared" \
      --workdir="$work/run_learn" "${learn[@]}" --json="$out/e2e_learn.json" -- \
      "${e2e_extra[@]}" --config.model.init_scheme=he --config.model.input_scale=0.015625 \
      --config.final_eval_crops=1
  else
    echo "=== input, e2e, e2e_learn: skipped, no prepared data"
  fi

  part torch 120 env JAX_PLATFORMS=cpu "$py" -m benchmarks.torch_step \
    --modes=eager,channels_last "${torch_eager[@]}" --json="$out/step_torch.json"
  part step_more 90 "$py" -m benchmarks.train_step --nets=one_tower --dtypes=bfloat16 \
    "${step_more[@]}" --meshes=1x1 --torch=no --json="$out/step_jax.json" --json_append
  part step_host_feed 90 "$py" -m benchmarks.train_step --nets=paper --dtypes=bfloat16 \
    "${step_more[@]}" --meshes=1x1 --torch=no --variants=shipped,feed=host \
    --json="$out/step_jax.json" --json_append
  part step_f32 150 "$py" -m benchmarks.train_step --nets=paper --dtypes=float32 \
    "${step_f32[@]}" --meshes=1x1 --torch=no --json="$out/step_jax.json" --json_append
  part torch_compile 180 env JAX_PLATFORMS=cpu "$py" -m benchmarks.torch_step \
    --modes=compile "${torch_compile[@]}" --json="$out/step_torch.json" --json_append

  echo
  echo "=== summary ($(( SECONDS - start )) s)"
  "$py" -m benchmarks.gpu_summary table "$out" "$parts"
}

main 2>&1 | tee "$out/log.txt"
exit "${PIPESTATUS[0]}"
