r"""Plants the paper's constants wrong, one at a time, and checks that a named test fails.

  python -m tests.mutants                  # every plant (about ten minutes on 2 cores)
  python -m tests.mutants NAME [NAME ...]  # some of them
  python -m tests.mutants --list

Each plant is one textual change in one file (`old` -> `new`, where the program uses
the value, not only where it is defined) and the tests that must catch it. For each
plant the repository (the files git tracks, plus untracked files it does not ignore)
is copied into a temporary folder, the change is made there, and pytest runs the named
tests in that copy; the working tree is never modified. A plant is caught when those
tests fail (pytest status 1). It is NOT caught when they pass, and an error when its
`old` text is not in the file exactly once (the plant went stale) or pytest could not
run. First, unless --no_baseline, the named tests run once on the unchanged copy:
they must pass there, or a "caught" would mean nothing.

Exits 1 if any plant is not caught. A developer's tool: `.ci/run` does not run it,
and pytest does not collect it (its name does not start with test_).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Plant:
  name: str
  path: str  # relative to the repository root
  old: str
  new: str
  tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions


PAPER_NET = 'tests/test_paper_config.py::PaperNetworkTest'
PAPER_CONFIG = 'tests/test_paper_config.py::ImagenetConfigTest'
PLATEAU_RUN = 'tests/test_plateau_run.py'
LOSSES = 'tests/test_losses.py::LossesTest'
BF16_NUMERICS = 'tests/test_alexnet.py::Bfloat16NumericsTest'

PLANTS = (
    # The paper's numbers where the network, the trainer and prepare use them.
    Plant('lrn1_alpha_over_5_at_call_site', 'alexnet_jax/model/alexnet.py',
          "x = sown('lrn1', local_response_norm(x))",
          "x = sown('lrn1', local_response_norm(x, alpha=1e-4 / 5))", (PAPER_NET,)),
    Plant('lrn2_size_3_at_call_site', 'alexnet_jax/model/alexnet.py',
          "x = sown('lrn2', local_response_norm(x))",
          "x = sown('lrn2', local_response_norm(x, size=3))", (PAPER_NET,)),
    Plant('fc6_dropout_hard_coded_0.1', 'alexnet_jax/model/alexnet.py',
          "sown('dropout6', nn.Dropout(self.dropout_rate,",
          "sown('dropout6', nn.Dropout(0.1,", (PAPER_NET,)),
    Plant('fc7_dropout_hard_coded_0.1', 'alexnet_jax/model/alexnet.py',
          "sown('dropout7', nn.Dropout(self.dropout_rate,",
          "sown('dropout7', nn.Dropout(0.1,", (PAPER_NET,)),
    Plant('pool1_before_lrn1', 'alexnet_jax/model/alexnet.py',
          "x = sown('lrn1', local_response_norm(x))\n"
          "    x = sown('pool1', max_pool(x, self.pool_size, self.pool_stride))",
          "x = sown('lrn1', local_response_norm(max_pool(x, self.pool_size, self.pool_stride)))\n"
          "    x = sown('pool1', x)",
          (PAPER_NET,)),
    Plant('dropout_in_evaluation', 'alexnet_jax/model/alexnet.py',
          "sown('dropout7', nn.Dropout(self.dropout_rate, deterministic=not train)",
          "sown('dropout7', nn.Dropout(self.dropout_rate, deterministic=False)",
          (PAPER_NET + '::test_no_dropout_in_evaluation',)),
    Plant('fc7_bias_0_in_paper_init', 'alexnet_jax/model/alexnet.py',
          "_BIAS_ONE = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')",
          "_BIAS_ONE = ('conv2', 'conv4', 'conv5', 'fc6')", (PAPER_NET + '::test_init_is_the_papers',)),
    Plant('conv3_grouped', 'alexnet_jax/model/alexnet.py',
          "'conv3': (3, 1, 1, False),", "'conv3': (3, 1, 1, True),",
          ('tests/test_alexnet.py', '-k', 'test_network_level_towers')),
    Plant('conv3_grouped_wiring', 'alexnet_jax/model/alexnet.py',
          "'conv3': (3, 1, 1, False),", "'conv3': (3, 1, 1, True),",
          (PAPER_NET + '::test_each_layer_reads_the_previous_one',)),
    Plant('imagenet_plateau_factor_0.01', 'alexnet_jax/configs/imagenet.py',
          'config.optim.plateau_factor = 0.1', 'config.optim.plateau_factor = 0.01',
          (PAPER_CONFIG, PLATEAU_RUN)),
    Plant('imagenet_four_drops', 'alexnet_jax/configs/imagenet.py',
          'config.optim.plateau_max_drops = 3', 'config.optim.plateau_max_drops = 4',
          (PAPER_CONFIG, PLATEAU_RUN)),
    Plant('digits_unlisted_change', 'alexnet_jax/configs/digits.py',
          'config.optim.learning_rate = 0.01', 'config.optim.learning_rate = 0.02',
          ('tests/test_paper_config.py::DigitsConfigTest',)),
    Plant('trainer_ignores_plateau_update', 'alexnet_jax/training/trainer.py',
          "state = _with_lr(run, state, run.plateau.update(last_eval['val_top1_err']))",
          "run.plateau.update(last_eval['val_top1_err'])", (PLATEAU_RUN,)),
    Plant('resume_drops_plateau_state', 'alexnet_jax/training/trainer.py',
          "optim.make_plateau(exp.config.optim, meta.get('plateau'))",
          'optim.make_plateau(exp.config.optim)',
          (PLATEAU_RUN + '::PlateauRunTest::'
           'test_kill_9_and_resume_across_a_drop_equals_the_uninterrupted_run',)),
    Plant('prepare_default_image_size_255', 'alexnet_jax/prepare/driver.py',
          'def prepare(source: str, output: str, *, image_size: int = 256,',
          'def prepare(source: str, output: str, *, image_size: int = 255,',
          ('tests/test_prepare.py::StoredSizeTest',)),
    Plant('prepare_flag_default_255', 'alexnet_jax/prepare/__main__.py',
          "flags.DEFINE_integer('image_size', 256,", "flags.DEFINE_integer('image_size', 255,",
          ('tests/test_prepare.py::StoredSizeTest',)),
    Plant('resize_to_255_and_pad_to_256', 'alexnet_jax/data/decoding.py',
          '  return cv2.resize(np.ascontiguousarray(square), (size, size),\n'
          '                    interpolation=interpolation)',
          '  small = cv2.resize(np.ascontiguousarray(square), (size - 1, size - 1),\n'
          '                     interpolation=interpolation)\n'
          "  return np.pad(small, ((0, 1), (0, 1), (0, 0)), mode='edge')",
          ('tests/test_prepare.py', '-k', 'StoredSizeTest or ImageFolderTest')),
    Plant('model_axis_silently_1', 'alexnet_jax/sharding/meshes.py',
          'return jax.make_mesh((shape.data, shape.model), MESH_AXES,',
          'return jax.make_mesh((shape.data * shape.model, 1), MESH_AXES,',
          ('tests/test_trainer.py', '-k', 'test_model_split_matches_one_device')),
    # Formulas the suite pinned before these tests.
    Plant('lrn_alpha_divided_by_n', 'alexnet_jax/model/layers.py',
          'denom = k + alpha * _channel_window_sum(jnp.square(x32), size)',
          'denom = k + alpha / size * _channel_window_sum(jnp.square(x32), size)',
          ('tests/test_alexnet.py', '-k', 'LRNTest')),
    Plant('optax_sgd_instead_of_paper_chain', 'alexnet_jax/learning/optim.py',
          '      optax.scale_by_learning_rate(learning_rate),\n'
          '      optax.trace(decay=momentum, nesterov=False),',
          '      optax.sgd(learning_rate, momentum=momentum),', ('tests/test_optim.py',)),
    Plant('vertical_flip', 'alexnet_jax/data/preprocess.py',
          'x[..., ::-1, :], x)', 'x[..., ::-1, :, :], x)', ('tests/test_augment.py',)),
    Plant('lighting_sign', 'alexnet_jax/data/augment.py',
          'return (255.0 * (np.asarray(eigvecs', 'return (-255.0 * (np.asarray(eigvecs',
          ('tests/test_augment.py',)),
    Plant('top5_as_top1', 'alexnet_jax/model/losses.py',
          'return tuple(((rank >= k) | unusable)', 'return tuple(((rank >= 1) | unusable)',
          ('tests/test_losses.py',)),
    # Numerics: ties, bfloat16 logits and conv1 (docs/design.md, "Top-k errors" and
    # "Numerics under bfloat16").
    Plant('ties_for_the_label', 'alexnet_jax/model/losses.py',
          'rank = jnp.sum(~(scores < label_score), axis=-1) - 1',
          'rank = jnp.sum(scores > label_score, axis=-1)', (LOSSES,)),
    Plant('nan_of_another_class_ignored', 'alexnet_jax/model/losses.py',
          'rank = jnp.sum(~(scores < label_score), axis=-1) - 1',
          'rank = jnp.sum(scores >= label_score, axis=-1) - 1',
          (LOSSES + '::test_nan_of_another_class_counts_against_the_label',)),
    Plant('fc_sum_in_bfloat16', 'alexnet_jax/model/alexnet.py',
          '                            preferred_element_type=jnp.float32)',
          '                            preferred_element_type=None)', (BF16_NUMERICS,)),
    Plant('fc_bias_rounded_to_bfloat16', 'alexnet_jax/model/alexnet.py',
          'return (y + bias).astype(', 'return (y + bias.astype(self.dtype)).astype(',
          (BF16_NUMERICS,)),
    Plant('logits_rounded_to_bfloat16', 'alexnet_jax/model/alexnet.py',
          "return dense('fc8', self.num_classes, x, CLASSES_AXIS, jnp.float32)",
          "return dense('fc8', self.num_classes, x, CLASSES_AXIS).astype(jnp.float32)",
          (BF16_NUMERICS + '::test_bfloat16_logits_rank_classes_like_float32',)),
    Plant('conv1_in_bfloat16', 'alexnet_jax/model/alexnet.py',
          "FULL_PRECISION_CONVS = ('conv1',)", 'FULL_PRECISION_CONVS = ()',
          (BF16_NUMERICS + '::test_a_lighting_shift_of_0_1_reaches_conv1',)),
    Plant('conv1_input_rounded_to_bfloat16', 'alexnet_jax/model/alexnet.py',
          '    x = x.astype(compute)\n', '    x = x.astype(self.dtype).astype(compute)\n',
          (BF16_NUMERICS + '::test_a_lighting_shift_of_0_1_reaches_conv1',)),
)


def repository_files() -> list[str]:
  """Paths git tracks plus untracked ones it does not ignore, relative to the root."""
  out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                       cwd=REPO, capture_output=True, check=True).stdout
  return sorted({p for p in out.decode().split('\0') if p and os.path.isfile(
      os.path.join(REPO, p))})


def copy_repository(files: list[str], destination: str) -> None:
  for path in files:
    target = os.path.join(destination, path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(os.path.join(REPO, path), target)


def run_pytest(root: str, tests: tuple[str, ...], timeout: float
               ) -> tuple[int, list[str], str]:
  """(pytest status, ids of failed or erroring tests, output tail) of the tests at `root`."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  cmd = [sys.executable, '-m', 'pytest', '-q', '-rfE', '-p', 'no:cacheprovider', *tests]
  try:
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return -1, [], f'timed out after {timeout:.0f} s'
  output = proc.stdout + proc.stderr
  failed = re.findall(r'^(?:FAILED|ERROR) (\S+)', output, re.MULTILINE)
  return proc.returncode, failed, output[-3000:]


