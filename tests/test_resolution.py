"""resolution.resolve_auto: the settings the program picks for the hardware, one rule for all;
resolution.validate: every field checked once, by one function."""

import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from alexnet_jax.config import resolution
from alexnet_jax.core import errors
from alexnet_jax.model import alexnet
from alexnet_jax.model import cost
from alexnet_jax.storage import checkpointing
from configs import digits
from configs import imagenet


class ResolveAutoTest(parameterized.TestCase):

  @parameterized.parameters(
      # platform, cores -> compute dtype, decoder threads, worker processes
      ('cpu', 2, 'float32', 2, 0),
      ('gpu', 16, 'bfloat16', 1, 16),
      ('tpu', 96, 'bfloat16', 1, 96),
  )
  def test_shipped_config(self, platform, cores, dtype, threads, workers):
    config = resolution.resolve_auto(imagenet.get_config(), platform=platform, cpu_count=cores,
                                     devices=1, processes=1)
    self.assertEqual(config.model.dtype, dtype)
    # Worker processes on accelerator hosts: 16 threads fed an H200 2,600 images/s, 16
    # processes 16,000 (docs/design.md, "Input pipeline on a GPU host"); then one
    # decoder thread in each worker.
    self.assertEqual(config.data.worker_count, workers)
    self.assertEqual(config.data.num_threads, threads)

  def test_explicit_workers_get_one_thread_each(self):
    config = imagenet.get_config()
    config.data.worker_count = 4
    resolved = resolution.resolve_auto(config, platform='cpu', cpu_count=8, devices=1,
                                       processes=1)
    self.assertEqual((resolved.data.num_threads, resolved.data.worker_count), (1, 4))
    config.data.worker_count = 0
    resolved = resolution.resolve_auto(config, platform='gpu', cpu_count=8, devices=1,
                                       processes=1)
    self.assertEqual((resolved.data.num_threads, resolved.data.worker_count), (8, 0))

  def test_explicit_values_are_kept(self):
    config = imagenet.get_config()
    config.model.dtype = 'float32'
    config.data.num_threads = 3
    config.data.worker_count = 5
    resolved = resolution.resolve_auto(config, platform='gpu', cpu_count=16)
    self.assertEqual((resolved.model.dtype, resolved.data.num_threads,
                      resolved.data.worker_count), ('float32', 3, 5))

  def test_the_quick_start_uses_threads_on_a_cpu(self):
    config = resolution.resolve_auto(digits.get_config(), platform='cpu', cpu_count=2)
    self.assertEqual(config.data.worker_count, 0)
    resolution.validate(config)  # -1 never reaches validation


# The measurements the rule rests on, as benchmarks/README.md and docs/design.md state them:
# one record of the train pipeline takes 359 us on one thread, 68 us of them holding the
# GIL; N worker processes run at 57% of N single threads; the paper net's step on one
# H200 (bf16) at batch 128, 256, 512, 1024, and on the CPU (float32) at batch 64.
RECORD_US, GIL_US, PROCESS_EFFICIENCY = 359.0, 68.0, 0.57
H200 = {128: 23_451.0, 256: 27_235.0, 512: 29_682.0, 1024: 30_747.0}
CPU_AT_64 = 27.5


def amdahl_threads(cores):
  serial, parallel = GIL_US * 1e-6, (RECORD_US - GIL_US) * 1e-6
  return 1 / (serial + parallel / cores)


