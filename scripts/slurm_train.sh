#!/usr/bin/env bash
# Distributed training under slurm, as in the original RobNets:
#   GPUS_PER_NODE=8 GPUS=32 bash scripts/slurm_train.sh PARTITION ./experiments/RobNet_large_cifar10/config.py [robnets train options]
# One task per GPU; each task maps SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID to torch.distributed
# (robnets.distributed) and trains its shard of every global batch.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: [GPUS=N] [GPUS_PER_NODE=M] bash scripts/slurm_train.sh PARTITION CONFIG [robnets train options]" >&2
  exit 2
fi
PARTITION=$1
CONFIG=$2
shift 2
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-4}
JOB_NAME=${JOB_NAME:-robnets}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
if [ "$GPUS" -lt "$GPUS_PER_NODE" ]; then GPUS_PER_NODE=$GPUS; fi
exec srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
  --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 \
  "$PYTHON" -u -m robnets train --config "$CONFIG" --distributed "$@"
