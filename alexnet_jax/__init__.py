"""alexnet_jax: AlexNet (Krizhevsky, Sutskever & Hinton, 2012) as a JAX/Flax training pipeline."""
