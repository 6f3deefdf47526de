"""Devices: the paper's two-GPU split as a `jax.sharding` mesh (meshes.py), and where the
parameters, the train state and the batches live on it (placement.py)."""
