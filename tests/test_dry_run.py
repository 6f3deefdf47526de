"""`launch.py --dry_run` on 1, 2 and 8 devices, and a job started the way SLURM starts it."""

import json
import os
import random
import re
import shlex
import socket
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tests.helpers import REPO
from tests.helpers.subprocesses import launch
from tests.helpers.subprocesses import launch_env
from tests.helpers.training import digits_dir
from tests.helpers.training import read_metrics
from tests.helpers.training import tiny_config
from tests.helpers.training import write_config_file


def number(pattern: str, text: str) -> int:
  match = re.search(pattern, text)
  assert match, f'{pattern!r} not in plan:\n{text}'
  return int(match.group(1).replace(',', ''))


class DryRunTest(parameterized.TestCase):

  @parameterized.parameters((1, 1), (2, 2), (8, 2))
  def test_plan_numbers(self, devices, model_axis):
    data_dir = digits_dir()
    workdir = self.create_tempdir().full_path
    args = ['--config=configs/digits.py', f'--workdir={workdir}', '--dry_run',
            f'--config.data.dir={data_dir}', f'--config.mesh.model={model_axis}']
    proc = launch(args, launch_env(devices))
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    out = proc.stdout

    # Independent figures: the digits config, the dataset's own description, the layer shapes.
    batch, data_axis = 64, devices // model_axis
    with open(os.path.join(data_dir, 'dataset.json')) as f:
      train_size = json.load(f)['splits']['train']
    # width 0.25: convs 24, 64, 96, 96, 64 (11x11x3, 5x5x12, 3x3x64, 3x3x48, 3x3x48 kernels
    # in the two-tower net), 64-px crops -> 1x1x64 at pool5, fc 1024, 10 classes.
    params = (11 * 11 * 3 * 24 + 24 + 5 * 5 * 12 * 64 + 64 + 3 * 3 * 64 * 96 + 96
              + 3 * 3 * 48 * 96 + 96 + 3 * 3 * 48 * 64 + 64
              + 64 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10)
    self.assertEqual(number(r'batch: global (\d+)', out), batch)
    self.assertEqual(number(r'per process (\d+)', out), batch)
    self.assertEqual(number(r'per device (\d+)', out), batch // data_axis)
    self.assertEqual(number(r'mesh data=(\d+)', out), data_axis)
    self.assertEqual(number(r'x model=(\d+)', out), model_axis)
    self.assertEqual(number(r'steps per epoch (\d+)', out), train_size // batch)
    self.assertEqual(number(r'total steps (\d+)', out), 20 * (train_size // batch))
    self.assertEqual(number(r'parameters: ([\d,]+)', out), params)
    # Every weight's output dimension is split over the model axis: 1/model of 4-byte floats.
    self.assertEqual(number(r'params\s+([\d,]+) bytes', out), params * 4 // model_axis)
    self.assertFalse(os.path.exists(os.path.join(workdir, 'checkpoints')))

  @parameterized.parameters(
      (8, ['--config.mesh.model=3'], '8 devices cannot be split by config.mesh.model=3'),
      (8, ['--config.mesh.data=3', '--config.mesh.model=2'], 'needs 6 devices, but 8'),
      (2, ['--config.batch_size=63', '--config.mesh.model=1'], 'config.batch_size=63'),
  )
  def test_impossible_mesh(self, devices, overrides, message):
    proc = launch(['--config=configs/digits.py', f'--workdir={self.create_tempdir().full_path}',
                   '--dry_run', f'--config.data.dir={digits_dir()}', *overrides],
                  launch_env(devices))
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1)
    self.assertIn(message, errors[0])
    self.assertNotIn('Traceback', proc.stderr)


# ----------------------------------------------------------------------------- planned targets
#
# The digits config (width 0.25, two towers, 64-px crops, 10 classes), written out layer by
# layer, independently of model.layer_table: (name, output elements per image, weight count,
# forward multiply-adds, copies kept for the backward pass: conv1/conv2 before and after LRN,
# fc6/fc7 before and after dropout).
DIGITS_LAYERS = (
    ('conv1', 15 * 15 * 24, 11 * 11 * 3 * 24 + 24, 15 * 15 * 11 * 11 * 3 * 24, 2),
    ('pool1', 7 * 7 * 24, 0, 0, 1),
    ('conv2', 7 * 7 * 64, 5 * 5 * 12 * 64 + 64, 7 * 7 * 5 * 5 * 12 * 64, 2),
    ('pool2', 3 * 3 * 64, 0, 0, 1),
    ('conv3', 3 * 3 * 96, 3 * 3 * 64 * 96 + 96, 3 * 3 * 3 * 3 * 64 * 96, 1),
    ('conv4', 3 * 3 * 96, 3 * 3 * 48 * 96 + 96, 3 * 3 * 3 * 3 * 48 * 96, 1),
    ('conv5', 3 * 3 * 64, 3 * 3 * 48 * 64 + 64, 3 * 3 * 3 * 3 * 48 * 64, 1),
    ('pool5', 1 * 1 * 64, 0, 0, 1),
    ('fc6', 1024, 64 * 1024 + 1024, 64 * 1024, 2),
    ('fc7', 1024, 1024 * 1024 + 1024, 1024 * 1024, 2),
    ('fc8', 10, 1024 * 10 + 10, 1024 * 10, 1),
)
DIGITS_BATCH = 64


def expected_digits_plan(devices: int, processes: int, platform: str, train_size: int) -> dict:
  """What the plan must say, from the layer list above and the mesh arithmetic alone."""
  model = 2 if devices % 2 == 0 else 1  # mesh.model 'auto'
  data = devices // model
  per_process_devices = devices // processes
  # A process holding whole model pairs reads its share of the batch; processes that
  # split a pair between them (one per GPU) read the same rows: the pair's share.
  per_process = DIGITS_BATCH * max(per_process_devices, model) // devices
  per_device = DIGITS_BATCH // data
  weights = sum(w for _, _, w, _, _ in DIGITS_LAYERS)
  param_bytes = 4 * weights // model  # every output width (10 classes too) splits in two
  opt_bytes = param_bytes + 4 + 4  # momentum like the weights, + step count and learning rate
  itemsize = 4 if platform == 'cpu' else 2  # compute dtype 'auto'
  elements = 64 * 64 * 3 + sum(n * copies // model for _, n, _, _, copies in DIGITS_LAYERS)
  per_image = 2 * elements * itemsize  # value + gradient
  steps_per_epoch = train_size // DIGITS_BATCH
  return {
      'model': model, 'data': data, 'per_process': per_process, 'per_device': per_device,
      'weights': weights, 'param_bytes': param_bytes, 'opt_bytes': opt_bytes,
      'activation_bytes': per_image * per_device, 'per_image': per_image,
      'total': 2 * param_bytes + opt_bytes + per_image * per_device,
      'steps_per_epoch': steps_per_epoch, 'per_host': train_size // (DIGITS_BATCH // per_process),
      'flops_per_image': 3 * 2 * sum(m for _, _, _, m, _ in DIGITS_LAYERS),
      'dtype': 'float32' if platform == 'cpu' else 'bfloat16'}


def digits_train_size() -> int:
  with open(os.path.join(digits_dir(), 'dataset.json')) as f:
    return json.load(f)['splits']['train']


def plan_args(workdir: str, *extra: str) -> list[str]:
  return ['--config=configs/digits.py', f'--workdir={workdir}', '--dry_run',
          f'--config.data.dir={digits_dir()}', *extra]


class PlannedTargetTest(parameterized.TestCase):
  """--plan_devices: a cluster's plan printed on a one-device CPU machine."""

  @parameterized.parameters(
      (1, 1, 'cpu'), (2, 1, 'gpu'), (2, 2, 'gpu'), (8, 1, 'tpu'), (8, 8, 'gpu'),
      (16, 2, 'gpu'), (16, 4, 'tpu'), (64, 8, 'tpu'), (64, 4, 'gpu'))
  def test_planned_numbers(self, devices, processes, platform):
    train_size = digits_train_size()
    want = expected_digits_plan(devices, processes, platform, train_size)
    speed = 500.0
    proc = launch(plan_args(self.create_tempdir().full_path, f'--plan_devices={devices}',
                            f'--plan_processes={processes}', f'--plan_platform={platform}',
                            '--plan_host_cores=6', '--plan_device_memory_gib=1',
                            f'--plan_images_per_sec={speed}'),
                  launch_env(1))
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    out = proc.stdout
    self.assertIn(f'plan for: {devices} {platform} device', out)
    self.assertEqual(number(r'devices: (\d+)', out), devices)
    self.assertEqual(number(r'processes: (\d+)', out), processes)
    self.assertEqual(number(r'mesh data=(\d+)', out), want['data'])
    self.assertEqual(number(r'x model=(\d+)', out), want['model'])
    self.assertIn(f"config.mesh.model 'auto' chose {want['model']}", out)
    self.assertIn(f'compute dtype {want["dtype"]}', out)
    # The input rule (docs/design.md, "Input pipeline on a GPU host"), written out: 6
    # threads under Amdahl with 68 us of each 359 us record holding the GIL; 6 worker
    # processes at 57% of 6 threads' work; the paper net's step at the per-device batch
    # (H200, bf16: 23,451 images/s at batch 128, the smallest measured, for every smaller
    # batch; CPU: 27.5 at 64) for the rows this process reads per step.
    threads = 1 / (68e-6 + (359e-6 - 68e-6) / 6)
    processes = 6 * 0.57 / 359e-6
    step = 27.5 if platform == 'cpu' else 23_451.0
    need = step * want['per_process'] / want['per_device']
    workers = 6 if threads < need else 0
    self.assertEqual(number(r'decoder threads per host: (\d+)', out), 1 if workers else 6)
    self.assertEqual(number(r'worker processes: (\d+)', out), workers)
    self.assertLessEqual(abs(number(r'6 threads project ([\d,]+) images/s', out) - threads), 1)
    self.assertLessEqual(abs(number(r'6 processes ([\d,]+);', out) - processes), 1)
    self.assertLessEqual(abs(number(r'the step needs ([\d,]+)', out) - need), 1)
    self.assertIn(f'(batch {want["per_device"]} per device, {want["per_process"]} per process)',
                  out)
    self.assertIn('chooses 6 worker processes' if workers else 'chooses threads', out)
    self.assertEqual(number(r'batch: global (\d+)', out), DIGITS_BATCH)
    self.assertEqual(number(r'per process (\d+)', out), want['per_process'])
    self.assertEqual(number(r'per device (\d+)', out), want['per_device'])
    self.assertEqual(number(r'steps per epoch (\d+)', out), want['steps_per_epoch'])
    self.assertEqual(number(r'total steps (\d+)', out), 20 * want['steps_per_epoch'])
    self.assertEqual(number(r'each process reads (\d+)', out), want['per_host'])
    self.assertEqual(number(r'parameters: ([\d,]+)', out), want['weights'])
    self.assertEqual(number(r'params\s+([\d,]+) bytes', out), want['param_bytes'])
    self.assertEqual(number(r'gradients\s+([\d,]+) bytes', out), want['param_bytes'])
    self.assertEqual(number(r'optimizer state\s+([\d,]+) bytes', out), want['opt_bytes'])
    self.assertEqual(number(r'activations\s+([\d,]+) bytes', out), want['activation_bytes'])
    self.assertEqual(number(r'total\s+([\d,]+) bytes', out), want['total'])
    fixed = 2 * want['param_bytes'] + want['opt_bytes']
    self.assertEqual(number(r'the largest per-device batch that fits is (\d+)', out),
                     (2**30 - fixed) // want['per_image'])
    self.assertEqual(number(r'work: ([\d,]+) FLOP per training image', out),
                     want['flops_per_image'])
    self.assertEqual(number(r'([\d,]+) FLOP per epoch', out),
                     want['flops_per_image'] * want['steps_per_epoch'] * DIGITS_BATCH)
    epoch_seconds = want['steps_per_epoch'] * DIGITS_BATCH / speed
    self.assertLessEqual(abs(number(r'\(([\d,]+) s\) per epoch', out) - epoch_seconds), 0.5)
    self.assertLessEqual(abs(number(r'\(([\d,]+) s\) for 20 epochs', out) - 20 * epoch_seconds),
                         0.5)

  def test_peak_and_efficiency_give_the_speed(self):
    want = expected_digits_plan(16, 2, 'gpu', digits_train_size())
    proc = launch(plan_args(self.create_tempdir().full_path, '--plan_devices=16',
                            '--plan_processes=2', '--plan_platform=gpu',
                            '--plan_peak_tflops=0.02', '--plan_efficiency=0.25'),
                  launch_env(1))
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    images_per_sec = 16 * 0.02e12 * 0.25 / want['flops_per_image']
    self.assertEqual(number(r'time: ([\d,]+) images/s', proc.stdout), round(images_per_sec))
    epoch_seconds = want['steps_per_epoch'] * DIGITS_BATCH / images_per_sec
    self.assertLessEqual(abs(number(r'\(([\d,]+) s\) per epoch', proc.stdout) - epoch_seconds),
                         0.5)

  @parameterized.named_parameters(('some_batch_fits', 0.01), ('no_batch_fits', 0.001))
  def test_too_little_device_memory(self, gib):
    want = expected_digits_plan(2, 1, 'gpu', digits_train_size())
    proc = launch(plan_args(self.create_tempdir().full_path, '--plan_devices=2',
                            '--plan_platform=gpu', f'--plan_device_memory_gib={gib}'),
                  launch_env(1))
    self.assertEqual(proc.returncode, 2, proc.stderr[-3000:])
    self.assertEqual(proc.stdout, '')
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr)
    self.assertIn(f'--plan_device_memory_gib={gib}', errors[0])
    largest = (int(gib * 2**30) - 2 * want['param_bytes'] - want['opt_bytes']) // want['per_image']
    self.assertLess(largest, want['per_device'])  # the configured batch does not fit
    if largest > 0:
      self.assertIn(f'the largest per-device batch that fits is {largest} '
                    f'(config.batch_size={largest} on the data axis of 1)', errors[0])
    else:
      self.assertIn('not even one image per device fits', errors[0])

  def test_unreachable_dataset_and_classes_that_do_not_split(self):
    """The paper's config for 16 GPUs, no dataset here, 37 classes: fc8 whole on every device."""
    proc = launch(['--config=configs/imagenet.py', f'--workdir={self.create_tempdir().full_path}',
                   '--dry_run', '--config.data.dir=/nowhere/imagenet',
                   '--config.model.num_classes=37', '--plan_devices=16', '--plan_processes=2',
                   '--plan_platform=gpu'],
                  launch_env(1))
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    out = proc.stdout
    self.assertIn('no prepared dataset at /nowhere/imagenet', out)
    self.assertIn('not computed: steps per epoch, total steps, train images per process, FLOPs '
                  'per epoch', out)
    self.assertNotIn('steps per epoch 0', out)
    # The paper's layer shapes (docs/design.md, "The network"), fc8 with 37 outputs.
    split = (34_944 + 307_456 + 885_120 + 663_936 + 442_624 + 37_752_832 + 16_781_312)
    fc8 = 4096 * 37 + 37
    self.assertEqual(number(r'parameters: ([\d,]+)', out), split + fc8)
    self.assertEqual(number(r'params\s+([\d,]+) bytes', out), 4 * (split // 2 + fc8))
    fc8_rows = [l for l in out.splitlines() if l.strip().startswith("['fc8']")]
    self.assertLen(fc8_rows, 2)
    for row in fc8_rows:
      self.assertIn('whole on every device: 37 classes do not split over 2 devices', row)
    self.assertIn('(4096, 37)', next(r for r in fc8_rows if 'kernel' in r).split(')', 1)[1])


def indented_blocks(markdown: str) -> list[list[str]]:
  """The markdown's indented code blocks, each as its lines without the 4-space indent."""
  blocks, current = [], []
  for line in markdown.splitlines() + ['']:
    if line.startswith('    '):
      current.append(line[4:])
    elif current:
      blocks.append(current)
      current = []
  return blocks


class ReadmeClusterPlanTest(absltest.TestCase):

  def test_readme_shows_the_real_output(self):
    """README "Clusters": the login-node dry run and the output pasted under it agree."""
    with open(os.path.join(REPO, 'README.md')) as f:
      readme = f.read()
    clusters = readme[readme.index('## Clusters'):]
    clusters = clusters[:clusters.index('\n## ', 3)]
    blocks = indented_blocks(clusters)
    index = next(i for i, b in enumerate(blocks)
                 if b[0].startswith('python launch.py') and '--plan_devices' in ' '.join(b))
    command = shlex.split(' '.join(line.rstrip('\\') for line in blocks[index]))
    self.assertEqual(command[:2], ['python', 'launch.py'])
    proc = launch(command[2:], launch_env(1))
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertEqual(proc.stdout.splitlines(), blocks[index + 1])


def free_slurm_port() -> int:
  """A free port in the range JAX derives from SLURM_JOB_ID (61440 + job id % 4096)."""
  for _ in range(100):
    port = random.randint(61440, 65535)
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', port))
      except OSError:
        continue
      return port
  raise RuntimeError('no free port in 61440-65535')


class SlurmStyleRunTest(absltest.TestCase):

  def test_two_slurm_tasks_match_one_process(self):
    """Two processes with the variables a SLURM step sets (as scripts/slurm_gpu.sbatch runs
    them: `srun python launch.py ...`, no distributed flags) train like one 2-device process."""
    data = digits_dir()
    config = tiny_config(data, num_train_steps=4, final_eval_crops=1)
    config_file = write_config_file(os.path.join(self.create_tempdir().full_path, 'c.py'), config)
    single, multi = self.create_tempdir().full_path, self.create_tempdir().full_path

    proc = launch([f'--config={config_file}', f'--workdir={single}'], launch_env(2))
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])

    job_id = str(free_slurm_port() - 61440)
    procs = []
    for rank in range(2):
      env = launch_env(1, SLURM_JOB_ID=job_id, SLURM_NTASKS='2', SLURM_PROCID=str(rank),
                       SLURM_LOCALID='0', SLURM_STEP_NODELIST='localhost')
      procs.append(subprocess.Popen(
          [sys.executable, os.path.join(REPO, 'launch.py'), f'--config={config_file}',
           f'--workdir={multi}'], cwd=REPO, env=env, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
      for p in procs:
        outputs.append(p.communicate(timeout=300))
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
    for p, (_, err) in zip(procs, outputs):
      self.assertEqual(p.returncode, 0, err[-3000:])
    self.assertIn('JAX process 1 of 2', outputs[1][1])

    losses = lambda w: [(r['step'], r['loss']) for r in read_metrics(w) if r['kind'] == 'train']
    self.assertEqual([s for s, _ in losses(multi)], [1, 2, 3, 4])
    np.testing.assert_allclose([l for _, l in losses(multi)], [l for _, l in losses(single)],
                               rtol=1e-5)


if __name__ == '__main__':
  absltest.main()
