"""What the harness found, pinned: each instance runs in every profile, and must end with
its status and last line. docs/bad_input.md lists them (`doc_lines`)."""

from __future__ import annotations

import dataclasses
import re

from tests.fuzz import inputs
from tests.fuzz import runner


@dataclasses.dataclass(frozen=True)
class Finding:
  draw: inputs.Draw
  status: int
  line: str  # the last line it prints (log records aside), paths as placeholders


_DRY = inputs._dry_run  # pylint: disable=protected-access
_RUN_DRY = ('--config={RUN}/config.py', '--workdir={RUN}', '--dry_run')
_LEAF = ('config.optim.momentum is a single value (a float), not a group of fields; set it as '
         '--config.optim.momentum=VALUE')


def _config(what: str, *flags: str, status: int, line: str) -> Finding:
  return Finding(inputs.Draw('config', what, 'launch', _DRY(*flags)), status, line)


FINDINGS = (
    _config('an override through a leaf', '--config.optim.momentum.x=1', status=2,
            line=f'error: --config.optim.momentum.x: {_LEAF}'),
    _config('an override of an unknown group', '--config.nosuch.seed=1', status=2,
            line='error: --config.nosuch.seed: config.nosuch.seed is not a config field; the '
                 'fields are those of configs/imagenet.py'),
    _config('an override path with an index', '--config.batch_size.0=1', status=2,
            line='error: --config.batch_size.0: not a config field (a field is names joined by '
                 'dots, as in --config.optim.momentum=0.9)'),
    _config('an override through a string', '--config.model.dtype.x=1', status=2,
            line="error: --config.model.dtype.x: cannot be applied to the config (TypeError: "
                 "string indices must be integers, not 'str'): an override names one field "
                 "(names joined by dots) and gives it a value of that field's type"),
    _config('a number where mesh.rules takes pairs', '--config.mesh.rules=1_000', status=2,
            line='error: config.mesh.rules must be a tuple of (logical name, mesh axis or None) '
                 'pairs, got (1000,)'),
    _config('model.conv_widths set from the command line',
            '--config.model.conv_widths=(8,16,24,24,16)', status=0,
            line='workdir: {CASE}/new (new run)'),
    Finding(inputs.Draw('config', 'an argument after the config file', 'launch',
                        ('--config={CONFIG}:small', '--workdir={CASE}/new', '--dry_run')), 2,
            "error: the --config file {CONFIG} has a get_config() that takes no argument, but "
            "--config={CONFIG}:small passes it 'small' (the text after the colon); give "
            '--config={CONFIG} and set fields with --config.FIELD=VALUE'),
    Finding(inputs.Draw('path', '--config is a FIFO', 'launch',
                        ('--config={P}', '--workdir={CASE}/new', '--dry_run'),
                        needs=('fs:fifo',)), 2,
            'error: the --config file {CASE}/target is not a regular file; give a config file '
            'like configs/imagenet.py'),
    Finding(inputs.Draw('path', '--config is a text file', 'launch',
                        ('--config={P}', '--workdir={CASE}/new', '--dry_run'),
                        needs=('fs:file',)), 2,
            'error: the --config file {CASE}/target is not a Python config file '
            '({CASE}/target, line 1: invalid syntax); give a file like configs/imagenet.py'),
    Finding(inputs.Draw('path', '--workdir of a dry run is a FIFO', 'launch',
                        _DRY('--workdir={P}'), needs=('fs:fifo',)), 2,
            "error: workdir '{CASE}/target' cannot be written: it exists and is not a folder"),
    Finding(inputs.Draw('path', 'config.data.dir is a link loop', 'launch',
                        _DRY('--config.data.dir={P}'), needs=('fs:link_loop',)), 0,
            'workdir: {CASE}/new (new run)'),
    Finding(inputs.Draw('path', 'plot --workdir is an empty folder', 'plot',
                        ('--workdir={P}',), needs=('fs:folder',)), 2,
            'error: nothing to plot in {CASE}/target: no metrics.jsonl and no config.json (not '
            'the workdir of a training run)'),
    Finding(inputs.Draw('plan', '--plan_device_memory_gib=inf', 'launch',
                        _DRY('--plan_device_memory_gib=inf')), 2,
            'error: --plan_device_memory_gib must be in [1e-06, 1e+06] (beyond that it '
            'describes no machine), got inf'),
    Finding(inputs.Draw('plan', '--plan_images_per_sec=1e-300', 'launch',
                        _DRY('--plan_images_per_sec=1e-300')), 2,
            'error: --plan_images_per_sec must be in [0.001, 1e+12] (beyond that it describes '
            'no machine), got 1e-300'),
    Finding(inputs.Draw('env', 'JAX_ENABLE_X64=maybe', 'summary', ('--config={CONFIG}',),
                        env=(('JAX_ENABLE_X64', 'maybe'),)), 2,
            "error: the environment variable JAX_ENABLE_X64='maybe' is not a value JAX accepts "
            "(ValueError: invalid truth value 'maybe' for environment 'JAX_ENABLE_X64'); unset "
            'it or set it to one JAX documents'),
    Finding(inputs.Draw('env', 'JAX_NUM_CPU_DEVICES=100000', 'summary', ('--config={CONFIG}',),
                        env=(('JAX_NUM_CPU_DEVICES', '100000'),)), 2,
            'error: JAX_NUM_CPU_DEVICES=100000 asks JAX for 100000 CPU devices; at most 4096 are '
            'accepted (JAX makes every one as it starts: 10,000 take about a minute and a GB)'),
    Finding(inputs.Draw('env', 'SLURM_NTASKS=99999999999999999999', 'launch', _DRY(),
                        env=tuple(sorted({**inputs.SLURM_REST,
                                          'SLURM_NTASKS': '99999999999999999999'}.items()))), 2,
            "error: the environment variable SLURM_NTASKS='99999999999999999999' must be at most "
            '65536 (the cluster launcher sets it; unset it, or fix the job script that sets it)'),
    Finding(inputs.Draw('workdir_file', 'run.lock of non-UTF-8 bytes', 'launch', _RUN_DRY,
                        needs=('run',), damage=('run.lock', 'non_utf8')), 0,
            'workdir: {RUN} (resumes from step 4; in use by a run: a damaged lock file that no '
            'run wrote (stale: it will be taken over))'),
    Finding(inputs.Draw('workdir_file', 'a folder where run.lock goes', 'launch', _RUN_DRY,
                        needs=('run',), damage=('run.lock', 'folder')), 2,
            'error: {RUN}/run.lock is not a regular file (a folder, link, FIFO or socket), so no '
            'run can lock the workdir {RUN}: a run writes its lock file there. Move it away, or '
            'use another --workdir'),
    Finding(inputs.Draw('workdir_file', '`nope` in a checkpoint\'s metrics file', 'evaluate',
                        ('--workdir={RUN}', '--crops=1'), needs=('run',),
                        outputs=('{RUN}/eval',),
                        damage=('checkpoints/{step}/metrics/metrics', 'nope')), 2,
            'error: checkpoint {RUN}/checkpoints/4 is damaged: {RUN}/checkpoints/4/metrics/metrics '
            'is not JSON (JSONDecodeError: Expecting value: line 1 column 1 (char 0)); resume the '
            'run (launch.py with its --workdir) to move it to {RUN}/checkpoints/damaged and go '
            'on from the one before it'),
)

