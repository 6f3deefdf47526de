"""Tests of the AlexNet module, its LRN, init schemes and layer arithmetic."""

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.model import alexnet
from alexnet_jax.model import cost
from alexnet_jax.model import layers
from alexnet_jax.data import preprocess


def abstract_params(model, size=224):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x))['params']


def init_params(model, size, seed=0):
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  return nn.unbox(model.init(jax.random.key(seed), x))['params']


def lrn_numpy(a, size, k, alpha, beta):
  """The paper's formula as a plain loop over channels."""
  n = a.shape[-1]
  out = np.empty_like(a, dtype=np.float64)
  for c in range(n):
    lo, hi = max(0, c - size // 2), min(n - 1, c + size // 2)
    s = np.sum(a[..., lo:hi + 1].astype(np.float64) ** 2, axis=-1)
    out[..., c] = a[..., c] / (k + alpha * s) ** beta
  return out


class ParameterCountTest(parameterized.TestCase):

  def test_two_tower_count(self):
    # conv1 11*11*3*96+96 = 34,944      conv2 5*5*48*256+256 = 307,456
    # conv3 3*3*256*384+384 = 885,120   conv4 3*3*192*384+384 = 663,936
    # conv5 3*3*192*256+256 = 442,624   fc6 9216*4096+4096 = 37,752,832
    # fc7 4096*4096+4096 = 16,781,312   fc8 4096*1000+1000 = 4,097,000
    expected = (34_944 + 307_456 + 885_120 + 663_936 + 442_624 + 37_752_832 + 16_781_312
                + 4_097_000)
    self.assertEqual(expected, 60_965_224)
    params = abstract_params(alexnet.AlexNet())
    self.assertEqual(cost.count_params(params), 60_965_224)
    self.assertEqual(sum(r.params for r in cost.layer_table(alexnet.AlexNet())), 60_965_224)

  def test_one_tower_count(self):
    # Ungrouped conv2/4/5 see twice the input channels:
    # +5*5*48*256 + 3*3*192*384 + 3*3*192*256 = +307,200 + 663,552 + 442,368
    expected = 60_965_224 + 307_200 + 663_552 + 442_368
    self.assertEqual(expected, 62_378_344)
    params = abstract_params(alexnet.AlexNet(towers=1))
    self.assertEqual(cost.count_params(params), 62_378_344)

  def test_parameter_tree(self):
    params = abstract_params(alexnet.AlexNet())
    self.assertEqual(sorted(params), ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7',
                                      'fc8'])
    self.assertEqual(params['conv2']['kernel'].shape, (5, 5, 48, 256))
    self.assertEqual(params['conv4']['kernel'].shape, (3, 3, 192, 384))
    self.assertEqual(params['fc6']['kernel'].shape, (9216, 4096))
    for layer in params.values():
      self.assertEqual(sorted(layer), ['bias', 'kernel'])

  def test_every_weight_has_logical_names(self):
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    boxed = jax.eval_shape(alexnet.AlexNet().init, jax.random.key(0), x)['params']
    specs = nn.get_partition_spec(boxed)
    for name, layer in specs.items():
      kind = 'conv' if name.startswith('conv') else 'fc'
      # fc8's outputs are the classes: their own name, split only where the count allows.
      out = 'classes' if name == 'fc8' else f'{kind}_out'
      self.assertEqual(layer['bias'], jax.sharding.PartitionSpec(out))
      self.assertEqual(layer['kernel'][-1], out)
      self.assertLen(layer['kernel'], 4 if kind == 'conv' else 2)


class ShapeTest(parameterized.TestCase):

  @parameterized.parameters((224, 2), (227, 0))
  def test_layer_shapes(self, size, pad):
    net = alexnet.AlexNet(conv1_padding=pad)
    table = {r.name: r.output_shape for r in cost.layer_table(net, size)}
    self.assertEqual(table['conv1'], (55, 55, 96))
    self.assertEqual(table['pool1'], (27, 27, 96))
    self.assertEqual(table['conv2'], (27, 27, 256))
    self.assertEqual(table['pool2'], (13, 13, 256))
    self.assertEqual(table['conv3'], (13, 13, 384))
    self.assertEqual(table['conv4'], (13, 13, 384))
    self.assertEqual(table['conv5'], (13, 13, 256))
    self.assertEqual(table['pool5'], (6, 6, 256))
    # The traced network agrees with the arithmetic.
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = nn.unbox(jax.eval_shape(net.init, jax.random.key(0), x))
    _, state = jax.eval_shape(
        lambda v, im: net.apply(v, im, capture_intermediates=True, mutable=['intermediates']),
        variables, x)
    inter = state['intermediates']
    for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
      self.assertEqual(inter[name]['__call__'][0].shape, (2,) + table[name])
    self.assertEqual(inter['fc6']['__call__'][0].shape, (2, 4096))

  def test_other_input_size(self):
    net = alexnet.AlexNet(width=0.125, num_classes=10)
    params = abstract_params(net, 112)
    # 112 -> conv1 27 -> pool1 13 -> pool2 6 -> pool5 2: fc6 sees 2*2*32 inputs.
    self.assertEqual(params['fc6']['kernel'].shape, (2 * 2 * 32, 512))
    out = jax.eval_shape(lambda p, x: net.apply({'params': p}, x), params,
                         jax.ShapeDtypeStruct((3, 112, 112, 3), jnp.float32))
    self.assertEqual(out.shape, (3, 10))
    self.assertEqual(out.dtype, jnp.float32)


