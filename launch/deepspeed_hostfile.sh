#!/usr/bin/env bash
# eofm-pretrain under the DeepSpeed launcher with a hostfile (one line per node: "host slots=N",
# N processes = GPUs there; the first host is the head). The launcher on the head starts every
# node over ssh (pdsh when installed); without ssh between nodes run with NO_SSH=1 on each node.
#
#   HOSTFILE=hosts.txt bash launch/deepspeed_hostfile.sh CONFIG.yaml [key=value ...]
#   HOSTFILE=hosts.txt NO_SSH=1 NODE_RANK=2 bash launch/deepspeed_hostfile.sh CONFIG.yaml ...
#   HOSTFILE=hosts.txt DRY_RUN=1 bash launch/deepspeed_hostfile.sh CONFIG.yaml ...   # print, run nothing
#
# Environment: HOSTFILE (required), MASTER_ADDR (default: first host), MASTER_PORT (default
# 29500), NO_SSH/NODE_RANK, PYTHON. Variables named NCCL_*, PYTHON*, UCX_* are passed to the
# other nodes; others go into ./.deepspeed_env (KEY=VALUE lines). The launcher stops the ranks
# with SIGTERM on Ctrl-C/SIGTERM and waits 30 s, during which each rank checkpoints and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${HOSTFILE:?HOSTFILE (lines 'host slots=N') is required}"
if [ $# -lt 1 ]; then echo "usage: HOSTFILE=FILE bash launch/deepspeed_hostfile.sh CONFIG.yaml [key=value ...]" >&2; exit 2; fi
[ -f "$HOSTFILE" ] || { echo "$HOSTFILE: no such hostfile" >&2; exit 2; }
mapfile -t HOSTS < <(awk '!/^[[:space:]]*#/ && NF {print $1}' "$HOSTFILE")
[ "${#HOSTS[@]}" -ge 1 ] || { echo "$HOSTFILE: no hosts in it" >&2; exit 2; }
ADDR=${MASTER_ADDR:-${HOSTS[0]}}
PORT=${MASTER_PORT:-29500}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
launcher=("$PY" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --master_addr "$ADDR" --master_port "$PORT")
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "# on the head node ${HOSTS[0]} (starts all ${#HOSTS[@]} nodes over ssh/pdsh):"
  echo "${launcher[*]} --module pretrain $*"
  echo "# or, without ssh, on each node:"
  for ((n = 0; n < ${#HOSTS[@]}; n++)); do
    echo "[${HOSTS[$n]} node $n of ${#HOSTS[@]}] ${launcher[*]} --no_ssh --node_rank $n --module pretrain $*"
  done
  exit 0
fi
if [ "${NO_SSH:-0}" = 1 ]; then
  exec "${launcher[@]}" --no_ssh --node_rank "${NODE_RANK:?NODE_RANK is required with NO_SSH=1}" --module pretrain "$@"
fi
exec "${launcher[@]}" --module pretrain "$@"