_LOG_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ ]+:\d+\] ')


def last_line(output: str, case: runner.Case) -> str:
  """The last line the command printed besides log records, with the case's paths as
  placeholders."""
  lines = [l for l in output.splitlines() if l.strip() and not _LOG_LINE.match(l)]
  line = lines[-1] if lines else ''
  for name, path in (('CONFIG', inputs.CONFIG_FILE), ('RUN', f'{case.cwd}/run'),
                     ('CASE', case.cwd)):
    line = line.replace(path, '{' + name + '}')
  return line


def doc_lines() -> list[str]:
  """The section of docs/bad_input.md on the harness: its classes, properties and findings."""
  from tests.fuzz import suite  # pylint: disable=g-import-not-at-top
  cell = lambda s: s.replace('|', '\\|')
  names = {'launch': 'python launch.py', 'evaluate': 'python -m alexnet_jax.evaluate',
           'plot': 'python -m alexnet_jax.plot', 'summary': 'python -m alexnet_jax.summary'}
  lines = ['## Fuzzed classes', '',
           '`tests/fuzz` draws hostile inputs of each class below with hypothesis and runs them',
           'through the real commands (launch and its dry run, prepare, evaluate, predict, plot,',
           'summary). Every case must answer within its timeout, print no traceback (unless',
           '`ALEXNET_JAX_TRACEBACK=1`), exit with 0, 2, 3 or 130 (1 only with absl\'s `FATAL Flags',
           'parsing error` line), change nothing it was not given as an output, and leave no',
           'process behind. `tests/test_fuzz_entry_points.py` runs the fast profile (seed '
           f'{suite.PROFILES["fast"].seed},',
           f'{sum(suite.PROFILES["fast"].examples.values())} drawn cases); '
           '`python -m tests.fuzz --profile=long` runs '
           f'{sum(suite.PROFILES["long"].examples.values())}', 'and the slow commands too.', '',
           '| Class | What is drawn |', '|---|---|']
  lines += [f'| {name} | {cell(what)} |' for name, what in inputs.CLASSES.items()]
  lines += ['', 'Found by it, and run in every profile (`{CONFIG}`: `configs/digits.py`; '
            '`{CASE}/target`: the file-system object the case names; `{RUN}`: a copy of a tiny '
            'trained run, 4 steps; `{DATA}`: its dataset):', '',
            '| Class | Input | Command | Exit | Last line |', '|---|---|---|---|---|']
  for f in FINDINGS:
    args = ' '.join(a.replace(inputs.CONFIG_FILE, '{CONFIG}').replace('{P}', '{CASE}/target')
                    for a in f.draw.args)
    env = ''.join(f'{k}={v} ' for k, v in f.draw.env)
    lines.append(f'| {f.draw.kind} | {cell(f.draw.what)} | '
                 f'`{cell(env + names[f.draw.tool] + " " + args)}` '
                 f'| {f.status} | `{cell(f.line)}` |')
  return lines + ['']