class LRNTest(parameterized.TestCase):

  @parameterized.parameters(
      dict(size=5, k=2.0, alpha=1e-4, beta=0.75, channels=96),
      dict(size=5, k=2.0, alpha=1e-4, beta=0.75, channels=7),
      dict(size=3, k=1.0, alpha=0.5, beta=0.5, channels=6),
      dict(size=7, k=0.5, alpha=2e-2, beta=1.3, channels=5),
      dict(size=1, k=1.5, alpha=1.0, beta=0.75, channels=4),
  )
  def test_matches_formula(self, size, k, alpha, beta, channels):
    rng = np.random.default_rng(0)
    # Large activations so that the sum term is not negligible next to k.
    a = rng.normal(scale=30.0, size=(2, 3, 4, channels)).astype(np.float32)
    if alpha > 0.1:
      a /= 30.0
    got = layers.local_response_norm(jnp.asarray(a), size=size, k=k, alpha=alpha, beta=beta)
    want = lrn_numpy(a, size, k, alpha, beta)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-6)
    # The window is not trivial at these scales.
    self.assertGreater(np.max(np.abs(want - a / k ** beta)), 1e-3)

  def test_edge_channels_clipped(self):
    # One non-zero channel at the edge: only channels within size//2 feel it.
    a = np.ones((1, 1, 1, 8), np.float32)
    a[..., 0] = 100.0
    got = np.asarray(layers.local_response_norm(jnp.asarray(a)))
    self.assertAlmostEqual(got[0, 0, 0, 1], 1.0 / (2.0 + 1e-4 * (1e4 + 3)) ** 0.75, places=6)
    self.assertAlmostEqual(got[0, 0, 0, 2], 1.0 / (2.0 + 1e-4 * (1e4 + 4)) ** 0.75, places=6)
    self.assertAlmostEqual(got[0, 0, 0, 3], 1.0 / (2.0 + 1e-4 * 5) ** 0.75, places=6)
    self.assertAlmostEqual(got[0, 0, 0, 0], 100.0 / (2.0 + 1e-4 * (1e4 + 2)) ** 0.75, places=4)

  def test_rejects_even_size(self):
    with self.assertRaisesRegex(ValueError, 'odd'):
      layers.local_response_norm(jnp.ones((1, 1, 1, 4)), size=4)

  @parameterized.parameters(
      dict(size=5, k=2.0, alpha=1e-4, beta=0.75, scale=30.0),
      dict(size=3, k=1.0, alpha=0.5, beta=0.5, scale=1.0),
      dict(size=7, k=0.5, alpha=2e-2, beta=1.3, scale=1.0),
      dict(size=1, k=1.5, alpha=1.0, beta=0.75, scale=1.0),
  )
  def test_gradient_matches_autodiff_of_formula(self, size, k, alpha, beta, scale):
    """The hand-written backward pass equals autodiff of the formula written plainly."""
    def formula(a):  # lrn_numpy's loop over channels, in jnp
      n = a.shape[-1]
      sums = [jnp.sum(a[..., max(0, c - size // 2):c + size // 2 + 1] ** 2, axis=-1)
              for c in range(n)]
      return a / (k + alpha * jnp.stack(sums, axis=-1)) ** beta

    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(scale=scale, size=(2, 3, 4, 9)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=a.shape).astype(np.float32))
    lrn = lambda x: layers.local_response_norm(x, size=size, k=k, alpha=alpha, beta=beta)
    got = jax.grad(lambda x: jnp.vdot(lrn(x), g))(a)
    want = jax.grad(lambda x: jnp.vdot(formula(x), g))(a)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)

  def test_bfloat16_gradient(self):
    a = jax.random.normal(jax.random.key(0), (1, 2, 2, 8), jnp.bfloat16) * 30
    grad = jax.grad(lambda x: layers.local_response_norm(x).astype(jnp.float32).sum())(a)
    self.assertEqual(grad.dtype, jnp.bfloat16)
    want = jax.grad(lambda x: layers.local_response_norm(x).sum())(a.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(want), rtol=2e-2, atol=1e-3)


class MaxPoolTest(parameterized.TestCase):

  @parameterized.parameters(
      *[(3, 2) + shape for shape in ((2, 55, 55, 8), (1, 13, 13, 4), (1, 4, 6, 3), (1, 3, 3, 1))],
      # s = z = 2, the paper's non-overlapping control (section 3.4), odd and even sides;
      # and windows wider than their stride other than the paper's.
      (2, 2, 2, 55, 55, 8), (2, 2, 1, 6, 7, 3), (4, 3, 1, 13, 13, 2), (3, 1, 1, 6, 5, 2))
  def test_matches_reduce_window_and_its_gradient(self, window, stride, *shape):
    """Forward equals max over each window (written out in numpy); the gradient
    equals JAX's autodiff of reduce_window max (XLA's select_and_scatter), which
    sends each window's gradient to its first maximum, ties included."""
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=shape), 0.0).astype(np.float32)  # ReLU zeros tie
    a[:, ::3] = np.round(a[:, ::3], 1)  # and so do some positive values
    x = jnp.asarray(a)
    reference = lambda v: jax.lax.reduce_window(
        v, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), 'VALID')
    out_h, out_w = (shape[1] - window) // stride + 1, (shape[2] - window) // stride + 1
    windows = np.stack([np.stack([a[:, i * stride:i * stride + window,
                                    j * stride:j * stride + window].max(axis=(1, 2))
                                  for j in range(out_w)], axis=1) for i in range(out_h)], axis=1)
    pooled = layers.max_pool(x, window, stride)
    np.testing.assert_array_equal(np.asarray(pooled), windows)
    g = jnp.asarray(rng.normal(size=windows.shape).astype(np.float32))
    got = jax.grad(lambda v: jnp.vdot(layers.max_pool(v, window, stride), g))(x)
    want = jax.grad(lambda v: jnp.vdot(reference(v), g))(x)
    # The same terms summed in another order where windows overlap.
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)

  def test_bfloat16(self):
    x = jax.random.normal(jax.random.key(0), (1, 7, 7, 4), jnp.bfloat16)
    grad = jax.grad(lambda v: layers.max_pool(v).astype(jnp.float32).sum())(x)
    self.assertEqual(grad.dtype, jnp.bfloat16)
    want = jax.grad(lambda v: nn.max_pool(v, (3, 3), (2, 2)).astype(jnp.float32).sum())(x)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(want))

  def test_network_gradient_has_no_select_and_scatter(self):
    # XLA refuses select-and-scatter under --xla_gpu_deterministic_ops (docs/reliability.md,
    # "On GPU"): the network's gradient must not contain one. flax's own max_pool does.
    net = alexnet.AlexNet(width=0.125, num_classes=10)
    params = abstract_params(net, 112)
    x = jax.ShapeDtypeStruct((2, 112, 112, 3), jnp.float32)
    loss = lambda p, v: net.apply({'params': p}, v).sum()
    text = jax.jit(jax.grad(loss)).lower(params, x).as_text()
    self.assertIn('reduce_window', text)  # the forward max-pools are there
    self.assertNotIn('select_and_scatter', text)
    pool = lambda v: nn.max_pool(v, (3, 3), (2, 2)).sum()
    self.assertIn('select_and_scatter', jax.jit(jax.grad(pool)).lower(x).as_text())


