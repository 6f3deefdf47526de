"""Training a run: the loop (`trainer`), its stop signals, and the `--dry_run` plan with
the step's memory and FLOP footprint."""
