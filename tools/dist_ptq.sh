#!/usr/bin/env bash
# Distributed PTQ on one or several machines (docs/distributed.md):
#   bash tools/dist_ptq.sh CONFIG CHECKPOINT NUM_PROCS [tools/ptq.py args]
# NUM_PROCS processes per machine (one per GPU; on a CPU-only machine
# they share its cores over gloo). Several machines: run it on each with
# NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's address) and
# PORT. PYTHON picks the interpreter (default: python).

CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname $0)/..":$PYTHONPATH \
${PYTHON:-python} -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    $(dirname "$0")/ptq.py \
    $CONFIG \
    $CHECKPOINT \
    --launcher pytorch \
    "${@:4}"