class AblationSwitchTest(parameterized.TestCase):
  """The switches the paper's ablations need: pooling window and stride, conv widths."""

  def test_non_overlapping_pooling_keeps_the_shapes(self):
    # Section 3.4: s = z = 2 "produces output of equivalent dimensions":
    # (55 - 2) // 2 + 1 = 27, (27 - 2) // 2 + 1 = 13, (13 - 2) // 2 + 1 = 6, as with z = 3.
    net = alexnet.AlexNet(pool_size=2, pool_stride=2)
    table = {r.name: r.output_shape for r in cost.layer_table(net)}
    self.assertEqual([table[p] for p in ('pool1', 'pool2', 'pool5')],
                     [(27, 27, 96), (13, 13, 256), (6, 6, 256)])
    self.assertEqual(cost.count_params(abstract_params(net)), 60_965_224)

  def test_pooling_reaches_the_network(self):
    # A stride-3 pool maps conv1's 55 to (55 - 3) // 3 + 1 = 18, then 6, then 2: fc6
    # reads 2 * 2 * 32 features at width 1/8.
    net = alexnet.AlexNet(width=0.125, num_classes=10, pool_size=3, pool_stride=3)
    self.assertEqual(abstract_params(net)['fc6']['kernel'].shape, (2 * 2 * 32, 512))
    # s = z = 2 and the paper's s = 2, z = 3 share every weight shape, not their outputs.
    small = dict(width=0.125, num_classes=10)
    params = init_params(alexnet.AlexNet(pool_size=2, pool_stride=2, **small), 224)
    x = jax.random.normal(jax.random.key(0), (1, 224, 224, 3))
    a = alexnet.AlexNet(pool_size=2, pool_stride=2, **small).apply({'params': params}, x)
    b = alexnet.AlexNet(**small).apply({'params': params}, x)
    self.assertGreater(float(jnp.abs(a - b).max()), 1e-6)

  def test_conv_widths(self):
    # The one-tower comparison net (section 3.2 and its footnote): conv1-conv4 halved,
    # conv5 and the fc layers at full width, every layer ungrouped.
    #   conv1 11*11*3*48 + 48    =     17,472   conv2 5*5*48*128 + 128   =    153,728
    #   conv3 3*3*128*192 + 192  =    221,376   conv4 3*3*192*192 + 192  =    331,968
    #   conv5 3*3*192*256 + 256  =    442,624   fc6 6*6*256*4096 + 4096  = 37,752,832
    #   fc7 4096*4096 + 4096     = 16,781,312   fc8 4096*1000 + 1000     =  4,097,000
    expected = (17_472 + 153_728 + 221_376 + 331_968 + 442_624 + 37_752_832 + 16_781_312
                + 4_097_000)
    self.assertEqual(expected, 59_798_312)
    net = alexnet.AlexNet(towers=1, conv_widths=(48, 128, 192, 192, 256))
    params = abstract_params(net)
    self.assertEqual(cost.count_params(params), expected)
    self.assertEqual(sum(r.params for r in cost.layer_table(net)), expected)
    self.assertEqual(params['conv4']['kernel'].shape, (3, 3, 192, 192))
    # The width multiplier scales them: a quarter gives 12, 32, 48, 48, 64.
    quarter = abstract_params(alexnet.AlexNet(towers=1, width=0.25, num_classes=10,
                                                conv_widths=(48, 128, 192, 192, 256)))
    self.assertEqual([quarter[f'conv{i}']['kernel'].shape[-1] for i in range(1, 6)],
                     [12, 32, 48, 48, 64])

  @parameterized.parameters(((48, 128, 192, 192),), ((48, 0, 192, 192, 256),),
                            ((48.0, 128, 192, 192, 256),))
  def test_bad_conv_widths(self, widths):
    with self.assertRaisesRegex(ValueError, r"config.model.conv_widths must be None or five "
                                r"positive integers \(conv1-conv5\), got \("):
      alexnet.AlexNet(towers=1, conv_widths=widths).check()

  def test_from_config_accepts_widths_read_back_from_json(self):
    net = alexnet.from_config({'towers': 1, 'conv_widths': [48, 128, 192, 192, 256]})
    self.assertEqual(net.conv_widths, (48, 128, 192, 192, 256))
    hash(net)  # jit takes the model as a static argument


