"""Checkpoints of sharded state on 2 CPU devices, the data iterator, retention, damage, config."""

import asyncio
import gc
import glob
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import types
import warnings
from unittest import mock

import jax

# tests/__init__.py gives the run eight CPU devices; these tests use two of them.

from absl.testing import absltest
from absl.testing import parameterized
import grain
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax.storage import checkpointing
from alexnet_jax.storage import grain_state
from alexnet_jax.core import errors
from alexnet_jax.learning import optim
from alexnet_jax.training import stop_signals
from alexnet_jax.storage import workdir_files
from tests.helpers import REPO
from tests.helpers import files
from tests.helpers.checkpoints import CheckpointTestCase
from tests.helpers.checkpoints import make_iterator
from tests.helpers.checkpoints import make_state
from tests.helpers.checkpoints import optim_config
from tests.helpers.subprocesses import subprocess_env


def abstract_of(state, shardings=None):
  if shardings is None:
    shardings = jax.tree.map(lambda x: x.sharding, state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def take(it, n):
  return [np.asarray(next(it)).tolist() for _ in range(n)]


class RoundTripTest(CheckpointTestCase):

  def test_sharded_state_restores_into_given_shardings(self):
    state = make_state(self.mesh)
    ckpt = self.checkpointer()
    self.assertTrue(ckpt.save(7, state, meta={'epoch': 1}))
    ckpt.wait()
    # Same layout, and a different one (everything replicated) read straight from disk.
    replicated = jax.tree.map(lambda _: NamedSharding(self.mesh, P()), state)
    for shardings in (None, replicated):
      target = abstract_of(state, shardings)
      restored, meta = ckpt.restore(target)
      self.assertEqual(meta, {'epoch': 1})
      self.assertEqual(jax.tree.structure(restored), jax.tree.structure(state))
      for got, want, t in zip(jax.tree.leaves(restored), jax.tree.leaves(state),
                              jax.tree.leaves(target)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        self.assertEqual(got.dtype, want.dtype)
        self.assertEqual(got.sharding, t.sharding)
    kernel = restored['params']['conv1']['kernel']
    self.assertEqual(kernel.sharding.spec, P())
    self.assertEqual(float(optim.get_learning_rate(restored['opt_state'])),
                     float(optim.get_learning_rate(state['opt_state'])))

  def test_buffers_may_be_donated_once_save_returns(self):
    state = make_state(self.mesh)
    expected, target = to_numpy(state), abstract_of(state)
    ckpt = self.checkpointer()
    ckpt.save(7, state, meta={})
    for leaf in jax.tree.leaves(state):
      leaf.delete()  # what donation to the next train step does
    ckpt.wait()
    restored, _ = ckpt.restore(target)
    jax.tree.map(np.testing.assert_array_equal, to_numpy(restored), expected)

  def test_data_iterator_resumes_at_the_same_batch(self):
    state = make_state(self.mesh)
    it = make_iterator()
    take(it, 3)
    ckpt = self.checkpointer()
    ckpt.save(3, state, data_iterator=it, meta={})
    expected = take(it, 4)  # what the uninterrupted run sees next
    ckpt.wait()
    fresh = make_iterator()
    ckpt.restore(abstract_of(state), data_iterator=fresh)
    self.assertEqual(take(fresh, 4), expected)
    self.assertNotEqual(expected, take(make_iterator(), 4))  # not just the start again

  def test_plateau_schedule_survives_checkpoint(self):
    config = optim_config()
    plateau = optim.make_plateau(config)
    errors = [0.9, 0.8, 0.85, 0.86, 0.84, 0.83, 0.83]
    for e in errors[:4]:
      plateau.update(e)
    self.assertEqual(plateau.drops, 1)
    state = make_state(self.mesh)
    ckpt = self.checkpointer()
    ckpt.save(4, state, meta={'epoch': 4, 'plateau': plateau.state_dict()})
    ckpt.wait()
    _, meta = ckpt.restore(abstract_of(state))
    resumed = optim.make_plateau(config, meta['plateau'])
    self.assertEqual(resumed, plateau)
    self.assertEqual([resumed.update(e) for e in errors[4:]], [plateau.update(e) for e in errors[4:]])

  def test_empty_directory_restores_none(self):
    self.assertIsNone(self.checkpointer().restore(abstract_of(make_state(self.mesh))))


class SavePolicyTest(CheckpointTestCase):

  def test_every_steps_force_and_no_rewrite(self):
    state = make_state(self.mesh)
    ckpt = self.checkpointer(every_steps=5)
    self.assertFalse(ckpt.save(3, state, meta={}))
    self.assertTrue(ckpt.save(5, state, meta={}))
    self.assertTrue(ckpt.save(7, state, meta={}, force=True))
    ckpt.wait()
    self.assertFalse(ckpt.save(5, state, meta={}, force=True))
    self.assertEqual(ckpt.all_steps(), [5, 7])

  def test_retention_keeps_last_k_plus_best_across_restarts(self):
    state = make_state(self.mesh)
    ckpt = self.checkpointer(keep=2, keep_best=True)
    for step, err in zip(range(1, 7), [0.9, 0.5, 0.7, None, 0.8, 0.6]):
      ckpt.save(step, state, meta={}, val_error=err)
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), [2, 5, 6])  # 2: the lowest error, kept beyond the last 2
    ckpt.close()
    # A restarted run still knows which one is best (orbax stored the metric).
    ckpt = self.checkpointer(keep=2, keep_best=True)
    ckpt.save(7, state, meta={}, val_error=0.4)
    ckpt.save(8, state, meta={})
    ckpt.wait()
    # 7 (0.4) beats the stored best 2 (0.5), so 2 goes; without the stored metric 2 would stay.
    self.assertEqual(ckpt.all_steps(), [7, 8])

  def test_without_keep_best_only_last_k(self):
    state = make_state(self.mesh)
    ckpt = self.checkpointer(keep=2, keep_best=False)
    for step, err in zip(range(1, 5), [0.1, 0.5, 0.7, 0.8]):
      ckpt.save(step, state, meta={}, val_error=err)
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), [3, 4])

  def test_bad_meta_fails_before_writing(self):
    ckpt = self.checkpointer()
    with self.assertRaisesRegex(TypeError, 'JSON-serialisable'):
      ckpt.save(1, make_state(self.mesh), meta={'x': object()})
    self.assertEqual(ckpt.all_steps(), [])

  def test_failed_write_leaves_previous_checkpoint_intact(self):
    state = make_state(self.mesh)
    ckpt = self.checkpointer()
    ckpt.save(1, state, data_iterator=make_iterator(), meta={'epoch': 1})
    ckpt.wait()
    full_disk = OSError(28, 'No space left on device')
    with mock.patch.object(grain.checkpoint.CheckpointHandler, 'save', side_effect=full_disk):
      with self.assertRaises(OSError):
        ckpt.save(2, state, data_iterator=make_iterator(), meta={'epoch': 2})
        ckpt.wait()
    reopened = self.checkpointer()
    self.assertEqual(reopened.all_steps(), [1])
    _, meta = reopened.restore(abstract_of(state), data_iterator=make_iterator())
    self.assertEqual(meta, {'epoch': 1})
    # Once space is back, the same step saves normally.
    self.assertTrue(reopened.save(2, state, data_iterator=make_iterator(), meta={'epoch': 2}))
    reopened.wait()
    self.assertEqual(reopened.restore(abstract_of(state))[1], {'epoch': 2})

  def test_unfinished_save_folder_is_ignored(self):
    state = make_state(self.mesh)
    ckpt = self.checkpointer()
    ckpt.save(1, state, meta={'epoch': 1})
    ckpt.wait()
    # What a kill -9 in the middle of an async save leaves behind.
    os.makedirs(os.path.join(ckpt.directory, '2.orbax-checkpoint-tmp-1700000000000000', 'state'))
    reopened = self.checkpointer()
    self.assertEqual(reopened.latest_step(), 1)
    self.assertEqual(reopened.restore(abstract_of(state))[1], {'epoch': 1})


