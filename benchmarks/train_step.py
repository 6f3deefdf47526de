r"""Images/second of the jitted train step, against PyTorch eager in the same process.

  python -m benchmarks.train_step          # paper net, batch 64, float32: ~3 min on 2 cores
  python -m benchmarks.train_step --nets=paper,one_tower --batches=32,64,128 \
      --dtypes=float32,bfloat16 --meshes=1x1,1x2,2x1   # every row (long on a CPU)
  python -m benchmarks.train_step --dtypes=bfloat16 --batches=128,256,512,1024 \
      --nets=paper,one_tower --meshes=1x1               # a GPU (see benchmarks/gpu.sh)

What is timed is the project's own step, `step_fns.train_step` (uint8 crops ->
`preprocess.normalize` on the device -> model -> cross-entropy -> the paper's SGD), on a
`TrainState` created as the trainer creates it (`placement.create_sharded_state`, then
`jax.jit` with explicit shardings and the state donated), traced under the mesh and
the logical rules. The batch is one fixed uint8 batch already on the device (the
variant `feed=host` transfers a fresh numpy batch every step instead, as the loop does).

`--variants` times alternatives to the shipped step in the same rounds (XLA:CPU
options, LRN and max-pool formulations, grouped-conv form, feeding, donation, conv1
in bfloat16), e.g.

  python -m benchmarks.train_step --variants='shipped,lrn=autodiff,ynn=jaxlib'

The PyTorch reference is the same network in eager mode: grouped convs with groups=2,
the paper's LRN (torch's LocalResponseNorm divides alpha by size, so it gets
alpha * size), dropout 0.5, cross-entropy, SGD with momentum 0.9 and weight decay
5e-4, float32 or bfloat16 autocast. JAX and PyTorch run alternately, `--rounds`
times; each row reports the median images/second of each and the median of the
per-round ratios, which cancels most of a shared machine's drift.

Also printed: achieved GFLOP/s (training costs ~3x the forward multiply-adds counted
by `model.layer_table`, at 2 FLOPs each) and its fraction of a GEMM peak measured in
this run (a square matmul in the compute dtype: jax.jit, and numpy for float32 on a
CPU; the best sample, taken before, between and after the rounds).

Meshes `DxM` are (data, model): 1x2 splits the towers over two devices, 2x1 splits
the batch. On a CPU, 2 devices are forced through XLA_FLAGS before JAX starts; they
share the same cores, so there the mesh rows check that the sharded step runs, not
speed.

Only `alexnet_jax.{model,losses,optim,augment,step,sharding}` and jax/flax/optax are
imported: the step module needs none of the data stack (grain, simplejpeg, orbax, ...),
so this runs on a machine that has only JAX.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
from typing import Any, Sequence

NETS = {  # name -> AlexNet fields
    'paper': dict(towers=2, use_lrn=True),
    'one_tower': dict(towers=1, use_lrn=True),
    'one_tower_no_lrn': dict(towers=1, use_lrn=False),  # torchvision's variant
    # An eighth of the widths: quick to compile and run, for checking scripts on a CPU.
    'tiny': dict(towers=2, use_lrn=True, width=0.125),
    'tiny_one_tower': dict(towers=1, use_lrn=True, width=0.125),
}
RULES = (('batch', 'data'), ('conv_out', 'model'), ('fc_out', 'model'), ('conv_in', None),
         ('conv_h', None), ('conv_w', None), ('fc_in', None))  # configs/imagenet.py's table
OPTIM = dict(learning_rate=0.01, momentum=0.9, weight_decay=5e-4, decay_bias=True,
             schedule='constant')
IMAGE_SIZE, CROP = 256, 224


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  csv = lambda s: [x for x in s.split(',') if x]
  p.add_argument('--nets', type=csv, default=['paper'], help=f'of {sorted(NETS)}')
  p.add_argument('--batches', type=lambda s: [int(x) for x in csv(s)], default=[64])
  p.add_argument('--dtypes', type=csv, default=['float32'], help='float32, bfloat16')
  p.add_argument('--meshes', type=csv, default=['1x1'], help='DATAxMODEL, e.g. 1x1,1x2,2x1')
  p.add_argument('--rounds', type=int, default=3, help='interleaved JAX/PyTorch rounds')
  p.add_argument('--steps', type=int, default=2, help='timed steps per round and framework')
  p.add_argument('--torch', choices=('auto', 'yes', 'no'), default='auto',
                 help='PyTorch eager reference: auto = when torch is installed')
  p.add_argument('--variants', type=csv, default=['shipped'], help=VARIANTS_HELP)
  p.add_argument('--xla_cpu', choices=('auto', 'off'), default='auto',
                 help='auto: the XLA:CPU options of alexnet_jax.core.xla_flags.configure_xla_cpu(); '
                      'off: none (XLA_FLAGS from the environment still apply)')
  p.add_argument('--gemm', type=int, default=0, help='GEMM side for the peak; 0: by backend')
  p.add_argument('--json', default='', help='also write the rows to this JSON file (after '
                 'each case, so a time limit keeps the finished ones)')
  p.add_argument('--matmul_precision', type=csv, default=['default'],
                 help='jax_default_matmul_precision of each case, e.g. default,highest: on '
                      'NVIDIA GPUs "default" computes float32 matmuls and convolutions in TF32, '
                      '"highest" in float32 (no effect on bfloat16 compute)')
  p.add_argument('--json_append', action='store_true',
                 help='keep the rows already in --json and add these (peaks: the best of both)')
  args = p.parse_args(argv)
  for name in args.nets:
    if name not in NETS:
      p.error(f'unknown net {name!r}; choose from {sorted(NETS)}')
  for dtype in args.dtypes:
    if dtype not in ('float32', 'bfloat16'):
      p.error(f'unknown dtype {dtype!r}')
  for precision in args.matmul_precision:
    if precision not in ('default', 'high', 'highest'):
      p.error(f'unknown matmul precision {precision!r}; choose default, high or highest')
  try:
    args.variants = [Variant.parse(v) for v in args.variants]
  except ValueError as e:
    p.error(str(e))
  try:
    args.meshes = [tuple(int(v) for v in m.lower().split('x')) for m in args.meshes]
  except ValueError:
    p.error(f'meshes must look like 1x2, got {args.meshes}')
  return args


def set_cpu_devices(count: int) -> None:
  """Asks XLA:CPU for `count` host devices; only works before JAX starts its backend."""
  flags = os.environ.get('XLA_FLAGS', '')
  if count > 1 and '--xla_force_host_platform_device_count' not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={count}'.strip()


# ----------------------------------------------------------------------------- JAX


@dataclasses.dataclass
class Case:
  net: str
  batch: int
  dtype: str
  mesh: tuple[int, int]


def forward_macs(model) -> int:
  from alexnet_jax.model import cost  # pylint: disable=g-import-not-at-top
  return sum(row.macs for row in cost.layer_table(model, CROP))


def numpy_batch(batch: int, seed: int = 0) -> dict[str, Any]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (batch, CROP, CROP, 3), dtype=np.uint8),
          'crop': rng.integers(0, IMAGE_SIZE - CROP + 1, (batch, 2)).astype(np.int32),
          'flip': rng.random(batch) < 0.5,
          'lighting': rng.normal(0, 3, (batch, 3)).astype(np.float32),
          'label': rng.integers(0, 1000, batch).astype(np.int32)}


# ----------------------------------------------------------------------------- variants

VARIANTS_HELP = """comma-separated JAX variants timed in the same rounds (the first is the
reference of the "vs first" ratio); each is "shipped" or changes joined by "&":
ynn=TYPES (YNNPACK fusion types for this compile, "+"-joined: dot, eltwise, reduce,
individual_dot, individual_convolution; "none"; "jaxlib" = jaxlib 0.10.2's default
individual_convolution+individual_dot+reduce), lrn=autodiff|band|cumsum|none,
pool=autodiff, group=feature_group, feed=host, donate=no (see LRN_FORMS, POOL_FORMS),
conv1=bf16 (conv1 in the compute dtype, as before it became float32 under bfloat16)"""
YNN_TYPES = ('dot', 'eltwise', 'reduce', 'individual_dot', 'individual_convolution')
YNN_JAXLIB_DEFAULT = ('individual_convolution', 'individual_dot', 'reduce')


def _lrn_parts():
  """The model's LRN pieces: the channel window sum and d ** -beta."""
  from alexnet_jax.model import layers  # pylint: disable=g-import-not-at-top
  return layers._channel_window_sum, layers._inverse_power  # pylint: disable=protected-access


