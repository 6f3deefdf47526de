"""--dry_run's input lines: the storage read, the loaders that keep up, what the step waits for.

The figures are written out here from docs/design.md ("Feeding the step"): a JPEG
image costs a worker process ~500 us (2,000 per core-second) and the main process
25 us; a raw image's crop copy 1/15,000 core-second. A step short of input waits
for (need - supply) / need of its time.
"""

import json
import math
import os
import re
from unittest import mock

from absl.testing import absltest
import ml_collections

from alexnet_jax.config import resolution
from alexnet_jax.training import dry_run
from alexnet_jax.training import feed_plan
from configs import imagenet

JPEG_PER_CORE, RAW_PER_CORE, MAIN_US = 2_000, 15_000, 25


def _data(folder: str, source: str = 'prepared') -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'source': source, 'dir': folder})


def _write_format(folder: str, format_name: str | None) -> None:
  description = {'complete': True} if format_name is None else {'format': format_name}
  with open(os.path.join(folder, 'dataset.json'), 'w') as f:
    json.dump(description, f)


def _feeding(need: float) -> resolution.Feeding:
  """A Feeding whose step takes `need` images/s from a process that reads 256 a step."""
  return resolution.Feeding(cores=1, batch_per_device=256, batch_per_process=256,
                            threads=0.0, processes=0.0, need=need)


def _percent(pattern: str, text: str) -> int:
  match = re.search(pattern, text)
  assert match, f'{pattern!r} not in:\n{text}'
  return int(match.group(1).replace(',', ''))


class StorageTest(absltest.TestCase):

  def test_the_description_names_the_storage(self):
    folder = self.create_tempdir().full_path
    self.assertIsNone(feed_plan.dataset_storage(_data(folder)))  # nothing there yet
    _write_format(folder, 'alexnet_jax.prepared-raw/1')
    self.assertEqual(feed_plan.dataset_storage(_data(folder)), 'raw')
    _write_format(folder, 'alexnet_jax.prepared/1')
    self.assertEqual(feed_plan.dataset_storage(_data(folder)), 'jpeg')
    _write_format(folder, None)  # a description written before the raw storage
    self.assertEqual(feed_plan.dataset_storage(_data(folder)), 'jpeg')
    self.assertEqual(feed_plan.dataset_storage(_data(folder, 'tfds')), 'jpeg')


class ArithmeticTest(absltest.TestCase):

  def test_one_h200_on_14_cores(self):
    """30,000 images/s from one process: 14 JPEG workers fall short, 2 raw threads keep up."""
    folder = self.create_tempdir().full_path
    _write_format(folder, 'alexnet_jax.prepared/1')
    plan = feed_plan.plan_feed(_data(folder), _feeding(30_000.0), global_batch=256,
                               images_per_sec=None, cores=14)
    text = '\n'.join(plan.describe())
    supply = 14 * JPEG_PER_CORE
    self.assertIn(f'jpeg on 14 worker processes feeds ~{supply:,} images/s', text)
    self.assertEqual(_percent(r'waits ~(\d+)% of the time', text),
                     round(100 * (30_000 - supply) / 30_000))
    threads = math.ceil(30_000 / RAW_PER_CORE)
    self.assertIn(f'raw on {threads} threads feeds ~{threads * RAW_PER_CORE:,} images/s: keeps up'
                  '; prepare with --format=raw', text)
    self.assertIn('the step wants ~30,000 images/s per process', text)
    self.assertIn('14 cores (--plan_host_cores)', text)

  def test_the_main_process_caps_the_jpeg_path(self):
    """64 cores of JPEG workers would make 128,000 images/s; the main process takes 25 us each:
    40,000 images/s, which 20 workers fill."""
    plan = feed_plan.plan_feed(_data('', 'tfds'), _feeding(100_000.0), global_batch=256,
                               images_per_sec=None, cores=64)
    text = '\n'.join(plan.describe())
    cap = 1e6 / MAIN_US
    workers = math.ceil(cap / JPEG_PER_CORE)  # more would wait on the main process
    self.assertIn(f'jpeg on {workers} worker processes feeds ~{cap:,.0f} images/s', text)
    self.assertEqual(_percent(r'waits ~(\d+)%', text), round(100 * (100_000 - cap) / 100_000))

  def test_a_given_speed_is_shared_over_the_processes(self):
    """--plan_images_per_sec is the whole job's: a process reading 16 of 128 takes 1/8."""
    folder = self.create_tempdir().full_path
    _write_format(folder, 'alexnet_jax.prepared-raw/1')
    feeding = resolution.Feeding(cores=1, batch_per_device=16, batch_per_process=16,
                                 threads=0.0, processes=0.0, need=1.0)
    plan = feed_plan.plan_feed(_data(folder), feeding, global_batch=128,
                               images_per_sec=200_000.0, speed_note='--plan_images_per_sec',
                               cores=1)
    text = '\n'.join(plan.describe())
    self.assertIn('input: raw storage', text)
    self.assertIn('wants ~25,000 images/s per process (--plan_images_per_sec', text)
    self.assertIn(f'raw on 1 thread feeds ~{RAW_PER_CORE:,} images/s', text)
    self.assertEqual(_percent(r'waits ~(\d+)%', text), round(100 * (1 - RAW_PER_CORE / 25_000)))
    # Raw falls short on one core too; going to JPEG is no advice.
    self.assertNotIn('--format', text)

  def test_the_cores_this_process_may_use(self):
    with mock.patch.object(os, 'sched_getaffinity', return_value={0, 2, 5}, create=True):
      plan = feed_plan.plan_feed(_data('', 'tfds'), _feeding(10_000.0), global_batch=256,
                                 images_per_sec=None)
    self.assertEqual(plan.cores, 3)
    text = '\n'.join(plan.describe())
    self.assertIn(f'jpeg on 3 worker processes feeds ~{3 * JPEG_PER_CORE:,} images/s', text)
    self.assertEqual(_percent(r'waits ~(\d+)%', text), round(100 * (1 - 3 * JPEG_PER_CORE / 1e4)))


class DryRunLinesTest(absltest.TestCase):

  def test_the_plan_prints_the_input_lines(self):
    """One H200 planned on a 14-core host, at the speed its step measured: batch 1024."""
    config = imagenet.get_config()
    config.data.dir = self.create_tempdir().full_path  # no dataset there: prepare's default
    config.batch_size = 1024
    plan = dry_run.build_plan(config, dry_run.Target(devices=1, platform='gpu', host_cores=14,
                                                     train_images=1_281_167))
    text = dry_run.format_plan(plan)
    self.assertIn("input: jpeg storage (no dataset.json to read here: prepare's default); the step "
                  'wants ~30,747 images/s per process (the measured step rate at 1024 per '
                  'device)', text)
    self.assertEqual(_percent(r'jpeg on 14 worker processes feeds ~([\d,]+) images/s', text),
                     14 * JPEG_PER_CORE)
    self.assertEqual(_percent(r'waits ~(\d+)%', text),
                     round(100 * (30_747 - 14 * JPEG_PER_CORE) / 30_747))
    self.assertIn(f'raw on 3 threads feeds ~{3 * RAW_PER_CORE:,} images/s: keeps up', text)


if __name__ == '__main__':
  absltest.main()
