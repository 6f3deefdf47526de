"""Pictures of a run: training curves, throughput and the paper's figures 3 and 4."""
