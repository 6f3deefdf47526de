"""Every bad input a user can give, through the real commands: one line, non-zero, nothing touched.

CASES below is the matrix. Each case runs `python launch.py` or `python -m alexnet_jax.X` (X:
prepare, predict, evaluate, plot, summary) on one bad input and must exit with the listed
status, print exactly the listed line (paths shown as the names in FIXTURES), show no Python
traceback, and leave every file that existed before it byte-for-byte as it was (and, where
marked, create no workdir or output at all). Bad images are the exception that does not fail: prepare skips and
counts the undecodable ones (and converts the odd but valid ones), unless --strict.

docs/bad_input.md is generated from CASES; a test fails when they differ. After changing a
message or a case, rewrite it with

  python -m tests.test_bad_input --write_doc

Speed: a helper process imports the libraries once, then forks one child per case that
runs the command exactly as `python` would run it (runpy as `__main__`, fresh flags, its
own stdout/stderr); a few cases also run as plain subprocesses to prove both give the same.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Optional

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from tests.helpers import REPO
from tests.helpers import faults
from tests.helpers import images
from tests.helpers import subprocesses
from tests.helpers import training
from tests.fuzz import findings as fuzz_findings

DOC = os.path.join(REPO, 'docs', 'bad_input.md')

# Placeholders of the matrix, what they stand for, in the order they are substituted back
# into the printed messages (longer paths first).
FIXTURES = {
    'RUN': 'the workdir of a run: config, dataset info, a checkpoint of step 2, metrics',
    'RUN3': 'the same on {DATA3}, with 3 output classes',
    'BROKEN_RUN': 'a copy of {RUN} whose checkpoint has its largest array file cut in half',
    'CFG': 'a config file for a tiny AlexNet on {DATA} (`tests/helpers/training.py` `tiny_config`)',
    'DATA3': 'a prepared 3-class dataset (ImageFolder of 24 train and 6 val images)',
    'NOVAL': 'a prepared 3-class dataset without validation images (an ImageFolder without val/)',
    'DAMAGED': 'a copy of {DATA} whose first train shard had most of its bytes overwritten',
    'DATA': 'the prepared digits dataset (10 classes, image_size 72)',
    'RAW': 'the same digits prepared with --format=raw (memory-mapped pixels)',
    'CASE': 'a folder of this case alone (its bad images, tars, or outputs)',
    'FILE': 'a plain file',
    'WNID0': 'the synset of official validation image 1 (tfds validation_labels.txt)',
    'WNID1': 'the synset of official validation image 2',
}

SKIPPED = 'skipped'  # `status` of the bad-image cases: exit 0, the image skipped and counted


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  group: str
  what: str  # the bad input, in words
  tool: str  # launch | prepare | predict | evaluate | plot | summary | import_weights | export_weights
  args: tuple[str, ...]  # with {PLACEHOLDERS}
  status: int
  message: str  # the one line it prints, paths as placeholders
  # Files the case puts in CASE before it runs: relative path -> kind (see _make_input).
  inputs: tuple[tuple[str, str], ...] = ()
  skipped: Optional[int] = None  # bad images: how many prepare reports as skipped
  env: tuple[tuple[str, str], ...] = ()  # environment variables set for this case alone
  note: str = ''  # what the exit status means, in the doc, where the status alone does not say
  # The command must not create {CASE}/new or {CASE}/out (a workdir, a prepare output, its
  # _partial/ or lock): refused before anything is written, or all of it removed.
  leaves_nothing: bool = False


def _launch(*extra: str, workdir: str = '{CASE}/new') -> tuple[str, ...]:
  return ('--config={CFG}', f'--workdir={workdir}', *extra)


NO_VAL_MESSAGE = (
    'error: the dataset in {NOVAL} has no validation images: a run evaluates on them (every 1 '
    'epochs and at the end) and its schedule and best checkpoint rank by them. Prepare the '
    'dataset again from a source with a val/<class>/ folder (or ILSVRC2012_img_val.tar), into a '
    'new folder')

# Four small good images per class (two classes) and one in val: the bad-image cases add one.
GOOD_TREE = (('train/a/0.JPEG', 'jpeg'), ('train/a/1.JPEG', 'jpeg'), ('train/b/0.JPEG', 'jpeg'),
             ('train/b/1.JPEG', 'jpeg'), ('val/a/0.JPEG', 'jpeg'))

CASES = (
    # --------------------------------------------------------------------- paths
    Case('missing_data_dir', 'paths', 'config.data.dir does not exist', 'launch',
         _launch('--config.data.dir={CASE}/nowhere'), 2,
         'error: {CASE}/nowhere holds no complete prepared dataset (no finished dataset.json); '
         'run: python -m alexnet_jax.prepare --source=SRC --output={CASE}/nowhere (or set '
         'config.data.prepare_from)'),
    Case('data_dir_is_a_file', 'paths', 'config.data.dir is a file', 'launch',
         _launch('--config.data.dir={FILE}'), 2,
         'error: {FILE} holds no complete prepared dataset (no finished dataset.json); run: '
         'python -m alexnet_jax.prepare --source=SRC --output={FILE} (or set '
         'config.data.prepare_from)'),
    Case('missing_prepare_from', 'paths', 'config.data.prepare_from does not exist', 'launch',
         _launch('--config.data.dir={CASE}/new/data',
                 '--config.data.prepare_from={CASE}/nowhere'), 2,
         'error: source folder {CASE}/nowhere does not exist'),
    Case('workdir_is_a_file', 'paths', '--workdir is a file', 'launch',
         _launch(workdir='{FILE}'), 2,
         "error: workdir '{FILE}' cannot be written: File exists"),
    Case('workdir_under_a_file', 'paths', '--workdir cannot be created (a file in its path)',
         'launch', _launch(workdir='{FILE}/run'), 2,
         "error: workdir '{FILE}/run' cannot be written: Not a directory"),
    Case('missing_config_file', 'paths', '--config file does not exist', 'launch',
         ('--config={CASE}/nowhere.py', '--workdir={CASE}/new'), 2,
         "error: cannot load the --config file: [Errno 2] No such file or directory: "
         "'{CASE}/nowhere.py'"),
    Case('unknown_config_name', 'paths', '--config names neither a file nor a shipped config',
         'launch', ('--config=imagenett', '--workdir={CASE}/new'), 2,
         "error: --config=imagenett: no such config file, and no shipped config named "
         "'imagenett' (give a path to a .py file, or one of: digits, imagenet, paper/digits, "
         'paper/no_augmentation, paper/no_dropout, paper/no_lighting, paper/no_lrn, '
         'paper/non_overlapping_pool, paper/one_tower)'),
    Case('missing_source', 'paths', 'prepare --source does not exist', 'prepare',
         ('--source={CASE}/nowhere', '--output={CASE}/out'), 2,
         'error: source folder {CASE}/nowhere does not exist'),
    Case('source_is_a_file', 'paths', 'prepare --source is a file', 'prepare',
         ('--source={FILE}', '--output={CASE}/out'), 2,
         'error: source {FILE} is not a folder (give the folder that holds '
         'ILSVRC2012_img_train.tar, or an ImageFolder root)'),
    Case('source_not_a_dataset', 'paths', 'prepare --source holds neither tars nor train/',
         'prepare', ('--source={CASE}/src', '--output={CASE}/out'), 2,
         'error: source folder {CASE}/src holds neither ILSVRC2012_img_train.tar nor '
         'train/: it should hold the official tars (ILSVRC2012_img_train.tar, '
         'ILSVRC2012_img_val.tar) or an ImageFolder tree (train/<class>/<image>, '
         'val/<class>/<image>)', inputs=(('src/photo.JPEG', 'jpeg'),)),
    Case('output_is_a_file', 'paths', 'prepare --output is a file', 'prepare',
         ('--source=digits', '--output={FILE}'), 2,
         'error: --output {FILE} is a regular file, not a folder; give the path of a folder to '
         'write'),
    Case('output_under_a_file', 'paths', 'prepare --output cannot be created (refused before '
         'the source is read)', 'prepare', ('--source=digits', '--output={FILE}/out'), 2,
         'error: --output {FILE}, a parent of {FILE}/out, is a regular file, not a folder; give '
         'the path of a folder to write'),
    Case('output_holds_other_files', 'paths', 'prepare --output is a non-empty folder', 'prepare',
         ('--source=digits', '--output={RUN}'), 2,
         'error: output folder {RUN} is not empty and holds no prepared dataset (found '
         'checkpoints, config.json, config.py, ...); choose a new or empty folder'),
    Case('output_prepared_at_other_size', 'paths',
         'prepare --output holds a dataset of another image_size', 'prepare',
         ('--source=digits', '--output={DATA}', '--image_size=64'), 2,
         'error: {DATA} already holds a dataset prepared at image_size 72, not 64; '
         'prepare into another folder'),
    Case('output_inside_source', 'paths', 'prepare --output inside the source\'s train/',
         'prepare', ('--source={CASE}/src', '--output={CASE}/src/train/out'), 2,
         'error: --output {CASE}/src/train/out is inside the source {CASE}/src; prepare into a '
         'folder outside it (inside, it would be read as part of the source)',
         inputs=tuple((f'src/{p}', k) for p, k in GOOD_TREE)),
    Case('workdir_in_use', 'paths', '--workdir of a run that is still going (a live process '
         'holds its lock)', 'launch', _launch(workdir='{CASE}/run'), 2,
         'error: the workdir {CASE}/run is in use by another run (host H, pid P, started T, last '
         'heartbeat N s ago; lock file {CASE}/run/run.lock): two runs would overwrite each '
         'other\'s checkpoints and metrics. Wait for it to end or use another --workdir; if that '
         'run is dead and its host unreachable, delete {CASE}/run/run.lock (a lock of a dead '
         'process on this host is taken over by itself, one of another host after 120 s without '
         'a heartbeat)', inputs=(('run', 'locked_run'),)),
    Case('workdir_config_json_damaged', 'paths', 'the config.json of a run is not JSON (resume)',
         'launch', _launch(workdir='{CASE}/run'), 2,
         'error: {CASE}/run/config.json is not valid JSON (Expecting property name enclosed in '
         'double quotes: line 1 column 13 (char 12)); it holds the config the run was started with (config.py beside it has the '
         'same settings): restore it from a backup, or delete it to resume training without '
         'checking the config', inputs=(('run', 'run_with_damaged_config'),)),
    Case('predict_config_json_damaged', 'paths', 'predict on a run whose config.json is not JSON',
         'predict', ('--workdir={CASE}/run', '{CASE}/x.JPEG'), 2,
         'error: {CASE}/run/config.json is not valid JSON (Expecting property name enclosed in '
         'double quotes: line 1 column 13 (char 12)); it holds the config the run was started with (config.py beside it has the '
         'same settings): restore it from a backup, or delete it to resume training without '
         'checking the config', inputs=(('run', 'run_with_damaged_config'), ('x.JPEG', 'jpeg'))),
    Case('predict_missing_workdir', 'paths', 'predict --workdir does not exist', 'predict',
         ('--workdir={CASE}/nowhere', '{CASE}/x.JPEG'), 2,
         'error: workdir {CASE}/nowhere does not exist', inputs=(('x.JPEG', 'jpeg'),)),
    Case('predict_workdir_not_a_run', 'paths', 'predict --workdir is not a training run',
         'predict', ('--workdir={DATA}', '{CASE}/x.JPEG'), 2,
         'error: {DATA} holds no config.json: not the workdir of a training run',
         inputs=(('x.JPEG', 'jpeg'),)),
    Case('evaluate_missing_data', 'paths', 'evaluate with a --data_dir that does not exist',
         'evaluate', ('--workdir={RUN}', '--data_dir={CASE}/nowhere'), 2,
         'error: {CASE}/nowhere holds no complete prepared dataset (no finished dataset.json); '
         'run: python -m alexnet_jax.prepare --source=SRC --output={CASE}/nowhere (or set '
         'config.data.prepare_from)'),
    Case('evaluate_output_is_a_folder', 'paths', 'evaluate --output is a folder (refused before '
         'the evaluation)', 'evaluate', ('--workdir={RUN}', '--output={CASE}/dir'), 2,
         'error: --output {CASE}/dir is a folder, not a regular file; give the path of a file to '
         'write', inputs=(('dir', 'folder'),)),
    Case('evaluate_output_missing_parent', 'paths', 'evaluate --output in a folder that does not '
         'exist (refused before the evaluation)', 'evaluate',
         ('--workdir={RUN}', '--output={CASE}/nowhere/result.json'), 2,
         'error: --output {CASE}/nowhere/result.json: its folder {CASE}/nowhere does not exist'),
    Case('predict_missing_image', 'paths', 'predict IMAGE does not exist', 'predict',
         ('--workdir={RUN}', '{CASE}/nowhere.JPEG'), 2,
         'error: cannot read image {CASE}/nowhere.JPEG: No such file or directory'),
    # --------------------------------------------------------------------- configs
    Case('wrong_type', 'configs', 'a value of the wrong type on the command line', 'launch',
         _launch('--config.num_epochs=ten'), 1,
         "FATAL Flags parsing error: flag --config.num_epochs=ten: invalid literal for int() "
         "with base 10: 'ten'"),
    Case('unknown_field', 'configs', 'a config field that does not exist (a typo)', 'launch',
         _launch('--config.optim.lr=0.1'), 2,
         'error: --config.optim.lr: config.optim.lr is not a config field; the fields are '
         'those of configs/imagenet.py'),
    Case('negative_lr', 'configs', 'negative learning rate', 'launch',
         _launch('--config.optim.learning_rate=-0.1', workdir='{RUN}'), 2,
         'error: config.optim.learning_rate must be > 0, got -0.1'),
    Case('unknown_schedule', 'configs', 'unknown learning-rate schedule', 'launch',
         _launch('--config.optim.schedule=cosine', workdir='{RUN}'), 2,
         "error: config.optim.schedule must be one of ('plateau', 'step', 'constant'), got "
         "'cosine'"),
    Case('batch_not_divisible', 'configs', 'batch size not divisible by the data axis', 'launch',
         _launch('--config.batch_size=15', workdir='{RUN}'), 2,
         'error: config.batch_size=15 is not divisible by the mesh data axis (8 device groups); '
         'use a multiple of 8'),
    Case('zero_epochs', 'configs', 'zero epochs', 'launch',
         _launch('--config.num_epochs=0'), 2,
         'error: config.num_epochs must be a positive integer, got 0'),
    Case('crop_larger_than_image', 'configs', 'crop larger than the stored image', 'launch',
         _launch('--config.data.crop_size=80'), 2,
         'error: config.data.image_size must be an integer >= data.crop_size (80), got 72'),
    Case('image_size_mismatch', 'configs', 'image_size other than the prepared one', 'launch',
         _launch('--config.data.crop_size=80', '--config.data.image_size=96'), 2,
         'error: {DATA} was prepared at image_size 72 but config.data.image_size is 96'),
    Case('zero_pool_size', 'configs', 'a max-pooling window of 0', 'launch',
         _launch('--config.model.pool_size=0'), 2,
         'error: config.model.pool_size must be a positive integer, got 0'),
    Case('unknown_init', 'configs', 'unknown init scheme', 'launch',
         _launch('--config.model.init_scheme=xavier'), 2,
         "error: unknown init scheme 'xavier'; expected one of ('paper', 'caffe', 'he')"),
    Case('odd_tower_width', 'configs', 'a width multiplier giving odd tower widths', 'launch',
         _launch('--config.model.width=0.3'), 2,
         'error: conv1 width 29 (width multiplier 0.3) is not divisible by towers=2; choose a '
         'width giving even conv widths'),
    Case('unknown_dtype', 'configs', 'unknown compute dtype', 'launch',
         _launch('--config.model.dtype=float8'), 2,
         "error: config.model.dtype must be 'auto' or one of ('float32', 'bfloat16', 'float16'), "
         "got 'float8'", leaves_nothing=True),
    Case('integer_dtype_dry_run', 'configs', 'an integer compute dtype, with --dry_run', 'launch',
         _launch('--config.model.dtype=int8', '--dry_run'), 2,
         "error: config.model.dtype must be 'auto' or one of ('float32', 'bfloat16', 'float16'), "
         "got 'int8'", leaves_nothing=True),
    Case('summary_mesh_splits_a_tower', 'configs', 'summary of a mesh launch.py refuses '
         '(mesh.model=4 with two towers)', 'summary', ('--config={CFG}', '--config.mesh.model=4'),
         2, 'error: config.mesh.model=4 does not divide config.model.towers=2: each device must '
         'hold whole towers (use model=1 or 2)'),
    Case('slurm_ntasks_not_a_number', 'configs', 'SLURM_NTASKS that is not a number', 'launch',
         _launch('--dry_run'), 2,
         "error: the environment variable SLURM_NTASKS='abc' must be an integer >= 1 (the "
         'cluster launcher sets it; unset it, or fix the job script that sets it)',
         env=(('SLURM_JOB_ID', '1'), ('SLURM_STEP_NODELIST', 'localhost'),
              ('SLURM_NTASKS', 'abc'), ('SLURM_PROCID', '0'), ('SLURM_LOCALID', '0')),
         leaves_nothing=True),
    Case('unknown_data_source', 'configs', 'unknown data source', 'launch',
         _launch('--config.data.source=imagenet'), 2,
         "error: data.source must be 'prepared' or 'tfds', got 'imagenet'"),
    Case('num_classes_mismatch', 'configs', 'num_classes other than the dataset\'s', 'launch',
         _launch('--config.data.dir={DATA3}'), 2,
         'error: config.model.num_classes is 10 but the dataset has 3 classes'),
    Case('negative_seed', 'configs', 'a negative seed', 'launch', _launch('--config.seed=-1'), 2,
         'error: config.seed must be an integer in [0, 2**31), got -1'),
    Case('config_without_get_config', 'configs', 'a --config file without get_config()',
         'launch', ('--config={CASE}/cfg.py', '--workdir={CASE}/new'), 2,
         'error: the --config file {CASE}/cfg.py defines no get_config() function (a config file '
         'returns its ml_collections.ConfigDict from get_config(); see configs/imagenet.py)',
         inputs=(('cfg.py', 'config_without_get_config'),)),
    Case('config_returns_a_dict', 'configs', 'a --config file whose get_config() returns a dict',
         'launch', ('--config={CASE}/cfg.py', '--workdir={CASE}/new'), 2,
         'error: get_config() of the --config file {CASE}/cfg.py returned a dict, not an '
         'ml_collections.ConfigDict; return ml_collections.ConfigDict({...}) (see '
         'configs/imagenet.py)', inputs=(('cfg.py', 'config_returning_a_dict'),)),
    Case('resume_changes_what_is_computed', 'configs',
         'resuming RUN with another batch size and width', 'launch',
         _launch('--config.batch_size=32', '--config.model.width=0.25', workdir='{RUN}'), 2,
         'error: the run in {RUN} was started with another config, and a resume may not change '
         'what it computes or its data order: batch_size: 16 -> 32; model.width: 0.125 -> 0.25. '
         'Resume it with its own config (--config={RUN}/config.py, plus only overrides of fields '
         'a resume may change; docs/reliability.md lists them), or start a new run in another '
         '--workdir'),
    Case('init_from_missing', 'configs', 'config.init_from names no folder', 'launch',
         _launch('--config.init_from={CASE}/nowhere'), 2,
         'error: config.init_from={CASE}/nowhere: workdir {CASE}/nowhere does not exist'),
    Case('init_from_not_a_run', 'configs', 'config.init_from names a folder that is no run',
         'launch', _launch('--config.init_from={DATA}'), 2,
         'error: config.init_from={DATA}: {DATA} holds no config.json: not the workdir of a '
         'training run'),
    Case('init_from_step_missing', 'configs', 'config.init_from names a step the run lacks',
         'launch', _launch('--config.init_from={RUN}:3'), 2,
         'error: config.init_from={RUN}:3: no checkpoint of step 3 in {RUN}/checkpoints; it has '
         'steps [2]'),
    Case('init_from_step_not_a_step', 'configs', 'config.init_from with a STEP that is none',
         'launch', _launch('--config.init_from={RUN}:last'), 2,
         "error: config.init_from={RUN}:last: STEP must be a checkpoint step (0, 1, ...), "
         "'newest' or 'best', got 'last'", leaves_nothing=True),
    Case('init_from_own_workdir', 'configs', 'config.init_from names the new run\'s workdir',
         'launch', _launch('--config.init_from={CASE}/new'), 2,
         "error: config.init_from={CASE}/new names this run's own workdir {CASE}/new: give the "
         'workdir of another run'),
    Case('init_from_other_network', 'configs', 'config.init_from names a run of another '
         'network (one tower here, two there)', 'launch',
         _launch('--config.init_from={RUN}', '--config.model.towers=1'), 2,
         "error: config.init_from: layer conv2 (kernel) is (5, 5, 6, 32) in {RUN} but "
         "(5, 5, 12, 32) in this run's network: only fc8 may differ (its class count); the other "
         'model fields (towers, width, conv_widths, conv1_padding, pool_size, pool_stride, '
         "crop_size) must match the source run's"),
    Case('resume_changes_init_from', 'configs', 'resuming RUN with another config.init_from',
         'launch', _launch('--config.init_from={RUN3}', workdir='{RUN}'), 2,
         'error: the run in {RUN} was started with another config, and a resume may not change '
         'what it computes or its data order: init_from: "" -> "{RUN3}". Resume it with its own '
         'config (--config={RUN}/config.py, plus only overrides of fields a resume may change; '
         'docs/reliability.md lists them), or start a new run in another --workdir'),
    Case('resume_on_another_dataset', 'configs', 'resuming RUN on another dataset', 'launch',
         _launch('--config.data.dir={DATA3}', workdir='{RUN}'), 2,
         'error: the run in {RUN} trained on another dataset than the one in its config now '
         '(classes 10 (0, 1, 2, ...) -> 3 (a, b, c); split sizes {\'train\': 1433, \'val\': 364} '
         '-> {\'train\': 24, \'val\': 6}; mean image (other training images); the run\'s is '
         'described in {RUN}/dataset_info.json): point config.data.dir at that dataset, or start '
         'a new run in another --workdir'),
    Case('no_such_platform', 'configs', 'JAX_PLATFORMS=gpu on a machine without a GPU', 'launch',
         _launch(), 2,
         'error: JAX cannot start the platform JAX_PLATFORMS=gpu asks for on this machine (no '
         'such device, or jax not installed for it); unset JAX_PLATFORMS to use what is here, or '
         'install jax for the accelerator (requirements-cuda.txt, requirements-tpu.txt)',
         env=(('JAX_PLATFORMS', 'gpu'),)),
    Case('diverging_lr', 'configs', 'a learning rate so high that the loss turns NaN', 'launch',
         _launch('--config.optim.learning_rate=1e30'), 2,
         'error: loss is nan at step 2: training stopped; no checkpoint was written yet. Lower '
         'config.optim.learning_rate or check the input data, then rerun with the same workdir.'),
    Case('bad_image_size_flag', 'configs', 'prepare --image_size too small', 'prepare',
         ('--source=digits', '--output={CASE}/out', '--image_size=4'), 2,
         'error: image_size must be at least 8, got 4'),
    *(Case(f'prepare_{name}_workers', 'flags', f'prepare --workers={count}', 'prepare',
           ('--source=digits', '--output={CASE}/out', f'--workers={count}'), 2,
           f'error: --workers must be a positive integer, got {count}', leaves_nothing=True)
      for name, count in (('zero', 0), ('negative', -2))),
    Case('plot_too_many_neighbours', 'flags', 'plot --neighbours too many for a PNG PIL opens',
         'plot', ('--workdir={RUN}', '--neighbours=701'), 2,
         'error: --queries=5 and --neighbours=701 make a nearest-neighbour figure of 105,300 x '
         '850 pixels, more than PIL opens without a decompression-bomb warning (89,478,485 '
         'pixels); at --queries=5, --neighbours can be at most 700'),
    # --------------------------------------------------------------------- datasets
    Case('no_validation_images', 'data', 'training on a dataset without validation images',
         'launch', _launch('--config.data.dir={NOVAL}', '--config.model.num_classes=3'), 2,
         NO_VAL_MESSAGE),
    Case('no_validation_images_dry_run', 'data', 'the same, with --dry_run', 'launch',
         _launch('--config.data.dir={NOVAL}', '--config.model.num_classes=3', '--dry_run'), 2,
         NO_VAL_MESSAGE),
    Case('damaged_shard', 'data', 'a prepared shard damaged after preparation', 'launch',
         _launch('--config.data.dir={DAMAGED}'), 2,
         'error: {DAMAGED}/train.array_record-00000-of-00003 is damaged (<reason>); prepare the '
         'dataset again: delete {DAMAGED} and run python -m alexnet_jax.prepare --source=digits '
         '--output={DAMAGED} --image_size=72 (the same source gives the same dataset, so the run '
         'resumes unchanged)'),
    Case('raw_cut_short', 'data', 'a raw dataset whose train.u8 lost its last byte', 'launch',
         _launch('--config.data.dir={CASE}/raw'), 2,
         'error: {CASE}/raw/train.u8 is 22,286,015 bytes, not the 22,286,016 of 1433 72x72 '
         'images (cut short); delete {CASE}/raw and run python -m alexnet_jax.prepare '
         '--source=digits --output={CASE}/raw --image_size=72 --format=raw (the same source gives '
         'the same dataset, so the run resumes unchanged)',
         inputs=(('raw', 'raw_cut_short'),)),
    Case('raw_other_version', 'data', 'a raw dataset of another layout version', 'launch',
         _launch('--config.data.dir={CASE}/raw'), 2,
         'error: {CASE}/raw holds no complete prepared dataset (dataset.json describes raw '
         "storage version '2'; this program reads version 1); run: python -m alexnet_jax.prepare "
         '--source=digits --output={CASE}/raw --format=raw (or set config.data.prepare_from)',
         inputs=(('raw', 'raw_version_2'),)),
    Case('raw_image_size_mismatch', 'data', 'a raw dataset of another image size than the '
         'config', 'launch', _launch('--config.data.dir={RAW}', '--config.data.image_size=80'), 2,
         'error: {RAW} was prepared at image_size 72 but config.data.image_size is 80'),
    Case('raw_checksum_mismatch', 'data', 'prepare --verify on a raw dataset with one byte '
         'changed', 'prepare',
         ('--source=digits', '--output={CASE}/raw', '--image_size=72', '--format=raw',
          '--verify'), 2,
         'error: {CASE}/raw/train.u8: images 0..1432 differ from what was written (checksum '
         'mismatch: the storage corrupted them); delete {CASE}/raw and run python -m '
         'alexnet_jax.prepare --source=digits --output={CASE}/raw --image_size=72 --format=raw '
         '(the same source gives the same dataset, so the run resumes unchanged)',
         inputs=(('raw', 'raw_flipped_byte'),)),
    *(Case(f'prepare_{kind}', 'data', f'prepare on an ImageFolder {what}', 'prepare',
           ('--source={CASE}/src', '--output={CASE}/out', '--image_size=32'), SKIPPED,
           'prepared {CASE}/out: train 4, val 0 images (no validation images: launch.py refuses '
           'to train without them; add a val/ split to the source); skipped 0 undecodable; 0 '
           'turned upright by their EXIF orientation; ignored 0 other files; T s',
           inputs=(*((f'src/{p}', k) for p, k in GOOD_TREE[:-1]), *extra), skipped=0,
           note='0 (prepared, and reported)')
      for kind, what, extra in (('without_val', 'without val/', ()),
                                ('with_empty_val', 'whose val/ is empty',
                                 (('src/val', 'folder'),)))),
    # --------------------------------------------------------------------- images
    *(Case(f'{kind}_image_skipped', 'images', f'{what} in the training set', 'prepare',
           ('--source={CASE}/src', '--output={CASE}/out', '--image_size=32'), SKIPPED,
           'prepared {CASE}/out: train 4, val 1 images; skipped 1 undecodable; 0 turned upright '
           'by their EXIF orientation; ignored 0 other files; T s',
           inputs=(*((f'src/{p}', k) for p, k in GOOD_TREE), (f'src/train/a/{kind}.JPEG', kind)),
           skipped=1)
      for kind, what in (('truncated', 'a truncated JPEG'), ('empty', 'an empty file'))),
    *(Case(f'{kind}_image_converted', 'images', f'{what} in the training set', 'prepare',
           ('--source={CASE}/src', '--output={CASE}/out', '--image_size=32'), SKIPPED,
           'prepared {CASE}/out: train 5, val 1 images; skipped 0 undecodable; 0 turned upright '
           'by their EXIF orientation; ignored 0 other files; T s',
           inputs=(*((f'src/{p}', k) for p, k in GOOD_TREE), (f'src/train/a/{kind}.JPEG', kind)),
           skipped=0)
      for kind, what in (('png', 'a PNG named .JPEG'), ('cmyk', 'a CMYK JPEG'),
                         ('gray', 'a grayscale JPEG'))),
    Case('exif_rotated_photo', 'images', 'a photo stored sideways with an EXIF orientation tag',
         'prepare', ('--source={CASE}/src', '--output={CASE}/out', '--image_size=32'), SKIPPED,
         'prepared {CASE}/out: train 5, val 1 images; skipped 0 undecodable; 1 turned upright '
         'by their EXIF orientation; ignored 0 other files; T s',
         inputs=(*((f'src/{p}', k) for p, k in GOOD_TREE), ('src/train/b/phone.JPEG', 'exif')),
         skipped=0, note='0 (turned upright and counted)'),
    Case('dangling_symlink', 'images', 'a symbolic link to a file that is gone', 'prepare',
         ('--source={CASE}/src', '--output={CASE}/out', '--image_size=32'), SKIPPED,
         'prepared {CASE}/out: train 4, val 1 images; skipped 0 undecodable; 0 turned upright '
         'by their EXIF orientation; ignored 1 other files; T s',
         inputs=(*((f'src/{p}', k) for p, k in GOOD_TREE), ('src/train/b/moved.JPEG', 'dangling')),
         skipped=0, note='0 (counted among the ignored files)'),
    Case('truncated_image_strict', 'images', 'a truncated JPEG, with --strict', 'prepare',
         ('--source={CASE}/src', '--output={CASE}/out', '--image_size=32', '--strict'), 2,
         'error: cannot decode {CASE}/src/train/a/truncated.JPEG (OSError: image file '
         'is truncated (N bytes not processed)); run without --strict to skip such files and '
         'list them in the report',
         inputs=(*((f'src/{p}', k) for p, k in GOOD_TREE), ('src/train/a/truncated.JPEG',
                                                               'truncated'))),
    Case('empty_image_strict', 'images', 'an empty file, with --strict', 'prepare',
         ('--source={CASE}/src', '--output={CASE}/out', '--image_size=32', '--strict'), 2,
         'error: cannot decode {CASE}/src/train/a/empty.JPEG (UnidentifiedImageError: '
         'cannot identify image file <_io.BytesIO object>); run without --strict to skip such '
         'files and list them in the report',
         inputs=(*((f'src/{p}', k) for p, k in GOOD_TREE), ('src/train/a/empty.JPEG', 'empty'))),
    Case('class_without_images', 'images', 'a class folder with no images', 'prepare',
         ('--source={CASE}/src', '--output={CASE}/out'), 2,
         'error: class folder {CASE}/src/train/c holds no images (looked for .bmp, '
         '.gif, .jfif, .jpe, .jpeg, .jpg, .pbm, .pgm, .png, .pnm, .ppm, .tif, .tiff, .webp)',
         inputs=(*((f'src/{p}', k) for p, k in GOOD_TREE), ('src/train/c/notes.txt', 'text'))),
    Case('predict_empty_image', 'images', 'predict on an empty file', 'predict',
         ('--workdir={RUN}', '{CASE}/empty.JPEG'), 2,
         'error: cannot read image {CASE}/empty.JPEG: not an image in a format Pillow reads',
         inputs=(('empty.JPEG', 'empty'),)),
    Case('predict_text_file', 'images', 'predict on a text file', 'predict',
         ('--workdir={RUN}', '{CASE}/notes.txt'), 2,
         'error: cannot read image {CASE}/notes.txt: not an image in a format Pillow reads',
         inputs=(('notes.txt', 'text'),)),
    # --------------------------------------------------------------------- labels
    Case('val_tar_unofficial_names', 'labels', 'a val tar with non-official file names',
         'prepare', ('--source={CASE}/src', '--output={CASE}/out'), 2,
         "error: {CASE}/src/ILSVRC2012_img_val.tar holds 'my_photo.JPEG', not an "
         'official validation file name (ILSVRC2012_val_00000001.JPEG ... '
         'ILSVRC2012_val_00050000.JPEG). Its labels come from tfds validation_labels.txt by file '
         'number, so they would be wrong; use an ImageFolder val/<wnid>/ tree instead',
         inputs=(('src/ILSVRC2012_img_train.tar', 'train_tar'),
                 ('src/ILSVRC2012_img_val.tar', 'renamed_val_tar'))),
    Case('train_tar_not_synsets', 'labels', 'a train tar not made of <wnid>.tar files',
         'prepare', ('--source={CASE}/src', '--output={CASE}/out'), 2,
         "error: {CASE}/src/ILSVRC2012_img_train.tar holds 'cats.tar', not an "
         'ILSVRC-2012 <wnid>.tar: this is not the official train tar (use an ImageFolder '
         'train/<class>/ tree instead)',
         inputs=(('src/ILSVRC2012_img_train.tar', 'cats_tar'),)),
    Case('val_class_not_in_train', 'labels', 'a val/ class that train/ lacks', 'prepare',
         ('--source={CASE}/src', '--output={CASE}/out'), 2,
         'error: {CASE}/src/val/zebra is not a training class (no '
         '{CASE}/src/train/zebra)',
         inputs=(*((f'src/{p}', k) for p, k in GOOD_TREE), ('src/val/zebra/0.JPEG', 'jpeg'))),
    # --------------------------------------------------------------------- official tars
    Case('train_tar_cut_in_a_header', 'tars', 'a train tar cut inside a member header',
         'prepare', ('--source={CASE}/src', '--output={CASE}/out'), 2,
         'error: {CASE}/src/ILSVRC2012_img_train.tar is cut short: it ends inside a member '
         'header (at byte 10,852, after 1 whole member); copy the complete file again',
         inputs=(('src/ILSVRC2012_img_train.tar', 'train_tar_cut_in_a_header'),),
         leaves_nothing=True),
    Case('train_tar_cut_in_data', 'tars', 'a train tar cut inside a member\'s data',
         'prepare', ('--source={CASE}/src', '--output={CASE}/out'), 2,
         'error: {CASE}/src/ILSVRC2012_img_train.tar is cut short: it ends inside the data of '
         '{WNID1}.tar (700 of its 10,240 bytes are there); copy the complete file again',
         inputs=(('src/ILSVRC2012_img_train.tar', 'train_tar_cut_in_data'),),
         leaves_nothing=True),
    Case('train_tar_gzip', 'tars', 'a gzip file named ILSVRC2012_img_train.tar', 'prepare',
         ('--source={CASE}/src', '--output={CASE}/out'), 2,
         'error: {CASE}/src/ILSVRC2012_img_train.tar is a gzip-compressed file, not a plain tar '
         '(the official ILSVRC-2012 tars are uncompressed): decompress it (gunzip) into a plain '
         'tar, or copy the original file',
         inputs=(('src/ILSVRC2012_img_train.tar', 'train_tar_gzip'),), leaves_nothing=True),
    Case('train_tar_member_not_a_tar', 'tars', 'a <wnid>.tar member that is not a tar',
         'prepare', ('--source={CASE}/src', '--output={CASE}/out'), 2,
         'error: {WNID0}.tar in {CASE}/src/ILSVRC2012_img_train.tar is not a tar archive '
         '(invalid header): each member of the official train tar is a tar of one synset\'s '
         'JPEGs; copy the complete file again',
         inputs=(('src/ILSVRC2012_img_train.tar', 'train_tar_member_not_a_tar'),),
         leaves_nothing=True),
    Case('train_tar_member_damaged_inside', 'tars',
         'a <wnid>.tar member with a damaged header inside (found while converting)', 'prepare',
         ('--source={CASE}/src', '--output={CASE}/out', '--image_size=32'), 2,
         'error: {WNID1}.tar in {CASE}/src/ILSVRC2012_img_train.tar holds a damaged header at '
         'byte 1,536 (after 1 member): the file is corrupt; copy the complete file again',
         inputs=(('src/ILSVRC2012_img_train.tar', 'train_tar_member_damaged_inside'),),
         leaves_nothing=True),
    Case('val_tar_cut', 'tars', 'a val tar cut short', 'prepare',
         ('--source={CASE}/src', '--output={CASE}/out'), 2,
         'error: {CASE}/src/ILSVRC2012_img_val.tar is cut short: it ends inside the data of '
         'ILSVRC2012_val_00000002.JPEG (300 of its 2,196 bytes are there); copy the complete file '
         'again',
         inputs=(('src/ILSVRC2012_img_train.tar', 'train_tar'),
                 ('src/ILSVRC2012_img_val.tar', 'val_tar_cut')), leaves_nothing=True),
    Case('tars_partial_official_set', 'tars', 'tars with part of the official set', 'prepare',
         ('--source={CASE}/src', '--output={CASE}/out', '--image_size=32'), SKIPPED,
         'prepared {CASE}/out: train 4, val 1 images; skipped 0 undecodable; 0 turned upright by '
         'their EXIF orientation; not the complete official ILSVRC-2012 set: 2 of 1000 synsets, '
         '1 of 50,000 validation images (--strict refuses it); T s',
         inputs=(('src/ILSVRC2012_img_train.tar', 'train_tar_two_synsets'),
                 ('src/ILSVRC2012_img_val.tar', 'val_tar')), skipped=0,
         note='0 (prepared, and reported)'),
    Case('tars_partial_official_set_strict', 'tars', 'the same, with --strict', 'prepare',
         ('--source={CASE}/src', '--output={CASE}/out', '--strict'), 2,
         'error: {CASE}/src is not the complete official ILSVRC-2012 set: it holds 2 of 1000 '
         'synsets, 1 of 50,000 validation images; --strict prepares only the complete set (run '
         'without --strict to prepare this part of it)',
         inputs=(('src/ILSVRC2012_img_train.tar', 'train_tar_two_synsets'),
                 ('src/ILSVRC2012_img_val.tar', 'val_tar')), leaves_nothing=True),
    # --------------------------------------------------------------------- weights
    Case('import_missing_input', 'weights', 'import_weights --input does not exist',
         'import_weights', ('--source=torchvision', '--input={CASE}/nowhere.pth',
                            '--workdir={CASE}/new'), 2,
         'error: --input {CASE}/nowhere.pth does not exist', leaves_nothing=True),
    Case('import_not_a_pth', 'weights', 'import_weights --source=torchvision of a file that is '
         'not a state_dict', 'import_weights',
         ('--source=torchvision', '--input={FILE}', '--workdir={CASE}/new'), 2,
         'error: {FILE} is not a PyTorch file of tensors (a state_dict saved with torch.save) '
         'that torch.load reads', leaves_nothing=True),
    Case('import_into_a_run', 'weights', 'import_weights into the workdir of a run',
         'import_weights', ('--source=torchvision', '--input={FILE}', '--workdir={RUN}'), 2,
         'error: {RUN} already holds a run; import into a new --workdir'),
    Case('import_option_of_another_source', 'weights', 'import_weights --mean_file with '
         '--source=torchvision (a Caffe option)', 'import_weights',
         ('--source=torchvision', '--input={FILE}', '--workdir={CASE}/new',
          '--mean_file={FILE}'), 2,
         'error: --mean_file does not apply to --source=torchvision', leaves_nothing=True),
    Case('import_caffe_not_a_caffemodel', 'weights', 'import_weights --source=caffe of a file '
         'that is not a caffemodel', 'import_weights',
         ('--source=caffe', '--input={FILE}', '--workdir={CASE}/new'), 2,
         'error: caffemodel {FILE} is not a Caffe NetParameter: its bytes do not parse as '
         'binary protobuf', leaves_nothing=True),
    Case('import_onnx_not_an_onnx_model', 'weights', 'import_weights --source=onnx of a file '
         'that is not an ONNX model', 'import_weights',
         ('--source=onnx', '--input={FILE}', '--workdir={CASE}/new'), 2,
         'error: {FILE} is not an ONNX model: its bytes do not parse as binary protobuf',
         leaves_nothing=True),
    Case('import_prototxt_for_onnx', 'weights', 'import_weights --prototxt with --source=onnx '
         '(a Caffe option)', 'import_weights',
         ('--source=onnx', '--input={FILE}', '--workdir={CASE}/new', '--prototxt={FILE}'), 2,
         'error: --prototxt does not apply to --source=onnx', leaves_nothing=True),
    Case('export_torchvision_of_other_network', 'weights',
         'export_weights --to=torchvision of a two-tower run with LRN', 'export_weights',
         ('--workdir={RUN}', '--to=torchvision', '--output={CASE}/out.pth'), 2,
         'error: torchvision\'s AlexNet layout cannot hold this run\'s network: 2 towers '
         '(torchvision has one); LRN (torchvision has none); a 1x1 map into fc6 at 64 crops '
         '(torchvision: 6x6); export it --to=safetensors (any run) instead'),
    Case('export_output_missing_parent', 'weights', 'export_weights --output in a folder that '
         'does not exist (refused before the weights are read)', 'export_weights',
         ('--workdir={RUN}', '--to=safetensors', '--output={CASE}/nowhere/run.safetensors'), 2,
         'error: --output {CASE}/nowhere/run.safetensors: its folder {CASE}/nowhere does not '
         'exist'),
    # --------------------------------------------------------------------- checkpoints
    Case('corrupt_checkpoint', 'checkpoints', 'the only checkpoint is damaged (resume)',
         'launch', _launch(workdir='{BROKEN_RUN}'), 2,
         'error: no usable checkpoint in {BROKEN_RUN}/checkpoints (step 2: <reason>). '
         'Move or delete them to start from scratch, or allow a fresh start '
         '(config.checkpoint.start_fresh_if_unusable=True).'),
    Case('predict_corrupt_checkpoint', 'checkpoints', 'predict with a damaged checkpoint',
         'predict', ('--workdir={BROKEN_RUN}', '{CASE}/x.JPEG'), 2,
         'error: cannot restore checkpoint {BROKEN_RUN}/checkpoints/2: <reason>',
         inputs=(('x.JPEG', 'jpeg'),)),
    Case('predict_no_checkpoint', 'checkpoints', 'predict on a run without checkpoints',
         'predict', ('--workdir={CASE}/run', '{CASE}/x.JPEG'), 2,
         'error: no checkpoint in {CASE}/run ({CASE}/run/checkpoints does not exist)',
         inputs=(('x.JPEG', 'jpeg'), ('run', 'run_without_checkpoints'))),
    Case('predict_missing_step', 'checkpoints', 'predict --step of no checkpoint', 'predict',
         ('--workdir={RUN}', '--step=7', '{CASE}/x.JPEG'), 2,
         'error: no checkpoint of step 7 in {RUN}/checkpoints; it has steps [2]',
         inputs=(('x.JPEG', 'jpeg'),)),
    Case('evaluate_no_checkpoint', 'checkpoints', 'evaluate a run without checkpoints',
         'evaluate', ('--workdir={CASE}/run',), 2,
         'error: no checkpoint in {CASE}/run ({CASE}/run/checkpoints does not exist)',
         inputs=(('run', 'run_without_checkpoints'),)),
    Case('evaluate_missing_step', 'checkpoints', 'evaluate --step of no checkpoint', 'evaluate',
         ('--workdir={RUN}', '--step=7'), 2,
         'error: no checkpoint of step 7 in {RUN}/checkpoints; it has steps [2]'),
    Case('evaluate_best_without_errors', 'checkpoints',
         'evaluate --step=best where no checkpoint has a validation error', 'evaluate',
         ('--workdir={RUN}', '--step=best'), 2,
         'error: no checkpoint in {RUN}/checkpoints has a validation error stored (steps [2]); '
         'use --step=newest or a step number'),
    # --------------------------------------------------------------------- ensembles
    Case('ensemble_other_classes', 'ensembles', 'runs trained with different class counts',
         'evaluate', ('--workdir={RUN}', '--workdir={RUN3}'), 2,
         'error: {RUN3} was trained on 3 classes but {RUN} on 10: an ensemble averages '
         'predictions over the same classes'),
    Case('ensemble_other_datasets', 'ensembles', 'runs trained on different datasets',
         'evaluate', ('--workdir={RUN}', '--workdir={CASE}/run'), 2,
         'error: {CASE}/run was trained on other data ({CASE}/elsewhere) than {RUN} ({DATA}); '
         'give --data_dir to evaluate all of them on one dataset',
         inputs=(('run', 'run_on_other_data'),)),
    # --------------------------------------------------------------------- flags
    Case('unknown_flag', 'flags', 'an unknown flag', 'launch', _launch('--epochs=3'), 1,
         "FATAL Flags parsing error: Unknown command line flag 'epochs'"),
    Case('missing_workdir', 'flags', '--workdir missing', 'launch', ('--config={CFG}',), 1,
         'FATAL Flags parsing error: flag --workdir=None: Flag --workdir must have a value other '
         'than None.'),
    Case('missing_config', 'flags', '--config missing', 'launch', ('--workdir={CASE}/new',), 1,
         'FATAL Flags parsing error: flag --config=None: Flag --config must have a value other '
         'than None.'),
    Case('stray_argument', 'flags', 'a stray positional argument', 'launch',
         _launch('3'), 2,
         "error: unexpected arguments: ['3'] (--helpshort lists the flags)"),
    Case('predict_no_images', 'flags', 'predict without images', 'predict',
         ('--workdir={RUN}',), 2,
         'error: give one or more image files after the flags (--helpshort lists the flags)'),
    Case('predict_bad_crops', 'flags', 'predict --crops other than 1 or 10', 'predict',
         ('--workdir={RUN}', '--crops=5', '{CASE}/x.JPEG'), 1,
         'FATAL Flags parsing error: flag --crops=5: value should be one of <10|1>',
         inputs=(('x.JPEG', 'jpeg'),)),
    Case('evaluate_bad_step', 'flags', 'evaluate --step neither a number nor newest/best',
         'evaluate', ('--workdir={RUN}', '--step=last'), 2,
         "error: --step must be a checkpoint step, 'newest' or 'best', got 'last'"),
    Case('evaluate_no_workdir', 'flags', 'evaluate without --workdir', 'evaluate', (), 1,
         'FATAL Flags parsing error: flag --workdir=None: Flag --workdir must have a value other '
         'than None.'),
    Case('prepare_missing_source_flag', 'flags', 'prepare without --source', 'prepare',
         ('--output={CASE}/out',), 1,
         'FATAL Flags parsing error: flag --source=None: Flag --source must have a value other '
         'than None.'),
    # --------------------------------------------------------------------- multi-process runs
    Case('coordinator_without_port', 'cluster', '--coordinator_address without a port', 'launch',
         _launch('--coordinator_address=127.0.0.1', '--num_processes=2', '--process_id=0'), 2,
         "error: --coordinator_address='127.0.0.1' must be host:port (the address of process 0 "
         'and a free port on it, e.g. node001:23456)'),
    Case('coordinator_bad_port', 'cluster', '--coordinator_address with a port above 65535',
         'launch',
         _launch('--coordinator_address=127.0.0.1:99999', '--num_processes=2', '--process_id=1'),
         2, "error: --coordinator_address='127.0.0.1:99999': the port must be an integer in "
         "[1, 65535], got '99999'"),
    Case('coordinator_unknown_host', 'cluster', '--coordinator_address names no host', 'launch',
         _launch('--coordinator_address=no-such-host.invalid:23456', '--num_processes=2',
                 '--process_id=1'), 2,
         "error: --coordinator_address: host 'no-such-host.invalid' cannot be resolved; give the "
         'name or address of the node that runs process 0'),
    Case('num_processes_zero', 'cluster', '--num_processes=0', 'launch',
         _launch('--coordinator_address=127.0.0.1:23456', '--num_processes=0', '--process_id=0'),
         2, 'error: --num_processes must be in [1, 65536], got 0'),
    Case('process_id_out_of_range', 'cluster', '--process_id not below --num_processes',
         'launch',
         _launch('--coordinator_address=127.0.0.1:23456', '--num_processes=2', '--process_id=2'),
         2, 'error: --process_id must be in [0, 2), got 2'),
    Case('distributed_timeout_zero', 'cluster', '--distributed_timeout=0', 'launch',
         _launch('--coordinator_address=127.0.0.1:23456', '--num_processes=2', '--process_id=1',
                 '--distributed_timeout=0'), 2,
         'error: --distributed_timeout must be a positive number of seconds, got 0'),
    Case('coordinator_port_zero', 'cluster', '--coordinator_port=0', 'launch',
         _launch('--coordinator_port=0'), 2,
         'error: --coordinator_port must be an integer in [1, 65535], got 0'),
    Case('slurm_procid_beyond_ntasks', 'cluster',
         'SLURM variables of a task that cannot exist (SLURM_PROCID >= SLURM_NTASKS)', 'launch',
         _launch(), 2,
         'error: the SLURM variables disagree: SLURM_PROCID=2 but SLURM_NTASKS=2 (task ids run '
         'from 0 to 1)',
         env=(('SLURM_JOB_ID', '4242'), ('SLURM_STEP_NODELIST', 'localhost'),
              ('SLURM_NTASKS', '2'), ('SLURM_PROCID', '2'), ('SLURM_LOCALID', '0'))),
    # --------------------------------------------------------------------- mesh shapes
    Case('mesh_model_3', 'mesh', 'mesh.model=3 on 8 devices', 'launch',
         _launch('--config.mesh.model=3', workdir='{RUN}'), 2,
         'error: 8 devices cannot be split by config.mesh.model=3; choose a size dividing 8'),
    Case('mesh_wrong_product', 'mesh', 'mesh.data x mesh.model != the device count', 'launch',
         _launch('--config.mesh.data=3', '--config.mesh.model=2'), 2,
         'error: config.mesh.data=3 x config.mesh.model=2 needs 6 devices, but 8 are visible; '
         'set config.mesh.data=-1 to use all of them'),
    Case('mesh_zero', 'mesh', 'mesh.data=0', 'launch', _launch('--config.mesh.data=0'), 2,
         'error: config.mesh.data must be a positive integer or -1, got 0'),
    Case('mesh_model_splits_a_tower', 'mesh', 'mesh.model=4 with two towers', 'launch',
         _launch('--config.mesh.model=4'), 2,
         'error: config.mesh.model=4 does not divide config.model.towers=2: each device must '
         'hold whole towers (use model=1 or 2)'),
    Case('mesh_model_text', 'mesh', "mesh.model neither 'auto' nor a number", 'launch',
         ('--config=configs/digits.py', '--workdir={CASE}/new', '--config.mesh.model=two'), 2,
         "error: config.mesh.model must be 'auto', a positive integer or -1, got 'two'"),
    # --------------------------------------------------------------------- plans
    Case('plan_too_little_memory', 'plan', 'a device memory too small for the batch', 'launch',
         _launch('--dry_run', '--plan_devices=2', '--plan_platform=gpu',
                 '--plan_device_memory_gib=0.005'), 2,
         'error: the plan needs about 5.2 MiB per device (weights, gradients and optimizer state '
         '3.7 MiB, activations 1.5 MiB at 8 images per device), more than '
         '--plan_device_memory_gib=0.005; the largest per-device batch that fits is 7 '
         '(config.batch_size=14 on the data axis of 2)'),
    Case('plan_memory_for_no_batch', 'plan', 'a device memory too small for the weights',
         'launch', _launch('--dry_run', '--plan_devices=2', '--plan_platform=gpu',
                           '--plan_device_memory_gib=0.002'), 2,
         'error: the plan needs about 5.2 MiB per device (weights, gradients and optimizer state '
         '3.7 MiB, activations 1.5 MiB at 8 images per device), more than '
         '--plan_device_memory_gib=0.002; not even one image per device fits: split the weights '
         'over more devices (config.mesh.model) or narrow the network (config.model.width)'),
    Case('plan_zero_devices', 'plan', '--plan_devices=0', 'launch',
         _launch('--dry_run', '--plan_devices=0', '--plan_platform=gpu'), 2,
         'error: --plan_devices must be a positive integer, got 0'),
    Case('plan_uneven_processes', 'plan', 'devices that do not spread evenly over the processes',
         'launch', _launch('--dry_run', '--plan_devices=6', '--plan_processes=4',
                           '--plan_platform=gpu'), 2,
         'error: --plan_devices=6 cannot be spread evenly over --plan_processes=4'),
    Case('plan_processes_cut_pairs', 'plan', 'processes that cut the model pairs unevenly',
         'launch', _launch('--dry_run', '--plan_devices=6', '--plan_processes=2',
                           '--plan_platform=gpu', '--config.mesh.model=2',
                           '--config.batch_size=12'), 2,
         'error: --plan_processes=2 puts 3 devices in each process, which cuts the model pairs '
         'of the mesh data=3 x model=2 unevenly (a process holds whole pairs, or one device of '
         'one pair); choose another --plan_processes'),
    Case('plan_without_platform', 'plan', '--plan_devices without --plan_platform', 'launch',
         _launch('--dry_run', '--plan_devices=8'), 2,
         'error: --plan_devices=8 needs --plan_platform (cpu, gpu, tpu): it decides the compute '
         'dtype'),
    Case('plan_unknown_platform', 'plan', 'an unknown --plan_platform', 'launch',
         _launch('--dry_run', '--plan_devices=8', '--plan_platform=fpga'), 1,
         'FATAL Flags parsing error: flag --plan_platform=fpga: value should be one of '
         '<cpu|gpu|tpu>'),
    Case('plan_efficiency_above_one', 'plan', '--plan_efficiency above 1', 'launch',
         _launch('--dry_run', '--plan_peak_tflops=100', '--plan_efficiency=1.5'), 2,
         'error: --plan_efficiency must be in (0, 1], got 1.5'),
    Case('plan_peak_alone', 'plan', '--plan_peak_tflops without --plan_efficiency', 'launch',
         _launch('--dry_run', '--plan_peak_tflops=100'), 2,
         'error: --plan_peak_tflops and --plan_efficiency go together: the time estimate is '
         'devices x peak x efficiency'),
    Case('plan_without_dry_run', 'plan', 'a --plan_* flag on a training command', 'launch',
         _launch('--plan_devices=8', '--plan_platform=gpu'), 2,
         'error: --plan_devices describes a plan: use it with --dry_run'),
    Case('profile_steps_backwards', 'configs', 'log.profile_steps with stop before start',
         'launch', ('--config=configs/digits.py', '--workdir={CASE}/new',
                    '--config.log.profile_steps=(5,2)'), 2,
         'error: config.log.profile_steps must be () or (start, stop) with 1 <= start < stop, '
         'got (5, 2)'),
)

# Run also as plain `python ...` subprocesses: the forked runs must print the same.
SUBPROCESS_CASES = ('negative_lr', 'missing_source', 'predict_missing_step',
                    'ensemble_other_classes', 'train_tar_cut_in_a_header')


# ----------------------------------------------------------------------------- inputs


def _image(seed: int, size: int = 40) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _tar_bytes(members: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w') as archive:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def _tar_wnids() -> tuple[str, str]:
  """Two wnids of the official tars: those of validation images 1 and 2 (WNID0, WNID1)."""
  from alexnet_jax import prepare  # pylint: disable=g-import-not-at-top
  first, second = prepare.imagenet_validation_wnids()[:2]
  assert first != second
  return first, second


def _damaged_train_tar(damage: str, seed: int) -> bytes:
  """A train tar of two synsets of two images each, whole or damaged as `damage` says."""
  wnids = _tar_wnids()
  inner = [_tar_bytes({f'{w}_{i}.JPEG': images.jpeg(_image(seed + i, 16)) for i in range(2)})
           for w in wnids]
  if damage == 'member_not_a_tar':
    inner[0] = images.jpeg(_image(seed, 16))
  if damage == 'member_damaged_inside':  # the second image's header overwritten
    with tarfile.open(fileobj=io.BytesIO(inner[1])) as archive:
      second = archive.getmembers()[1].offset
    inner[1] = inner[1][:second] + b'x' * tarfile.BLOCKSIZE + inner[1][second + tarfile.BLOCKSIZE:]
  whole = _tar_bytes({f'{w}.tar': data for w, data in zip(wnids, inner)})
  with tarfile.open(fileobj=io.BytesIO(whole)) as archive:
    second = archive.getmembers()[1]
  if damage == 'cut_in_a_header':
    return whole[:second.offset + 100]
  if damage == 'cut_in_data':
    return whole[:second.offset_data + 700]
  if damage == 'gzip':
    return gzip.compress(whole)
  assert damage in ('two_synsets', 'member_not_a_tar', 'member_damaged_inside'), damage
  return whole


def _make_input(path: str, kind: str, fixtures: dict[str, str], name: str) -> None:
  """Writes one input of a case: an image of some kind, a tar, a run folder.

  `name` (the path without the temporary folder) seeds the pixels: the same bytes each run.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
  if kind == 'run_without_checkpoints':
    shutil.copytree(fixtures['RUN'], path, ignore=shutil.ignore_patterns('checkpoints'))
    return
  if kind == 'locked_run':  # held by this test process, which lives until every case ran
    from alexnet_jax.storage import lockfile  # pylint: disable=g-import-not-at-top
    shutil.copytree(fixtures['RUN'], path)
    with open(os.path.join(path, 'run.lock'), 'w') as f:
      f.write(lockfile.Holder.of_this_process().to_text())
    return
  if kind == 'run_with_damaged_config':
    shutil.copytree(fixtures['RUN'], path)
    with open(os.path.join(path, 'config.json'), 'w') as f:
      f.write('{"seed": 0, ')  # cut short, as by a full disk in an older version
    return
  if kind == 'folder':
    os.makedirs(path)
    return
  if kind.startswith('raw_'):
    _damaged_raw(fixtures['RAW'], path, kind)
    return
  if kind == 'dangling':
    os.symlink(os.path.join(os.path.dirname(path), 'gone.JPEG'), path)
    return
  if kind == 'run_on_other_data':  # the same run, as if trained on data in another folder
    shutil.copytree(fixtures['RUN'], path)
    with open(os.path.join(path, 'config.json')) as f:
      config = json.load(f)
    config['data']['dir'] = os.path.join(os.path.dirname(path), 'elsewhere')
    with open(os.path.join(path, 'config.json'), 'w') as f:
      json.dump(config, f)
    return
  if kind == 'jpeg':
    data = images.jpeg(_image(seed))
  elif kind == 'truncated':
    whole = images.jpeg(_image(seed))
    data = whole[:len(whole) // 2]
  elif kind == 'empty':
    data = b''
  elif kind == 'text':
    data = b'not a picture\n'
  elif kind == 'png':
    buf = io.BytesIO()
    Image.fromarray(_image(seed)).save(buf, 'PNG')
    data = buf.getvalue()
  elif kind == 'cmyk':
    data = images.jpeg(_image(seed), mode='CMYK')
  elif kind == 'gray':
    data = images.jpeg(_image(seed)[..., 0])
  elif kind == 'exif':  # a photo stored sideways, as phones store them, with its tag
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to show it
    Image.fromarray(_image(seed, 40)[:, :30]).save(buf, 'JPEG', quality=90, exif=exif.tobytes())
    data = buf.getvalue()
  elif kind == 'config_without_get_config':
    data = b'import ml_collections\n\nCONFIG = ml_collections.ConfigDict({"seed": 0})\n'
  elif kind == 'config_returning_a_dict':
    data = b'def get_config():\n  return {"seed": 0, "batch_size": 16}\n'
  elif kind in ('train_tar', 'cats_tar'):
    from alexnet_jax import prepare  # pylint: disable=g-import-not-at-top
    wnid = 'cats' if kind == 'cats_tar' else prepare.imagenet_validation_wnids()[0]
    inner = _tar_bytes({f'{wnid}_{i}.JPEG': images.jpeg(_image(seed + i)) for i in range(2)})
    data = _tar_bytes({f'{wnid}.tar': inner})
  elif kind.startswith('train_tar_'):
    data = _damaged_train_tar(kind[len('train_tar_'):], seed)
  elif kind == 'val_tar':
    data = _tar_bytes({'ILSVRC2012_val_00000001.JPEG': images.jpeg(_image(seed))})
  elif kind == 'val_tar_cut':
    whole = _tar_bytes({f'ILSVRC2012_val_{n:08d}.JPEG': images.jpeg(_image(seed + n)) for n in (1, 2)})
    with tarfile.open(fileobj=io.BytesIO(whole)) as archive:
      data = whole[:archive.getmembers()[1].offset_data + 300]
  elif kind == 'renamed_val_tar':
    data = _tar_bytes({'ILSVRC2012_val_00000001.JPEG': images.jpeg(_image(seed)),
                       'my_photo.JPEG': images.jpeg(_image(seed + 1))})
  else:
    raise ValueError(f'unknown input kind {kind!r}')
  with open(path, 'wb') as f:
    f.write(data)


def _damaged_raw(raw: str, path: str, kind: str) -> None:
  """A copy of the raw dataset `raw` at `path`, damaged as `kind` says."""
  shutil.copytree(raw, path)
  images = os.path.join(path, 'train.u8')
  if kind == 'raw_cut_short':
    os.truncate(images, os.path.getsize(images) - 1)
  elif kind == 'raw_flipped_byte':
    with open(images, 'r+b') as f:
      f.seek(5000)
      byte = f.read(1)[0]
      f.seek(5000)
      f.write(bytes([byte ^ 0x10]))
  elif kind == 'raw_version_2':
    with open(os.path.join(path, 'dataset.json')) as f:
      description = json.load(f)
    description['format'] = 'alexnet_jax.prepared-raw/2'
    with open(os.path.join(path, 'dataset.json'), 'w') as f:
      json.dump(description, f)
  else:
    raise ValueError(f'unknown input kind {kind!r}')


def _make_fixtures(root: str) -> dict[str, str]:
  """The shared inputs of the matrix, under `root` (DATA is the test run's digits set)."""
  from alexnet_jax import prepare  # pylint: disable=g-import-not-at-top
  fixtures = {'DATA': training.digits_dir(), 'FILE': os.path.join(root, 'a_file'),
              **dict(zip(('WNID0', 'WNID1'), _tar_wnids())),
              'RUN': os.path.join(root, 'run'), 'BROKEN_RUN': os.path.join(root, 'broken_run'),
              'RUN3': os.path.join(root, 'run3'),
              'DATA3': os.path.join(root, 'data3'), 'NOVAL': os.path.join(root, 'noval'),
              'DAMAGED': os.path.join(root, 'damaged_data'), 'CFG': os.path.join(root, 'tiny.py'),
              'RAW': os.path.join(root, 'raw_data')}
  with open(fixtures['FILE'], 'w') as f:
    f.write('a file, not a folder\n')
  config = training.tiny_config(fixtures['DATA'], num_train_steps=4, final_eval_crops=1)
  training.write_config_file(fixtures['CFG'], config)
  faults.write_run_with_checkpoint(config, fixtures['RUN'], step=2)
  shutil.copytree(fixtures['RUN'], fixtures['BROKEN_RUN'])
  faults.damage(os.path.join(fixtures['BROKEN_RUN'], 'checkpoints', '2'), 'truncate')
  source = os.path.join(root, 'three_classes')
  for i in range(24):
    name = os.path.join('train', 'abc'[i % 3], f'{i}.JPEG')
    _make_input(os.path.join(source, name), 'jpeg', fixtures, name)
  prepare.prepare(source, fixtures['NOVAL'], image_size=72, progress=False)
  for i in range(6):
    name = os.path.join('val', 'abc'[i % 3], f'{i}.JPEG')
    _make_input(os.path.join(source, name), 'jpeg', fixtures, name)
  prepare.prepare(source, fixtures['DATA3'], image_size=72, progress=False)
  prepare.prepare('digits', fixtures['RAW'], image_size=72, progress=False, storage='raw')
  shutil.copytree(fixtures['DATA'], fixtures['DAMAGED'])
  damage_shard(os.path.join(fixtures['DAMAGED'], 'train.array_record-00000-of-00003'))
  faults.write_run_with_checkpoint(
      training.tiny_config(fixtures['DATA3'], num_train_steps=4, final_eval_crops=1,
                             **{'model.num_classes': 3}), fixtures['RUN3'], step=2)
  return fixtures


def damage_shard(path: str) -> None:
  """What a bad disk does to a prepared shard: most of its records overwritten with zeros."""
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(1024)
    f.write(bytes(size // 2))


def _fill(text: str, fixtures: dict[str, str]) -> str:
  return text.format(**fixtures)


def _normalize(text: str, fixtures: dict[str, str]) -> str:
  """Real paths back to placeholders; the seconds of a prepare report to T."""
  for name, path in sorted(fixtures.items(), key=lambda kv: -len(kv[1])):
    text = text.replace(path, '{' + name + '}')
  text = re.sub(r' at 0x[0-9a-f]+>', '>', text)  # repr of an object
  # The storage library's account of a damaged checkpoint names whichever array read
  # failed first (they run in parallel), and says it in several ways.
  text = re.sub(r'(\(step \d+: ).*?(\)\. Move)', r'\1<reason>\2', text)
  text = re.sub(r'(cannot restore checkpoint \S+: ).*', r'\1<reason>', text)
  text = re.sub(r'\(\d+ bytes not processed\)', '(N bytes not processed)', text)
  # Who holds a lock: this test process, on this host, since the matrix started.
  text = re.sub(r'\(host \S+, pid \d+, started \S+, last heartbeat \d+ s ago;',
                '(host H, pid P, started T, last heartbeat N s ago;', text)
  # The storage library's account of a damaged shard names checksums and offsets.
  text = re.sub(r'is damaged \(.*?\); prepare the dataset again',
                'is damaged (<reason>); prepare the dataset again', text)
  return re.sub(r'; \d+\.\d s$', '; T s', text)


_LOG_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ ]+:\d+\] ')
_ABSL_HINT = 'Pass --helpshort or --helpfull to see help on flags.'


def message_lines(stdout: str, stderr: str) -> list[str]:
  """What the command said to the user: its output less log records and absl's --help hint."""
  lines = []
  for line in (stdout + '\n' + stderr).splitlines():
    if line.strip() and not _LOG_LINE.match(line) and line != _ABSL_HINT:
      lines.append(line)
  return lines


def snapshot(folders: list[str]) -> dict[str, str]:
  """sha256 of every file under `folders` (path -> digest)."""
  digests = {}
  for folder in folders:
    for dirpath, _, files in os.walk(folder):
      for name in files:
        path = os.path.join(dirpath, name)
        if not os.path.isfile(path):  # a symbolic link to nothing (a case's input)
          continue
        with open(path, 'rb') as f:
          digests[path] = hashlib.sha256(f.read()).hexdigest()
  return digests


def touched(before: dict[str, str], after: dict[str, str],
            allowed_new: tuple[str, ...]) -> list[str]:
  """Files changed, removed, or added outside `allowed_new` prefixes."""
  changed = [p for p in before if after.get(p) != before[p]]
  added = [p for p in after if p not in before and not p.startswith(allowed_new)]
  return sorted(changed + added)


# ----------------------------------------------------------------------------- the runner


def _command(tool: str) -> list[str]:
  if tool == 'launch':
    return [sys.executable, os.path.join(REPO, 'launch.py')]
  return [sys.executable, '-m', f'alexnet_jax.{tool}']


def _run_in_child(tool: str, args: list[str], out_path: str, err_path: str) -> None:
  """In a forked child: run the command as `python` would, then exit with its status."""
  import runpy  # pylint: disable=g-import-not-at-top
  import traceback  # pylint: disable=g-import-not-at-top
  out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(out, 1)
  os.dup2(err, 2)
  status = 0
  try:
    os.chdir(REPO)
    if tool == 'launch':
      sys.argv = [os.path.join(REPO, 'launch.py'), *args]
      runpy.run_path(sys.argv[0], run_name='__main__')
    else:
      sys.modules.pop(f'alexnet_jax.{tool}', None)  # imported fresh as __main__, as by -m
      sys.argv = [f'alexnet_jax.{tool}', *args]
      runpy.run_module(f'alexnet_jax.{tool}', run_name='__main__', alter_sys=True)
  except SystemExit as e:
    if isinstance(e.code, str):
      print(e.code, file=sys.stderr)
    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-exception-caught
    traceback.print_exc()
    status = 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access


def serve(spec_path: str) -> None:
  """The helper process: imports once, forks a child per case, writes the results as JSON.

  It must not start JAX's backend itself (threads do not survive fork); each child
  starts its own.
  """
  # pylint: disable=g-import-not-at-top,unused-import
  import jax
  from alexnet_jax.core import cli
  from alexnet_jax import evaluate
  from alexnet_jax import plot
  from alexnet_jax import predict
  from alexnet_jax import prepare
  from alexnet_jax import summary
  from alexnet_jax.training import trainer
  # pylint: enable=g-import-not-at-top,unused-import
  with open(spec_path) as f:
    spec = json.load(f)
  results = {}
  for case in spec['cases']:
    folders = spec['watch']
    before = snapshot(folders)
    out_path = os.path.join(case['dir'], '.stdout')
    err_path = os.path.join(case['dir'], '.stderr')
    start = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    if case['env']:
      # JAX reads its environment when imported, as this process did: a case that sets one
      # runs as a plain subprocess.
      proc = subprocess.run(_command(case['tool']) + case['args'], cwd=REPO,
                            env=dict(os.environ, **case['env']), capture_output=True, text=True,
                            timeout=300)
      exit_code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
      pid = os.fork()
      if pid == 0:
        _run_in_child(case['tool'], case['args'], out_path, err_path)
      _, status = os.waitpid(pid, 0)
      exit_code = os.waitstatus_to_exitcode(status)
      with open(out_path) as f:
        stdout = f.read()
      with open(err_path) as f:
        stderr = f.read()
    seconds = time.monotonic() - start
    after = snapshot(folders)
    results[case['name']] = {
        'status': exit_code, 'stdout': stdout, 'stderr': stderr,
        'touched': touched(before, after, tuple(case['allowed_new'])), 'seconds': seconds}
  with open(spec['results'], 'w') as f:
    json.dump(results, f)


def _env() -> dict[str, str]:
  # absl's prefix (ALEXNET_JAX_LOG_PREFIX) tells log lines from messages.
  return subprocesses.launch_env(compile_cache=True, ALEXNET_JAX_LOG_PREFIX='1')


# ----------------------------------------------------------------------------- the doc


def render_doc() -> str:
  groups = {'paths': 'Paths', 'configs': 'Configs', 'data': 'Datasets', 'images': 'Images',
            'labels': 'Labels files', 'tars': 'Official ImageNet tars',
            'checkpoints': 'Checkpoints',
            'ensembles': 'Ensembles (evaluate with several --workdir)',
            'weights': 'Importing and exporting weights',
            'flags': 'Flags', 'cluster': 'Multi-process runs', 'mesh': 'Mesh shapes', 'plan': 'Dry-run plans (--plan_*)'}
  names = {'launch': 'python launch.py', 'prepare': 'python -m alexnet_jax.prepare',
           'predict': 'python -m alexnet_jax.predict', 'evaluate': 'python -m alexnet_jax.evaluate',
           'plot': 'python -m alexnet_jax.plot', 'summary': 'python -m alexnet_jax.summary',
           'import_weights': 'python -m alexnet_jax.import_weights',
           'export_weights': 'python -m alexnet_jax.export_weights'}
  cell = lambda s: s.replace('|', '\\|')
  lines = [
      '# Bad input: what each command says',
      '',
      '<!-- Generated by `python -m tests.test_bad_input --write_doc` from CASES in',
      '     tests/test_bad_input.py; tests/test_bad_input.py fails when they differ. -->',
      '',
      'Every input below is a mistake a user can make. Each command exits with the status shown',
      'and prints the one line shown (besides log lines), with no Python traceback, and leaves',
      'every existing file (prepared data, workdirs, checkpoints, sources) byte-for-byte as it',
      'was: `tests/test_bad_input.py` runs each one and checks all of that. Bad images are the',
      'exception that does not fail: `prepare` skips an undecodable image, counts it in the',
      'summary line and lists it in `dataset.json` (`skipped_files`), unless `--strict`;',
      'odd but valid images (PNG content named .JPEG, CMYK, grayscale) are converted, photos',
      'with an EXIF orientation tag are turned upright, and both are counted; a dataset',
      'without validation images is prepared, and the summary line says that training will',
      'refuse it.',
      '',
      'Exit statuses: 2, a user error reported by the program (`error: ...`); 1, a flag the',
      'parser refused (`FATAL Flags parsing error: ...`, followed by absl\'s one-line',
      '`--helpshort` hint); 0, images skipped, converted or counted. Ctrl-C ends any command',
      'with one `interrupted: ...` line and status 130. Faults during a run (killed',
      'processes, two runs on one workdir, Ctrl-C, full disks, a read-only workdir) are in',
      '[reliability.md](reliability.md). Set `ALEXNET_JAX_TRACEBACK=1` to see the Python',
      'traceback above an `error:` line, for a bug report; an error that is not the user\'s',
      '(a bug) always shows its traceback.',
      '',
      'Names in the commands and messages:',
      '',
  ]
  lines += [f'- `{{{k}}}`: {v}' for k, v in FIXTURES.items()]
  lines += ['- `T`: seconds the preparation took',
            '- `N`: a byte count that depends on the image; in the lock\'s line, the seconds',
            '  since the holder\'s last heartbeat',
            '- `H`, `P`, `T` in the lock\'s line: the host, process id and start time of the run',
            '  that holds the workdir',
            '- `<reason>`: the first line of the storage library\'s report: for a checkpoint, it',
            '  names the array read that failed first (reads run in parallel, so it varies); for',
            '  a shard, the checksum that did not match', '']
  for group, title in groups.items():
    lines += [f'## {title}', '', '| Input | Command | Exit | Message |', '|---|---|---|---|']
    for case in CASES:
      if case.group != group:
        continue
      command = ' '.join([*(f'{k}={v}' for k, v in case.env), names[case.tool], *case.args])
      status = '0 (skipped and counted)' if case.status == SKIPPED else str(case.status)
      if case.status == SKIPPED and not case.skipped:
        status = '0 (converted)'
      status = case.note or status
      lines.append(f'| {cell(case.what)} | `{cell(command)}` | {status} | '
                   f'`{cell(case.message)}` |')
    lines.append('')
  lines += fuzz_findings.doc_lines()
  lines += [
      '## Not covered',
      '',
      '- A config file whose `get_config` raises an exception ends in Python\'s own',
      '  traceback, which points at the offending line, with exit status 1 (a file that is',
      '  not Python, a syntax error, is one `error:` line).',
      '- Permission errors: the tests run as root, where `chmod` does not stop writes; a',
      '  file where a folder should be stands in for an unwritable path here (a read-only',
      '  workdir is in reliability.md).',
      '',
  ]
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- the tests


class BadInputMatrixTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix='test_bad_input_')
    cls.fixtures = _make_fixtures(cls.root)
    cls.case_dirs = {}
    cases = []
    for case in CASES:
      folder = os.path.join(cls.root, 'cases', case.name)
      os.makedirs(folder)
      cls.case_dirs[case.name] = folder
      fixtures = dict(cls.fixtures, CASE=folder)
      for relative, kind in case.inputs:
        _make_input(os.path.join(folder, relative), kind, fixtures, f'{case.name}/{relative}')
      cases.append({'name': case.name, 'tool': case.tool, 'dir': folder,
                    'args': [_fill(a, fixtures) for a in case.args], 'env': dict(case.env),
                    'allowed_new': [os.path.join(folder, 'new'), os.path.join(folder, 'out'),
                                    os.path.join(folder, '.std')]})
    spec = {'cases': cases, 'results': os.path.join(cls.root, 'results.json'),
            'watch': [cls.root, cls.fixtures['DATA']]}
    spec_path = os.path.join(cls.root, 'spec.json')
    with open(spec_path, 'w') as f:
      json.dump(spec, f)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, '-c', f'from tests import test_bad_input as t; t.serve({spec_path!r})'],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    cls.runner_seconds = time.monotonic() - start
    if proc.returncode != 0:
      raise AssertionError(f'the case runner failed:\n{proc.stderr[-5000:]}')
    with open(spec['results']) as f:
      cls.results = json.load(f)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def fixtures_of(self, case: Case) -> dict[str, str]:
    return dict(self.fixtures, CASE=self.case_dirs[case.name])

  @parameterized.named_parameters((c.name, c) for c in CASES)
  def test_case(self, case: Case):
    result = self.results[case.name]
    output = result['stdout'] + result['stderr']
    lines = message_lines(result['stdout'], result['stderr'])
    self.assertNotIn('Traceback', output, output[-3000:])
    self.assertLen(lines, 1, output[-3000:])
    self.assertEqual(_normalize(lines[0], self.fixtures_of(case)), case.message)
    self.assertEqual(result['status'], 0 if case.status == SKIPPED else case.status, output)
    self.assertEqual(result['touched'], [], 'files that existed were changed')
    if case.leaves_nothing:
      folder = self.case_dirs[case.name]
      self.assertEqual([n for n in ('new', 'out') if os.path.exists(os.path.join(folder, n))],
                       [], 'a refused input left a workdir or output behind')
    if case.status == SKIPPED:
      with open(os.path.join(self.case_dirs[case.name], 'out', 'dataset.json')) as f:
        report = json.load(f)['report']
      self.assertEqual(report['skipped']['train'], case.skipped)
      listed = [os.path.basename(name) for name, _ in report['skipped_files']]
      self.assertEqual(listed, [os.path.basename(p) for p, _ in case.inputs][-1:] * case.skipped)

  @parameterized.named_parameters((name, name) for name in SUBPROCESS_CASES)
  def test_subprocess_prints_the_same(self, name: str):
    case = next(c for c in CASES if c.name == name)
    fixtures = self.fixtures_of(case)
    proc = subprocess.run(_command(case.tool) + [_fill(a, fixtures) for a in case.args],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    forked = self.results[name]
    self.assertEqual(proc.returncode, forked['status'])
    self.assertEqual(message_lines(proc.stdout, proc.stderr),
                     message_lines(forked['stdout'], forked['stderr']))

  def test_doc_matches_the_matrix(self):
    with open(DOC) as f:
      self.assertEqual(f.read(), render_doc(),
                       'docs/bad_input.md is stale: python -m tests.test_bad_input --write_doc')


if __name__ == '__main__':
  if sys.argv[1:] == ['--write_doc']:
    with open(DOC, 'w') as f:
      f.write(render_doc())
    print(f'wrote {DOC}')
  else:
    absltest.main()