def _damage(step_dir: str, how: str) -> str:
  if how == 'truncate_array_files':
    # Every file of the array store loses its second half. The test arrays are tiny, so the
    # largest file can be a b-tree node that the merged root no longer reads.
    files = glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True)
    for path in files:
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
    return os.path.join(step_dir, 'state')
  path = os.path.join(step_dir, {'delete_array_manifest': 'state/manifest.ocdbt',
                                 'delete_meta': 'meta/metadata',
                                 'delete_data_state': 'data/process_0-of-1.json',
                                 'truncate_meta': 'meta/metadata'}[how])
  if how.startswith('truncate'):
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  else:
    os.remove(path)
  return path


class DamagedCheckpointTest(CheckpointTestCase):

  def save_two(self):
    ckpt = self.checkpointer()
    it = make_iterator()
    state1 = make_state(self.mesh, seed=1)
    ckpt.save(1, state1, data_iterator=it, meta={'epoch': 1})
    after1 = take(it, 2)
    ckpt.save(2, make_state(self.mesh, seed=2), data_iterator=it, meta={'epoch': 2})
    ckpt.wait()
    return ckpt, state1, after1

  @parameterized.parameters('truncate_array_files', 'delete_array_manifest', 'delete_meta',
                            'delete_data_state', 'truncate_meta')
  def test_damaged_newest_falls_back_to_previous(self, how):
    ckpt, state1, after1 = self.save_two()
    _damage(ckpt.step_path(2), how)
    fresh = make_iterator()
    with self.assertLogs('absl', level='WARNING') as logs:
      restored, meta = ckpt.restore(abstract_of(state1), data_iterator=fresh)
    text = '\n'.join(logs.output)
    self.assertIn('step 2', text)
    self.assertIn(ckpt.step_path(2), text)
    self.assertEqual(meta, {'epoch': 1})
    jax.tree.map(np.testing.assert_array_equal, to_numpy(restored), to_numpy(state1))
    self.assertEqual(take(fresh, 2), after1)
    # The damaged folder is kept for inspection, out of the way of the next save of step 2.
    self.assertEqual(ckpt.all_steps(), [1])
    self.assertLen(glob.glob(os.path.join(ckpt.directory, 'damaged', '2-*')), 1)
    self.assertTrue(ckpt.save(2, state1, meta={'epoch': 2}))
    ckpt.wait()

  def test_no_usable_checkpoint_stops_unless_told(self):
    ckpt = self.checkpointer()
    state = make_state(self.mesh)
    ckpt.save(1, state, data_iterator=make_iterator(), meta={})
    ckpt.wait()
    _damage(ckpt.step_path(1), 'truncate_array_files')
    it = make_iterator()
    take(it, 1)
    position = it.get_state()
    with self.assertRaisesRegex(checkpointing.CheckpointError, 'no usable checkpoint.*step 1'):
      ckpt.restore(abstract_of(state), data_iterator=it)
    self.assertEqual(ckpt.all_steps(), [1])  # nothing moved
    self.assertEqual(it.get_state(), position)
    self.assertIsNone(ckpt.restore(abstract_of(state), data_iterator=it,
                                   start_fresh_if_unusable=True))
    self.assertEqual(ckpt.all_steps(), [])

  def test_from_config_reads_the_checkpoint_group(self):
    from configs import imagenet  # pylint: disable=g-import-not-at-top
    config = imagenet.get_config().checkpoint
    config.keep, config.every_steps, config.start_fresh_if_unusable = 1, 4, True
    ckpt = checkpointing.Checkpointer.from_config(self.workdir, config)
    self.addCleanup(ckpt.close)
    self.assertEqual(ckpt.directory, os.path.join(self.workdir, 'checkpoints'))
    state = make_state(self.mesh)
    self.assertEqual([ckpt.save(s, state, meta={}) for s in range(1, 9)],
                     [False, False, False, True, False, False, False, True])
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), [8])  # keep=1 and no val_error to rank
    _damage(ckpt.step_path(8), 'delete_meta')
    self.assertIsNone(ckpt.restore(abstract_of(state)))  # fresh start, as configured

  def test_bad_settings_name_the_field(self):
    with self.assertRaisesRegex(ValueError, 'config.checkpoint.keep must be'):
      checkpointing.Checkpointer(self.workdir, keep=0)

  def test_explicit_step_does_not_fall_back(self):
    ckpt, state1, _ = self.save_two()
    _damage(ckpt.step_path(2), 'delete_meta')
    with self.assertRaisesRegex(checkpointing.CheckpointError, 'cannot restore'):
      ckpt.restore(abstract_of(state1), step=2)
    self.assertEqual(ckpt.restore(abstract_of(state1), step=1)[1], {'epoch': 1})


