#!/usr/bin/env bash
# Clean the full FDH train split (~1.83M images, ~613 shards) with a SLURM array: one GPU per
# array task, each task a rank that takes every WORLD_SIZE-th shard. A dependent job writes the
# manifest once all ranks are done. Resubmitting the same script resumes (completed shards are
# skipped). Settings: pipelines/fdh_refine.toml. --workers N means N processes that each clean
# whole shards with their own ViTPose replica on the task's GPU (estimated 3-5 GB of GPU memory
# each in bf16, not measured here: bench/gpu.sh reports it); each crops its own persons (~3 ms
# of CPU per person), so 8 replicas on 10 cores have ~2x the CPU the 983 images/s target needs.
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
