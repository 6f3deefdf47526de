"""A checkout's pointer to a config the package ships (read it there):

  alexnet_jax/configs/paper/__init__.py

The configs live in the package so that an installed alexnet_jax has them too (`--config=NAME`);
this file keeps `--config=configs/...` paths and `import configs...` working in a checkout.
"""

# pylint: disable-next=wildcard-import,unused-wildcard-import
from alexnet_jax.configs.paper import *
