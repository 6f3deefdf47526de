"""alexnet_jax.core.cli: a user error is the last line the process prints, whatever was left running."""

import subprocess
import sys
import textwrap

from absl.testing import absltest

from tests.helpers import REPO
from tests.helpers.subprocesses import subprocess_env

# A program whose main leaves behind what an abandoned checkpoint restore leaves (a failed
# future nobody awaited, a coroutine never started, an error raised in a finalizer) and then
# fails with a user error, or with a bug when asked to.
PROGRAM = textwrap.dedent('''
    import asyncio, gc, sys
    from absl import app
    from alexnet_jax.core import cli
    from alexnet_jax.core import errors

    LEFT_BEHIND = []

    class RaisesWhenCollected:
      def __del__(self):
        raise RuntimeError('raised in a finalizer')

    async def read():
      return 1

    @cli.report_user_errors
    def main(argv):
      loop = asyncio.new_event_loop()
      future = loop.create_future()
      future.set_exception(ValueError('a read that failed'))
      LEFT_BEHIND.extend([loop, future, read(), RaisesWhenCollected()])
      if argv[1:] == ['bug']:
        raise TypeError('a bug keeps its traceback')
      if argv[1:] == ['value_error_deep_down']:
        {}['a key the code expected']  # a KeyError in the program: a bug, not the user's
      if argv[1:] == ['ctrl_c']:
        raise KeyboardInterrupt
      raise errors.InputError('the checkpoint is damaged')

    if __name__ == '__main__':
      app.run(main)
''')


def run(*args: str, **environ: str) -> subprocess.CompletedProcess:
  env = subprocess_env(drop=('ALEXNET_JAX_TRACEBACK',), JAX_PLATFORMS='cpu', **environ)
  return subprocess.run([sys.executable, '-c', PROGRAM, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


class UserErrorTest(absltest.TestCase):

  def test_the_error_is_the_last_line_and_nothing_follows(self):
    proc = run()
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertEqual(proc.stderr.strip().splitlines(), ['error: the checkpoint is damaged'])

  def test_without_the_error_what_was_left_behind_does_print(self):
    # The same leftovers after a bug: the bug's traceback and the leftovers' reports show,
    # so the quiet exit above is the wrapper's doing.
    proc = run('bug')
    self.assertEqual(proc.returncode, 1, proc.stderr)
    self.assertIn('TypeError: a bug keeps its traceback', proc.stderr)
    self.assertIn('was never awaited', proc.stderr)

  def test_a_key_error_in_the_program_keeps_its_traceback(self):
    # Only errors raised as the user's (errors.UserError) become one line: a KeyError or
    # ValueError deep in the code is a bug to report, with where it happened.
    proc = run('value_error_deep_down')
    self.assertEqual(proc.returncode, 1, proc.stderr)
    self.assertIn('Traceback (most recent call last)', proc.stderr)
    self.assertIn("KeyError: 'a key the code expected'", proc.stderr)
    self.assertNotIn('error: ', proc.stderr.splitlines()[-1])

  def test_the_environment_variable_shows_a_user_errors_traceback(self):
    proc = run(ALEXNET_JAX_TRACEBACK='1')
    self.assertEqual(proc.returncode, 2, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    self.assertEqual(lines[-1], 'error: the checkpoint is damaged')
    self.assertIn('Traceback (most recent call last)', proc.stderr)
    self.assertIn('in main', proc.stderr)  # where it was raised
    self.assertIn('alexnet_jax.core.errors.InputError: the checkpoint is damaged', proc.stderr)

  def test_ctrl_c_is_one_line_and_status_130(self):
    proc = run('ctrl_c')
    self.assertEqual(proc.returncode, 130, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    self.assertLen(lines, 1, proc.stderr)
    self.assertStartsWith(lines[0], 'interrupted: Ctrl-C')


if __name__ == '__main__':
  absltest.main()
