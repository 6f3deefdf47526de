"""Where arrays live on the mesh: parameter shardings, sharded state, and global batches.

The mesh and the logical rules come from meshes.py; this module turns them into
`NamedSharding`s and places data with them. `experiment.setup` uses it so:

  state, shardings = create_sharded_state(init_fn, rng, mesh, rules)
  step = jax.jit(meshes.bind_mesh(train_step, mesh, rules),
                 in_shardings=(shardings, batch_sharding(mesh)), out_shardings=...)
  check_batch_divisible(config.batch_size, mesh)
  batch = make_global_batch(local_numpy_batch, mesh)   # this process's slice (data_shard)

`sharding_plan` describes the result per array for the dry run's plan.
docs/sharding.md shows which device holds what and where devices communicate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from alexnet_jax.core import errors
from alexnet_jax.sharding.meshes import Rules, use_mesh


# ----------------------------------------------------------------------------- shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over `data`; the rest replicated, so model pairs see the same images."""
  return NamedSharding(mesh, PartitionSpec('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def _strip(tree: Any) -> Any:
  """The tree with each metadata box replaced by its value (no sharding constraint added)."""
  return jax.tree.map(lambda b: b.unbox(apply_constraint=False) if _is_box(b) else b, tree,
                      is_leaf=_is_box)


def _children(node: Any) -> list[Any]:
  return jax.tree.leaves(node, is_leaf=lambda x: x is not node)


def _signature(tree: Any) -> tuple[Any, tuple[tuple[int, ...], ...]]:
  plain = _strip(tree)
  return jax.tree.structure(plain), tuple(tuple(x.shape) for x in jax.tree.leaves(plain))


def _boxed_groups(tree: Any) -> list[Any]:
  """The largest subtrees whose every leaf is a box (e.g. the params of a train state)."""
  if _is_box(tree) or jax.tree_util.treedef_is_leaf(jax.tree.structure(tree)):
    return []
  leaves = jax.tree.leaves(tree, is_leaf=_is_box)
  if leaves and all(_is_box(x) for x in leaves):
    return [tree]
  return [group for child in _children(tree) for group in _boxed_groups(child)]


def _check_divisible(path: str, shape: Sequence[int], spec: PartitionSpec, names: Any,
                     mesh: Mesh) -> None:
  for dim, (size, axes) in enumerate(zip(shape, spec)):
    if axes is None:
      continue
    n = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
    if size % n:
      raise errors.InputError(
          f'{path}: dimension {dim} ({names[dim]!r}, size {size}) does not split '
          f'over mesh axis {axes!r} of size {n}')


def param_shardings(abstract: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for `abstract`: jax.eval_shape of params or of a whole train state.

  - a LogicallyPartitioned leaf: its logical names through `rules`;
  - an unboxed subtree with the structure and shapes of a boxed one (optax
    momentum built from unboxed params mirrors them): the same shardings;
  - any other leaf (step counter, learning rate): replicated.
  The result has the structure of the unboxed tree. Raises ValueError naming
  the weight when a dimension does not split evenly.
  """
  def sharding_of(path: Any, x: Any) -> NamedSharding:
    if not _is_box(x):
      return replicated(mesh)
    spec = nn.logical_to_mesh_axes(x.names, rules)
    _check_divisible(jax.tree_util.keystr(path), x.value.shape, spec, x.names, mesh)
    return NamedSharding(mesh, spec)

  def shardings_of(tree: Any) -> Any:
    return jax.tree_util.tree_map_with_path(sharding_of, tree, is_leaf=_is_box)

  shardings_of(abstract)  # checks every weight first, so an error names its full path
  mirrors = {_signature(g): shardings_of(g) for g in _boxed_groups(abstract)}
  return jax.tree.map(
      lambda x: mirrors[_signature(x)] if _signature(x) in mirrors else shardings_of(x),
      abstract, is_leaf=lambda x: _is_box(x) or _signature(x) in mirrors)


def abstract(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying `shardings`: the target layout for a checkpoint restore."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      _strip(tree), shardings)


def create_sharded_state(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh,
                         rules: Rules) -> tuple[Any, Any]:
  """Runs `init_fn(rng)` so that each array is created on the devices that keep it.

  `init_fn` returns any pytree, typically a train state whose params are flax
  LogicallyPartitioned boxes (from `model.init`) and whose optimizer state
  holds plain arrays. Shapes come from `jax.eval_shape`, shardings from
  `param_shardings`, and the jitted init writes each shard in place: no array
  ever exists whole on one device. Returns (state without boxes, shardings).
  """
  with use_mesh(mesh, rules):
    shapes = jax.eval_shape(init_fn, rng)
    shardings = param_shardings(shapes, mesh, rules)
    state = jax.jit(lambda r: _strip(init_fn(r)), in_shardings=replicated(mesh),
                    out_shardings=shardings)(rng)
  return state, shardings


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  path: str
  shape: tuple[int, ...]
  dtype: str
  itemsize: int
  spec: PartitionSpec
  shard_shape: tuple[int, ...]  # what one device holds

  @property
  def shard_bytes(self) -> int:
    return math.prod(self.shard_shape) * self.itemsize


def sharding_plan(abstract_tree: Any, shardings: Any) -> list[ShardInfo]:
  """One row per array: global shape, mesh placement and the per-device shard."""
  rows = []
  flat = jax.tree_util.tree_leaves_with_path(_strip(abstract_tree))
  for (path, x), s in zip(flat, jax.tree.leaves(shardings)):
    rows.append(ShardInfo(jax.tree_util.keystr(path), tuple(x.shape), str(x.dtype),
                          x.dtype.itemsize, s.spec, tuple(s.shard_shape(x.shape))))
  return rows


def bytes_per_device(abstract_tree: Any, shardings: Any) -> int:
  """Bytes one device holds for the tree (every device holds the same amount here)."""
  return sum(row.shard_bytes for row in sharding_plan(abstract_tree, shardings))


# ----------------------------------------------------------------------------- batches


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  """Raises ValueError unless config.batch_size splits evenly over the data axis."""
  data = mesh.shape['data']
  if global_batch < 1 or global_batch % data:
    raise errors.InputError(
        f'config.batch_size={global_batch} is not divisible by the mesh data axis '
        f'({data} device groups); use a multiple of {data}')


def data_shard(mesh: Mesh) -> tuple[int, int]:
  """(index, count): this process feeds slice `index` of `count` equal slices of each batch.

  Processes whose devices share the same rows of the data axis (a model pair
  split across processes) get the same index and must feed identical images.
  """
  owners = np.vectorize(lambda d: d.process_index)(mesh.devices)
  return data_shard_of(owners, jax.process_index())


def data_shard_of(owners: np.ndarray, process: int) -> tuple[int, int]:
  """data_shard for `process`, where owners[i, j] is the process of mesh device (i, j)."""
  rows = np.nonzero((owners == process).any(axis=1))[0]
  per_process = len(rows)
  if per_process == 0 or np.any(np.diff(rows) != 1) or rows[0] % per_process:
    raise errors.InputError(
        f'process {process} holds data rows {rows.tolist()} of the mesh: '
        f'expected one contiguous, aligned block')
  return int(rows[0] // per_process), owners.shape[0] // per_process


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """One global array per field, batch-sharded over `data`, from this process's slice.

  `local_batch` holds the rows of slice `data_shard(mesh)[0]` (global batch /
  count of them); with a single process that is the whole batch.
  """
  _, count = data_shard(mesh)
  sharding = batch_sharding(mesh)

  def put(x: np.ndarray) -> jax.Array:
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * count,) + x.shape[1:])

  return {k: put(v) for k, v in local_batch.items()}