def lrn_autodiff(x, size=5, k=2.0, alpha=1e-4, beta=0.75):
  """The model's LRN before its custom_vjp: the shifted-slice sum, differentiated by JAX."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  window_sum, inverse_power = _lrn_parts()
  x32 = x.astype(jnp.float32)
  return (x32 * inverse_power(k + alpha * window_sum(jnp.square(x32), size), beta)
          ).astype(x.dtype)


def lrn_band(x, size=5, k=2.0, alpha=1e-4, beta=0.75):
  """The window sum as a matmul with a banded 0/1 channels x channels matrix."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  idx = np.arange(x.shape[-1])
  band = jnp.asarray(np.abs(idx[:, None] - idx[None, :]) <= size // 2, jnp.float32)
  x32 = x.astype(jnp.float32)
  inverse_power = _lrn_parts()[1]
  return (x32 * inverse_power(k + alpha * (jnp.square(x32) @ band), beta)).astype(x.dtype)


def lrn_cumsum(x, size=5, k=2.0, alpha=1e-4, beta=0.75):
  """The window sum as a difference of two cumulative sums over channels."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  half, c = size // 2, x.shape[-1]
  x32 = x.astype(jnp.float32)
  cs = jnp.cumsum(jnp.pad(jnp.square(x32), [(0, 0)] * (x.ndim - 1) + [(half + 1, half)]), -1)
  window = cs[..., size:size + c] - cs[..., :c]
  return (x32 * _lrn_parts()[1](k + alpha * window, beta)).astype(x.dtype)


def pool_autodiff(x, window=3, stride=2):
  """flax's max_pool as JAX differentiates it (select_and_scatter)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.max_pool(x, (window, window), (stride, stride))


LRN_FORMS = {'autodiff': lrn_autodiff, 'band': lrn_band, 'cumsum': lrn_cumsum,
             'none': lambda x: x}  # none: not the paper's net; a lower bound on LRN's cost
POOL_FORMS = {'autodiff': pool_autodiff}


@dataclasses.dataclass(frozen=True)
class Variant:
  """A change to the shipped train step, for measuring one lever at a time."""
  name: str = 'shipped'
  ynn: tuple[str, ...] | None = None  # None: whatever XLA_FLAGS says
  lrn: str = ''
  pool: str = ''
  group_impl: str = ''
  feed: str = 'device'
  donate: bool = True
  conv1: str = ''  # bf16: conv1 in the compute dtype (model.FULL_PRECISION_CONVS empty)

  @classmethod
  def parse(cls, spec: str) -> 'Variant':
    fields: dict[str, Any] = {'name': spec}
    for change in spec.split('&'):
      key, _, value = change.partition('=')
      if key == 'shipped' and not value:
        continue
      if key == 'ynn':
        types = {'none': (), 'jaxlib': YNN_JAXLIB_DEFAULT}.get(value, tuple(value.split('+')))
        if any(t not in YNN_TYPES for t in types):
          raise ValueError(f'unknown YNN fusion type in {change!r}; known: {YNN_TYPES}')
        fields['ynn'] = types
      elif key == 'lrn' and value in LRN_FORMS or key == 'pool' and value in POOL_FORMS:
        fields[key] = value
      elif key == 'group' and value in ('split', 'feature_group'):
        fields['group_impl'] = value
      elif key == 'feed' and value in ('device', 'host'):
        fields['feed'] = value
      elif key == 'donate' and value in ('yes', 'no'):
        fields['donate'] = value == 'yes'
      elif key == 'conv1' and value == 'bf16':
        fields['conv1'] = value
      else:
        raise ValueError(f'unknown variant change {change!r} in {spec!r}')
    return cls(**fields)

  def compiler_options(self) -> dict[str, str] | None:
    if self.ynn is None:
      return None
    return {'xla_cpu_experimental_ynn_fusion_type':
            ','.join(f'LIBRARY_FUSION_TYPE_{t.upper()}' for t in self.ynn)}

  def patched_model(self) -> contextlib.AbstractContextManager[None]:
    """While tracing: the model module's LRN / max-pool / float32 convs swapped for the variant's."""
    from alexnet_jax.model import alexnet  # pylint: disable=g-import-not-at-top
    swaps = {}
    if self.lrn:
      swaps['local_response_norm'] = LRN_FORMS[self.lrn]
    if self.pool:
      swaps['max_pool'] = POOL_FORMS[self.pool]
    if self.conv1:
      swaps['FULL_PRECISION_CONVS'] = ()
    stack = contextlib.ExitStack()
    for attr, fn in swaps.items():
      stack.enter_context(_swapped(alexnet, attr, fn))
    return stack


@contextlib.contextmanager
def _swapped(module, attr, value):
  old = getattr(module, attr)
  setattr(module, attr, value)
  try:
    yield
  finally:
    setattr(module, attr, old)


class JaxStep:
  """The project's train step, set up as the trainer sets it up."""

  def __init__(self, case: Case, variant: Variant = Variant()):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from alexnet_jax.model import alexnet  # pylint: disable=g-import-not-at-top
    from alexnet_jax.learning import optim  # pylint: disable=g-import-not-at-top
    from alexnet_jax.sharding import meshes  # pylint: disable=g-import-not-at-top
    from alexnet_jax.sharding import placement  # pylint: disable=g-import-not-at-top
    from alexnet_jax.learning import step_fns  # pylint: disable=g-import-not-at-top

    fields = dict(NETS[case.net], dtype=case.dtype)
    if variant.group_impl:
      fields['group_impl'] = variant.group_impl
    self.model = alexnet.AlexNet(**fields)
    self.batch_size = case.batch
    data, model_axis = case.mesh
    self.mesh = meshes.create_mesh({'data': data, 'model': model_axis},
                                     jax.devices()[:data * model_axis], model_config=fields)
    rules = RULES
    placement.check_batch_divisible(case.batch, self.mesh)
    optimizer = optim.create_optimizer(OPTIM)
    init_rng, dropout_rng = jax.random.split(jax.random.key(0))
    self.state, state_shardings = placement.create_sharded_state(
        lambda rng: step_fns.init_state(self.model, optimizer, rng, CROP), init_rng,
        self.mesh, rules)
    repl = placement.replicated(self.mesh)
    mean_image = jax.device_put(
        jnp.asarray(np.random.default_rng(1).uniform(60, 180, (IMAGE_SIZE, IMAGE_SIZE, 3)),
                    jnp.float32), repl)
    self.rng = jax.device_put(dropout_rng, repl)
    self.host_batch = numpy_batch(case.batch)
    self.device_batch = placement.make_global_batch(self.host_batch, self.mesh)
    self.feed = variant.feed
    self._put = lambda b: placement.make_global_batch(b, self.mesh)
    with meshes.use_mesh(self.mesh, rules), variant.patched_model():
      self.step = jax.jit(
          lambda s, b, r: step_fns.train_step(s, b, r, model=self.model, optimizer=optimizer,
                                           mean_image=mean_image),
          in_shardings=(state_shardings, placement.batch_sharding(self.mesh), repl),
          out_shardings=(state_shardings, repl), donate_argnums=0 if variant.donate else ())
      start = time.perf_counter()
      self.step = self.step.lower(self.state, self.device_batch, self.rng).compile(
          variant.compiler_options())
      self.compile_s = time.perf_counter() - start
    self.run(1)  # warm-up

  def run(self, steps: int) -> float:
    """Images/second over `steps` steps, waiting for the last one."""
    import jax  # pylint: disable=g-import-not-at-top
    metrics = None
    start = time.perf_counter()
    for _ in range(steps):
      batch = self._put(self.host_batch) if self.feed == 'host' else self.device_batch
      self.state, metrics = self.step(self.state, batch, self.rng)
    loss = float(jax.device_get(metrics['loss']))
    elapsed = time.perf_counter() - start
    if loss != loss:
      raise FloatingPointError('the JAX train step produced a NaN loss')
    return steps * self.batch_size / elapsed


# ----------------------------------------------------------------------------- PyTorch


def torch_available() -> bool:
  return importlib.util.find_spec('torch') is not None


def torch_alexnet(towers: int, use_lrn: bool, num_classes: int = 1000):
  """The same network in PyTorch (NCHW), with the paper's LRN."""
  from torch import nn  # pylint: disable=g-import-not-at-top
  lrn = lambda: [nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0)] if use_lrn else []
  return nn.Sequential(
      nn.Conv2d(3, 96, 11, 4, 2), nn.ReLU(inplace=True), *lrn(), nn.MaxPool2d(3, 2),
      nn.Conv2d(96, 256, 5, 1, 2, groups=towers), nn.ReLU(inplace=True), *lrn(),
      nn.MaxPool2d(3, 2),
      nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(inplace=True),
      nn.Conv2d(384, 384, 3, 1, 1, groups=towers), nn.ReLU(inplace=True),
      nn.Conv2d(384, 256, 3, 1, 1, groups=towers), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Flatten(),
      nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
      nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
      nn.Linear(4096, num_classes))


