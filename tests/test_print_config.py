"""--print_config: the resolved config, each field with the comment of its config file."""

import os
import re
import subprocess
import sys

from absl.testing import absltest

from alexnet_jax.config import printing
from alexnet_jax.config import resume_changes
from configs import digits
from configs import imagenet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET = os.path.join(REPO, 'configs', 'imagenet.py')

SOURCE = '''
def get_config():
  config = ml_collections.ConfigDict()
  config.a = 1  # The a.
  config.b = 2  # The b, whose comment
  #               goes on below.
  # A comment of c, above it.
  config.c = (
      1,  # not the comment of c
  )
  config.s = ml_collections.ConfigDict()
  config.s.d = 'x'
  config.s.e: int = 3  # An annotated e.
  return config
'''


class CommentsTest(absltest.TestCase):

  def test_trailing_continued_and_leading_comments(self):
    self.assertEqual(printing.comments_of_source(SOURCE), {
        'a': 'The a.', 'b': 'The b, whose comment goes on below.', 'c': 'A comment of c, above it.',
        's.e': 'An annotated e.'})

  def test_every_field_of_the_paper_config_has_its_comment(self):
    comments = printing.field_comments(IMAGENET)
    fields = resume_changes.flatten(imagenet.get_config().to_dict())
    self.assertEqual(sorted(f for f in fields if not comments.get(f)), [])
    self.assertEqual(comments['model.dtype'],
                     "Compute dtype: 'auto' (bfloat16 on GPU/TPU, float32 on CPU), 'float32' or "
                     "'bfloat16'; params stay float32.")
    self.assertEqual(comments['evals'], "Evaluations: (metrics prefix, kind, split, 'every' | "
                                        "'final'); see evaluation/evaluators.py.")

  def test_a_derived_config_adds_its_own_comment(self):
    comments = printing.field_comments(os.path.join(REPO, 'configs', 'digits.py'))
    self.assertEqual(comments['data.flip'], 'Random horizontal flips in training. (digits.py: a '
                                            'mirrored digit is another symbol)')
    self.assertEqual(comments['seed'], printing.field_comments(IMAGENET)['seed'])


class PrintConfigCommandTest(absltest.TestCase):

  def run_command(self, *args: str) -> str:
    proc = subprocess.run([sys.executable, *args, '--config=configs/digits.py',
                           '--config.batch_size=32', '--print_config'],
                          cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    return proc.stdout

  def test_launch_prints_each_field_once_with_its_comment_and_exits(self):
    out = self.run_command('launch.py')  # no --workdir: nothing is trained or written
    fields = resume_changes.flatten(digits.get_config().to_dict())
    heads = [line.split(' = ')[0] for line in out.splitlines() if ' = ' in line
             and not line.startswith((' ', '#'))]
    self.assertCountEqual(heads, fields)
    self.assertIn('batch_size = 32  # Global batch (all devices, all hosts), images per step.',
                  out)
    self.assertRegex(out, re.escape("model.dtype = 'float32'  # [was 'auto'] Compute dtype:"))
    self.assertIn("data.flip = False  # Random horizontal flips in training. (digits.py: a",
                  out)
    self.assertEqual(self.run_command('-m', 'alexnet_jax.summary'), out)


if __name__ == '__main__':
  absltest.main()
