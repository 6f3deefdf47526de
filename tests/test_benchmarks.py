"""The GPU benchmark: its arithmetic (launch_run.py, gpu_summary.py), its wheels
(fetch_wheels.py) and benchmarks/gpu.sh itself, run end to end on the CPU (--cpu-smoke)."""

import base64
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile

from absl.testing import absltest

from benchmarks import fetch_wheels
from benchmarks import gpu_summary
from benchmarks import launch_run
from tests import XLA_TEST_FLAGS
from tests.helpers import REPO


def _write_metrics(workdir, records):
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')


class LaunchRunTest(absltest.TestCase):

  def test_end_to_end_rate_skips_the_compiling_window(self):
    batch = 10
    train = [{'step': 20, 'images_per_sec': 5.0},  # the window with the compilation
             {'step': 40, 'images_per_sec': 200.0},
             {'step': 60, 'images_per_sec': 400.0},
             {'step': 70, 'images_per_sec': 100.0}]
    rates = launch_run.train_rates(train, batch)
    # 200, 200 and 100 images in 1, 0.5 and 1 s.
    self.assertAlmostEqual(rates['images_per_sec'], (200 + 200 + 100) / (1 + 0.5 + 1))
    self.assertEqual(rates['window_median_images_per_sec'], 200.0)
    self.assertEqual((rates['window_min_images_per_sec'], rates['window_max_images_per_sec']),
                     (100.0, 400.0))
    self.assertEqual(rates['steps_timed'], 50)
    self.assertEqual(rates['first_window_images_per_sec'], 5.0)

  def test_summary_of_a_run(self):
    workdir = self.create_tempdir().full_path
    _write_metrics(workdir, [
        {'step': 2, 'kind': 'train', 'loss': 2.5, 'top1_err': 0.9, 'images_per_sec': 10.0},
        {'step': 4, 'kind': 'train', 'loss': 2.0, 'top1_err': 0.8, 'images_per_sec': 20.0},
        {'step': 4, 'kind': 'eval', 'val_loss': None, 'val_top1_err': 1.0}])
    for name in ('2', '4', '4.orbax-checkpoint-tmp'):
      os.makedirs(os.path.join(workdir, 'checkpoints', name))
    summary = launch_run.summarize_run(workdir, batch=4)
    self.assertEqual(summary['checkpoint_steps'], [2, 4])
    self.assertEqual((summary['loss_first'], summary['loss_last']), (2.5, 2.0))
    self.assertTrue(summary['loss_falling'])
    self.assertTrue(summary['all_losses_finite'])
    self.assertIsNone(summary['eval']['val_loss'])
    self.assertAlmostEqual(summary['images_per_sec'], 20.0)

  def test_a_nan_loss_is_not_falling(self):
    workdir = self.create_tempdir().full_path
    _write_metrics(workdir, [
        {'step': 2, 'kind': 'train', 'loss': 2.5, 'images_per_sec': 10.0},
        {'step': 4, 'kind': 'train', 'loss': float('nan'), 'images_per_sec': 20.0}])
    summary = launch_run.summarize_run(workdir, batch=4)
    self.assertFalse(summary['all_losses_finite'])
    self.assertFalse(summary['loss_falling'])
    self.assertEqual(summary['checkpoint_steps'], [])


class GpuSummaryTest(absltest.TestCase):

  def test_fractions_of_the_peaks(self):
    out = self.create_tempdir().full_path
    gflop = 4.35
    rows = [{'net': 'paper', 'dtype': 'bfloat16', 'variant': 'shipped', 'batch': b,
             'jax_img_s': rate, 'train_gflop_per_image': gflop, 'compile_s': 1.0}
            for b, rate in ((256, 50_000.0), (512, 80_000.0))]
    with open(os.path.join(out, 'step_jax.json'), 'w') as f:
      json.dump({'peaks': {'bfloat16': 700_000.0}, 'rows': rows}, f)
    text = gpu_summary.table(out)
    tflops = 80_000 * gflop / 1e3  # 348 TFLOP/s
    self.assertIn(f'{tflops:9.1f}{tflops / 700:7.0%}{tflops / 989.5:7.0%}', text)
    self.assertIn('best bf16 paper step: 80,000 img/s at batch 512 (goal 16,000: met)', text)

  def test_missing_parts_are_left_out(self):
    text = gpu_summary.table(self.create_tempdir().full_path)
    self.assertIn('JAX train step', text)
    self.assertNotIn('launch.py end to end', text)