class DataPositionTest(CheckpointTestCase):
  """Checkpoints written with grain's per-process iterator files (before meta held the
  data position): their position is read for any process count, never called damage."""

  def grain_dataset(self):
    return grain.MapDataset.range(1000).seed(3).shuffle().batch(4)

  def grain_iterator(self, workers: int):
    iter_dataset = self.grain_dataset().to_iter_dataset(grain.ReadOptions(num_threads=2))
    if workers:
      iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(iter_dataset)

  def save_old_style(self, workers: int, read: int):
    """Step 5's checkpoint with grain's state after `read` batches; the batch read next."""
    ckpt, state, it = self.checkpointer(), make_state(self.mesh), self.grain_iterator(workers)
    take(it, read)
    ckpt.save(5, state, data_iterator=it, meta={'epoch': 1})
    after = take(it, 1)
    ckpt.wait()
    if workers:
      it.close()
    return ckpt, state, after

  def as_if_saved_by_two_processes(self, ckpt) -> None:
    folder = os.path.join(ckpt.step_path(5), grain_state.GRAIN_ITEM)
    os.rename(os.path.join(folder, 'process_0-of-1.json'),
              os.path.join(folder, 'process_0-of-2.json'))
    shutil.copy(os.path.join(folder, 'process_0-of-2.json'),
                os.path.join(folder, 'process_1-of-2.json'))

  @parameterized.parameters((0, 7), (2, 7), (3, 8))
  def test_position_of_grain_files_from_threads_or_workers(self, workers, read):
    ckpt, state, after = self.save_old_style(workers, read)
    for processes in (1, 2):
      if processes == 2:
        self.as_if_saved_by_two_processes(ckpt)
      _, meta = ckpt.restore(abstract_of(state))
      self.assertEqual(meta, {'epoch': 1})
      if processes == 2:
        with self.assertLogs('absl', level='WARNING') as logs:
          position = ckpt.data_position(5, meta)
        self.assertIn('holds the grain iterator state of 2 processes (process_0-of-2.json); '
                      f'this run has 1. Only its position carries over: global batch {read}',
                      '\n'.join(logs.output))
      else:
        position = ckpt.data_position(5, meta)
      self.assertEqual(position, read)
      # The position is where the uninterrupted iterator went on.
      resumed = iter(self.grain_dataset()[position:].to_iter_dataset())
      self.assertEqual(take(resumed, 1), after)

  def test_grain_restore_across_process_counts_is_refused_not_quarantined(self):
    ckpt, state, _ = self.save_old_style(0, 3)
    self.as_if_saved_by_two_processes(ckpt)
    it = self.grain_iterator(0)
    take(it, 1)
    position = it.get_state()
    with self.assertRaisesRegex(checkpointing.CheckpointError,
                                'holds the data iterator state of 2 processes, not of 1'):
      ckpt.restore(abstract_of(state), data_iterator=it)
    self.assertEqual(it.get_state(), position)
    self.assertEqual(ckpt.all_steps(), [5])
    self.assertFalse(os.path.exists(os.path.join(ckpt.directory, checkpointing.DAMAGED_DIR)))

  def test_unknown_grain_state_leaves_the_position_to_the_caller(self):
    ckpt, state, _ = self.save_old_style(0, 3)
    with open(os.path.join(ckpt.step_path(5), grain_state.GRAIN_ITEM, 'process_0-of-1.json'),
              'w') as f:
      f.write('{"some_future_field": 3}')
    _, meta = ckpt.restore(abstract_of(state))
    with self.assertLogs('absl', level='WARNING') as logs:
      self.assertIsNone(ckpt.data_position(5, meta))
    self.assertIn('holds no data position this program can read', '\n'.join(logs.output))

  def test_the_stored_position_comes_first(self):
    ckpt, state, _ = self.save_old_style(0, 3)  # grain's files say 3
    self.assertEqual(ckpt.data_position(5, {checkpointing.DATA_POSITION: 9}), 9)
    ckpt.save(6, state, meta={'epoch': 1})  # neither
    ckpt.wait()
    with self.assertLogs('absl', level='WARNING') as logs:
      self.assertIsNone(ckpt.data_position(6, ckpt.restore(abstract_of(state))[1]))
    self.assertIn('Checkpoint at step 6 stores no data position.', '\n'.join(logs.output))


