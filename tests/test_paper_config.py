"""The paper's numbers where the program uses them: the shipped configs and the network they build.

Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks" (NIPS 2012). Every assertion names the section its value comes from.
`configs/imagenet.py` is checked field by field; what is not a config field (the LRN
constants, the pooling, where dropout acts, the init) is checked through the network
that config builds, with its intermediates captured (`capture_intermediates` and the
values `AlexNet` sows) and each compared with a numpy computation written out here.
`configs/digits.py` may differ from imagenet.py only where DIGITS_CHANGES says.
"""

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from alexnet_jax.config import resolution
from alexnet_jax.model import alexnet
from alexnet_jax.model import cost
from alexnet_jax.sharding import meshes
from configs import digits
from configs import imagenet

# config field -> (the paper's value, where the paper says so).
PAPER_FIELDS = {
    'batch_size': (128, 'section 5: "a batch size of 128 examples"'),
    'num_epochs': (90, 'section 5: "roughly 90 cycles through the training set"'),
    'final_eval_crops': (10, 'section 4.1: test on five patches and their reflections, '
                             '"ten patches in all", softmax averaged'),
    # 'auto' in the config: the value below is what it resolves to on the paper's two GPUs.
    'mesh.model': (2, 'section 3.2: the net is spread across two GPUs, half the kernels on each'),
    'model.towers': (2, 'section 3.2: two GPUs; conv2, conv4, conv5 see only their own GPU'),
    'model.num_classes': (1000, 'section 2: ILSVRC has 1000 categories'),
    'model.width': (1.0, 'section 3.5: 96, 256, 384, 384, 256 kernels, 4096 neurons per fc'),
    'model.use_lrn': (True, 'section 3.5: response normalisation follows conv1 and conv2'),
    'model.dropout_rate': (0.5, 'section 4.2: "with probability 0.5"'),
    'model.init_scheme': ('paper', 'section 5: N(0, 0.01^2) weights, biases 1 in conv2/4/5 '
                                   'and the hidden fc layers, 0 elsewhere'),
    'model.input_scale': (1.0, 'section 2: raw RGB values minus the mean activity'),
    'data.image_size': (256, 'section 2: shorter side rescaled to 256, central 256x256 patch'),
    'data.crop_size': (224, 'section 4.1: random 224x224 patches of the 256x256 images'),
    'data.flip': (True, 'section 4.1: "and their horizontal reflections"'),
    'data.lighting_std': (0.1, 'section 4.1: alpha_i drawn from a Gaussian with standard '
                               'deviation 0.1'),
    'data.mean': ('pixel', 'section 2: "subtracting the mean activity over the training set '
                           'from each pixel"'),
    'optim.learning_rate': (0.01, 'section 5: "The learning rate was initialized at 0.01"'),
    'optim.momentum': (0.9, 'section 5: "momentum of 0.9"'),
    'optim.weight_decay': (5e-4, 'section 5: "weight decay of 0.0005"'),
    'optim.decay_bias': (True, 'section 5: the update rule decays every weight w'),
    'optim.schedule': ('plateau', 'section 5: "divide the learning rate by 10 when the '
                                  'validation error rate stopped improving"'),
    'optim.plateau_factor': (0.1, 'section 5: "divide the learning rate by 10"'),
    'optim.plateau_max_drops': (3, 'section 5: "reduced three times prior to termination"'),
}

# Field of configs/digits.py -> (its value, why it differs from configs/imagenet.py).
DIGITS_CHANGES = {
    'batch_size': (64, 'a few images per step on a laptop; 1,437 training digits'),
    'num_epochs': (20, 'a quick start: the digits are learned in minutes'),
    'eval_every_epochs': (5, 'evaluations of a tiny set are cheap but add to the log'),
    'final_eval_crops': (1, 'the 10-crop test mirrors half its views: wrong for digits'),
    'model.num_classes': (10, 'ten digits'),
    'model.width': (0.25, 'a quarter-width net trains on a CPU'),
    'model.init_scheme': ('he', "the paper's init leaves a narrow net's loss flat"),
    'model.input_scale': (1 / 64, 'He init assumes unit-scale inputs'),
    'data.dir': ('data/digits', 'where the quick start keeps its data'),
    'data.prepare_from': ('digits', 'prepared on first use'),
    'data.image_size': (72, '8x8 digits upsampled to 72x72'),
    'data.crop_size': (64, 'small shifts, like 224 of 256'),
    'data.flip': (False, 'a mirrored digit is another symbol'),
    'optim.schedule': ('step', 'a fixed drop: 20 epochs leave no room for plateaus'),
    'optim.step_epochs': ((15,), 'the one drop of the step schedule'),
    'checkpoint.every_steps': (200, 'an epoch is 22 steps'),
    'log.every_steps': (20, 'an epoch is 22 steps'),
}

