"""alexnet_jax.storage.lockfile: who holds a workdir, and when a lock left behind is taken over.

Real processes and real files: a live holder is a child process that sleeps; a dead one
is a child that has exited (its pid is gone); another host's lock is a lock file written
as that host would write it, with its heartbeat's age set through the file's mtime.
Two live runs on one workdir through launch.py are in tests/test_reliability.py.
"""

import os
import subprocess
import sys
import time

from absl.testing import absltest

from alexnet_jax.storage import lockfile
from tests.helpers.subprocesses import subprocess_env


def write_lock(path: str, holder: lockfile.Holder, age: float = 0.0) -> None:
  with open(path, 'w') as f:
    f.write(holder.to_text())
  if age:
    # The reader measures the age against a file it creates then: on a local disk, now.
    os.utime(path, (time.time() - age, time.time() - age))


def other_host() -> lockfile.Holder:
  return lockfile.Holder(host='node-17.cluster', pid=4242, started='2024-01-01T00:00:00+0000',
                         token='t-other', boot_id='another-boot')


class LockTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path
    self.path = os.path.join(self.folder, 'run.lock')

  def child(self) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    self.addCleanup(proc.wait)
    self.addCleanup(proc.kill)
    return proc

  def holder_of(self, pid: int) -> lockfile.Holder:
    """The lock a process with this pid on this machine would write."""
    me = lockfile.Holder.of_this_process()
    return lockfile.Holder(host=me.host, pid=pid, started=me.started, token=f't-{pid}',
                           boot_id=me.boot_id, pid_namespace=me.pid_namespace,
                           process_start=lockfile._process_start(pid))  # pylint: disable=protected-access

  def test_acquire_release(self):
    lock = lockfile.Lock(self.path)
    self.assertIsNone(lock.acquire())
    held = lockfile.Holder.parse(open(self.path).read())
    self.assertEqual((held.pid, held.host), (os.getpid(), lockfile.Holder.of_this_process().host))
    lock.release()
    self.assertFalse(os.path.exists(self.path))
    self.assertEqual(sorted(os.listdir(self.folder)), [], 'probe files left behind')

  def test_a_live_holder_on_this_machine_keeps_it(self):
    proc = self.child()
    write_lock(self.path, self.holder_of(proc.pid), age=3600)  # an old heartbeat: still alive
    with self.assertRaises(lockfile.LockHeld) as ctx:
      lockfile.Lock(self.path).acquire()
    self.assertEqual(ctx.exception.holder.pid, proc.pid)
    self.assertIn(f'pid {proc.pid}', str(ctx.exception))
    self.assertEqual(lockfile.Holder.parse(open(self.path).read()).pid, proc.pid)

  def test_a_dead_holder_on_this_machine_is_taken_over(self):
    proc = self.child()
    holder = self.holder_of(proc.pid)
    proc.kill()
    proc.wait()
    write_lock(self.path, holder)  # a fresh heartbeat does not matter: the pid is gone
    lock = lockfile.Lock(self.path)
    self.assertEqual(lock.acquire(), holder)
    self.addCleanup(lock.release)
    self.assertEqual(lockfile.Holder.parse(open(self.path).read()).pid, os.getpid())

  def test_a_reused_pid_is_not_taken_for_the_holder(self):
    proc = self.child()
    holder = self.holder_of(proc.pid)
    # The same pid, but the process that wrote the lock started at another time.
    reused = lockfile.Holder(**{**holder.__dict__, 'process_start': holder.process_start - 1})
    write_lock(self.path, reused)
    lock = lockfile.Lock(self.path)
    self.assertEqual(lock.acquire(), reused)
    lock.release()

  def test_another_hosts_lock_waits_for_its_heartbeat_to_go_stale(self):
    write_lock(self.path, other_host(), age=30)
    with self.assertRaises(lockfile.LockHeld) as ctx:
      lockfile.Lock(self.path, stale_seconds=120).acquire()
    self.assertBetween(ctx.exception.heartbeat_age, 25, 60)
    write_lock(self.path, other_host(), age=300)
    lock = lockfile.Lock(self.path, stale_seconds=120)
    self.assertEqual(lock.acquire(), other_host())
    lock.release()

  def test_a_lock_file_being_written_is_respected_until_stale(self):
    with open(self.path, 'w'):
      pass  # created, its content not written yet
    with self.assertRaises(lockfile.LockHeld) as ctx:
      lockfile.Lock(self.path).acquire()
    self.assertIsNone(ctx.exception.holder)
    write_lock(self.path, other_host(), age=0)
    with open(self.path, 'w') as f:
      f.write('{"format": "not ours"')
    os.utime(self.path, (time.time() - 1000, time.time() - 1000))
    lock = lockfile.Lock(self.path)
    self.assertIsNotNone(lock.acquire())
    lock.release()

  def test_release_leaves_a_lock_that_is_not_its_own(self):
    lock = lockfile.Lock(self.path)
    lock.acquire()
    write_lock(self.path, other_host())  # taken over by someone else meanwhile
    self.assertFalse(lock.still_held())
    lock.release()
    self.assertEqual(lockfile.Holder.parse(open(self.path).read()), other_host())

  def test_the_heartbeat_refreshes_the_modification_time(self):
    lock = lockfile.Lock(self.path, heartbeat_seconds=3600)
    lock.acquire()
    self.addCleanup(lock.release)
    os.utime(self.path, (1000, 1000))
    self.assertTrue(lock.refresh())
    self.assertGreater(os.stat(self.path).st_mtime, 1000)
    write_lock(self.path, other_host())
    os.utime(self.path, (1000, 1000))
    self.assertFalse(lock.refresh())  # not ours any more: left alone
    self.assertEqual(os.stat(self.path).st_mtime, 1000)

  def test_only_one_of_many_processes_gets_it(self):
    # Each says what it got at once; the one that got the lock holds it until told to stop,
    # so every other one tried while it was held.
    code = ('import sys; from alexnet_jax.storage import lockfile\n'
            'lock = lockfile.Lock(sys.argv[1])\n'
            'try:\n  lock.acquire()\nexcept lockfile.LockHeld:\n  print("held", flush=True)\n'
            'else:\n  print("got", flush=True)\n  sys.stdin.read()\n  lock.release()\n')
    env = subprocess_env()
    procs = [subprocess.Popen([sys.executable, '-c', code, self.path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(6)]
    outcomes = sorted(p.stdout.readline().strip() for p in procs)
    for p in procs:
      p.communicate('', timeout=120)
    self.assertEqual(outcomes, ['got'] + ['held'] * 5)
    self.assertFalse(os.path.exists(self.path))


if __name__ == '__main__':
  absltest.main()
