"""Scale-out: Slurm job arrays (submitit) for extraction and sweeps, several local devices, the demo."""
