#!/bin/bash

# Parameters
#SBATCH --array=0-139%20
#SBATCH --cpus-per-task=8
#SBATCH --error=/runs/llama31-8b-lv3/.submitit/20260101T000000-abcdef/%A_%a_0_log.err
#SBATCH --gpus-per-node=1
#SBATCH --job-name=trajhpc-llama31-8b-lv3
#SBATCH --mem=64GB
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=/runs/llama31-8b-lv3/.submitit/20260101T000000-abcdef/%A_%a_0_log.out
#SBATCH --signal=USR2@120
#SBATCH --time=480
#SBATCH --wckey=submitit

# setup
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /runs/llama31-8b-lv3/.submitit/20260101T000000-abcdef/%A_%a_%t_log.out --error /runs/llama31-8b-lv3/.submitit/20260101T000000-abcdef/%A_%a_%t_log.err apptainer exec --nv --bind /runs --bind /data:/data:ro --env PYTHONSAFEPATH=1 /images/trajhpc.sif python3 -u -m submitit.core._submit /runs/llama31-8b-lv3/.submitit/20260101T000000-abcdef
