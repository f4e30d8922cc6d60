#!/bin/bash
# Multi-node EVA-X MIM pretraining on xrayfm shards with plain torchrun: run this script once on every node (same
# settings, NODE_RANK 0..NNODES-1); torchrun starts one process per GPU and Lightning Fabric reads the ranks from
# its environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, ...).
#
#   node 0: NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 SHARDS=/shared/shards/merged520k OUT=/shared/runs/mim_base \
#             TEACHER=/shared/mgca_vit_b16.ckpt bash scripts/cluster/pretrain_mim_torchrun.sh [more xrayfm options]
#   node 1: the same with NODE_RANK=1
#
# SHARDS  shard folder of 'xrayfm shards build' on shared storage (or s3://..., gs://...: set CACHE_DIR too)
# OUT     run folder on shared storage: OUT/last.ckpt is written there and running the same command again resumes
# TEACHER frozen teacher (MGCA ViT-B/16 for EVA-X); unset = the pixel-target baseline, not EVA-X
# RECIPE  shipped recipe or YAML (default eva_x_mim_base; 'xrayfm recipes' lists them); empty = none
# NNODES (1), NODE_RANK (0), NPROC_PER_NODE (GPUs here), MASTER_ADDR (localhost), MASTER_PORT (29500)
# ACCELERATOR (gpu; cpu for a local smoke run), WORKERS (loader workers per process, 4), CACHE_DIR (optional)
# XRAYFM_DRY_RUN=1  print the torchrun command line and launch nothing
set -euo pipefail

SHARDS=${SHARDS:?set SHARDS to the shard folder (xrayfm shards build) on shared storage}
OUT=${OUT:?set OUT to the run folder on shared storage (running again with the same OUT resumes)}
RECIPE=${RECIPE-eva_x_mim_base}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
NPROC_PER_NODE=${NPROC_PER_NODE:-$( (nvidia-smi --list-gpus 2>/dev/null || true) | wc -l)}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
ACCELERATOR=${ACCELERATOR:-gpu}
WORKERS=${WORKERS:-4}
if [[ "$NPROC_PER_NODE" -lt 1 ]]; then
  echo "no GPU found: set NPROC_PER_NODE (and ACCELERATOR=cpu for a CPU run)" >&2
  exit 2
fi

cmd=(xrayfm pretrain mim shards "$SHARDS" --out "$OUT"
  --accelerator "$ACCELERATOR" --devices "$NPROC_PER_NODE" --num-nodes "$NNODES" --strategy ddp
  --workers "$WORKERS" --checkpoint-minutes 10)
if [[ -n "$RECIPE" ]]; then cmd+=(--config "$RECIPE"); fi
if [[ -n "${TEACHER:-}" ]]; then cmd+=(--teacher "$TEACHER"); fi
if [[ -n "${CACHE_DIR:-}" ]]; then cmd+=(-o "cache_dir=$CACHE_DIR"); fi
cmd+=("$@")

launch=(torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE"
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" --no-python "${cmd[@]}")
if [[ -n "${XRAYFM_DRY_RUN:-}" ]]; then
  printf '%q ' "${launch[@]}"
  echo
  exit 0
fi
mkdir -p "$OUT"
exec "${launch[@]}"