class FetchWheelsTest(absltest.TestCase):

  def test_pins_are_requirements_txt_s(self):
    pins = {}
    with open(os.path.join(REPO, 'requirements.txt')) as f:
      for line in f:
        if '==' in line and not line.startswith('#'):
          name, version = line.strip().split('==')
          pins[name.lower()] = version
    got = fetch_wheels.pinned(os.path.join(REPO, 'requirements.txt'),
                              ['grain', 'array-record', 'tensorboardX', 'orbax-checkpoint'])
    self.assertEqual(got, [f'grain=={pins["grain"]}', f'array-record=={pins["array-record"]}',
                           f'tensorboardX=={pins["tensorboardx"]}',
                           f'orbax-checkpoint=={pins["orbax-checkpoint"]}'])

  def test_pip_downloads_cp312_manylinux_wheels_only(self):
    cmd = fetch_wheels.pip_command(['grain==0.2.18'], '/tmp/w', python='python3')
    self.assertEqual(cmd[:4], ['python3', '-m', 'pip', 'download'])
    for flag in ('--only-binary=:all:', '--no-deps'):
      self.assertIn(flag, cmd)
    self.assertEqual(cmd[cmd.index('--python-version') + 1], '3.12')
    platforms = {cmd[i + 1] for i, a in enumerate(cmd) if a == '--platform'}
    # grain's wheel is tagged manylinux_2_24/2_28, simplejpeg's manylinux2014.
    self.assertLessEqual({'manylinux2014_x86_64', 'manylinux_2_28_x86_64'}, platforms)
    self.assertEqual(cmd[-1], 'grain==0.2.18')

  def test_size_limit(self):
    folder = self.create_tempdir().full_path
    for name, mib in (('a.whl', 40), ('b.whl', 20), ('notes.txt', 30)):
      with open(os.path.join(folder, name), 'wb') as f:
        f.truncate(mib * 2**20)  # sparse: the size without the bytes
    self.assertEqual(fetch_wheels.size_error(folder, 64), '')  # 60 MiB of wheels
    with open(os.path.join(folder, 'c.whl'), 'wb') as f:
      f.truncate(5 * 2**20)
    self.assertIn('65.0 MiB of wheels', fetch_wheels.size_error(folder, 64))


def _write_wheel(folder: str, name: str = 'gpu_sh_probe', version: str = '1.0') -> str:
  """A minimal pure-Python wheel: one module and its dist-info."""
  info = f'{name}-{version}.dist-info'
  files = {f'{name}.py': 'VALUE = 42\n',
           f'{info}/METADATA': f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n',
           f'{info}/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n'
                            'Tag: py3-none-any\n'}
  record = []
  for path, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=')
    record.append(f'{path},sha256={digest.decode()},{len(text.encode())}')
  files[f'{info}/RECORD'] = '\n'.join(record + [f'{info}/RECORD,,']) + '\n'
  path = os.path.join(folder, f'{name}-{version}-py3-none-any.whl')
  with zipfile.ZipFile(path, 'w') as z:
    for member, text in files.items():
      z.writestr(member, text)
  return path


GPU_PARTS = ['env', 'probe', 'step_bf16', 'step_one_tower', 'step_conv1', 'step_f32']
PIPELINE_PARTS = ['data', 'input', 'e2e']


