#!/bin/bash

# Parameters
#SBATCH --account=proj-1
#SBATCH --constraint='a100|h100'
#SBATCH --cpus-per-task=1
#SBATCH --error=/r/.submitit/x/%j_0_log.err
#SBATCH --exclusive
#SBATCH --job-name=trajhpc-one
#SBATCH --mail-type=FAIL
#SBATCH --mem=1536MB
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=/r/.submitit/x/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --signal=USR2@90
#SBATCH --time=60
#SBATCH --wckey=submitit

# setup
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /r/.submitit/x/%j_%t_log.out --error /r/.submitit/x/%j_%t_log.err /usr/bin/python3 -u -m submitit.core._submit /r/.submitit/x
