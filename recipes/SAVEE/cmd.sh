#!/usr/bin/env bash
# shellcheck disable=SC2034  # read by local/backend_slurm.sh
# Resources of this recipe's Slurm jobs (`bash run.sh --backend slurm`; see local/backend_slurm.sh
# for every setting). Empty: the cluster's default. A value set in the environment wins, e.g.
#   slurm_partition=a100 slurm_gpus=2 bash run.sh --backend slurm
: "${slurm_partition=}"
: "${slurm_gpus=1}"            # GPUs per job; 2 or more: SpeechBrain heads run under torchrun
: "${slurm_cpus=4}"            # --cpus-per-task
: "${slurm_mem=16G}"           # --mem: 480 clips
: "${slurm_time=4:00:00}"      # --time
: "${slurm_extra=}"           # more sbatch flags, e.g. "--account=myproj --qos=normal"