def apply(plant: Plant, root: str) -> str | None:
  """Makes the plant's change in the copy at `root`; an error message if it cannot."""
  path = os.path.join(root, plant.path)
  with open(path) as f:
    text = f.read()
  count = text.count(plant.old)
  if count != 1:
    return f'its text occurs {count} times in {plant.path}, not once (stale plant)'
  with open(path, 'w') as f:
    f.write(text.replace(plant.old, plant.new))
  return None


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('names', nargs='*', help='plants to run (default: all)')
  parser.add_argument('--list', action='store_true', help='list the plants and exit')
  parser.add_argument('--no_baseline', action='store_true',
                      help='skip the run of the named tests without any plant')
  parser.add_argument('--timeout', type=float, default=900, help='seconds per pytest run')
  args = parser.parse_args()
  by_name = {p.name: p for p in PLANTS}
  if args.list:
    for p in PLANTS:
      print(f'{p.name:36s} {p.path:24s} {" ".join(p.tests)}')
    return 0
  unknown = [n for n in args.names if n not in by_name]
  if unknown:
    parser.error(f'unknown plants {unknown}; --list shows them')
  plants = [by_name[n] for n in args.names] if args.names else list(PLANTS)
  files = repository_files()
  failures = 0
  with tempfile.TemporaryDirectory(prefix='alexnet_mutants_') as scratch:
    if not args.no_baseline:
      root = os.path.join(scratch, 'baseline')
      copy_repository(files, root)
      # -k expressions belong to their file: each distinct selection runs on its own.
      selections = list(dict.fromkeys(p.tests for p in plants))
      for selection in selections:
        status, failed, tail = run_pytest(root, selection, args.timeout)
        if status != 0:
          print(f'baseline FAILS  {" ".join(selection)} (status {status}): {failed}\n{tail}',
                flush=True)
          return 1
      print(f'baseline passes: {len(selections)} test selections without plants', flush=True)
    for plant in plants:
      root = os.path.join(scratch, plant.name)
      copy_repository(files, root)
      start = time.monotonic()
      problem = apply(plant, root)
      if problem is None:
        status, failed, tail = run_pytest(root, plant.tests, args.timeout)
      seconds = time.monotonic() - start
      if problem is not None:
        verdict, detail = 'ERROR', problem
      elif status == 1 and failed:
        verdict, detail = 'caught', 'by ' + ', '.join(failed)
      elif status == 0:
        verdict, detail = 'NOT CAUGHT', 'every named test passed'
      else:
        verdict, detail = 'ERROR', f'pytest status {status}\n{tail}'
      failures += verdict != 'caught'
      print(f'{verdict:10s} {plant.name} ({plant.path}, {seconds:.0f} s): {detail}', flush=True)
      shutil.rmtree(root, ignore_errors=True)
  caught = len(plants) - failures
  print(f'{caught} of {len(plants)} plants caught', flush=True)
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
