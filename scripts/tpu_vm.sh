#!/usr/bin/env bash
# AlexNet on a Cloud TPU VM or pod slice, driven from any machine with gcloud. Guide: docs/cluster.md.
#
#   export TPU_NAME=my-v4-32 ZONE=us-central2-b
#   export DATA_DIR=/mnt/shared/imagenet_prepared WORKDIR=/mnt/shared/runs/alexnet_imagenet
#   scripts/tpu_vm.sh run [launch.py args]   # copy this checkout to every worker, install, train
#   scripts/tpu_vm.sh dry_run                # the same, but print the plan on every worker and exit
#   scripts/tpu_vm.sh status                 # running or not on each worker, last log lines
#   scripts/tpu_vm.sh logs                   # follow worker 0's log (Ctrl-C stops following only)
#   scripts/tpu_vm.sh stop                   # SIGTERM on every worker: save a checkpoint, exit 0
#
# One process per TPU host (`--worker=all`); jax.distributed.initialize() finds the other hosts of
# the slice by itself. Training runs detached (nohup) so it outlives the ssh session; its output
# goes to ~/$REMOTE_DIR/logs/train.log on each worker. `run` again, with the same WORKDIR, resumes
# after a stop, a maintenance event or a preemption (also on a re-created TPU). WORKDIR and DATA_DIR
# must be the same shared mount on every worker (Filestore, or Cloud Storage FUSE): checkpoints of
# a multi-host run are written by all hosts into one folder, and a re-created TPU has fresh disks.

set -euo pipefail

# ---- Settings (environment variables; see docs/cluster.md) -------------------------------------
TPU_NAME=${TPU_NAME:-}                             # TPU VM / slice name (required)
ZONE=${ZONE:-}                                     # its zone, e.g. us-central2-b (required)
PROJECT=${PROJECT:-}                               # Google Cloud project; empty: gcloud's default
DATA_DIR=${DATA_DIR:-/shared/imagenet_prepared}    # output of alexnet_jax.prepare, on every worker
WORKDIR=${WORKDIR:-/shared/runs/alexnet_imagenet}  # checkpoints, metrics; same path to resume
CONFIG=${CONFIG:-configs/imagenet.py}              # config file, relative to the checkout
REMOTE_DIR=${REMOTE_DIR:-alexnet_jax}              # checkout on each worker, relative to its home
PYTHON=${PYTHON:-python3}                          # worker Python (>= 3.11) that creates the venv

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CODE_ARCHIVE=alexnet_jax_code.tgz                  # copied into each worker's home, then unpacked
LOG=logs/train.log                                 # relative to REMOTE_DIR on each worker
PID_FILE=logs/train.pid

usage() {
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

# ---- This machine: gcloud ------------------------------------------------------------------------

require_tpu() {
  if [[ -z "$TPU_NAME" || -z "$ZONE" ]]; then
    echo "error: set TPU_NAME and ZONE (e.g. TPU_NAME=my-v4-32 ZONE=us-central2-b)" >&2
    exit 2
  fi
}

# on_workers WORKER COMMAND: runs COMMAND (a bash command line) on worker WORKER (a number or all).
on_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+"--project=$PROJECT"} \
    --worker="$1" --command="$2"
}

