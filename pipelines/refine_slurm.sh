#!/usr/bin/env bash
# Clean the full FDH train split (~1.83M images, ~613 shards) with a SLURM array: one GPU per
# array task, each task a rank that takes every WORLD_SIZE-th shard. A dependent job writes the
# manifest once all ranks are done. Resubmitting the same script resumes (completed shards are
# skipped). Settings: pipelines/fdh_refine.toml.
#
#   sbatch --array=0-7 pipelines/refine_slurm.sh train
#   sbatch --dependency=afterok:<array job id> --wrap "fdhclean finalize \$OUT --split train"
#
#SBATCH --job-name=fdhclean-refine
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=10
#SBATCH --mem=64G
#SBATCH --time=04:00:00
#SBATCH --output=logs/refine-%A_%a.out
set -euo pipefail
SPLIT=${1:-train}
export FDHCLEAN_CONFIG=${FDHCLEAN_CONFIG:-pipelines/fdh_refine.toml}
export HF_HUB_OFFLINE=1
exec fdhclean refine --split "$SPLIT" \
  --rank "${SLURM_ARRAY_TASK_ID}" --world-size "${SLURM_ARRAY_TASK_COUNT}" \
  --workers "$(( ${SLURM_CPUS_PER_TASK:-10} - 2 ))"