class GpuScriptSmokeTest(absltest.TestCase):
  """bash benchmarks/gpu.sh --cpu-smoke: every part, tiny, on the CPU, once for all tests."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = absltest.get_default_test_tmpdir()
    cls.tmp = os.path.join(root, 'gpu_sh_smoke')
    subprocess.run(['rm', '-rf', cls.tmp], check=True)
    cls.out, cls.work, cls.wheels = (os.path.join(cls.tmp, d) for d in ('out', 'work', 'wheels'))
    os.makedirs(cls.wheels)
    _write_wheel(cls.wheels)
    env = {k: v for k, v in os.environ.items() if k not in ('OUT', 'PYTHONPATH')}
    env.update(GPU_WORK=cls.work, GPU_WHEELS=cls.wheels, PYTHON=sys.executable,
               XLA_FLAGS=XLA_TEST_FLAGS)
    cls.proc = subprocess.run(['bash', 'benchmarks/gpu.sh', '--cpu-smoke', cls.out], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=1800)
    with open(os.path.join(cls.out, 'log.txt')) as f:
      cls.log = f.read()
    cls.has_torch = subprocess.run([sys.executable, '-c', 'import torch'],
                                   capture_output=True).returncode == 0

  def _json(self, name):
    with open(os.path.join(self.out, name)) as f:
      return json.load(f)

  def test_runs_every_part_gpu_rows_first(self):
    self.assertEqual(self.proc.returncode, 0, self.log[-3000:])
    with open(os.path.join(self.work, 'parts.txt')) as f:
      parts = [line.split() for line in f]
    torch_parts = ['torch'] if self.has_torch else []  # torch_compile: not in a smoke run
    self.assertEqual([p[0] for p in parts], GPU_PARTS + PIPELINE_PARTS + torch_parts)
    self.assertEqual({p[1] for p in parts}, {'0'}, parts)
    # The log says the same, in the same order.
    started = [m.group(1) for m in re.finditer(r'^=== (\w+): cap', self.log, re.M)]
    self.assertEqual(started, GPU_PARTS + PIPELINE_PARTS + torch_parts)

  def test_step_json_has_every_case(self):
    step = self._json('step_jax.json')
    cases = [(r['net'], r['batch'], r['dtype'], r['matmul_precision']) for r in step['rows']]
    self.assertEqual(cases, [
        ('tiny', 2, 'bfloat16', 'default'),  # the probe
        ('tiny', 2, 'bfloat16', 'default'),  # step_bf16 (the paper net's batches on a GPU)
        ('tiny_one_tower', 2, 'bfloat16', 'default'),
        ('tiny', 2, 'bfloat16', 'default'),  # step_conv1: the shipped float32 conv1 ...
        ('tiny', 2, 'bfloat16', 'default'),  # ... and conv1 in bf16
        ('tiny', 2, 'float32', 'default'),  # TF32 on an NVIDIA GPU
        ('tiny', 2, 'float32', 'highest')])  # TF32 off
    self.assertLen(step['runs'], 5)  # probe, then four runs appending
    self.assertTrue(all(r['jax_img_s'] > 0 for r in step['rows']))

  def test_pipeline_jsons(self):
    inp = self._json('input.json')
    self.assertEqual(set(inp['images_per_sec']['prepared']),
                     {'grain_1', 'grain_n', 'grain_1p', 'grain_p', 'stub_1'})
    self.assertGreater(inp['gil']['spin_alone_before'], 0)
    self.assertIn('threads_stub', inp['projection'])
    e2e = self._json('e2e.json')
    self.assertEqual(e2e['returncode'], 0)
    self.assertEqual(e2e['checkpoint_steps'], [2])
    self.assertTrue(e2e['all_losses_finite'])

  def test_torch_absent_is_one_line(self):
    lines = [line for line in self.log.splitlines() if 'torch' in line and '===' in line]
    if self.has_torch:
      self.assertTrue(os.path.exists(os.path.join(self.out, 'step_torch.json')))
    else:
      self.assertEqual(lines, [f'=== torch: skipped, torch is not installed for '
                               f'{sys.executable}'])
      self.assertFalse(os.path.exists(os.path.join(self.out, 'step_torch.json')))

  def test_carried_wheels_installed_without_network(self):
    self.assertIn(f'=== wheels: installing 1 from {self.wheels}', self.log)
    site = os.path.join(self.work, 'site')
    self.assertTrue(os.path.exists(os.path.join(site, 'gpu_sh_probe.py')))
    # First on the path of every part: env.json is written by one of them.
    self.assertTrue(self._json('env.json')['pythonpath'].startswith(site))

  def test_script_calls_python_through_py(self):
    with open(os.path.join(REPO, 'benchmarks', 'gpu.sh')) as f:
      code = [line.split('#')[0] for line in f if not line.lstrip().startswith('#')]
    bare = [line for line in code if re.search(r'(^|[\s"\'])python\b(?!3)', line)]
    self.assertEqual(bare, [])
    self.assertIn('py="${PYTHON:-python3}"', ''.join(code))

  def test_out_dir_holds_few_files(self):
    # The device tool returns at most 8 files from $OUT.
    self.assertLessEqual(len(os.listdir(self.out)), 6, os.listdir(self.out))


if __name__ == '__main__':
  absltest.main()
