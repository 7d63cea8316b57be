#!/usr/bin/env bash
# shellcheck disable=SC2034  # read by local/backend_slurm.sh
# Resources of this recipe's Slurm jobs (`bash run.sh --backend slurm`; see local/backend_slurm.sh
# for every setting). Empty: the cluster's default. A value set in the environment wins, e.g.
#   slurm_partition=a100 slurm_gpus=2 bash run.sh --backend slurm
: "${slurm_partition=}"
: "${slurm_gpus=1}"            # GPUs per job; 2 or more: SpeechBrain heads run under torchrun, fairseq on all
: "${slurm_cpus=8}"            # --cpus-per-task
: "${slurm_mem=48G}"           # --mem
: "${slurm_time=2-00:00:00}"   # --time: a fold's CPT (20k updates) is the longest job
: "${slurm_extra=}"           # more sbatch flags, e.g. "--account=myproj --qos=normal"
# Per-job flags by job name (a job is <step>[_<args>][_fold<k>]; data, describe_* and score get no GPU):
slurm_rules=("kmeans_* --gres=none --cpus-per-task=16")  # faiss k-means runs on the CPU
# the official code's CPT ran on 4 GPUs; --cpt-update-freq auto keeps its 350 s of audio per update:
# slurm_rules+=("cpt_* --gres=gpu:4")