# The paper's LRN (section 3.3) and pooling (section 3.4).
LRN_K, LRN_N, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75
POOL_Z, POOL_S = 3, 2
# Section 5: biases 1 "in the second, fourth, and fifth convolutional layers, as well as in
# the fully-connected hidden layers", 0 in the others.
BIAS_ONE = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')


def flatten(config: ml_collections.ConfigDict) -> dict:
  """{'a.b': value} for every leaf field."""
  flat = {}

  def walk(prefix, d):
    for key, value in d.items():
      if isinstance(value, dict):
        walk(f'{prefix}{key}.', value)
      else:
        flat[prefix + key] = value

  walk('', config.to_dict())
  return flat


def lrn_np(a: np.ndarray) -> np.ndarray:
  """Section 3.3, written out: b_c = a_c / (k + alpha sum_{j in window(c)} a_j^2) ** beta.

  The window runs over n = 5 adjacent channels, clipped at the first and last;
  alpha is not divided by n.
  """
  a = a.astype(np.float64)
  channels = a.shape[-1]
  out = np.empty_like(a)
  for c in range(channels):
    lo, hi = max(0, c - LRN_N // 2), min(channels - 1, c + LRN_N // 2)
    out[..., c] = a[..., c] / (LRN_K + LRN_ALPHA * np.sum(a[..., lo:hi + 1] ** 2, -1)) ** LRN_BETA
  return out


def max_pool_np(x: np.ndarray) -> np.ndarray:
  """Section 3.4: the maximum of each z x z window, windows s pixels apart, no padding."""
  windows = sliding_window_view(x, (POOL_Z, POOL_Z), axis=(1, 2))  # (b, H-2, W-2, C, z, z)
  return windows[:, ::POOL_S, ::POOL_S].max(axis=(-2, -1))


def conv_np(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, pad: int,
            groups: int) -> np.ndarray:
  """Cross-correlation NHWC x HWIO; with groups, output group g sees input group g only."""
  x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = kernel.shape[0]
  windows = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
  b, oh, ow = windows.shape[:3]
  c_in, c_out = x.shape[-1] // groups, kernel.shape[-1] // groups
  outs = []
  for g in range(groups):
    patches = windows[..., g * c_in:(g + 1) * c_in, :, :].reshape(b * oh * ow, -1)  # (c, i, j)
    weights = kernel[..., g * c_out:(g + 1) * c_out].astype(np.float64)  # (i, j, c, o)
    outs.append(patches @ weights.transpose(2, 0, 1, 3).reshape(-1, c_out))
  return np.concatenate(outs, -1).reshape(b, oh, ow, -1) + bias


def relu(x: np.ndarray) -> np.ndarray:
  return np.maximum(np.asarray(x, np.float64), 0.0)


def paper_config() -> ml_collections.ConfigDict:
  return resolution.resolve_auto(imagenet.get_config())


def on_the_papers_machine(config: ml_collections.ConfigDict, field: str):
  """The field's value, with mesh.model 'auto' resolved for two devices (the paper's GPUs)."""
  value = resolution.get(config, field)
  if field == 'mesh.model' and value == meshes.AUTO:
    value, _ = meshes.auto_model_axis(2, config.model)
  return value


class ImagenetConfigTest(absltest.TestCase):

  def test_fields_are_the_papers(self):
    config = imagenet.get_config()
    wrong = [f'config.{field} is {resolution.get(config, field)!r} '
             f'(-> {on_the_papers_machine(config, field)!r} on two devices), the paper\'s is '
             f'{value!r} ({source})' for field, (value, source) in PAPER_FIELDS.items()
             if on_the_papers_machine(config, field) != value]
    self.assertEqual(wrong, [], '\n'.join(wrong))

  def test_mesh_model_auto_is_the_papers_split(self):
    # Section 3.2: two GPUs, one tower (half the kernels) each; on an even device count the
    # model axis is 2, so each device pair holds the paper's two towers.
    config = imagenet.get_config()
    for devices in (2, 4, 8):
      shape = meshes.mesh_shape(config.mesh, devices, config.model)
      self.assertEqual((shape.data, shape.model), (devices // 2, 2), f'{devices} devices')


class DigitsConfigTest(absltest.TestCase):

  def test_changes_from_imagenet_are_the_listed_ones(self):
    paper, quick = flatten(imagenet.get_config()), flatten(digits.get_config())
    self.assertEqual(set(quick), set(paper), 'digits.py must override fields, not add them')
    changed = {k: quick[k] for k in quick if quick[k] != paper[k]}
    listed = {k: v for k, (v, _) in DIGITS_CHANGES.items()}
    unlisted = sorted(set(changed) - set(listed))
    self.assertEqual(unlisted, [], 'configs/digits.py changes fields that DIGITS_CHANGES does '
                                   'not list (add each, with its reason)')
    unchanged = sorted(set(listed) - set(changed))
    self.assertEqual(unchanged, [], 'DIGITS_CHANGES lists fields digits.py keeps as in '
                                    'imagenet.py')
    for field, value in listed.items():
      self.assertEqual(changed[field], value, f'config.{field} of digits.py')


class PaperNetworkTest(absltest.TestCase):
  """The network configs/imagenet.py builds, at 1/8 width (every other field as shipped).

  One training-mode forward pass of eight 224x224 images in float32, intermediates captured.
  conv1 and conv2 kernels are scaled up so that the ReLU outputs reach the size at
  which the LRN's sum term matters next to k (pixels minus the mean, as in the paper,
  give that only with trained kernels).
  """

  BATCH = 8

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    config = paper_config()
    config.model.width = 0.125  # conv widths 12, 32, 48, 48, 32; fc 512
    config.model.dtype = 'float32'  # as on CPU ('auto'); the tolerances below are float32's
    cls.model = alexnet.from_config(config.model)
    crop = config.data.crop_size
    params = nn.unbox(cls.model.init(jax.random.key(0), jnp.zeros((1, crop, crop, 3))))['params']
    params['conv1']['kernel'] = params['conv1']['kernel'] * 7.0
    params['conv2']['kernel'] = params['conv2']['kernel'] * 15.0
    cls.params = jax.tree.map(np.asarray, params)
    rng = np.random.default_rng(0)
    cls.images = (rng.normal(0.0, 60.0, (cls.BATCH, crop, crop, 3))).astype(np.float32)

    def forward(params, images, train):
      return cls.model.apply({'params': params}, images, train=train,
                             rngs={'dropout': jax.random.key(1)}, capture_intermediates=True,
                             mutable=['intermediates'])

    forward = jax.jit(forward, static_argnums=2)
    logits, state = forward(cls.params, cls.images, True)
    cls.logits = np.asarray(logits)
    cls.inter = jax.tree.map(np.asarray, state['intermediates'])
    _, state = forward(cls.params, cls.images, False)
    cls.eval_inter = jax.tree.map(np.asarray, state['intermediates'])

  def out(self, name: str, inter=None) -> np.ndarray:
    """The captured output of a layer module (conv*, fc*) or a sown value (lrn*, pool*, ...)."""
    value = (inter or self.inter)[name]
    return value['__call__'][0] if isinstance(value, dict) else value[0]

  def assert_close(self, got, want, msg):
    want = np.asarray(want, np.float64)
    self.assertEqual(got.shape, want.shape, msg)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                               err_msg=msg)

  def test_lrn_follows_the_relu_of_conv1_and_conv2_with_the_papers_constants(self):
    for conv, lrn in (('conv1', 'lrn1'), ('conv2', 'lrn2')):
      a = relu(self.out(conv))
      # The sum term matters at these activations: alpha/5 or a window of 3 would show.
      sums = LRN_ALPHA * np.sum(a ** 2, -1)
      self.assertGreater(np.median(sums[sums > 0]), 0.3, f'{lrn}: activations too small')
      self.assert_close(self.out(lrn), lrn_np(a),
                        f'{lrn}: section 3.3, k=2 n=5 alpha=1e-4 beta=0.75 on the ReLU of '
                        f'{conv} (section 3.5)')

  def test_overlapping_pooling_after_lrn1_lrn2_and_conv5(self):
    inputs = {'pool1': self.out('lrn1'), 'pool2': self.out('lrn2'),
              'pool5': relu(self.out('conv5'))}
    sides = {'pool1': 27, 'pool2': 13, 'pool5': 6}  # section 3.5, figure 2
    for pool, x in inputs.items():
      got = self.out(pool)
      self.assertEqual(got.shape[1:3], (sides[pool], sides[pool]), pool)
      self.assert_close(got, max_pool_np(x), f'{pool}: section 3.4, z=3 s=2, after '
                                             f'{"conv5" if pool == "pool5" else pool[:-1]}')

  def test_each_layer_reads_the_previous_one(self):
    """Section 3.5's wiring: conv1 on the image; conv2 on pool1 (towers); conv3 on pool2 (all
    maps); conv4 and conv5 within towers; fc6 on pool5; fc7 and fc8 after dropout."""
    p = self.params
    towers = 2  # section 3.2
    layers = [
        ('conv1', self.images, 4, 2, 1),
        ('conv2', self.out('pool1'), 1, 2, towers),
        ('conv3', self.out('pool2'), 1, 1, 1),
        ('conv4', relu(self.out('conv3')), 1, 1, towers),
        ('conv5', relu(self.out('conv4')), 1, 1, towers),
    ]
    sides = {'conv1': 55, 'conv2': 27, 'conv3': 13, 'conv4': 13, 'conv5': 13}
    for name, x, stride, pad, groups in layers:
      want = conv_np(x, p[name]['kernel'], p[name]['bias'], stride, pad, groups)
      self.assertEqual(want.shape[1], sides[name], name)
      self.assert_close(self.out(name), want, f'{name} (section 3.5)')
    fc_inputs = {'fc6': self.out('pool5').reshape(self.BATCH, -1), 'fc7': self.out('dropout6'),
                 'fc8': self.out('dropout7')}
    for name, x in fc_inputs.items():
      want = np.asarray(x, np.float64) @ p[name]['kernel'] + p[name]['bias']
      self.assert_close(self.out(name), want, f'{name} (section 3.5)')
    np.testing.assert_array_equal(self.logits, self.out('fc8'))

  def test_dropout_rate_at_fc6_and_fc7(self):
    """Section 4.2: each hidden fc neuron's output is zeroed with probability 0.5.

    The dropped fraction over n neurons is binomial with std 0.5 / sqrt(n); |rate - 0.5|
    < 0.05 holds at 6 standard deviations for n >= 3600, while a rate of 0.4 or 0.6 sits
    6 standard deviations outside the band. Kept outputs are scaled by 1 / (1 - 0.5)
    (inverted dropout, the same expectation as the paper's halving at test time).
    """
    for fc, dropout in (('fc6', 'dropout6'), ('fc7', 'dropout7')):
      before, after = relu(self.out(fc)), self.out(dropout)
      live = before > 0
      n = int(live.sum())
      self.assertGreaterEqual(n, 3600, f'{fc}: too few active neurons for the bound')
      dropped = after[live] == 0
      kept_ok = np.isclose(after[live], 2.0 * before[live], rtol=1e-6)
      self.assertTrue(np.all(dropped | kept_ok),
                      f'{dropout}: outputs must be 0 or twice the input (section 4.2)')
      rate = float(dropped.mean())
      self.assertLess(abs(rate - 0.5), 0.05,
                      f'{dropout}: dropped fraction {rate:.3f} of {n} neurons; section 4.2: 0.5')

  def test_no_dropout_in_evaluation(self):
    # Section 4.2: at test time every neuron is used.
    for fc, dropout in (('fc6', 'dropout6'), ('fc7', 'dropout7')):
      np.testing.assert_array_equal(self.out(dropout, self.eval_inter),
                                    np.maximum(self.out(fc, self.eval_inter), 0), dropout)

  def test_init_is_the_papers(self):
    """Section 5, in the full-width network: N(0, 0.01^2) weights, biases 1 or 0."""
    model = alexnet.from_config(paper_config().model)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(2), jnp.zeros((1, 224, 224, 3))))
    params = params['params']
    self.assertEqual(cost.count_params(params), 60_965_224)
    for name, layer in params.items():
      kernel = np.asarray(layer['kernel'], np.float64)
      # std of a sample of m normals: relative error ~ 1/sqrt(2m), under 0.4% here.
      self.assertAlmostEqual(kernel.std(), 0.01, delta=3e-4, msg=f'{name} (section 5)')
      self.assertAlmostEqual(kernel.mean(), 0.0, delta=5 * 0.01 / np.sqrt(kernel.size),
                             msg=name)
      want = 1.0 if name in BIAS_ONE else 0.0
      np.testing.assert_array_equal(np.asarray(layer['bias']), want,
                                    err_msg=f'{name} bias (section 5)')


if __name__ == '__main__':
  absltest.main()
