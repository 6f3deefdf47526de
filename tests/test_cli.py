"""alexnet_jax.cli: a user error is the last line the process prints, whatever was left running."""

import os
import subprocess
import sys
import textwrap

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program whose main leaves behind what an abandoned checkpoint restore leaves (a failed
# future nobody awaited, a coroutine never started, an error raised in a finalizer) and then
# fails with a user error, or with a bug when asked to.
PROGRAM = textwrap.dedent('''
    import asyncio, gc, sys
    from absl import app
    from alexnet_jax import cli

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
      raise ValueError('the checkpoint is damaged')

    if __name__ == '__main__':
      app.run(main)
''')


def run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
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


if __name__ == '__main__':
  absltest.main()
