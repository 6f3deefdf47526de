"""Tests of the mesh, the paper's two-GPU split and the sharded train step, on 4 CPU devices."""

import collections
import functools
import importlib.util
import math
import os
import re

from tests import tiny_training as tiny
from tests.helpers.checks import assert_trees_close

tiny.request_cpu_devices(4)  # before anything starts JAX's backend

from absl.testing import absltest  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax.model import alexnet
from alexnet_jax.model import layers
from alexnet_jax.learning import optim
from alexnet_jax.sharding import meshes
from alexnet_jax.sharding import placement

MESH_SHAPES = ((1, 2), (2, 1), (2, 2))
KINDS = ('all-reduce', 'all-gather', 'collective-permute', 'reduce-scatter', 'all-to-all',
         'collective-broadcast')
_OP = re.compile(r'=\s.*?\s(' + '|'.join(KINDS) + r')(?:-start)?\((.*)$')


def setUpModule():
  if jax.device_count() < 4:
    raise RuntimeError(f'these tests need 4 CPU devices, JAX started with {jax.device_count()}: '
                       'something initialised JAX before tests/test_sharding.py was imported')


def mesh_of(data: int, model: int) -> jax.sharding.Mesh:
  return meshes.create_mesh({'data': data, 'model': model}, jax.devices()[:data * model],
                              model_config=tiny.MODEL)


def config(**mesh) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mesh = ml_collections.ConfigDict(dict(dict(data=-1, model=2, rules=tiny.RULES), **mesh))
  return c


# ----------------------------------------------------------------------------- HLO reading


def _group_size(attrs: str) -> int | None:
  """Devices per replica group of a collective, from any of XLA's three spellings."""
  m = re.search(r'replica_groups=\{\{([\d,]*)\}', attrs)  # {{0,1},{2,3}}
  if m:
    return len(m.group(1).split(','))
  m = re.search(r'replica_groups=\[([\d,]+)\]<=', attrs)  # [2,2]<=[4]
  if m:
    return int(m.group(1).split(',')[-1])
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)  # mesh['a'=1,'b'=2] {'b'}
  if m:
    sizes = {k.strip("' "): int(v) for k, v in (kv.split('=') for kv in m.group(1).split(','))}
    axes = [a.strip("' ") for a in m.group(2).split(',') if a.strip()]
    if all(a in sizes for a in axes):
      return math.prod(sizes[a] for a in axes)
  return None


def collectives(hlo: str) -> list[tuple[str, str, str]]:
  """(kind, result shape, op_name) of every collective that crosses devices.

  A collective whose groups hold one device each (XLA keeps e.g. a sum over a
  data axis of size 1) moves nothing and is left out; an unreadable group
  counts as crossing.
  """
  found = []
  for line in hlo.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    kind, attrs = m.groups()
    if kind == 'collective-permute':
      pairs = re.findall(r'\{(\d+),(\d+)\}', attrs.split('source_target_pairs=')[-1])
      crosses = not pairs or any(a != b for a, b in pairs)
    else:
      size = _group_size(attrs)
      crosses = size is None or size > 1
    if crosses:
      shape = line.split('=', 1)[1].strip().split(f' {kind}')[0]
      name = re.search(r'op_name="([^"]*)"', attrs)
      found.append((kind, shape, name.group(1) if name else ''))
  return found


def kinds(hlo: str) -> collections.Counter:
  return collections.Counter(kind for kind, _, _ in collectives(hlo))


# ----------------------------------------------------------------------------- mesh and rules