def check_torch_lrn() -> float:
  """Max relative gap between torch's LRN (alpha * size) and the model's LRN."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from alexnet_jax.model import layers  # pylint: disable=g-import-not-at-top
  a = np.random.default_rng(0).uniform(0, 60, (2, 5, 5, 16)).astype(np.float32)
  want = np.asarray(layers.local_response_norm(jnp.asarray(a)))
  got = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(
      torch.from_numpy(a).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  return float(np.max(np.abs(got - want) / np.abs(want).clip(1e-6)))


class TorchStep:
  """The same train step in PyTorch: uint8 NHWC crops in, SGD update out.

  Eager NCHW by default; channels_last puts the net and its input in NHWC memory
  order (what cuDNN's tensor-core convolutions prefer); compile wraps the net in
  torch.compile (the forward and backward; the optimizer stays eager), compiled at
  the warm-up step, which `compile_s` times.
  """

  def __init__(self, case: Case, channels_last: bool = False, compile: bool = False,  # pylint: disable=redefined-builtin
               warmup: int = 1):
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if self.device == 'cuda':
      torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = NETS[case.net]
    self.net = torch_alexnet(net['towers'], net['use_lrn']).to(self.device)
    for m in self.net.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        torch.nn.init.normal_(m.weight, std=0.01)
        torch.nn.init.zeros_(m.bias)
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.net = self.net.to(memory_format=self.memory_format)
    self.net.train()
    self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    host = numpy_batch(case.batch)
    self.image = torch.from_numpy(host['image']).to(self.device)
    self.label = torch.from_numpy(host['label']).long().to(self.device)
    self.shift = torch.from_numpy(host['lighting']).to(self.device)[:, :, None, None]
    self.mean = torch.from_numpy(
        np.random.default_rng(1).uniform(60, 180, (3, CROP, CROP)).astype(np.float32)
    ).to(self.device)
    self.autocast = case.dtype == 'bfloat16'
    self.batch_size = case.batch
    self.model = self.net
    if compile:
      self.model = torch.compile(self.net, dynamic=False)
    start = time.perf_counter()
    self.run(1)  # warm-up: cuDNN's algorithm search, and compilation if asked
    self.compile_s = time.perf_counter() - start
    if warmup > 1:
      self.run(warmup - 1)

  def _step(self):
    torch = self.torch
    x = self.image.permute(0, 3, 1, 2).float() - self.mean + self.shift
    x = x.contiguous(memory_format=self.memory_format)
    with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
      logits = self.model(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), self.label)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    with torch.no_grad():
      top5 = logits.topk(5, dim=1).indices
      (top5[:, 0] != self.label).float().mean()
      (top5 != self.label[:, None]).all(dim=1).float().mean()
    return loss

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      loss = self._step()
    loss = float(loss.item())  # waits for the device
    elapsed = time.perf_counter() - start
    if loss != loss:
      raise FloatingPointError('the PyTorch step produced a NaN loss')
    return steps * self.batch_size / elapsed


# ----------------------------------------------------------------------------- GEMM peak


class GemmPeak:
  """Best GFLOP/s of a square matmul per compute dtype (jax.jit; numpy too for CPU float32).

  Sampled before, between and after the timed rounds: on a shared machine the best
  sample is the closest to what the chip can do.
  """

  def __init__(self, dtypes: Sequence[str], side: int):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    self.on_cpu = jax.default_backend() == 'cpu'
    side = side or (2048 if self.on_cpu else 8192)
    self.flops = 2.0 * side ** 3
    self.repeats = 3 if self.on_cpu else 50
    self.dot = jax.jit(lambda x, y: x @ y)
    self.inputs = {d: jax.random.normal(jax.random.key(0), (side, side), jnp.dtype(d))
                   for d in dtypes}
    self.best = {d: 0.0 for d in dtypes}
    for a in self.inputs.values():
      self.dot(a, a).block_until_ready()
    self.sample(trials=3)

  def sample(self, trials: int = 1) -> None:
    import numpy as np  # pylint: disable=g-import-not-at-top
    for dtype, a in self.inputs.items():
      for _ in range(trials):
        start = time.perf_counter()
        for _ in range(self.repeats):
          out = self.dot(a, a)
        out.block_until_ready()
        self._update(dtype, start)
        if self.on_cpu and dtype == 'float32':
          x = np.asarray(a)
          start = time.perf_counter()
          for _ in range(self.repeats):
            x @ x
          self._update(dtype, start)

  def _update(self, dtype: str, start: float) -> None:
    rate = self.repeats * self.flops / (time.perf_counter() - start) / 1e9
    self.best[dtype] = max(self.best[dtype], rate)


# ----------------------------------------------------------------------------- main


def measure(case: Case, args, use_torch: bool,
            peak: GemmPeak) -> list[dict[str, Any]]:
  """One row per variant: medians over interleaved rounds (each variant, then PyTorch)."""
  steps = {v.name: JaxStep(case, v) for v in args.variants}
  torch_step = TorchStep(case) if use_torch else None
  rates: dict[str, list[float]] = {name: [] for name in steps}
  torch_rates: list[float] = []
  for r in range(args.rounds):
    cells = []
    for name, step in steps.items():
      rates[name].append(step.run(args.steps))
      cells.append(f'{name if len(steps) > 1 else "JAX"} {rates[name][-1]:7.1f}')
    if torch_step is not None:
      torch_rates.append(torch_step.run(args.steps))
      cells.append(f'PyTorch {torch_rates[-1]:7.1f}')
    print(f'    round {r + 1}, img/s: ' + '   '.join(cells), flush=True)
    peak.sample()
  first = args.variants[0].name
  rows = []
  for name, step in steps.items():
    row = {'net': case.net, 'batch': case.batch, 'dtype': case.dtype,
           'mesh': f'{case.mesh[0]}x{case.mesh[1]}', 'variant': name,
           'compile_s': round(step.compile_s, 1), 'jax_img_s': statistics.median(rates[name]),
           'vs_first': statistics.median(a / b for a, b in zip(rates[name], rates[first])),
           'train_gflop_per_image': 6 * forward_macs(step.model) / 1e9}
    if torch_rates:
      ratios = [a / b for a, b in zip(rates[name], torch_rates)]
      row.update(torch_img_s=statistics.median(torch_rates), ratio=statistics.median(ratios),
                 ratio_min=min(ratios), ratio_max=max(ratios))
    rows.append(row)
  return rows


def _add_rates(rows: list[dict[str, Any]], peaks: dict[str, float]) -> None:
  """Achieved GFLOP/s and its fraction of the measured GEMM peak of the row's dtype."""
  for row in rows:
    row['gflop_s'] = row['jax_img_s'] * row['train_gflop_per_image']
    row['gemm_peak_gflop_s'] = peaks[row['dtype']]
    row['peak_fraction'] = row['gflop_s'] / peaks[row['dtype']]


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, earlier: dict[str, Any], rows: list[dict[str, Any]],
                peaks: dict[str, float]) -> None:
  """Writes `earlier`'s rows and these (their rates against `peaks`), atomically."""
  import jax  # pylint: disable=g-import-not-at-top
  rows = [dict(r) for r in rows]
  _add_rates(rows, peaks)
  merged = dict(earlier.get('peaks', {}))
  for dtype, value in peaks.items():
    merged[dtype] = max(merged.get(dtype, 0.0), value)
  runs = earlier.get('runs', []) + [{
      'argv': sys.argv[1:], 'xla_flags': os.environ.get('XLA_FLAGS', ''), 'peaks': dict(peaks),
      'jax': jax.__version__, 'backend': jax.default_backend(),
      'device_kind': jax.devices()[0].device_kind, 'host_cores': os.cpu_count()}]
  out = {'xla_flags': os.environ.get('XLA_FLAGS', ''), 'peaks': merged, 'runs': runs,
         'rows': earlier.get('rows', []) + rows}
  with open(path + '.tmp', 'w') as f:
    json.dump(out, f, indent=1)
  os.replace(path + '.tmp', path)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  # Everything that shapes the XLA backend happens before it starts.
  set_cpu_devices(max(d * m for d, m in args.meshes))
  if args.xla_cpu == 'auto':
    from alexnet_jax.core import xla_flags  # pylint: disable=g-import-not-at-top
    xla_flags.configure_xla_cpu()
  import jax  # pylint: disable=g-import-not-at-top

  need = max(d * m for d, m in args.meshes)
  if jax.device_count() < need:
    raise SystemExit(f'meshes {args.meshes} need {need} devices; JAX has {jax.device_count()}')
  use_torch = args.torch == 'yes' or (args.torch == 'auto' and torch_available())
  if args.torch == 'yes' and not torch_available():
    raise SystemExit('--torch=yes but torch is not installed (benchmarks/requirements.txt)')
  print(f'JAX {jax.__version__}, backend {jax.default_backend()}, devices: '
        f'{jax.device_count()} x {jax.devices()[0].device_kind}; host cores: {os.cpu_count()}')
  print(f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  if use_torch:
    import torch  # pylint: disable=g-import-not-at-top
    print(f'PyTorch {torch.__version__} eager, {torch.get_num_threads()} threads, device '
          f'{"cuda" if torch.cuda.is_available() else "cpu"}; LRN vs the model: max rel. gap '
          f'{check_torch_lrn():.1e}')
  else:
    print('PyTorch: not installed or --torch=no; JAX figures only')
  peak = GemmPeak(args.dtypes, args.gemm)
  print('GEMM peak so far (GFLOP/s): ' + ', '.join(f'{k} {v:.0f}' for k, v in peak.best.items()),
        flush=True)

  earlier = _read_json(args.json) if args.json and args.json_append else {}
  rows: list[dict[str, Any]] = []
  for net in args.nets:
    for dtype in args.dtypes:
      for mesh in args.meshes:
        for batch in args.batches:
          case = Case(net, batch, dtype, mesh)
          for precision in args.matmul_precision:
            print(f'  {net}, batch {batch}, {dtype}, mesh {mesh[0]}x{mesh[1]}, matmul precision '
                  f'{precision}:', flush=True)
            # Traced and compiled under the precision (the GEMM peak: the best of all).
            with (contextlib.nullcontext() if precision == 'default'
                  else jax.default_matmul_precision(precision)):
              rows.extend(dict(r, matmul_precision=precision)
                          for r in measure(case, args, use_torch, peak))
            if args.json:
              _write_json(args.json, earlier, rows, peak.best)
  peak.sample(trials=3)
  peaks = peak.best
  _add_rates(rows, peaks)

  print(f'\ntrain step, images/second (median of {args.rounds} interleaved rounds of '
        f'{args.steps} steps; JAX/PT: median of the per-round ratios, and their range); '
        f'GEMM peak: ' + ', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in peaks.items()))
  with_variants = (len(args.variants) > 1 or args.variants[0].name != 'shipped'
                   or args.matmul_precision != ['default'])
  label = lambda r: r['variant'] + (f', {r["matmul_precision"]}' if args.matmul_precision !=
                                    ['default'] else '')
  print(f'{"net":<17}{"batch":>6} {"dtype":<9}{"mesh":<5}'
        + (f'{"variant":<34}' if with_variants else '')
        + f'{"JAX":>8}{"PyTorch":>9}{"JAX/PT":>8}{"range":>11}{"GFLOP/s":>9}{"of peak":>8}'
        + (f'{"vs first":>9}' if with_variants else '') + f'{"compile":>8}')
  for row in rows:
    pt = (f'{row["torch_img_s"]:9.1f}{row["ratio"]:7.2f}x'
          f'{row["ratio_min"]:6.2f}-{row["ratio_max"]:.2f}' if 'ratio' in row
          else f'{"-":>9}{"-":>8}{"":>11}')
    print(f'{row["net"]:<17}{row["batch"]:>6} {row["dtype"]:<9}{row["mesh"]:<5}'
          + (f'{label(row):<34}' if with_variants else '')
          + f'{row["jax_img_s"]:8.1f}{pt}{row["gflop_s"]:9.1f}{row["peak_fraction"]:8.0%}'
          + (f'{row["vs_first"]:8.2f}x' if with_variants else '') + f'{row["compile_s"]:7.0f}s')
  if args.json:
    _write_json(args.json, earlier, rows, peaks)
  return rows


if __name__ == '__main__':
  main()