class TowerTest(parameterized.TestCase):

  @parameterized.parameters('split', 'feature_group')
  def test_grouped_layers_keep_towers_apart(self, impl):
    """conv2/4/5 outputs of tower 1 do not depend on tower-0 inputs, and vice versa."""
    for name, ksize, pad in (('conv2', 5, 2), ('conv4', 3, 1), ('conv5', 3, 1)):
      conv = alexnet.Conv(8, ksize, 1, pad, groups=2, group_impl=impl)
      x = jax.random.normal(jax.random.key(1), (1, 6, 6, 6))
      params = nn.unbox(conv.init(jax.random.key(2), x))
      f = lambda inp: conv.apply(params, inp)
      jac = jax.jacrev(f)(x)  # (1,6,6,8, 1,6,6,6)
      block = lambda out_t, in_t: jac[..., 4 * out_t:4 * out_t + 4, :, :, :, 3 * in_t:3 * in_t + 3]
      self.assertEqual(float(jnp.abs(block(1, 0)).max()), 0.0, name)
      self.assertEqual(float(jnp.abs(block(0, 1)).max()), 0.0, name)
      self.assertGreater(float(jnp.abs(block(0, 0)).max()), 0.0, name)
      self.assertGreater(float(jnp.abs(block(1, 1)).max()), 0.0, name)

  @parameterized.parameters('split', 'feature_group')
  def test_network_level_towers(self, impl):
    """In the real network, conv2, conv4 and conv5 connect only within a tower; conv3 crosses.

    The filters changed in conv1 and conv2 are those of tower 0 but its last two, which
    the LRN's window of 5 channels would carry into tower 1. Changing them in conv1
    changes conv2's tower-0 outputs and leaves its tower-1 outputs bitwise as they were;
    changing them in conv2 reaches tower 1 of conv3. Changing conv3's tower-0 filters
    leaves tower 1 of conv4 and conv5 as it was.
    """
    net = alexnet.AlexNet(width=0.125, num_classes=10, group_impl=impl)
    params = init_params(net, 67)  # conv widths 12, 32, 48, 48, 32: towers of 6, 16, 24, 24, 16
    x = jax.random.normal(jax.random.key(0), (2, 67, 67, 3)) * 50
    forward = jax.jit(lambda p: net.apply({'params': p}, x, capture_intermediates=True,
                                          mutable=['intermediates'])[1]['intermediates'])

    def convs(p):
      inter = forward(p)
      return {n: np.asarray(inter[n]['__call__'][0]) for n in ('conv2', 'conv3', 'conv4',
                                                               'conv5')}

    def changed(layer, channels):
      """Outputs with `layer`'s filters `channels` replaced by others."""
      noise = jax.random.normal(jax.random.key(5), params[layer]['kernel'].shape) * 0.02
      kernel = params[layer]['kernel'].at[..., channels].add(noise[..., channels])
      bias = params[layer]['bias'].at[channels].add(1.0)
      return convs(dict(params, **{layer: {'kernel': kernel, 'bias': bias}}))

    def tower(a, t):
      half = a.shape[-1] // 2
      return a[..., t * half:(t + 1) * half]

    base = convs(params)
    after = changed('conv1', slice(0, 4))
    np.testing.assert_array_equal(tower(after['conv2'], 1), tower(base['conv2'], 1))
    self.assertFalse(np.array_equal(tower(after['conv2'], 0), tower(base['conv2'], 0)))
    after = changed('conv2', slice(0, 14))
    self.assertFalse(np.array_equal(tower(after['conv3'], 1), tower(base['conv3'], 1)),
                     'conv3 reads both towers of conv2 (section 3.2)')
    after = changed('conv3', slice(0, 24))
    for name in ('conv4', 'conv5'):
      np.testing.assert_array_equal(tower(after[name], 1), tower(base[name], 1), name)
      self.assertFalse(np.array_equal(tower(after[name], 0), tower(base[name], 0)), name)

  @parameterized.parameters(1, 2)
  def test_split_equals_feature_group(self, towers):
    net_a = alexnet.AlexNet(width=0.125, num_classes=10, towers=towers, group_impl='split')
    net_b = net_a.clone(group_impl='feature_group')
    params = init_params(net_a, 67)
    x = jax.random.normal(jax.random.key(0), (2, 67, 67, 3)) * 50
    ya = net_a.apply({'params': params}, x)
    yb = net_b.apply({'params': params}, x)
    np.testing.assert_allclose(np.asarray(ya), np.asarray(yb), rtol=1e-4, atol=1e-5)