class PlainOrbaxRecipeTest(absltest.TestCase):
  """docs/checkpoints.md's recipe, run as written on a real run's checkpoint."""

  def test_the_documented_recipe_reads_a_real_run(self):
    from alexnet_jax.evaluation import finished_run  # pylint: disable=g-import-not-at-top
    from tests import trained_run  # pylint: disable=g-import-not-at-top
    workdir = trained_run.workdir()  # trained on eight devices, the towers split over two
    with open(os.path.join(REPO, 'docs', 'checkpoints.md')) as f:
      blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
    self.assertLen(blocks, 1)
    placeholder = "workdir = 'runs/digits'"
    self.assertIn(placeholder, blocks[0])
    out = files.make_tempdir(self)
    code = blocks[0].replace(placeholder, f'workdir = {workdir!r}') + textwrap.dedent(f"""
        import json, sys
        assert not any(m.startswith('alexnet_jax') for m in sys.modules), 'imported the project'
        np.savez({os.path.join(out, 'params.npz')!r}, **{{
            jax.tree_util.keystr(p): v
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}})
        with open({os.path.join(out, 'meta.json')!r}, 'w') as f:
          json.dump(meta, f)
        """)
    # One CPU device, outside the repository, nothing of the project on the path.
    env = {k: v for k, v in os.environ.items() if not k.startswith(('XLA_', 'JAX_', 'PYTHONPATH'))}
    proc = subprocess.run([sys.executable, '-c', code], cwd=out, capture_output=True, text=True,
                          env=dict(env, JAX_PLATFORMS='cpu'), check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn(f'step {trained_run.STEPS}: conv1 kernel (11, 11, 3, 12)', proc.stdout)

    config = finished_run.load_config(workdir)
    want, step = finished_run.restore_params(workdir, config)
    self.assertEqual(step, trained_run.STEPS)
    got = np.load(os.path.join(out, 'params.npz'))
    flat = jax.tree_util.tree_flatten_with_path(want)[0]
    self.assertEqual(sorted(got.files), sorted(jax.tree_util.keystr(p) for p, _ in flat))
    for path, value in flat:
      np.testing.assert_array_equal(got[jax.tree_util.keystr(path)], np.asarray(value))
    with open(os.path.join(out, 'meta.json')) as f:
      meta = json.load(f)
    self.assertEqual((meta['step'], meta[checkpointing.DATA_POSITION]),
                     (trained_run.STEPS, trained_run.STEPS))


class AbortedReadReportTest(absltest.TestCase):
  """The reports of abandoned checkpoint reads are dropped; every other report still shows."""

  def setUp(self):
    super().setUp()
    saved_hook, saved_filters = sys.unraisablehook, list(logging.getLogger('asyncio').filters)
    self.addCleanup(setattr, sys, 'unraisablehook', saved_hook)
    self.addCleanup(setattr, logging.getLogger('asyncio'), 'filters', saved_filters)
    self.unraisable = []
    sys.unraisablehook = self.unraisable.append
    errors.ignore_aborted_reads()  # pylint: disable=protected-access

  def unretrieved_failure(self, error: Exception) -> list[str]:
    """asyncio's own report of a failed future nobody awaited: the lines it logs."""
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(error)
    handler = _ListHandler()
    logging.getLogger('asyncio').addHandler(handler)
    try:
      del future  # the report is made when the failed future is collected
      gc.collect()
    finally:
      logging.getLogger('asyncio').removeHandler(handler)
      loop.close()
    return handler.messages

  def test_read_errors_are_dropped(self):
    for error in [ValueError('OUT_OF_RANGE: Error reading "params.fc6.kernel/0.0" in OCDBT '
                             'database at local file "/w/checkpoints/30/state/"'),
                  ValueError('NOT_FOUND: Error opening "zarr" driver'),
                  Exception('See full TensorStore details')]:
      self.assertEqual(self.unretrieved_failure(error), [], error)

  def test_other_errors_still_show(self):
    messages = self.unretrieved_failure(ValueError('my own coroutine failed'))
    self.assertLen(messages, 1)
    self.assertIn('exception was never retrieved', messages[0])

  def test_unraisable_event_loop_closed_is_dropped_and_others_pass(self):
    closed, other = RuntimeError('Event loop is closed'), RuntimeError('something else')
    for error in (closed, other):
      sys.unraisablehook(types.SimpleNamespace(exc_value=error, object=None))
    self.assertEqual([u.exc_value for u in self.unraisable], [other])

  def test_never_awaited_reads_do_not_warn(self):

    async def read():
      return 1

    for install in (False, True):
      gc.collect()  # coroutines earlier tests left behind warn now, not in the count below
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        if install:
          errors.ignore_aborted_reads()  # pylint: disable=protected-access
        coroutine = read()
        del coroutine  # never awaited, as the reads orbax abandons
        gc.collect()
      never_awaited = [w for w in caught if 'was never awaited' in str(w.message)]
      self.assertLen(never_awaited, 0 if install else 1)

  def test_installing_twice_wraps_once(self):
    errors.ignore_aborted_reads()  # pylint: disable=protected-access
    hook = sys.unraisablehook
    errors.ignore_aborted_reads()  # pylint: disable=protected-access
    self.assertIs(sys.unraisablehook, hook)
    self.assertLen([f for f in logging.getLogger('asyncio').filters
                    if isinstance(f, errors.AbortedReadFilter)], 1)  # pylint: disable=protected-access


class _ListHandler(logging.Handler):

  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


class ConfigTest(absltest.TestCase):

  def config(self):
    from configs import imagenet  # pylint: disable=g-import-not-at-top
    return imagenet.get_config()

  def test_config_py_reproduces_the_config(self):
    workdir = files.make_tempdir(self)
    config = self.config()
    config.batch_size = 64
    workdir_files.save_config(workdir, config)
    spec = importlib.util.spec_from_file_location('stored_config', os.path.join(workdir, 'config.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    self.assertEqual(module.get_config().to_dict(), config.to_dict())


class PreemptionTest(absltest.TestCase):

  def test_sigterm_sets_the_flag(self):
    before = signal.getsignal(signal.SIGTERM)
    self.assertTrue(stop_signals.install_preemption_handler())
    self.addCleanup(stop_signals.uninstall_preemption_handler)
    self.assertFalse(stop_signals.preemption_requested(3))
    os.kill(os.getpid(), signal.SIGTERM)
    self.assertTrue(stop_signals.preemption_requested(4))
    stop_signals.uninstall_preemption_handler()
    self.assertFalse(stop_signals.preemption_requested(5))
    self.assertEqual(signal.getsignal(signal.SIGTERM), before)

  def test_watcher_object(self):
    before = signal.getsignal(signal.SIGTERM)
    watcher = stop_signals.PreemptionWatcher()
    self.addCleanup(watcher.close)
    self.assertFalse(watcher.requested(1))
    os.kill(os.getpid(), signal.SIGTERM)
    self.assertTrue(watcher.requested())
    self.assertTrue(watcher.requested(2))
    watcher.close()
    self.assertFalse(watcher.requested(3))
    self.assertEqual(signal.getsignal(signal.SIGTERM), before)

  def test_first_ctrl_c_asks_to_stop_and_the_second_ends_the_process(self):
    # In a child process: the second SIGINT must kill it (the default action), not raise
    # KeyboardInterrupt and not be swallowed by the handler.
    code = textwrap.dedent('''
        import os, signal, sys, time
        from alexnet_jax.training import stop_signals
        watcher = stop_signals.PreemptionWatcher((signal.SIGTERM, signal.SIGINT))
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs at the next bytecode boundary
        print(watcher.requested(), watcher.interrupted,
              signal.getsignal(signal.SIGINT) == signal.SIG_DFL, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(60)
        print('still alive', flush=True)
        ''')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=subprocess_env())
    self.assertEqual(proc.stdout.split('\n')[0], 'True True True', proc.stderr)
    self.assertEqual(proc.returncode, -signal.SIGINT, proc.stdout + proc.stderr)
    self.assertNotIn('still alive', proc.stdout)
    self.assertNotIn('KeyboardInterrupt', proc.stderr)

  def test_sigterm_is_not_an_interruption_and_close_restores_ctrl_c(self):
    before = signal.getsignal(signal.SIGINT)
    watcher = stop_signals.PreemptionWatcher((signal.SIGTERM, signal.SIGINT))
    self.addCleanup(watcher.close)
    os.kill(os.getpid(), signal.SIGTERM)
    self.assertTrue(watcher.requested())
    self.assertFalse(watcher.interrupted)
    watcher.close()
    self.assertIs(signal.getsignal(signal.SIGINT), before)



class ReadOnlyTest(absltest.TestCase):

  def test_read_only_keeps_a_save_in_flight_and_refuses_to_save(self):
    workdir = files.make_tempdir(self)
    folder = os.path.join(workdir, 'checkpoints')
    writer = checkpointing.Checkpointer(folder, async_save=False)
    state = {'w': jnp.arange(4.0)}
    writer.save(1, state, meta={'step': 1}, force=True)
    writer.close()
    # A folder orbax would clean up as an unfinished save of a live run.
    in_flight = os.path.join(folder, '2.orbax-checkpoint-tmp-123')
    os.makedirs(in_flight)
    reader = checkpointing.Checkpointer(folder, read_only=True)
    self.addCleanup(reader.close)
    self.assertEqual(reader.all_steps(), [1])
    restored, meta = reader.restore({'w': jax.ShapeDtypeStruct((4,), jnp.float32)})
    np.testing.assert_array_equal(np.asarray(restored['w']), np.arange(4.0))
    self.assertEqual(meta, {'step': 1})
    self.assertTrue(os.path.isdir(in_flight))
    with self.assertRaisesRegex(ValueError, 'read-only'):
      reader.save(3, state, meta={'step': 3}, force=True)

if __name__ == '__main__':
  absltest.main()
