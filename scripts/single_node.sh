#!/usr/bin/env bash
# AlexNet on one machine with one or more GPUs: one process driving every local device.
# Guide: docs/cluster.md.
#
#   DATA_DIR=/data/imagenet_prepared WORKDIR=/data/runs/alexnet scripts/single_node.sh
#   scripts/single_node.sh --config.batch_size=256        # arguments go to launch.py
#   scripts/single_node.sh --dry_run                      # print the plan and exit
#   nohup scripts/single_node.sh > train.log 2>&1 &       # survive logout; or use tmux
#
# Stop with `kill -TERM <pid>`: the run finishes its step, saves a checkpoint and exits 0 (Ctrl-C
# is SIGINT: it stops without that save). Run the same command again to resume from WORKDIR.
# CUDA_VISIBLE_DEVICES=0,1 restricts the run to those GPUs.

set -euo pipefail

# ---- Settings (environment variables; see docs/cluster.md) -------------------------------------
REPO_DIR=${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}  # the alexnet_jax checkout
VENV=${VENV:-$REPO_DIR/.venv}                      # virtualenv with requirements-cuda.txt
DATA_DIR=${DATA_DIR:-/shared/imagenet_prepared}    # output of alexnet_jax.prepare
WORKDIR=${WORKDIR:-/shared/runs/alexnet_imagenet}  # checkpoints, metrics; same path to resume
CONFIG=${CONFIG:-configs/imagenet.py}              # config file, relative to REPO_DIR

cd "$REPO_DIR"
if [[ -f "$VENV/bin/activate" ]]; then
  # shellcheck source=/dev/null
  source "$VENV/bin/activate"
fi
if ! command -v python >/dev/null; then
  echo "error: no python on PATH; create the virtualenv $VENV (docs/cluster.md) or set VENV" >&2
  exit 2
fi
mkdir -p "$WORKDIR"
echo "$(date -u +%FT%TZ) $(hostname): config=$CONFIG workdir=$WORKDIR data=$DATA_DIR extra=[$*]"

# Inside a SLURM allocation (salloc, srun --pty), jax.distributed.initialize() would read the
# SLURM step and pin this single process to GPU number SLURM_LOCALID; hide the step from it so
# the process keeps every local GPU. `exec`: SIGTERM sent to this script reaches Python.
exec env -u SLURM_PROCID -u SLURM_LOCALID -u SLURM_STEP_NODELIST \
  python launch.py --config="$CONFIG" --workdir="$WORKDIR" --config.data.dir="$DATA_DIR" "$@"