class MeshTest(parameterized.TestCase):

  @parameterized.parameters(((-1, 2), (2, 2)), ((1, -1), (1, 4)), ((-1, 1), (4, 1)),
                            ((4, 1), (4, 1)), ((2, 2), (2, 2)))
  def test_resolves_sizes(self, requested, expected):
    mesh = meshes.create_mesh({'data': requested[0], 'model': requested[1]}, jax.devices()[:4])
    self.assertEqual(mesh.axis_names, ('data', 'model'))
    self.assertEqual((mesh.shape['data'], mesh.shape['model']), expected)
    self.assertEqual(mesh.axis_types, (jax.sharding.AxisType.Auto,) * 2)
    self.assertEqual(mesh.devices.size, 4)

  def test_default_devices_are_all(self):
    mesh = meshes.create_mesh({'data': -1, 'model': 2})
    self.assertEqual(mesh.devices.size, jax.device_count())

  @parameterized.named_parameters(
      ('too_many', 3, 2, 'needs 6 devices, but 4 are visible'),
      ('too_few', 1, 2, 'needs 2 devices, but 4 are visible'),
      ('both_free', -1, -1, 'cannot both be -1'),
      ('indivisible', -1, 3, 'cannot be split by config.mesh.model=3'),
      ('zero', 0, 2, 'config.mesh.data must be a positive integer or -1'),
      ('not_int', 2, 1.5, "config.mesh.model must be 'auto', a positive integer or -1"),
      ('auto_data_leaves_too_few', 3, 'auto', '4 devices cannot be split by config.mesh.data=3'))
  def test_bad_mesh(self, data, model, message):
    with self.assertRaisesRegex(ValueError, re.escape(message)):
      meshes.create_mesh({'data': data, 'model': model}, jax.devices()[:4])

  def test_model_axis_must_divide_towers(self):
    # Three devices on the model axis would cut a tower in two: conv2's third
    # device would need channels from both of its neighbours.
    with self.assertRaisesRegex(ValueError, r'config.mesh.model=3 does not divide '
                                r'config.model.towers=2'):
      meshes.create_mesh({'data': 1, 'model': 3}, jax.devices()[:3], model_config=tiny.MODEL)

  def test_model_axis_must_divide_widths(self):
    model_config = dict(tiny.MODEL, towers=1, width=0.0625, num_classes=8)
    with self.assertRaisesRegex(ValueError, r'conv1 width 6 is not divisible by '
                                r'config.mesh.model'):
      meshes.create_mesh({'data': 1, 'model': 4}, jax.devices()[:4], model_config=model_config)

  def test_any_class_count(self):
    # 10 classes over a model axis of 4: the mesh is made; fc8 stays whole (below).
    mesh = meshes.create_mesh({'data': 1, 'model': 4}, jax.devices()[:4],
                                model_config=dict(tiny.MODEL, towers=1))
    self.assertEqual(mesh.shape['model'], 4)

  @parameterized.named_parameters(
      ('even', 4, -1, (2, 2), "'auto' chose 2: 4 devices, an even count"),
      ('odd', 3, -1, (3, 1), "'auto' chose 1: 3 devices, an odd count"),
      ('one', 1, -1, (1, 1), "'auto' chose 1: 1 device holds both towers"),
      ('data_fixed', 4, 2, (2, 2), "'auto' takes the devices config.mesh.data=2 leaves"))
  def test_auto_model_axis(self, devices, data, expected, note):
    shape = meshes.mesh_shape({'data': data, 'model': 'auto'}, devices, tiny.MODEL)
    self.assertEqual((shape.data, shape.model), expected)
    self.assertIn(note, shape.note)
    mesh = meshes.create_mesh({'data': data, 'model': 'auto'}, jax.devices()[:devices],
                                model_config=tiny.MODEL)
    self.assertEqual((mesh.shape['data'], mesh.shape['model']), expected)
    self.assertEqual(meshes.mesh_shape({'data': data, 'model': 2}, 4).note, '')

  def test_auto_avoids_a_split_the_network_cannot_take(self):
    # One tower with conv widths 29, 82, ... (width 0.3): two devices cannot halve conv1.
    odd_widths = dict(tiny.MODEL, towers=1, width=0.3)
    shape = meshes.mesh_shape({'data': -1, 'model': 'auto'}, 4, odd_widths)
    self.assertEqual((shape.data, shape.model), (4, 1))
    self.assertIn('conv1 width 29 is not divisible', shape.note)
    with self.assertRaisesRegex(ValueError, 'conv1 width 29 is not divisible'):
      meshes.create_mesh({'data': -1, 'model': 2}, jax.devices()[:4], model_config=odd_widths)

  def test_shardings_check_every_weight(self):
    # Without the mesh's rules (rules_for_sizes), param_shardings still refuses before compiling.
    abstract = jax.eval_shape(alexnet.AlexNet(**dict(tiny.MODEL, num_classes=5)).init,
                              jax.random.key(0), jnp.zeros((1, tiny.IMAGE, tiny.IMAGE, 3)))
    mesh = meshes.create_mesh({'data': 1, 'model': 2}, jax.devices()[:2])
    with self.assertRaisesRegex(ValueError, r"\['fc8'\]\['bias'\].*'classes', size 5"):
      placement.param_shardings(abstract, mesh, tiny.RULES)
    # With them, fc8 stays whole and every other weight is split as before.
    rules = meshes.rules_for_sizes(tiny.RULES, mesh.shape, 5)
    shardings = placement.param_shardings(abstract, mesh, rules)
    self.assertTrue(shardings['params']['fc8']['kernel'].is_fully_replicated)
    self.assertTrue(shardings['params']['fc8']['bias'].is_fully_replicated)
    self.assertEqual(tuple(shardings['params']['fc7']['kernel'].spec), (None, 'model'))
    self.assertEqual(meshes.rules_for_sizes(tiny.RULES, mesh.shape, 6), tiny.RULES)

  def test_batch_must_divide_data_axis(self):
    mesh = mesh_of(4, 1)
    placement.check_batch_divisible(8, mesh)
    with self.assertRaisesRegex(ValueError, r'config.batch_size=6 is not divisible by the mesh '
                                r'data axis \(4'):
      placement.check_batch_divisible(6, mesh)


