"""Launch files for a plan: DeepSpeed, accelerate, TRL, torchrun and Slurm."""
