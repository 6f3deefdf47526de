"""metrics.jsonl, TensorBoard event files, console lines, and the finite-loss check."""

import glob
import io
import json
import os
import struct

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np
from tensorboardX.proto import event_pb2

from alexnet_jax.storage import metric_log
from tests.helpers.checks import FakeClock
from tests.helpers.files import make_tempdir


def train_record(step, loss=1.0):
  return {'step': step, 'kind': 'train', 'loss': loss, 'top1_err': 0.5, 'top5_err': 0.25,
          'lr': 0.01, 'epoch': step / 100, 'images_per_sec': 123.0}


def eval_record(step):
  return {'step': step, 'kind': 'eval', 'val_loss': 2.0, 'val_top1_err': 0.6,
          'val_top5_err': 0.3}


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), bit by bit: independent of tensorboardX's table."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: str) -> list[event_pb2.Event]:
  """Parses a TFRecord file of Event protos, checking both CRCs of every record."""
  with open(path, 'rb') as f:
    data = f.read()
  events, pos = [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack('<Q', header)
    (header_crc,) = struct.unpack('<I', data[pos + 8:pos + 12])
    body = data[pos + 12:pos + 12 + length]
    (body_crc,) = struct.unpack('<I', data[pos + 12 + length:pos + 16 + length])
    if header_crc != _masked(_crc32c(header)) or body_crc != _masked(_crc32c(body)):
      raise ValueError(f'bad CRC at offset {pos} of {path}')
    events.append(event_pb2.Event.FromString(body))
    pos += 16 + length
  return events


class MetricWriterTest(absltest.TestCase):

  def test_lines_are_json_with_step_and_kind_first(self):
    workdir = make_tempdir(self)
    with metric_log.MetricWriter(workdir, enabled=True, tensorboard=False) as writer:
      record = train_record(100, loss=np.float32(2.5))
      record['lr'] = jnp.float32(0.01)
      writer.write(record)
      writer.write(dict(eval_record(100), val10_top1_err=float('nan')))
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      lines = f.read().splitlines()
    self.assertLen(lines, 2)
    first, second = (json.loads(line) for line in lines)
    self.assertEqual(list(first)[:2], ['step', 'kind'])
    self.assertEqual(first['loss'], 2.5)
    self.assertAlmostEqual(first['lr'], 0.01, places=7)
    self.assertIsNone(second['val10_top1_err'])  # strict JSON: NaN is written as null
    self.assertEqual(metric_log.read_metrics(workdir), [first, second])

  def test_records_missing_spec_keys_are_refused(self):
    writer = metric_log.MetricWriter(make_tempdir(self), enabled=True, tensorboard=False)
    self.addCleanup(writer.close)
    bad = train_record(1)
    del bad['images_per_sec']
    with self.assertRaisesRegex(ValueError, 'images_per_sec'):
      writer.write(bad)
    with self.assertRaisesRegex(ValueError, 'kind'):
      writer.write(dict(train_record(1), kind='test'))
    with self.assertRaisesRegex(ValueError, 'step'):
      writer.write(dict(train_record(1), step=1.5))

  def test_disabled_writer_writes_nothing(self):
    workdir = make_tempdir(self)
    writer = metric_log.MetricWriter(workdir, enabled=False)
    writer.write(train_record(1))
    self.assertEqual(writer.truncate_after(0), 0)
    writer.close()
    self.assertEqual(os.listdir(workdir), [])

  def test_truncate_after_leaves_each_step_once(self):
    workdir = make_tempdir(self)
    writer = metric_log.MetricWriter(workdir, enabled=True, tensorboard=False)
    for step in (100, 200, 300):
      writer.write(train_record(step, loss=1.0))
    writer.write(eval_record(200))
    writer.write(eval_record(300))
    writer.close()
    with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
      f.write('{"step": 400, "kind": "tr')  # killed in the middle of a line
    # The resumed run restored the checkpoint of step 200 and redoes 300.
    writer = metric_log.MetricWriter(workdir, enabled=True, tensorboard=False)
    self.assertEqual(writer.truncate_after(200), 3)
    writer.write(train_record(300, loss=0.5))
    writer.write(eval_record(300))
    writer.close()
    records = metric_log.read_metrics(workdir)
    self.assertEqual([(r['step'], r['kind']) for r in records],
                     [(100, 'train'), (200, 'train'), (200, 'eval'), (300, 'train'), (300, 'eval')])
    self.assertEqual(records[3]['loss'], 0.5)
    self.assertEqual(sorted(os.listdir(workdir)), ['metrics.jsonl'])  # no temporary left

  def test_tensorboard_event_file_is_readable(self):
    workdir = make_tempdir(self)
    writer = metric_log.MetricWriter(workdir, enabled=True)
    writer.write(train_record(10, loss=3.0))
    writer.write(train_record(20, loss=2.0))
    writer.write(eval_record(20))
    writer.close()
    files = glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
    self.assertLen(files, 1)
    scalars = {}
    for event in read_events(files[0]):
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    self.assertEqual(scalars['train/loss'], [(10, 3.0), (20, 2.0)])
    self.assertEqual(scalars['eval/val_top1_err'], [(20, np.float32(0.6))])
    self.assertNotIn('train/kind', scalars)

  def test_tensorboard_purges_steps_after_resume(self):
    workdir = make_tempdir(self)
    writer = metric_log.MetricWriter(workdir, enabled=True)
    writer.truncate_after(200)
    writer.write(train_record(300))
    writer.close()
    (path,) = glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
    starts = [e.step for e in read_events(path)
              if e.HasField('session_log') and e.session_log.status == event_pb2.SessionLog.START]
    self.assertEqual(starts, [201])


class CheckFiniteTest(parameterized.TestCase):

  @parameterized.parameters(float('nan'), float('inf'), -float('inf'))
  def test_non_finite_stops_with_message(self, value):
    with self.assertRaises(metric_log.NonFiniteError) as ctx:
      metric_log.check_finite(jnp.float32(value), 1200, last_checkpoint_step=1000)
    message = str(ctx.exception)
    self.assertIn('loss is', message)
    self.assertIn('step 1200', message)
    self.assertIn('checkpoint (step 1000) is kept', message)

  def test_finite_passes(self):
    metric_log.check_finite(np.float32(2.3), 5)
    metric_log.check_finite(0.0, 5, name='val_loss')


class ProgressReporterTest(absltest.TestCase):

  def test_line_has_every_field_and_eta(self):
    clock = FakeClock()
    reporter = metric_log.ProgressReporter(1000, start_step=100, steps_per_epoch=100,
                                        enabled=True, progress_bar=False, clock=clock)
    reporter.update(100)
    clock.now = 10.0  # 100 steps in 10 s; 800 left -> 80 s
    with self.assertLogs('absl', level='INFO') as logs:
      reporter.update(200, train_record(200, loss=2.25))
    line = logs.records[-1].getMessage()
    for part in ('step 200/1000', 'epoch 2.00', 'loss 2.2500', 'top1_err 0.5000',
                 'top5_err 0.2500', 'lr 0.01', '123 img/s', 'ETA 00:01:20'):
      self.assertIn(part, line)
    with self.assertLogs('absl', level='INFO') as logs:
      reporter.log_eval(200, eval_record(200))
    self.assertIn('val_top1_err 0.6000', logs.records[-1].getMessage())

  def test_progress_bar_only_when_asked_or_on_a_tty(self):
    stream = io.StringIO()
    reporter = metric_log.ProgressReporter(10, enabled=True, stream=stream, clock=FakeClock())
    reporter.update(5)
    self.assertEqual(stream.getvalue(), '')  # StringIO is not a terminal
    reporter = metric_log.ProgressReporter(10, enabled=True, progress_bar=True, stream=stream,
                                        clock=FakeClock(), min_redraw_secs=0)
    reporter.update(5)
    reporter.close()
    self.assertEqual(stream.getvalue(), '\r[###############...............]  50.0% 5/10 ETA ?\n')


if __name__ == '__main__':
  absltest.main()
