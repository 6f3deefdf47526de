"""resolution.resolve_auto: the settings the program picks for the hardware, one rule for all."""

from absl.testing import absltest
from absl.testing import parameterized

from alexnet_jax.config import resolution
from alexnet_jax.core import errors
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


if __name__ == '__main__':
  absltest.main()
