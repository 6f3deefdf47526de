"""Training: the optimizer, the pure train and eval steps, the setup of a run, the
loop, its stop signals and the dry-run plan."""
