"""What a run keeps on disk: checkpoints, the workdir's own files, its lock and its
metrics log."""
