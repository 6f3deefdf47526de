"""alexnet_jax: AlexNet (Krizhevsky, Sutskever & Hinton, 2012) as a JAX/Flax training pipeline."""

__version__ = '0.1.0'  # the package's version (pyproject.toml reads it; `pip show alexnet-jax`)
