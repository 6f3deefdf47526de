"""Classifies image files with a trained run: the paper's 10-crop test, or the center crop.

  python -m alexnet_jax.predict --workdir=runs/digits [--step=newest|best|N] [--crops=10|1] \
      [--json] IMAGE [IMAGE ...]

For each image it prints the five most probable classes (class name, e.g. the
wnid, and its human-readable description). A file that is not an image (or not a
regular file: a FIFO or a device is refused without reading it) does not stop the
others: every readable image is classified, then each bad one is reported on one
`error:` line, and a last line counts them (one image given: its line alone); the
exit status is 2 when any image was bad, 0 otherwise. With --json, stdout holds
one JSON object per image, in the order given, and nothing else (see
`json_record`): a bad image's object has an "error" field, and stderr reports
the bad ones as without --json. --step takes what evaluate
takes: 'newest', 'best' or a number. Without --crops the run's own final
test is used (config.final_eval_crops: the 10-crop test for ImageNet, the center
crop for digits, where half of the 10 views would be mirrored digits). The run's
stored config, its checkpoint and the dataset facts it keeps in the workdir
(opened by evaluation/finished_run.py) are all it needs: no training data, no
accelerator.

Each image goes through exactly what evaluation does: the shorter side resized
to config.data.image_size and the central square kept (as `prepare` stores
images), then the views cut, the mean image subtracted and the softmax outputs
of the views averaged (step.view_probabilities, as step.eval_step).

As a library:

  results = predict('runs/digits', ['seven.png'], crops=10)
  probs, top5 = results[0]          # probs: (num_classes,), top5: [ClassScore, ...]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import stat
import sys
from typing import Any, Sequence, Union

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import PIL

from alexnet_jax.core import cli
from alexnet_jax.core import errors
from alexnet_jax.data import augment
from alexnet_jax.data import decoding
from alexnet_jax.data import input_pipeline
from alexnet_jax.evaluation import finished_run
from alexnet_jax.learning import step_fns

Image = Union[str, os.PathLike, np.ndarray]
# Images per forward pass: 10 views each, so a chunk is 80 crops.
CHUNK = 8


@dataclasses.dataclass(frozen=True)
class ClassScore:
  label: int
  prob: float
  name: str  # wnid or folder name
  description: str  # human-readable, or the name again when the dataset has none


def read_image(image: Image, image_size: int) -> np.ndarray:
  """uint8 (S, S, 3): a file (any format PIL reads) or an RGB array, stored as prepare does.

  Raises InputError (a ValueError) naming the file when it is not a regular file or cannot
  be read as an image.
  """
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
        image.ndim == 3 and image.shape[-1] != 3):
      raise errors.InputError(f'an image array must be uint8 (H, W, 3) or (H, W), got '
                              f'{image.dtype} {image.shape}')
    return decoding.resize_center_crop(image, image_size)
  path = os.fspath(image)
  try:
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):  # a FIFO would block the read, a device never end it
      kind = 'a folder' if stat.S_ISDIR(mode) else 'not a regular file (a FIFO, socket or device)'
      raise errors.InputError(f'cannot read image {path}: it is {kind}')
    with open(path, 'rb') as f:
      data = f.read()
    return decoding.decode_and_resize(data, image_size)
  except errors.InputError:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    # Decoders fail in many ways (OSError, ValueError, SyntaxError, cv2.error, PIL's
    # DecompressionBombError); to the user each means the same: not a readable image.
    if isinstance(e, PIL.UnidentifiedImageError):
      reason = 'not an image in a format Pillow reads'
    elif isinstance(e, OSError) and e.strerror:
      reason = e.strerror
    else:
      reason = str(e).strip() or type(e).__name__
    raise errors.InputError(f'cannot read image {path}: {reason}') from e


def views_of(image: np.ndarray, crop_size: int, crops: int) -> dict[str, np.ndarray]:
  """The eval views of one stored image, as the eval pipeline builds them.

  Returns image uint8 (V, c, c, 3), crop int32 (V, 2), flip bool (V,); V is 1
  (center) or 10 (the paper's corners and center, plain and mirrored).
  """
  size = image.shape[0]
  if crops == 1:
    views = [(*augment.center_crop_offsets(size, crop_size), False)]
  elif crops == 10:
    views = augment.ten_crop_views(size, crop_size)
  else:
    raise errors.InputError(f'crops must be 1 (center) or 10 (the paper\'s test), got {crops}')
  return {
      'image': np.stack([augment.crop_copy(image, t, l, crop_size) for t, l, _ in views]),
      'crop': np.array([(t, l) for t, l, _ in views], np.int32),
      'flip': np.array([f for _, _, f in views], bool),
  }


# ----------------------------------------------------------------------------- the forward pass


# Modules are hashable dataclasses: equal models share one compilation across calls.
_view_probabilities = jax.jit(step_fns.view_probabilities, static_argnames='model')


def classify(run: finished_run.FinishedRun, images: Sequence[np.ndarray],
             crops: int = 10) -> np.ndarray:
  """Class probabilities (n, num_classes) of stored uint8 images (S, S, 3).

  Each row is the mean of the softmax outputs over the image's views.
  """
  fn = functools.partial(_view_probabilities, model=run.model)
  mean_image = jnp.asarray(run.mean_image, jnp.float32)
  out = []
  for start in range(0, len(images), CHUNK):
    views = [views_of(im, run.config.data.crop_size, crops) for im in images[start:start + CHUNK]]
    batch = {k: np.stack([v[k] for v in views]) for k in views[0]}
    no_lighting = np.zeros(batch['flip'].shape + (3,), np.float32)  # evaluation adds none
    probs = fn(run.params, batch['image'], batch['crop'], batch['flip'], no_lighting,
               mean_image=mean_image)
    out.append(np.asarray(jax.device_get(probs), np.float64).mean(axis=1))
  return np.concatenate(out).astype(np.float32) if out else np.zeros((0, run.info.num_classes),
                                                                      np.float32)


def top_k(probs: np.ndarray, info: input_pipeline.DatasetInfo, k: int = 5) -> list[ClassScore]:
  """The k most probable classes, most probable first (ties: lower label first)."""
  order = np.argsort(-probs, kind='stable')[:k]
  return [ClassScore(int(i), float(probs[i]), info.class_names[i], info.class_descriptions[i])
          for i in order]


def _checked_crops(config: Any, crops: int | None) -> int:
  crops = config.final_eval_crops if crops is None else crops
  if crops not in (1, 10):
    raise errors.InputError(f'crops must be 1 (center) or 10 (the paper\'s test), got {crops}')
  return crops


def _load_run(workdir: str | os.PathLike[str], config: Any,
              step: int | str | None) -> finished_run.FinishedRun:
  """The run at `step`: a number, None or 'newest' (the newest), or 'best' (as evaluate)."""
  if isinstance(step, str):
    step = finished_run.choose_step(os.fspath(workdir), config, finished_run.parse_step(step))
  return finished_run.load_run(workdir, step)


def predict_with_run(workdir: str | os.PathLike[str], images: Sequence[Image],
                     crops: int | None = 10, step: int | str | None = None
                     ) -> tuple[finished_run.FinishedRun,
                                list[tuple[np.ndarray, list[ClassScore]]]]:
  """`predict`, also returning the loaded run (which checkpoint step answered, its classes).

  crops=None takes the run's own final test (config.final_eval_crops). step: a
  checkpoint step, None or 'newest' (the newest), or 'best' (the lowest validation error).
  """
  config = finished_run.load_config(workdir)
  crops = _checked_crops(config, crops)
  stored = [read_image(im, config.data.image_size) for im in images]  # bad files fail fast
  run = _load_run(workdir, config, step)
  probs = classify(run, stored, crops)
  return run, [(p, top_k(p, run.info)) for p in probs]


def predict(workdir: str | os.PathLike[str], images: Sequence[Image], crops: int = 10,
            step: int | str | None = None) -> list[tuple[np.ndarray, list[ClassScore]]]:
  """(probabilities, top-5) for each image, from the run in WORKDIR.

  images: file paths (any format PIL reads) or uint8 RGB arrays of any size.
  crops: 10 for the paper's test, 1 for the center crop.
  step: the checkpoint to use: a step number, 'newest' (default) or 'best'.
  """
  return predict_with_run(workdir, images, crops, step)[1]


# ----------------------------------------------------------------------------- command line


def format_prediction(image: Image, top: Sequence[ClassScore], crops: int) -> str:
  """Lines a person reads: the image, then rank, probability, class name and description."""
  what = 'paper\'s 10-crop test' if crops == 10 else 'center crop'
  name = os.fspath(image) if not isinstance(image, np.ndarray) else f'array {image.shape}'
  width = max(len(s.name) for s in top)
  lines = [f'{name} ({what}):']
  for rank, s in enumerate(top, 1):
    described = f'  {s.description}' if s.description != s.name else ''
    lines.append(f'  {rank}. {s.prob:7.2%}  {s.name:<{width}}{described}')
  return '\n'.join(lines)


def json_record(image: str, top: Sequence[ClassScore], step: int, crops: int) -> dict[str, Any]:
  """The --json object of a classified image.

  {"image": PATH, "step": checkpoint step, "crops": 1 or 10,
   "top5": [[class index, probability], ...] (most probable first),
   "names": [class name, ...] (wnid or folder name, in the order of top5),
   "descriptions": [...] (only where the dataset has human-readable names)}
  """
  record: dict[str, Any] = {'image': image, 'step': step, 'crops': crops,
                            'top5': [[s.label, s.prob] for s in top],
                            'names': [s.name for s in top]}
  if any(s.description != s.name for s in top):
    record['descriptions'] = [s.description for s in top]
  return record


def json_error(image: str, reason: str) -> dict[str, Any]:
  """The --json object of an image that could not be read: {"image": PATH, "error": REASON}."""
  return {'image': image, 'error': reason}


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Workdir of a training run (holds config.json and '
                      'checkpoints/).')
  flags.DEFINE_string('step', finished_run.NEWEST,
                      f"Checkpoint: '{finished_run.NEWEST}' (default), '{finished_run.BEST}' "
                      '(lowest validation error among the kept ones) or a step number.')
  flags.DEFINE_enum('crops', None, ['10', '1'], '10: the paper\'s 10-crop test; 1: center crop. '
                    'Default: the test the run ended with (config.final_eval_crops).')
  flags.DEFINE_bool('json', False, 'Print one JSON object per image and line, in the order '
                    'given: {"image": PATH, "step": N, "crops": C, "top5": [[class index, '
                    'probability], ...], "names": [class name, ...]} plus "descriptions" where '
                    'the dataset has human-readable names; a bad image gives {"image": PATH, '
                    '"error": REASON} (and its error: line on stderr, as without --json).')
  flags.mark_flag_as_required('workdir')


def read_images(paths: Sequence[str], image_size: int
                ) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, str]]]:
  """(path, stored image) of each readable file, and (path, one-line reason) of each other one."""
  good, bad = [], []
  for path in paths:
    try:
      good.append((path, read_image(path, image_size)))
    except errors.InputError as e:
      bad.append((path, str(e)))
  return good, bad


def _print_results(workdir: str, config: Any, images: Sequence[str],
                   good: Sequence[tuple[str, np.ndarray]], bad: Sequence[tuple[str, str]],
                   crops: int, step: int | str, as_json: bool) -> None:
  """Classifies the good images and prints them: text, or (as_json) one line per image."""
  tops, answered = {}, None
  if good:
    run = _load_run(workdir, config, step)
    answered = run.step
    if not as_json:
      print(f'{workdir}, checkpoint step {run.step}:')
    probs = classify(run, [image for _, image in good], crops)
    tops = {path: top_k(p, run.info) for (path, _), p in zip(good, probs)}
    if not as_json:
      for path, _ in good:
        print(format_prediction(path, tops[path], crops), flush=True)
  if as_json:
    reasons = dict(bad)
    for path in images:  # in the order given; a path given twice gets two lines
      record = (json_error(path, reasons[path]) if path in reasons else
                json_record(path, tops[path], answered, crops))
      print(json.dumps(record), flush=True)


@cli.report_user_errors
def main(argv: Sequence[str]) -> None:
  images = list(argv[1:])
  if not images:
    raise app.UsageError('give one or more image files after the flags')
  cli.start_reader()
  crops = None if FLAGS.crops is None else int(FLAGS.crops)
  config = finished_run.load_config(FLAGS.workdir)
  crops = _checked_crops(config, crops)
  step = finished_run.parse_step(FLAGS.step)
  good, bad = read_images(images, config.data.image_size)
  _print_results(FLAGS.workdir, config, images, good, bad, crops, step, FLAGS.json)
  if len(images) == 1 and bad:
    raise errors.InputError(bad[0][1])
  for _, reason in bad:
    print(f'error: {reason}', file=sys.stderr, flush=True)
  if bad:
    # Status 2 as for any user error; the good images above are classified all the same.
    raise errors.InputError(f'{len(bad)} of {len(images)} images could not be read (listed '
                            f'above); {len(good)} classified')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
