"""What is verified of a checkpoint: its arrays' checksums, and its folder's name.

orbax 0.12.8 checks nothing of an array's data when it reads it back: its zarr3
arrays carry a crc32c of the shard index only, and the zstd frames no checksum,
so a byte range overwritten inside an OCDBT data file reads as other numbers
(NaN, or plausible wrong weights). Each checkpoint therefore stores, per array,
a 64-bit checksum of its values, and a restore recomputes it.

The checksum is a function of the global array's bits alone, whatever its
sharding: two sums modulo 2**32, over the array's 32-bit words, of a hash of
each word and its position (one seed per sum). A state one process holds whole
is summed on the host in numpy; with several processes it is computed on the
devices that hold each array, by one jitted reduction: each process sums the
shards it holds and the reduction combines them, so every process gets the same
value and the same verdict. Both paths give the same sums. Integer sums are exact and
associative, so the value does not depend on the order of the reduction, the
number of devices or the layout a checkpoint is restored into. Each word enters
as a bijective hash of the word and its position, so any change of one word
changes both sums (damage to several words is caught unless its terms cancel
in both sums at once).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.core import errors

# Characters that orbax's merge of the per-process OCDBT files reads as a glob pattern.
GLOB_CHARACTERS = '[]*?'
_SEEDS = (np.uint32(0x9E3779B9), np.uint32(0x7F4A7C15))


def _mix(x: jax.Array) -> jax.Array:
  """murmur3's 32-bit finaliser: spreads every input bit over the whole word."""
  x = x ^ (x >> 16)
  x = x * np.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * np.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _words(x: jax.Array) -> jax.Array:
  """The array's bits as uint32 words (a trailing axis for 64-bit dtypes)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  bits = x.dtype.itemsize * 8
  if bits == 64:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if bits < 32:
    x = jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{bits}'))
    return x.astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _leaf_sums(x: jax.Array) -> jax.Array:
  """Two uint32 sums over the words of `x` of a hash of each word and its position."""
  words = _words(x)
  # The flat position from per-axis iotas: no reshape, so a sharded array stays in place.
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):
    iota = jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis)
    index = index + iota * np.uint32(stride % 2**32)
    stride *= words.shape[axis]
  # mix is a bijection: a changed word always changes its term, whatever bits it had.
  sums = [jnp.sum(_mix(words ^ _mix(index ^ seed)), dtype=jnp.uint32) for seed in _SEEDS]
  return jnp.stack(sums)


# One computation per leaf: the leaves of a train state may sit on different devices
# (a scalar on one, the parameters over a mesh), which one jitted call refuses.
_jitted_leaf_sums = jax.jit(_leaf_sums)


def checksums(tree: Any) -> dict[str, str]:
  """Path of each array leaf of `tree` (jax.tree_util.keystr) -> its checksum, 16 hex digits.

  Blocks until the values are known: the caller needs them for the checkpoint.
  """
  paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [jax.tree_util.keystr(p) for p, _ in paths_leaves]
  leaves = [leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)
            for _, leaf in paths_leaves]
  if all(x.is_fully_addressable for x in leaves):
    # One process holds every value: summed on the host, with no XLA computation to
    # compile or run beside the caller's (the same sums as the device path below).
    sums = [_host_leaf_sums(x) for x in leaves]
  else:
    # Outside the caller's mesh: each array is reduced where it lies, a scalar on its one
    # device included, which a context mesh of other devices would refuse.
    with jax.set_mesh(None):
      sums = jax.device_get([_jitted_leaf_sums(x) for x in leaves])
  return {p: f'{int(s[0]):08x}{int(s[1]):08x}' for p, s in zip(paths, sums)}


def _host_mix(x: np.ndarray) -> np.ndarray:
  """_mix in numpy: uint32 arithmetic wraps as XLA's does."""
  x = x ^ (x >> np.uint32(16))
  x = x * np.uint32(0x85EBCA6B)
  x = x ^ (x >> np.uint32(13))
  x = x * np.uint32(0xC2B2AE35)
  return x ^ (x >> np.uint32(16))


def _host_words(x: jax.Array) -> np.ndarray:
  """_words in numpy, of the array's value gathered to the host."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  value = np.ascontiguousarray(jax.device_get(x))
  if value.dtype == np.bool_:
    return value.astype(np.uint32)
  bits = value.dtype.itemsize * 8
  if bits == 64:  # two words per value, the low one first (little-endian, as XLA's bitcast)
    return value.view(np.uint32).reshape(value.shape + (2,))
  if bits < 32:
    return value.view(np.dtype(f'uint{bits}')).astype(np.uint32)
  return value.view(np.uint32)


def _host_leaf_sums(x: jax.Array) -> np.ndarray:
  """_leaf_sums in numpy: the flat position of each word is its C-order index."""
  words = _host_words(x)
  index = (np.arange(words.size, dtype=np.uint64) & 0xFFFFFFFF).astype(np.uint32)
  index = index.reshape(words.shape)
  with np.errstate(over='ignore'):
    return np.array([np.sum(_host_mix(words ^ _host_mix(index ^ seed)), dtype=np.uint32)
                     for seed in _SEEDS], np.uint32)


def mismatches(expected: Mapping[str, str], tree: Any) -> list[str]:
  """Paths whose array in `tree` differs from `expected` (missing or extra paths included)."""
  actual = checksums(tree)
  return sorted(p for p in set(expected) | set(actual) if expected.get(p) != actual.get(p))


class DamagedArrays(ValueError):
  """Restored arrays differ from the checksums stored with them at save."""


def verify(expected: Any, state: Any) -> None:
  """Raises DamagedArrays unless the arrays of `state` have the checksums `expected`."""
  if not isinstance(expected, dict):
    raise DamagedArrays(f'its checksums item is {type(expected).__name__}, not a JSON object')
  bad = mismatches(expected, state)
  if bad:
    more = f' and {len(bad) - 2} more' if len(bad) > 2 else ''
    count = '1 array differs' if len(bad) == 1 else f'{len(bad)} arrays differ'
    raise DamagedArrays(f'damaged data: {count} from the checksums stored at save '
                        f'({", ".join(bad[:2])}{more})')


def check_directory_name(path: str | os.PathLike[str]) -> None:
  """Raises errors.InputError when `path` holds a character orbax would take for a glob.

  orbax 0.12.8 finds the per-process OCDBT files of a checkpoint with a glob of
  its folder's full path: under a name like `runs/exp[bs256]` it finds none,
  skips the merge and writes checkpoints that cannot be restored. Such names are
  refused before anything is written rather than escaped inside orbax.
  """
  path = os.path.abspath(os.fspath(path))
  found = sorted({c for c in path if c in GLOB_CHARACTERS})
  if found:
    raise errors.InputError(
        f'{path} contains {" ".join(found)}: orbax cannot write checkpoints under a path with '
        f'any of {" ".join(GLOB_CHARACTERS)} (it reads them as a file pattern); choose another '
        'name, e.g. with - or _ instead')
