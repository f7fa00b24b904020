#!/usr/bin/env bash
# eofm-pretrain under torchrun, on one node or on each node of a multi-node job.
#
#   bash launch/torchrun.sh CONFIG.yaml [key=value ...]                 # this node, all its GPUs
#   NPROC=2 bash launch/torchrun.sh configs/pretrain/quickstart.yaml    # 2 processes (CPU: gloo)
#   NNODES=4 MASTER_ADDR=node0 bash launch/torchrun.sh CONFIG.yaml ...  # run the same on all 4 nodes
#
# Environment (all optional):
#   NPROC          processes on this node (default: number of GPUs, else 1)
#   NNODES         nodes taking part (default 1). With NNODES > 1 the nodes meet at MASTER_ADDR:MASTER_PORT
#                  (c10d rendezvous, RDZV_ID names the job); ranks are assigned as nodes arrive.
#   MASTER_ADDR    rendezvous host, required with NNODES > 1; MASTER_PORT (default 29500)
#   RDZV_ID        job id shared by the nodes (default eofm)
#   EOFM_SHUTDOWN_TIMEOUT  seconds torchrun gives the ranks to checkpoint after SIGTERM/SIGUSR1 (default 300)
#   PYTHON         interpreter (default: python on PATH)
#   DRY_RUN=1      print the command each node would run, run nothing
# Each rank gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from torchrun.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: [NPROC=N] [NNODES=N MASTER_ADDR=HOST] bash launch/torchrun.sh CONFIG.yaml [key=value ...]" >&2
  exit 2
fi
PY=${PYTHON:-python}
if [ -z "${NPROC:-}" ]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "$NPROC" -ge 1 ] || NPROC=1
fi
NNODES=${NNODES:-1}
if [ "$NNODES" -eq 1 ]; then
  rdzv=(--standalone)                      # local rendezvous on a free port
else
  : "${MASTER_ADDR:?MASTER_ADDR (the rendezvous host) is required with NNODES > 1}"
  rdzv=(--rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id "${RDZV_ID:-eofm}")
fi
# torchrun forwards these signals to the ranks and waits for them to checkpoint and exit
# (torch >= 2.8; older torchrun ignores the variables).
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${EOFM_SHUTDOWN_TIMEOUT:-300}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cmd=("$PY" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$NPROC" "${rdzv[@]}" -m pretrain "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  for ((n = 0; n < NNODES; n++)); do
    echo "[node $n of $NNODES] ${cmd[*]}"
  done
  exit 0
fi
exec "${cmd[@]}"