# worker_command ACTION [ARGS...]: a command line that runs this script's ACTION on a worker.
worker_command() {
  local action=$1
  shift
  local args=""
  if (( $# )); then
    args=$(printf ' %q' "$@")
  fi
  printf 'cd ~ && cd %q && DATA_DIR=%q WORKDIR=%q CONFIG=%q PYTHON=%q bash scripts/tpu_vm.sh %s%s' \
    "$REMOTE_DIR" "$DATA_DIR" "$WORKDIR" "$CONFIG" "$PYTHON" "$action" "$args"
}

# upload: this checkout (tracked and untracked files; not git-ignored ones, a local virtualenv
# or runs/) to every worker.
upload() {
  local tmp archive
  tmp=$(mktemp -d)
  archive="$tmp/$CODE_ARCHIVE"
  if git -C "$REPO_DIR" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO_DIR" && git ls-files -z --cached --others --exclude-standard \
      | while IFS= read -r -d '' f; do
          case "$f" in .venv/*|runs/*) continue ;; esac
          if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi
        done \
      | tar -czf "$archive" --null -T -)
  else
    tar -czf "$archive" -C "$REPO_DIR" --exclude=./.git --exclude=./.venv --exclude=./runs .
  fi
  gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:$CODE_ARCHIVE" --zone="$ZONE" \
    ${PROJECT:+"--project=$PROJECT"} --worker=all
  rm -rf "$tmp"
  on_workers all "$(printf 'cd ~ && mkdir -p %q && tar -xzf %q -C %q && rm -f %q' \
    "$REMOTE_DIR" "$CODE_ARCHIVE" "$REMOTE_DIR" "$CODE_ARCHIVE")"
}

# ---- A TPU worker (called through on_workers) ----------------------------------------------------

worker_install() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $(hostname): $PYTHON is $("$PYTHON" -V 2>&1); jax 0.10.2 needs Python >= 3.11." \
         "Install one and set PYTHON (docs/cluster.md)." >&2
    exit 2
  fi
  if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
  fi
  .venv/bin/python -m pip install -q -r requirements-tpu.txt
}

worker_pid() {  # prints the training pid if it is running
  if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    cat "$PID_FILE"
  fi
}

worker_start() {
  local pid
  pid=$(worker_pid)
  if [[ -n "$pid" ]]; then
    echo "error: $(hostname): already training (pid $pid); 'stop' it first" >&2
    exit 2
  fi
  mkdir -p logs
  echo "$(date -u +%FT%TZ) $(hostname): config=$CONFIG workdir=$WORKDIR data=$DATA_DIR" \
       "extra=[$*]" >> "$LOG"
  nohup .venv/bin/python launch.py --config="$CONFIG" --workdir="$WORKDIR" \
    --config.data.dir="$DATA_DIR" --auto_distributed "$@" >> "$LOG" 2>&1 < /dev/null &
  echo $! > "$PID_FILE"
  echo "$(hostname): training, pid $!, log ~/$REMOTE_DIR/$LOG"
}

worker_dry_run() {
  .venv/bin/python launch.py --config="$CONFIG" --workdir="$WORKDIR" \
    --config.data.dir="$DATA_DIR" --auto_distributed --dry_run "$@"
}

worker_status() {
  local pid
  pid=$(worker_pid)
  echo "$(hostname): ${pid:+training, pid $pid}${pid:-not training}"
  if [[ -f "$LOG" ]]; then
    tail -n 3 "$LOG"
  fi
}

worker_stop() {
  local pid
  pid=$(worker_pid)
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid"
    echo "$(hostname): SIGTERM sent to pid $pid (it saves a checkpoint, then exits)"
  else
    echo "$(hostname): not training"
  fi
}

# ---- Dispatch ------------------------------------------------------------------------------------

action=${1:-}
if [[ -z "$action" ]]; then
  usage
fi
shift
case "$action" in
  run)     require_tpu; upload; on_workers all "$(worker_command _worker_run "$@")" ;;
  dry_run) require_tpu; upload; on_workers all "$(worker_command _worker_dry_run "$@")" ;;
  status)  require_tpu; on_workers all "$(worker_command _worker_status)" ;;
  logs)    require_tpu; on_workers 0 "$(printf 'tail -n 50 -F %q' "$REMOTE_DIR/$LOG")" ;;
  stop)    require_tpu; on_workers all "$(worker_command _worker_stop)" ;;
  _worker_run)     worker_install; worker_start "$@" ;;
  _worker_dry_run) worker_install; worker_dry_run "$@" ;;
  _worker_status)  worker_status ;;
  _worker_stop)    worker_stop ;;
  *) echo "error: unknown action '$action'" >&2; usage ;;
esac
