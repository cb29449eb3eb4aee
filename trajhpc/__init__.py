"""trajhpc: continual fine-tuning studies of API-call trajectories on HPC clusters."""

__version__ = "0.1.0"
