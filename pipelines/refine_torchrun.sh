#!/usr/bin/env bash
# Clean a split on every GPU of one or more nodes with torchrun: each process reads RANK and
# WORLD_SIZE (set by torchrun), takes its share of the shards and runs the estimator on
# cuda:LOCAL_RANK. The process that completes the last shard writes the manifest; if ranks of
# several nodes finish apart, run `fdhclean finalize OUT --split S` afterwards. Rerun to resume.
# WORKERS_PER_GPU = ViTPose replicas per GPU (each a process that cleans whole shards; see
# refine_slurm.sh for their memory and CPU): size it to the node's cores / GPUs.
#
#   one node, 8 GPUs:  bash pipelines/refine_torchrun.sh train
#   several nodes:     NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<host> bash pipelines/refine_torchrun.sh train
set -euo pipefail
SPLIT=${1:-train}
export FDHCLEAN_CONFIG=${FDHCLEAN_CONFIG:-pipelines/fdh_refine.toml}
export HF_HUB_OFFLINE=1
exec torchrun --no-python \
  --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29511}" \
  --nproc-per-node "${NPROC_PER_NODE:-8}" \
  fdhclean refine --split "$SPLIT" --workers "${WORKERS_PER_GPU:-4}"