class RulesTest(absltest.TestCase):

  def test_shipped_rules(self):
    # configs/imagenet.py's table, as the trainer reads it.
    path = os.path.join(os.path.dirname(__file__), os.pardir, 'configs', 'imagenet.py')
    spec = importlib.util.spec_from_file_location('imagenet_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rules = dict(meshes.logical_rules(module.get_config()))
    self.assertEqual(rules['conv_out'], 'model')
    self.assertEqual(rules['fc_out'], 'model')
    self.assertEqual(rules['classes'], 'model')
    self.assertEqual(rules['batch'], 'data')

  def test_older_tables_place_classes_like_fc_out(self):
    # A run's stored config from before fc8 had its own axis name.
    older = tuple(rule for rule in tiny.RULES if rule[0] != 'classes')
    self.assertEqual(dict(meshes.logical_rules(config(rules=older)))['classes'], 'model')

  def test_unknown_mesh_axis(self):
    c = config(rules=tiny.RULES[:-1] + (('fc_in', 'tensor'),))
    with self.assertRaisesRegex(ValueError, r"maps 'fc_in' to unknown mesh axis 'tensor'"):
      meshes.logical_rules(c)

  def test_every_model_axis_placed(self):
    c = config(rules=tiny.RULES[:-1])
    with self.assertRaisesRegex(ValueError, r"does not place the logical axes \['fc_in'\]"):
      meshes.logical_rules(c)


# ----------------------------------------------------------------------------- placement


def full_width_abstract_state():
  """The trainer's state at full width, as shapes only (nothing is materialised)."""
  model = alexnet.AlexNet()
  optimizer = optim.create_optimizer(tiny.OPTIM)

  def init(rng):
    params = model.init(rng, jnp.zeros((1, 224, 224, 3)))['params']
    return {'step': jnp.zeros((), jnp.int32), 'params': params,
            'opt_state': optimizer.init(nn.unbox(params))}

  return jax.eval_shape(init, jax.random.key(0))


class PlacementTest(parameterized.TestCase):
  """Which device holds what, at full width: the paper's figure 2."""

  # Local shard under model=2 (output channels / neurons halved); None: whole.
  PAPER_SPLIT = {
      "['conv1']['kernel']": (11, 11, 3, 48), "['conv1']['bias']": (48,),
      "['conv2']['kernel']": (5, 5, 48, 128), "['conv2']['bias']": (128,),
      "['conv3']['kernel']": (3, 3, 256, 192), "['conv3']['bias']": (192,),
      "['conv4']['kernel']": (3, 3, 192, 192), "['conv4']['bias']": (192,),
      "['conv5']['kernel']": (3, 3, 192, 128), "['conv5']['bias']": (128,),
      "['fc6']['kernel']": (9216, 2048), "['fc6']['bias']": (2048,),
      "['fc7']['kernel']": (4096, 2048), "['fc7']['bias']": (2048,),
      "['fc8']['kernel']": (4096, 500), "['fc8']['bias']": (500,),
  }

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.abstract = full_width_abstract_state()

  @parameterized.parameters((1, 2), (2, 2))
  def test_model_split_shards(self, data, model):
    mesh = meshes.create_mesh({'data': data, 'model': model}, jax.devices()[:data * model])
    shardings = placement.param_shardings(self.abstract, mesh, tiny.RULES)
    rows = {r.path: r for r in placement.sharding_plan(self.abstract, shardings)}
    for name, local in self.PAPER_SPLIT.items():
      self.assertEqual(rows["['params']" + name].shard_shape, local, name)
      # The momentum is split exactly like its weight.
      trace = [p for p in rows if p.startswith("['opt_state']") and p.endswith('.trace' + name)]
      self.assertLen(trace, 1)
      self.assertEqual(rows[trace[0]].shard_shape, local, trace[0])
    for path in ("['step']", "['opt_state'].hyperparams['learning_rate']",
                 "['opt_state'].count"):
      self.assertEqual(rows[path].shard_shape, (), path)
      self.assertTrue(shardings_at(shardings, path).is_fully_replicated, path)
    # 60,965,224 weights, halved, twice (weights and momentum), + 3 int32/float32 scalars.
    self.assertEqual(placement.bytes_per_device(self.abstract, shardings),
                     2 * 60_965_224 * 4 // 2 + 3 * 4)

  def test_grouped_shard_is_one_tower(self):
    # conv2's kernel: device m of the model axis holds output channels
    # [128m, 128m + 128), i.e. exactly tower m; both data rows hold the same.
    mesh = meshes.create_mesh({'data': 2, 'model': 2}, jax.devices()[:4])
    shardings = placement.param_shardings(self.abstract, mesh, tiny.RULES)
    for layer, out in (('conv2', 256), ('conv4', 384), ('conv5', 256)):
      s = shardings['params'][layer]['kernel']
      indices = s.devices_indices_map((3, 3, 48, out))
      for (row, col), device in np.ndenumerate(mesh.devices):
        channels = indices[device][3]
        self.assertEqual((channels.start, channels.stop), (col * out // 2, (col + 1) * out // 2))

  def test_data_parallel_replicates_weights(self):
    mesh = meshes.create_mesh({'data': 2, 'model': 1}, jax.devices()[:2])
    shardings = placement.param_shardings(self.abstract, mesh, tiny.RULES)
    for row in placement.sharding_plan(self.abstract, shardings):
      self.assertEqual(row.shard_shape, row.shape, row.path)


def shardings_at(tree, path):
  for p, s in jax.tree_util.tree_leaves_with_path(tree):
    if jax.tree_util.keystr(p) == path:
      return s
  raise KeyError(path)


# Compiling an init takes XLA:CPU seconds (its random normals); each is built once.


@functools.lru_cache(maxsize=None)
def reference_init():
  """The state initialised on one device, no mesh."""
  return jax.jit(lambda r: nn.unbox(tiny.init_state(r)))(jax.random.key(0))


@functools.lru_cache(maxsize=None)
def sharded_init(data: int, model: int):
  return placement.create_sharded_state(tiny.init_state, jax.random.key(0), mesh_of(data, model),
                                       tiny.RULES)


class CreateStateTest(parameterized.TestCase):

  @parameterized.parameters((1, 2), (2, 2))
  def test_state_created_in_place(self, data, model):
    state, shardings = sharded_init(data, model)
    reference = reference_init()
    for (path, x), s, ref in zip(jax.tree_util.tree_leaves_with_path(state),
                                 jax.tree.leaves(shardings), jax.tree.leaves(reference)):
      self.assertEqual(x.sharding, s, jax.tree_util.keystr(path))
      np.testing.assert_array_equal(np.asarray(x), np.asarray(ref),
                                    err_msg=jax.tree_util.keystr(path))
    kernel = state['params']['conv2']['kernel']
    self.assertEqual(kernel.addressable_shards[0].data.shape, (5, 5, 6, 32 // model))

  def test_abstract_for_restore(self):
    state, shardings = sharded_init(1, 2)
    target = placement.abstract(state, shardings)
    leaf = target['params']['fc6']['kernel']
    self.assertEqual((leaf.shape, leaf.sharding), (state['params']['fc6']['kernel'].shape,
                                                   shardings['params']['fc6']['kernel']))


class BatchTest(absltest.TestCase):

  def test_global_batch_from_one_process(self):
    mesh = mesh_of(2, 2)
    self.assertEqual(placement.data_shard(mesh), (0, 1))  # one process feeds the whole batch
    local = tiny.global_batch(0)
    batch = placement.make_global_batch(local, mesh)
    for name, x in batch.items():
      self.assertEqual(x.shape, local[name].shape)
      self.assertEqual(x.sharding, placement.batch_sharding(mesh))
      self.assertEqual(x.addressable_shards[0].data.shape[0], tiny.BATCH // 2)
      np.testing.assert_array_equal(np.asarray(x), local[name])


# ----------------------------------------------------------------------------- the train step


def train_step(state: dict, batch: dict, rng: jax.Array) -> tuple[dict, jax.Array, dict]:
  """One SGD step with dropout; returns (new state, loss, gradients).

  The model's forward and backward pass and the paper's SGD without the run's
  preprocessing and metrics, so that the HLO below holds the network's own
  traffic only. The run's step (`step_fns.train_step` through
  `experiment.setup`) is compared across meshes in tests/test_any_mesh.py and
  across processes in tests/test_multihost.py.
  """
  model, optimizer = tiny.create_model(), tiny.create_optimizer()

  def loss_fn(params):
    logits = model.apply({'params': params}, batch['image'], train=True, rngs={'dropout': rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state['params'])
  updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  return {'params': params, 'opt_state': opt_state}, loss, grads


def jit_train_step(mesh: jax.sharding.Mesh, state_shardings: dict):
  repl = placement.replicated(mesh)
  return jax.jit(meshes.bind_mesh(train_step, mesh, tiny.RULES),
                 in_shardings=(state_shardings, placement.batch_sharding(mesh), repl),
                 out_shardings=(state_shardings, repl, state_shardings['params']))


@functools.lru_cache(maxsize=None)
def reference_step():
  """One step on one device, no mesh: (loss, grads, new state) as numpy."""
  state = reference_init()
  batch = tiny.global_batch(0)
  new_state, loss, grads = jax.jit(train_step)(state, batch, jax.random.key(1))
  return jax.device_get((loss, grads, new_state))


@functools.lru_cache(maxsize=None)
def sharded_step(data: int, model: int):
  """The same step under a mesh: ((loss, grads, new state) as numpy, compiled HLO text)."""
  mesh = mesh_of(data, model)
  state, shardings = sharded_init(data, model)
  batch = placement.make_global_batch(tiny.global_batch(0), mesh)
  rng = jax.device_put(jax.random.key(1), placement.replicated(mesh))
  # Traced outside any mesh context: bind_mesh alone must give the tower-local layers.
  compiled = jit_train_step(mesh, shardings).lower(state, batch, rng).compile()
  new_state, loss, grads = compiled(state, batch, rng)
  return jax.device_get((loss, grads, new_state)), compiled.as_text()


class ShardedStepTest(parameterized.TestCase):

  @parameterized.parameters(*MESH_SHAPES)
  def test_equals_single_device(self, data, model):
    (loss, grads, state), _ = sharded_step(data, model)
    ref_loss, ref_grads, ref_state = reference_step()
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert_trees_close(grads, ref_grads, 'grads')
    assert_trees_close(state['params'], ref_state['params'], 'params')
    assert_trees_close(state['opt_state'], ref_state['opt_state'], 'opt_state')
    # The step moved the weights: equal updates, not two untouched copies.
    self.assertGreater(np.abs(state['params']['fc6']['kernel']
                              - np.asarray(reference_init()['params']['fc6']['kernel'])).max(),
                       1e-4)

  def test_data_parallel_only_sums_gradients(self):
    # model=1: weights replicated; the only traffic is the gradient (and loss) all-reduce.
    _, hlo = sharded_step(2, 1)
    self.assertEqual(set(kinds(hlo)), {'all-reduce'})

  @parameterized.parameters((1, 2), (2, 2))
  def test_model_split_collectives(self, data, model):
    """The whole step's traffic under model=2, measured in the compiled HLO.

    - all-gather: the inputs of conv3 and of fc6/fc7/fc8, whose every output
      sees all channels (the paper's cross-GPU connections); nothing else.
    - collective-permute: only LRN1/LRN2's halo. The paper's formula sums over
      channels c-2..c+2 of all N channels, so the two channels on each side of
      the tower boundary come from the other device (at most 2 channels moved).
    - all-reduce: input gradients of conv3/fc6/fc7/fc8 (partial sums over the
      split outputs), the softmax's max and sum over the split logits and, with
      data > 1, the gradient sum over the data axis.
    - none in the grouped layers except that gradient sum.
    """
    _, hlo = sharded_step(data, model)
    found = collectives(hlo)
    self.assertEqual(set(kinds(hlo)), {'all-gather', 'all-reduce', 'collective-permute'},
                     found)
    layer = lambda name: (re.search(r'/(conv\d|fc\d)/', name) or re.search('.*', name)).group(
        1 if '/conv' in name or '/fc' in name else 0)
    gathered = {layer(name) for kind, _, name in found if kind == 'all-gather'}
    self.assertEqual(gathered, {'conv3', 'fc6', 'fc7', 'fc8'})
    for kind, shape, name in found:
      if kind == 'collective-permute':
        channels = int(re.match(r'f32\[(?:\d+,)*(\d+)\]', shape).group(1))
        self.assertLessEqual(channels, 2, (shape, name))
      if re.search(r'[/(:]conv[245]/', name):
        # Only the data-parallel sum of the grouped weights' gradients.
        self.assertEqual(kind, 'all-reduce', name)
        self.assertGreater(data, 1, name)


  def test_whole_fc8_collectives(self):
    """3 classes over model=2: fc8 whole on both devices (docs/sharding.md, "Any class count").

    Each device multiplies its half of fc7's neurons by the matching rows of fc8 and the
    partial logits are summed: no gather of fc8's input, and no all-reduce in the softmax.
    """
    model_config = dict(tiny.MODEL, num_classes=3)
    mesh = meshes.create_mesh({'data': 1, 'model': 2}, jax.devices()[:2],
                                model_config=model_config)
    rules = meshes.rules_for_sizes(tiny.RULES, mesh.shape, 3)
    model = alexnet.AlexNet(**model_config)
    optimizer = tiny.create_optimizer()

    def init(rng):
      params = model.init(rng, np.zeros((1, tiny.IMAGE, tiny.IMAGE, 3), np.float32))['params']
      return {'params': params, 'opt_state': optimizer.init(nn.unbox(params))}

    def step(state, batch):
      def loss_fn(params):
        logits = model.apply({'params': params}, batch['image'])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                             batch['label'][:, None], axis=1))
      grads = jax.grad(loss_fn)(state['params'])
      updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
      return {'params': optax.apply_updates(state['params'], updates), 'opt_state': opt_state}

    with meshes.use_mesh(mesh, rules):
      shapes = jax.eval_shape(init, jax.random.key(0))
      shardings = placement.param_shardings(shapes, mesh, rules)
    self.assertTrue(shardings['params']['fc8']['kernel'].is_fully_replicated)
    abstract = placement.abstract(shapes, shardings)
    batch = {'image': jax.ShapeDtypeStruct((tiny.BATCH, tiny.IMAGE, tiny.IMAGE, 3), jnp.float32,
                                           sharding=placement.batch_sharding(mesh)),
             'label': jax.ShapeDtypeStruct((tiny.BATCH,), jnp.int32,
                                           sharding=placement.batch_sharding(mesh))}
    hlo = jax.jit(meshes.bind_mesh(step, mesh, rules), out_shardings=shardings).lower(
        abstract, batch).compile().as_text()
    found = collectives(hlo)
    forward_fc8 = [(kind, shape) for kind, shape, name in found
                   if re.search(r'jvp\(AlexNet\)/fc8/', name) and 'transpose' not in name]
    self.assertEqual(forward_fc8, [('all-reduce', f'f32[{tiny.BATCH},3]{{1,0}}')], found)
    softmax = [name for kind, _, name in found if kind == 'all-reduce'
               and re.search(r'reduce_(max|sum)$', name)]
    self.assertEqual(softmax, [], found)
    self.assertNotIn('fc8', ' '.join(name for kind, _, name in found if kind == 'all-gather'
                                     and 'dot_general' in name and 'transpose' not in name))


# ----------------------------------------------------------------------------- grouped layers


class GroupedLayersTest(parameterized.TestCase):
  """The grouped section alone, forward and backward, compiled under model=2."""

  def layer(self, name, features, groups):
    ksize, stride, pad, _ = alexnet.CONV_LAYOUT[name]
    return alexnet.Conv(features, ksize, stride, pad, groups)

  def compile_section(self, layers, x_shape, mesh, under_rules=True):
    """HLO of forward + backward through `layers` (each followed by ReLU)."""
    params = {}
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    h = x
    for i, layer in enumerate(layers):
      boxed = jax.eval_shape(layer.init, jax.random.key(0), h)['params']
      params[str(i)] = boxed
      h = jax.eval_shape(layer.apply, {'params': nn.unbox(boxed)}, h)
    shardings = placement.param_shardings(params, mesh, tiny.RULES)
    act = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data', None, None,
                                                                      'model'))

    def forward(p, inp):
      for i, layer in enumerate(layers):
        inp = nn.relu(layer.apply({'params': p[str(i)]}, inp))
      return inp

    def forward_backward(p, inp):
      y, vjp = jax.vjp(forward, p, inp)
      return (y,) + vjp(y)

    step = jax.jit(forward_backward, in_shardings=(shardings, act),
                   out_shardings=(act, shardings, act))
    params = nn.unbox(params)  # outside the mesh context: eager unboxing there adds constraints
    context = meshes.use_mesh(mesh, tiny.RULES) if under_rules else jax.set_mesh(mesh)
    with context:
      return step.lower(params, x).compile().as_text()

  @parameterized.named_parameters(('conv2', ['conv2'], (8, 7, 7, 12)),
                                  ('conv4_conv5', ['conv4', 'conv5'], (8, 3, 3, 48)))
  def test_grouped_layers_communicate_nothing(self, names, x_shape):
    widths = {'conv2': 32, 'conv4': 48, 'conv5': 32}
    layers = [self.layer(n, widths[n], 2) for n in names]
    hlo = self.compile_section(layers, x_shape, mesh_of(1, 2))
    self.assertEqual(collectives(hlo), [])

  @parameterized.parameters('split', 'feature_group')
  def test_tower_local_conv_matches_whole_conv(self, impl):
    conv = alexnet.Conv(32, 5, 1, 2, groups=2, group_impl=impl)
    x = np.random.RandomState(0).randn(8, 7, 7, 12).astype(np.float32)
    boxed = conv.init(jax.random.key(0), x)['params']
    params = nn.unbox(boxed)
    want = conv.apply({'params': params}, x)
    mesh = mesh_of(2, 2)
    act = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data', None, None,
                                                                      'model'))
    fn = jax.jit(meshes.bind_mesh(lambda p, inp: conv.apply({'params': p}, inp), mesh,
                                    tiny.RULES),
                 in_shardings=(placement.param_shardings(boxed, mesh, tiny.RULES), act),
                 out_shardings=act)
    compiled = fn.lower(params, x).compile()
    self.assertEqual(collectives(compiled.as_text()), [])
    np.testing.assert_allclose(compiled(params, x), want, rtol=1e-5, atol=1e-6)

  def test_grouped_layers_with_data_axis_sum_weight_gradients_only(self):
    layers = [self.layer('conv4', 48, 2), self.layer('conv5', 32, 2)]
    hlo = self.compile_section(layers, (8, 3, 3, 48), mesh_of(2, 2))
    self.assertEqual(set(kinds(hlo)), {'all-reduce'})

  def test_partitioner_alone_would_gather(self):
    # Why model.Conv runs its towers in shard_map: traced without the logical
    # rules, XLA's partitioner gathers the grouped conv's input and kernel.
    hlo = self.compile_section([self.layer('conv2', 32, 2)], (8, 7, 7, 12), mesh_of(1, 2),
                               under_rules=False)
    self.assertIn('all-gather', kinds(hlo))

  def test_conv3_gathers_its_input(self):
    hlo = self.compile_section([self.layer('conv3', 48, 1)], (8, 3, 3, 32), mesh_of(1, 2))
    self.assertIn('all-gather', kinds(hlo))

  def test_lrn_exchanges_a_two_channel_halo(self):
    mesh = mesh_of(1, 2)
    act = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data', None, None,
                                                                      'model'))
    fn = jax.jit(lambda x: jax.vjp(layers.local_response_norm, x)[1](x),
                 in_shardings=act, out_shardings=act)
    with meshes.use_mesh(mesh, tiny.RULES):
      hlo = fn.lower(jax.ShapeDtypeStruct((8, 7, 7, 32), jnp.float32)).compile().as_text()
    found = collectives(hlo)
    self.assertEqual(set(kinds(hlo)), {'collective-permute'}, found)
    for _, shape, _ in found:
      self.assertLessEqual(int(re.match(r'f32\[(?:\d+,)*(\d+)\]', shape).group(1)), 2, shape)


if __name__ == '__main__':
  absltest.main()
