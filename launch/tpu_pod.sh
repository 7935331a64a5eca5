#!/usr/bin/env bash
# Start a jaxknow training on every worker of a Cloud TPU VM pod slice, with one command.
#
#   bash launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=PROJECT] [--module=launch.train] \
#       -- --config=configs/bios/paper.py --workdir=/tmp/run --config.train.checkpoint_dir=gs://B/run
#
# Steps, each on all workers at once (gcloud ... --worker=all):
#   1. copy this checkout to ~/jaxknow on every worker (git archive of HEAD, so uncommitted
#      edits are not shipped by accident; pass --dirty to ship the working tree as it is);
#   2. create ~/jaxknow/.venv and install jaxknow with the TPU extra (skipped when the same
#      commit is already installed there);
#   3. run `python -m MODULE ARGS --config.train.distributed=on` on every worker: JAX finds
#      the slice's other hosts itself (jax.distributed.initialize()), each host feeds its own
#      data shards, process 0 writes metrics, orbax writes checkpoints from every host.
# Checkpoints must go to storage every host can reach (a gs:// bucket via
# --config.train.checkpoint_dir); the training data is materialised on each worker's local
# disk (deterministic, the same bytes everywhere) before training starts.
set -euo pipefail

TPU="" ZONE="" PROJECT="" MODULE="launch.train" DIRTY=0 DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --module=*) MODULE="${1#*=}" ;;
    --dirty) DIRTY=1 ;;
    --dry_run) DRY=1 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (put training flags after --)" >&2; exit 2 ;;
  esac
  shift
done
ARGS=("$@")
[[ -n "$TPU" && -n "$ZONE" ]] || { echo "error: --tpu=NAME and --zone=ZONE are required" >&2; exit 2; }
[[ ${#ARGS[@]} -gt 0 ]] || { echo "error: give the training flags after --, e.g. -- --config=configs/smoke.py --workdir=/tmp/run" >&2; exit 2; }

cd "$(dirname "$0")/.."
GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=("$TPU" --zone="$ZONE" --worker=all)
[[ -n "$PROJECT" ]] && COMMON+=(--project="$PROJECT")
run() { if [[ $DRY == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }

REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
ARCHIVE=$(mktemp -t jaxknow-XXXX.tar.gz)
if [[ $DIRTY == 1 ]]; then
  tar --exclude=.venv --exclude=.git --exclude=runs -czf "$ARCHIVE" .
  REV="$REV-dirty"
else
  git archive --format=tar.gz -o "$ARCHIVE" HEAD
fi

quoted=$(printf '%q ' "${ARGS[@]}")
REMOTE_SETUP="set -e; mkdir -p ~/jaxknow && tar -xzf ~/jaxknow.tar.gz -C ~/jaxknow && cd ~/jaxknow && \
if [ \"\$(cat .venv/REV 2>/dev/null)\" != \"$REV\" ]; then python3 -m venv .venv && \
.venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu]' && echo $REV > .venv/REV; fi"
REMOTE_RUN="cd ~/jaxknow && .venv/bin/python -m $MODULE $quoted --config.train.distributed=on"

run "${GCLOUD[@]}" scp "$ARCHIVE" "$TPU":~/jaxknow.tar.gz --zone="$ZONE" --worker=all ${PROJECT:+--project=$PROJECT}
run "${GCLOUD[@]}" ssh "${COMMON[@]}" --command="$REMOTE_SETUP"
run "${GCLOUD[@]}" ssh "${COMMON[@]}" --command="$REMOTE_RUN"
rm -f "$ARCHIVE"
