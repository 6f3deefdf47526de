"""launch.py runs to inject faults into, and what such runs leave: their records, their
parameters, a damaged checkpoint, a workdir with a checkpoint made in seconds.

The runs share the persistent XLA compilation cache (subprocesses.launch_env), so only
the first one compiles.
"""

import glob
import json
import os
import re
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.config import resolution
from alexnet_jax.data import input_pipeline
from alexnet_jax.learning import experiment
from alexnet_jax.learning import optim
from alexnet_jax.learning import step_fns
from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import workdir_files
from tests.helpers import REPO
from tests.helpers import subprocesses
from tests.helpers import training


def _env(devices: int = 8) -> dict[str, str]:
  """Log lines keep absl's prefix (ALEXNET_JAX_LOG_PREFIX), which tells them from messages."""
  return subprocesses.launch_env(devices, compile_cache=True, ALEXNET_JAX_LOG_PREFIX='1')


def launch(config_file: str, workdir: str, *args: str, timeout: float = 300,
           python_args: tuple[str, ...] = (), devices: int = 8):
  """Runs launch.py on `devices` CPU devices to its end: the CompletedProcess (stdout,
  stderr as text)."""
  cmd = [sys.executable, *python_args, os.path.join(REPO, 'launch.py'),
         f'--config={config_file}', f'--workdir={workdir}', *args]
  return subprocess.run(cmd, cwd=REPO, env=_env(devices),
                        capture_output=True, text=True, timeout=timeout)


def start_launch(config_file: str, workdir: str, log_file, *args: str,
                 devices: int = 8) -> subprocess.Popen:
  """Starts launch.py with its output going to `log_file` (a pipe nobody reads would fill)."""
  cmd = [sys.executable, os.path.join(REPO, 'launch.py'), f'--config={config_file}',
         f'--workdir={workdir}', *args]
  return subprocess.Popen(cmd, cwd=REPO, env=_env(devices),
                          stdout=log_file, stderr=subprocess.STDOUT)


def records(workdir: str) -> tuple[list[tuple], list[dict]]:
  """(step, loss, top1_err, top5_err, lr) of each train line, and the eval lines less `time`."""
  lines = training.read_metrics(workdir, while_running=True)
  trains = [(r['step'], r['loss'], r['top1_err'], r['top5_err'], r['lr'])
            for r in lines if r['kind'] == 'train']
  return trains, [{k: v for k, v in r.items() if k != 'time'} for r in lines
                  if r['kind'] == 'eval']


def wait_for_train_step(proc: subprocess.Popen, workdir: str, step: int, log: str,
                        timeout: float = 240) -> int:
  """Polls metrics.jsonl until this run's newest train line is >= step; returns that step.

  Lines count once this run's loop has started (its "Training N steps" log line in `log`):
  before that the newest lines may be a previous run's. Raises AssertionError when the
  run ends first or the time runs out.
  """
  deadline = time.time() + timeout
  while time.time() < deadline:
    with open(log) as f:
      started = re.search(r'Training \d+ steps', f.read()) is not None
    lines = training.read_metrics(workdir, while_running=True) if started else []
    steps = [r['step'] for r in lines if r['kind'] == 'train']
    if steps and steps[-1] >= step:
      return steps[-1]
    if proc.poll() is not None:
      with open(log) as f:
        raise AssertionError(f'the run ended (status {proc.returncode}) before step {step}: '
                             f'{f.read()[-3000:]}')
    time.sleep(0.02)
  raise AssertionError(f'step {step} not reached within {timeout:.0f} s')


def params_of(config, workdir: str) -> list[np.ndarray]:
  state, _ = training.final_params(config, workdir)
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def damage(step_dir: str, how: str) -> str:
  """What a bad disk or a careless `rm` does to a finished checkpoint; returns what it hit."""
  if how == 'truncate':  # every file of the array store loses its second half
    path = os.path.join(step_dir, 'state')
    for name in glob.glob(os.path.join(path, '**', 'd', '*'), recursive=True):
      with open(name, 'r+b') as f:
        f.truncate(os.path.getsize(name) // 2)
  elif how == 'delete':
    path = os.path.join(step_dir, 'state', 'manifest.ocdbt')
    os.remove(path)
  else:
    raise ValueError(how)
  return path


def write_run_with_checkpoint(config, workdir: str, step: int) -> None:
  """A workdir as a run leaves it after `step` steps (zero weights): a fixture made in seconds."""
  config = resolution.resolve_auto(config)
  info = input_pipeline.load_info(config.data)
  model = experiment.create_model(config, info.num_classes)
  optimizer = optim.create_optimizer(config.optim)
  crop = config.data.crop_size
  shapes = jax.eval_shape(
      lambda r: nn.unbox(step_fns.init_state(model, optimizer, r, crop)),
      jax.random.key(0))
  rng = np.random.default_rng(0)
  # Random weights: all-zero arrays would compress to almost nothing on disk.
  state = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)
  state = state.replace(step=jnp.asarray(step, jnp.int32))
  os.makedirs(workdir)
  workdir_files.save_config(workdir, config)
  workdir_files.save_dataset_info(workdir, info)
  iterator = input_pipeline.create_train_iterator(config.data, global_batch_size=config.batch_size,
                                                  seed=config.seed)
  with checkpointing.Checkpointer.from_config(workdir, config.checkpoint) as ckpt:
    ckpt.save(step, state, data_iterator=iterator, meta={'step': step, 'plateau': None},
              force=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for s in range(1, step + 1):
      f.write(json.dumps({'step': s, 'kind': 'train', 'loss': 2.3}) + '\n')