class InitTest(parameterized.TestCase):

  @parameterized.parameters('paper', 'caffe', 'he')
  def test_weight_std_and_biases(self, scheme):
    net = alexnet.AlexNet(init_scheme=scheme, width=0.5, num_classes=100)
    params = init_params(net, 224, seed=1)
    ones = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')
    for name, layer in params.items():
      kernel = np.asarray(layer['kernel'])
      fan_in = int(np.prod(kernel.shape[:-1]))
      want_std = {'paper': 0.01,
                  'caffe': 0.005 if name in ('fc6', 'fc7') else 0.01,
                  'he': np.sqrt(2.0 / fan_in)}[scheme]
      self.assertAlmostEqual(float(kernel.mean()), 0.0, delta=4 * want_std / np.sqrt(kernel.size))
      self.assertAlmostEqual(float(kernel.std()), want_std, delta=0.03 * want_std, msg=name)
      want_bias = {'paper': 1.0 if name in ones else 0.0,
                   'caffe': 0.1 if name in ones else 0.0,
                   'he': 0.0}[scheme]
      np.testing.assert_array_equal(np.asarray(layer['bias']), np.full(layer['bias'].shape,
                                                                        want_bias, np.float32))

  def test_params_are_float32_under_bf16(self):
    net = alexnet.AlexNet(width=0.125, num_classes=10, dtype='bfloat16')
    params = abstract_params(net, 67)
    self.assertTrue(all(p.dtype == jnp.float32 for p in jax.tree.leaves(params)))


class DropoutTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.net = alexnet.AlexNet(width=0.125, num_classes=10, init_scheme='he')
    self.params = init_params(self.net, 67)
    self.x = jax.random.normal(jax.random.key(0), (4, 67, 67, 3)) * 50

  def apply(self, train, key=None):
    rngs = {'dropout': key} if key is not None else None
    return np.asarray(self.net.apply({'params': self.params}, self.x, train=train, rngs=rngs))

  def test_eval_ignores_the_dropout_rng(self):
    """Evaluation gives the same output for any dropout key: that of the network without
    dropout (section 4.2: at test time every neuron is used)."""
    a = self.apply(False, jax.random.key(1))
    np.testing.assert_array_equal(a, self.apply(False, jax.random.key(2)))
    no_dropout = self.net.clone(dropout_rate=0.0)
    want = no_dropout.apply({'params': self.params}, self.x, train=True,
                            rngs={'dropout': jax.random.key(3)})
    np.testing.assert_allclose(a, np.asarray(want), rtol=1e-6, atol=1e-6)

  def test_train_uses_dropout_reproducibly(self):
    a = self.apply(True, jax.random.key(1))
    b = self.apply(True, jax.random.key(1))
    c = self.apply(True, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    self.assertGreater(np.abs(a - c).max(), 1e-6)
    self.assertGreater(np.abs(a - self.apply(False)).max(), 1e-6)

  def test_train_needs_rng(self):
    with self.assertRaises(Exception):
      self.apply(True)


class InputScaleTest(absltest.TestCase):

  def test_scales_the_input(self):
    net = alexnet.AlexNet(width=0.125, num_classes=10, input_scale=1 / 64)
    params = init_params(net, 67)
    x = jax.random.normal(jax.random.key(0), (2, 67, 67, 3)) * 50
    np.testing.assert_allclose(
        np.asarray(net.apply({'params': params}, x)),
        np.asarray(net.clone(input_scale=1.0).apply({'params': params}, x / 64)), rtol=1e-5,
        atol=1e-6)
    with self.assertRaisesRegex(ValueError, 'input_scale'):
      alexnet.AlexNet(input_scale=0.0).check()


class DtypeTest(absltest.TestCase):

  def test_bfloat16_close_to_float32(self):
    net32 = alexnet.AlexNet(width=0.25, num_classes=10, init_scheme='he')
    net16 = net32.clone(dtype='bfloat16')
    params = init_params(net32, 99)
    x = jax.random.normal(jax.random.key(0), (4, 99, 99, 3)) * 50
    y32 = np.asarray(net32.apply({'params': params}, x))
    y16 = net16.apply({'params': params}, x)
    self.assertEqual(y16.dtype, jnp.float32)  # logits are returned in float32
    y16 = np.asarray(y16)
    rel = np.linalg.norm(y16 - y32) / np.linalg.norm(y32)
    self.assertLess(rel, 0.05)
    self.assertGreater(rel, 0.0)  # it really ran in lower precision


def jit_init_params(model, size, seed=0):
  """`init_params`, compiled whole: far faster than op by op for a bfloat16 net."""
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  return nn.unbox(jax.jit(model.init)(jax.random.key(seed), x))['params']


def bf16_spacing(values):
  """The distance between neighbouring bfloat16 numbers (8 significant bits) at |values|."""
  return 2.0 ** (np.floor(np.log2(np.abs(values))) - 7)


def numpy_conv1_of_constant(shift, kernel, padding, stride, out_size):
  """conv(constant image `shift`, zero padding) by explicit loops over positions, float64."""
  k = kernel.shape[0]
  side = (out_size - 1) * stride + k - 2 * padding
  image = np.pad(np.broadcast_to(np.asarray(shift, np.float64), (side, side, 3)),
                 ((padding, padding), (padding, padding), (0, 0)))
  out = np.empty((out_size, out_size, kernel.shape[-1]))
  for i in range(out_size):
    for j in range(out_size):
      window = image[i * stride:i * stride + k, j * stride:j * stride + k]
      out[i, j] = np.einsum('hwc,hwco->o', window, kernel.astype(np.float64))
  return out


class Bfloat16NumericsTest(absltest.TestCase):
  """Under dtype='bfloat16': fc8 sums and adds its bias in float32; conv1 is float32."""

  def test_fc_layers_sum_and_add_the_bias_in_float32(self):
    # Inputs and kernel exactly representable in bfloat16, so only the sum and the bias
    # can differ from float64 arithmetic; a bias of 0.1 + ... is not a bfloat16 number.
    rng = np.random.default_rng(0)
    x = np.asarray(jnp.asarray(rng.normal(size=(4, 256)) * 3, jnp.bfloat16), np.float64)
    w = np.asarray(jnp.asarray(rng.normal(size=(256, 50)) * 0.05, jnp.bfloat16), np.float64)
    b = (0.1 + rng.random(50) * 0.01).astype(np.float32)
    layer = alexnet.Dense(50, dtype=jnp.bfloat16, output_dtype=jnp.float32)
    logits = layer.apply({'params': {'kernel': w.astype(np.float32), 'bias': b}},
                         jnp.asarray(x, jnp.bfloat16))
    self.assertEqual(logits.dtype, jnp.float32)
    expected = x @ w + b.astype(np.float64)
    bound = 1e-6 * (np.abs(x) @ np.abs(w) + np.abs(b))  # float32 summation, 256 terms
    np.testing.assert_array_less(np.abs(np.asarray(logits, np.float64) - expected), bound)
    # fc6 and fc7 round that sum once, to bfloat16.
    hidden = alexnet.Dense(50, dtype=jnp.bfloat16).apply(
        {'params': {'kernel': w.astype(np.float32), 'bias': b}}, jnp.asarray(x, jnp.bfloat16))
    self.assertEqual(hidden.dtype, jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(hidden, np.float64),
                                  np.asarray(jnp.asarray(expected, jnp.bfloat16), np.float64))

  def test_bfloat16_logits_rank_classes_like_float32(self):
    """One batch through a tiny network in float32 and in bfloat16, with the same params.

    Every layer before fc8 copies one input channel (one-hot kernels, zero biases, no
    LRN, integer pixels), so both dtypes feed fc8 the same numbers: a general network's
    bfloat16 errors before fc8 would make this a test of every layer, not of the logits.
    fc8's kernel holds bfloat16 numbers and its bias float32 ones.
    """
    net32 = alexnet.AlexNet(width=0.125, num_classes=200, use_lrn=False, dropout_rate=0.0)
    net16 = net32.clone(dtype='bfloat16')
    params = jit_init_params(net32, 67)
    rng = np.random.default_rng(3)

    def copy_kernel(shape):  # output channel o reads input channel o % inputs, centre tap
      kernel = np.zeros(shape, np.float32)
      inputs, outputs = shape[-2], shape[-1]
      kernel[(shape[0] // 2,) * (len(shape) - 2) + (np.arange(outputs) % inputs,
                                                     np.arange(outputs))] = 1.0
      return kernel

    for name, layer in params.items():
      layer = {'kernel': copy_kernel(layer['kernel'].shape),
               'bias': np.zeros(layer['bias'].shape, np.float32)}
      if name == 'fc8':
        layer = {'kernel': np.asarray(jnp.asarray(rng.normal(size=layer['kernel'].shape) * 0.02,
                                                  jnp.bfloat16), np.float32),
                 'bias': rng.normal(size=layer['bias'].shape).astype(np.float32)}
      params[name] = layer
    x = jnp.asarray(rng.integers(-100, 101, (4, 67, 67, 3)), jnp.float32)
    fc8_input = lambda state: np.asarray(state['intermediates']['dropout7'][0], np.float64)
    l32, s32 = net32.apply({'params': params}, x, mutable=['intermediates'])
    l16, s16 = net16.apply({'params': params}, x, mutable=['intermediates'])
    np.testing.assert_array_equal(fc8_input(s16), fc8_input(s32))  # the premise
    self.assertEqual(l16.dtype, jnp.float32)
    l32, l16 = np.asarray(l32, np.float64), np.asarray(l16, np.float64)
    # Independent reference: float64 logits from fc8's input.
    w, b = params['fc8']['kernel'].astype(np.float64), params['fc8']['bias'].astype(np.float64)
    expected = fc8_input(s32) @ w + b
    np.testing.assert_allclose(l32, expected, rtol=1e-5, atol=1e-5)
    gap32 = l32[:, :, None] - l32[:, None, :]
    gap16 = l16[:, :, None] - l16[:, None, :]
    spacing = bf16_spacing(np.maximum(np.abs(l32[:, :, None]), np.abs(l32[:, None, :])))
    beyond = np.abs(gap32) > spacing
    self.assertGreater(beyond.sum(), 0.9 * beyond.size)
    np.testing.assert_array_equal(np.sign(gap16[beyond]), np.sign(gap32[beyond]))
    # Nor does bfloat16 tie or swap classes closer than its spacing (rounded logits would:
    # several hundred pairs here are that close): float32 sums, 2^-16 relative apart.
    close = ~beyond & (np.abs(gap32) > spacing * 2.0**-9)
    self.assertGreater(close.sum(), 100)
    np.testing.assert_array_equal(np.sign(gap16[close]), np.sign(gap32[close]))

  def test_a_lighting_shift_of_0_1_reaches_conv1(self):
    """Pixels minus the mean of 128-255 (bfloat16 steps of 1.0) plus a lighting shift of 0.1.

    Rounded to bfloat16 before conv1, the shifted input would equal the plain one. The
    float32 conv1 output (sown before its cast) moves by conv(the constant shift).
    """
    net = alexnet.AlexNet(width=0.125, num_classes=10, dtype='bfloat16')
    params = jit_init_params(net, 67)
    rng = np.random.default_rng(4)
    image = jnp.asarray(rng.integers(128, 256, (2, 67, 67, 3)), jnp.uint8)
    shift = np.array([0.1, -0.1, 0.1], np.float32)

    @jax.jit
    def forward(lighting):
      x = preprocess.normalize(image, jnp.zeros((2, 2), jnp.int32), jnp.zeros(2, bool),
                               jnp.broadcast_to(lighting, (2, 3)), jnp.zeros(3, jnp.float32))
      return net.apply({'params': params}, x, capture_intermediates=True,
                       mutable=['intermediates'])[1]['intermediates']['conv1']

    plain, moved = forward(np.zeros(3, np.float32)), forward(shift)
    out16, moved16 = (np.asarray(i['__call__'][0], np.float64) for i in (plain, moved))
    # What conv2 sees (conv1's output rounded to bfloat16) moves too, in part of the maps.
    self.assertGreater(np.mean(moved16 != out16), 0.01)
    out32, moved32 = (np.asarray(i['float32'][0], np.float64) for i in (plain, moved))
    expected = numpy_conv1_of_constant(shift, np.asarray(params['conv1']['kernel']),
                                       net.conv1_padding, 4, out32.shape[1])
    self.assertGreater(np.abs(expected).mean(), 0.005)
    np.testing.assert_allclose(moved32 - out32, np.broadcast_to(expected, out32.shape),
                               atol=2e-4)


class FlopTest(absltest.TestCase):

  def test_paper_macs(self):
    table = cost.layer_table(alexnet.AlexNet())
    macs = sum(r.macs for r in table)
    # conv1 55^2*11^2*3*96 + conv2 27^2*5^2*48*256 + conv3 13^2*9*256*384
    # + conv4 13^2*9*192*384 + conv5 13^2*9*192*256 + fc 9216*4096 + 4096^2 + 4096*1000
    want = (55**2 * 121 * 3 * 96 + 27**2 * 25 * 48 * 256 + 169 * 9 * 256 * 384
            + 169 * 9 * 192 * 384 + 169 * 9 * 192 * 256 + 9216 * 4096 + 4096**2 + 4096 * 1000)
    self.assertEqual(macs, want)
    self.assertAlmostEqual(macs / 1e9, 0.72, delta=0.01)

  def test_xla_count_agrees(self):
    """XLA counts only taps that fall inside the image (not on zero padding) and
    adds elementwise work; count those taps independently and compare."""
    net = alexnet.AlexNet()

    def valid_taps(size, k, stride, pad):
      out = (size + 2 * pad - k) // stride + 1
      per_dim = sum(sum(0 <= o * stride - pad + t < size for t in range(k)) for o in range(out))
      return per_dim ** 2  # square input: product of the two dims

    taps = (valid_taps(224, 11, 4, 2) * 3 * 96 + valid_taps(27, 5, 1, 2) * 48 * 256
            + valid_taps(13, 3, 1, 1) * (256 * 384 + 192 * 384 + 192 * 256)
            + 9216 * 4096 + 4096**2 + 4096 * 1000)
    xla_macs = cost.count_flops(net) / 2
    self.assertGreater(xla_macs, taps)
    self.assertLess(xla_macs, taps * 1.02)  # the elementwise rest is under 2%


class BadInputTest(parameterized.TestCase):

  def test_bad_shapes(self):
    net = alexnet.AlexNet(width=0.125, num_classes=10)
    params = abstract_params(net, 67)
    for shape, msg in (((67, 67, 3), 'rank 4'), ((1, 67, 67, 1), '3 \\(RGB\\) channels'),
                       ((1, 40, 40, 3), 'too small')):
      with self.assertRaisesRegex(ValueError, msg):
        net.apply({'params': params}, jnp.zeros(shape))

  def test_bad_fields(self):
    for fields, msg in ((dict(init_scheme='xavier'), 'unknown init scheme'),
                        (dict(width=0.13), 'not divisible by towers=2'),
                        (dict(towers=3), 'towers must be 1 or 2'),
                        (dict(dropout_rate=1.0), 'dropout_rate'),
                        (dict(group_impl='cudnn'), 'group_impl'),
                        (dict(dtype='float13'), 'dtype')):
      with self.assertRaisesRegex(ValueError, msg):
        alexnet.AlexNet(**fields).check()
      with self.assertRaisesRegex(ValueError, msg):
        alexnet.AlexNet(**fields).init(jax.random.key(0), jnp.zeros((1, 67, 67, 3)))

  def test_from_config_unknown_field(self):
    with self.assertRaisesRegex(ValueError, 'unknown config.model fields'):
      alexnet.from_config({'num_classes': 10, 'colour': 'red'})


if __name__ == '__main__':
  absltest.main()
