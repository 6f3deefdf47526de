"""What the prepare package refuses and checks: bad sources and output folders, its own
writes read back, the worker count."""

import os
import shutil
import subprocess
import sys
import tarfile
from unittest import mock
import zlib

from absl.testing import absltest
from array_record.python import array_record_module
import numpy as np

from alexnet_jax import prepare
from alexnet_jax.core import errors
from alexnet_jax.data import prepared_format
from tests import fakes

SIZE = fakes.SIZE
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class VerificationTest(absltest.TestCase):
  """What prepare wrote is read back before dataset.json marks it complete."""

  def test_a_record_changed_on_the_way_to_disk_is_caught(self):
    tmp = fakes.tempdir()
    path = os.path.join(tmp, 'part.array_record')
    writer = array_record_module.ArrayRecordWriter(path, prepare.shards.WRITER_OPTIONS)
    records = [b'first record', b'second record']
    for r in records:
      writer.write(r)
    writer.close()
    prepare.shards.verify_shard(path, [zlib.crc32(r) for r in records])
    with self.assertRaisesRegex(errors.UserError, 'record 1 of .* differs from what was written'):
      prepare.shards.verify_shard(path, [zlib.crc32(records[0]), zlib.crc32(b'other')])
    with self.assertRaisesRegex(errors.UserError, 'holds 2 records after writing 3'):
      prepare.shards.verify_shard(path, [0, 0, 0])

  def test_a_shard_cut_short_after_its_part_is_refused(self):
    tmp = fakes.tempdir()
    source = os.path.join(tmp, 'src')
    fakes.write_image_folder(source, ['a', 'b'], 3, 1, np.random.default_rng(0))
    output = os.path.join(tmp, 'out')
    finish_dataset = prepare.finish.finish_dataset

    def finish_after_damage(work, output, work_dir, *args):
      # Between the parts and the final layout, a shard loses its tail (a failed copy).
      shard = os.path.join(work_dir, 'train-00000.array_record')
      with open(shard, 'r+b') as f:
        f.truncate(os.path.getsize(shard) - 100)
      return finish_dataset(work, output, work_dir, *args)

    with mock.patch.object(prepare.finish, 'finish_dataset', finish_after_damage):
      with self.assertRaisesRegex(errors.UserError, r'train\.array_record-00000-of-00001 is '
                                  r'\d+ bytes, not the \d+ bytes written'):
        prepare.prepare(source, output, image_size=SIZE, progress=False)
    self.assertFalse(os.path.exists(os.path.join(output, prepared_format.DATASET_FILE)))

  def test_output_inside_the_source_is_refused_before_anything_is_written(self):
    tmp = fakes.tempdir()
    source = os.path.join(tmp, 'src')
    fakes.write_image_folder(source, ['a'], 2, 1, np.random.default_rng(0))
    before = sorted(os.walk(source))
    with self.assertRaisesRegex(errors.InputError, 'is inside the source'):
      prepare.prepare(source, os.path.join(source, 'train', 'out'), image_size=SIZE)
    self.assertEqual(sorted(os.walk(source)), before)


class BadSourceTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = fakes.tempdir()

  def test_missing_source(self):
    with self.assertRaisesRegex(FileNotFoundError, 'does not exist'):
      prepare.prepare(os.path.join(self.tmp, 'nope'), os.path.join(self.tmp, 'out'))

  def test_empty_source(self):
    os.makedirs(os.path.join(self.tmp, 'empty'))
    with self.assertRaisesRegex(ValueError, 'is empty'):
      prepare.prepare(os.path.join(self.tmp, 'empty'), os.path.join(self.tmp, 'out'))

  def test_unrecognised_source(self):
    os.makedirs(os.path.join(self.tmp, 'other', 'pictures'))
    with self.assertRaisesRegex(ValueError, 'holds neither'):
      prepare.prepare(os.path.join(self.tmp, 'other'), os.path.join(self.tmp, 'out'))

  def test_class_folder_without_images(self):
    source = os.path.join(self.tmp, 'src')
    fakes.write_image_folder(source, ['a'], 2, 1, np.random.default_rng(0))
    os.makedirs(os.path.join(source, 'train', 'b'))
    with open(os.path.join(source, 'train', 'b', 'readme.txt'), 'w') as f:
      f.write('x')
    with self.assertRaisesRegex(ValueError, r'class folder .*train/b holds no images'):
      prepare.prepare(source, os.path.join(self.tmp, 'out'), image_size=SIZE)

  def test_empty_train_tar(self):
    source = os.path.join(self.tmp, 'tars')
    os.makedirs(source)
    tarfile.open(os.path.join(source, prepare.TRAIN_TAR), 'w').close()
    with self.assertRaisesRegex(ValueError, 'is empty'):
      prepare.prepare(source, os.path.join(self.tmp, 'out'))

  def test_foreign_output_folder(self):
    source = os.path.join(self.tmp, 'src')
    fakes.write_image_folder(source, ['a'], 1, 0, np.random.default_rng(0))
    output = os.path.join(self.tmp, 'out')
    os.makedirs(output)
    with open(os.path.join(output, 'precious.txt'), 'w') as f:
      f.write('x')
    with self.assertRaisesRegex(ValueError, 'not empty'):
      prepare.prepare(source, output, image_size=SIZE)

  def test_temporary_files_of_a_killed_run_are_not_foreign(self):
    source = os.path.join(self.tmp, 'src')
    fakes.write_image_folder(source, ['a'], 2, 1, np.random.default_rng(0))
    output = os.path.join(self.tmp, 'out')
    os.makedirs(output)
    for name in ('.dataset.json.k3x9_q', '.stats.npz.a1b2c3', 'dataset.json.tmp'):
      open(os.path.join(output, name), 'w').close()
    prepare.prepare(source, output, image_size=SIZE, progress=False)
    self.assertTrue(prepared_format.is_complete(output))

  def test_command_line_error_is_one_line(self):
    result = subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.prepare', f'--source={self.tmp}/nope',
         f'--output={self.tmp}/out'], cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False)
    self.assertEqual(result.returncode, 2)
    self.assertEqual(result.stderr.strip().splitlines(),
                     [f'error: source folder {self.tmp}/nope does not exist'])
    self.assertFalse(os.path.exists(f'{self.tmp}/out'), 'a refused source left an output folder')


class CommandTest(absltest.TestCase):
  """`python -m alexnet_jax.prepare` is the command; importing the package is not."""

  def test_helpshort_lists_the_flags_as_the_commands_own(self):
    result = subprocess.run([sys.executable, '-m', 'alexnet_jax.prepare', '--helpshort'],
                            cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    text = result.stdout + result.stderr
    self.assertTrue(text.startswith('One-time conversion of a dataset into the paper'),
                    text[:500])
    # absl lists the main module's flags only: flags defined in another module are missing.
    for flag in ('--source', '--output', '--[no]strict', '--image_size', '--workers',
                 '--jpeg_quality'):
      self.assertIn(f'\n  {flag}: ', text)

  def test_importing_the_package_defines_no_flags(self):
    # The trainer imports the package into launch.py, whose other flags these would join.
    code = ('from absl import flags; import alexnet_jax.prepare; '
            "print(sorted(n for n in ('source', 'output', 'strict', 'image_size', 'workers', "
            "'jpeg_quality') if n in flags.FLAGS))")
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=True)
    self.assertEqual(result.stdout.strip(), '[]', result.stderr[-2000:])


class WorkerLimitTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = fakes.tempdir()

  def test_workers_are_capped_by_cores_and_memory(self):
    mib = 2**20
    self.assertEqual(prepare.worker_limit(8, None), 8)
    self.assertEqual(prepare.worker_limit(8, 1000 * mib), 5)  # 1000 MiB for ~200 MiB each
    self.assertEqual(prepare.worker_limit(4, 100 * 2**30), 4)
    self.assertEqual(prepare.worker_limit(4, 0), 1)
    source = os.path.join(self.tmp, 'src')
    fakes.write_image_folder(source, ['a'], 1, 0, np.random.default_rng(0))
    shutil.rmtree(os.path.join(source, 'val'))  # one part left: converted in this process
    with self.assertLogs('absl', 'WARNING') as logs:
      report = prepare.prepare(source, os.path.join(self.tmp, 'out'), image_size=SIZE,
                               workers=10**6, progress=False)
    self.assertBetween(report['workers'], 1, len(os.sched_getaffinity(0)))
    self.assertTrue(any(f'--workers=1000000 capped at {report["workers"]}: ' in line
                        for line in logs.output), logs.output)
    for bad in (0, -3):
      with self.assertRaisesRegex(errors.InputError, f'--workers must be a positive integer, '
                                  f'got {bad}'):
        prepare.prepare(source, os.path.join(self.tmp, 'bad'), workers=bad)
    self.assertFalse(os.path.exists(os.path.join(self.tmp, 'bad')))


if __name__ == '__main__':
  absltest.main()
