"""The real, measured fine-tune: data, the run's output folder, the launcher, and the Trainer/DeepSpeed and FSDP2
workers that each rank runs."""