class FeedingTest(parameterized.TestCase):

  @parameterized.parameters(1, 2, 16, 96)
  def test_projections(self, cores):
    self.assertAlmostEqual(resolution.thread_images_per_sec(cores), amdahl_threads(cores),
                           delta=1e-6 * amdahl_threads(cores))
    want = cores * PROCESS_EFFICIENCY / (RECORD_US * 1e-6)
    self.assertAlmostEqual(resolution.process_images_per_sec(cores), want, delta=1e-6 * want)

  def test_threads_never_pass_the_gil_bound(self):
    # However many cores: one record's GIL-held part at a time.
    self.assertLess(resolution.thread_images_per_sec(10_000), 1e6 / GIL_US)
    self.assertGreater(resolution.thread_images_per_sec(10_000), 0.99 * 1e6 / GIL_US)

  @parameterized.parameters(
      ('gpu', 128, H200[128]), ('gpu', 1024, H200[1024]),
      ('gpu', 384, (H200[256] + H200[512]) / 2),  # halfway between measured batches
      ('gpu', 16, H200[128]), ('gpu', 4096, H200[1024]),  # outside: the nearest
      ('tpu', 512, H200[512]), ('cpu', 64, CPU_AT_64), ('cpu', 1024, CPU_AT_64))
  def test_step_rates(self, platform, batch, want):
    self.assertAlmostEqual(resolution.step_images_per_sec(platform, batch), want, places=6)

  @parameterized.parameters(
      # platform, cores, global batch, devices, processes
      ('gpu', 16, 512, 1, 1), ('gpu', 64, 8192, 8, 1), ('gpu', 2, 256, 1, 1),
      ('tpu', 96, 4096, 4, 1),
      ('cpu', 2, 64, 1, 1),
      # A CPU process stepping many devices needs more than its threads give (the rule
      # is the same on every platform): 27.5 x 256 = 7,040 > 4,684 images/s of 2 threads,
      # 27.5 x 128 = 3,520 < 4,684.
      ('cpu', 2, 64 * 256, 256, 1), ('cpu', 2, 64 * 128, 128, 1))
  def test_processes_where_threads_cannot_keep_up(self, platform, cores, batch, devices,
                                                  processes):
    config = imagenet.get_config()
    config.batch_size = batch
    config.mesh.model = 1  # every device a replica
    per_device, per_process = batch // devices, batch // processes
    rates = H200 if platform != 'cpu' else {64: CPU_AT_64}
    nearest = min(rates, key=lambda b: abs(b - per_device))  # the cases sit on measured batches
    self.assertTrue(per_device == nearest or per_device < min(rates) or per_device > max(rates))
    need = rates[nearest] * per_process / per_device
    want_processes = amdahl_threads(cores) < need
    resolved = resolution.resolve_auto(config, platform=platform, cpu_count=cores,
                                       devices=devices, processes=processes)
    self.assertEqual(resolved.data.worker_count, cores if want_processes else 0)
    feed = resolution.feeding_for(config, platform, cores, devices, processes)
    self.assertAlmostEqual(feed.need, need, delta=1e-6 * need)
    self.assertEqual(feed.use_processes, want_processes)


class ValidateDtypeTest(parameterized.TestCase):
  """model.dtype: a floating type the network computes in, refused otherwise before any work."""

  def _config(self, dtype: str):
    config = resolution.resolve_auto(digits.get_config(), platform='cpu', cpu_count=2)
    config.model.dtype = dtype
    return config

  @parameterized.parameters('float32', 'bfloat16', 'float16')
  def test_compute_dtypes_pass(self, dtype):
    resolution.validate(self._config(dtype))

  @parameterized.parameters('int8', 'uint8', 'float64', 'bool', 'float8_e4m3fn')
  def test_other_dtypes_are_refused(self, dtype):
    with self.assertRaisesRegex(errors.InputError,
                                f"^config.model.dtype must be .* got '{dtype}'$"):
      resolution.validate(self._config(dtype))


# Fields that were once checked in two places, a bad value of each, the one line that
# refuses it, and the one function that checks it.
ONE_PLACE = (
    ('checkpoint.keep', 0, 'config.checkpoint.keep must be a positive integer, got 0',
     (resolution, 'check_checkpoint_config')),
    ('model.pool_size', 0, 'config.model.pool_size must be a positive integer, got 0',
     (alexnet, 'check_fields')),
    ('model.conv_widths', (48, 128, 192, 192),
     'config.model.conv_widths must be None or five positive integers (conv1-conv5), got '
     '(48, 128, 192, 192)', (alexnet, 'check_fields')),
    ('model.init_scheme', 'xavier',
     "unknown init scheme 'xavier'; expected one of ('paper', 'caffe', 'he')",
     (alexnet, 'check_fields')),
)


class OnePlaceTest(parameterized.TestCase):
  """Each field is refused by one function, which validate and the library both reach."""

  def _config(self, field: str, value):
    config = resolution.resolve_auto(digits.get_config(), platform='cpu', cpu_count=2,
                                     devices=1, processes=1)
    group, name = field.split('.')
    with config.unlocked(), config[group].ignore_type():
      config[group][name] = value
    return config

  def _direct(self, field: str, value) -> None:
    """The library used without a config: the network's layer table (its check, then
    the width and size arithmetic), or a Checkpointer."""
    group, name = field.split('.')
    if group == 'model':
      cost.layer_table(alexnet.AlexNet(**{name: value}), 224)
    else:
      checkpointing.Checkpointer(tempfile.mkdtemp(), **{name: value}, async_save=False).close()

  @parameterized.parameters(*ONE_PLACE)
  def test_refused_with_one_line(self, field, value, message, owner):
    del owner
    with self.assertRaises(errors.InputError) as validated:
      resolution.validate(self._config(field, value))
    self.assertEqual(str(validated.exception), message)
    with self.assertRaises(errors.InputError) as direct:
      self._direct(field, value)
    self.assertEqual(str(direct.exception), message)

  @parameterized.parameters(*ONE_PLACE)
  def test_no_second_check(self, field, value, message, owner):
    # With the one check switched off nothing else refuses the value: not validate,
    # not the network's own check (scaled_widths, ...), not the Checkpointer.
    del message
    with mock.patch.object(*owner, lambda *_: None):
      resolution.validate(self._config(field, value))
      self._direct(field, value)


if __name__ == '__main__':
  absltest.main()
