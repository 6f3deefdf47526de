"""Devices: the paper's two-GPU split as a `jax.sharding` mesh, parameter and batch
shardings."""
