"""Hostile inputs of each class, as hypothesis strategies of runner.Case.

Classes (CLASSES): config overrides of every field of configs/imagenet.py, the
--plan_* numbers, every path flag given each kind of file-system object, odd names
for workdirs and datasets, every workdir file replaced by something it should not
hold, and the environment variables the program and JAX read. Each strategy draws
what to do; `Fixtures.build` then makes the case's folder (a copy of a tiny trained
run where the command reads one) and returns the Case.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import socket
import stat
from typing import Any, Callable

from hypothesis import strategies as st
import ml_collections

from configs import imagenet
from tests.fuzz import runner

CONFIG_FILE = os.path.join(runner.REPO, 'configs', 'digits.py')

CLASSES = {
    'config': 'a --config.FIELD override of every field: unknown, through a leaf, of the wrong '
              'type, NaN/inf/huge/negative numbers, odd strings; arguments after the config file',
    'plan': 'the --plan_* numbers of a dry run: inf, NaN, 1e-300, huge, zero, negative',
    'path': 'each path flag given a regular file, a missing path, a folder, a FIFO, a socket, '
            '/dev/null, a link to a file or folder, a dangling link, a link loop, an unreadable '
            'file, a path in a read-only or missing folder',
    'name': 'workdirs and datasets named with brackets, glob and shell characters, spaces, '
            'unicode, a leading dash, very long names',
    'workdir_file': 'each workdir file (metrics.jsonl, config.json, config history, run.lock, '
                    'the eval cache, every file of a checkpoint, its checksums included) '
                    'replaced by JSON of the wrong shape, non-UTF-8 bytes, a folder, a FIFO, a '
                    'link loop, or cut short',
    'env': 'the environment variables the program and JAX read (ALEXNET_JAX_*, JAX_*, XLA_FLAGS, '
           'TF_CPP_*, the SLURM, Open MPI and TPU launchers\' variables, TMPDIR, HOME, ...) set '
           'to wrong values, then each command',
}


def _fields() -> list[tuple[str, Any]]:
  flat = []
  def walk(config: ml_collections.ConfigDict, prefix: str) -> None:
    for key, value in config.items():
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f'{prefix}{key}.')
      else:
        flat.append((f'{prefix}{key}', value))
  walk(imagenet.get_config(), '')
  return flat


FIELDS = [name for name, _ in _fields()]
NUMBERS = ('nan', 'inf', '-inf', '1e309', '-1', '0', '-0.0', '1e-300', '1e300',
           '99999999999999999999999999', '2147483648', '-2147483649', '0x10', '1_000')
WRONG_TYPES = ('ten', '(1,', '[]', '{}', 'None', 'True', '1.5', '', "'x'", '((1,2),(3,))',
               '(1, 2, 3, 4, 5)')
ODD_STRINGS = ('*', '[a]', '$(touch pwned)', '; touch pwned', 'a b', 'donn\u00e9es\u2713',
               '\u202eevil', 'x' * 5000, '-', '..', '/', '~', '%s%n', '\\', '"')
ODD_NAMES = ('[run]', 'run*?', '$(touch pwned)', 'a b  c', 'donn\u00e9es \u2713 \u65e5\u672c',
             '-dash', '--workdir=x', "it's", 'semi;colon|pipe&', 'new\nline', '%d%s',
             'n' * 255, '\u202eevil', '.hidden', 'back\\slash', '{RUN}', '~user')
FS_KINDS = ('file', 'missing', 'folder', 'fifo', 'socket', 'devnull', 'link_to_file',
            'link_to_folder', 'dangling_link', 'link_loop', 'unreadable', 'in_readonly_folder',
            'in_missing_folder', 'empty_name')
# Every file a checkpoint holds (docs/checkpoints.md); `*`: the first file of that folder,
# whose name is a hash.
CHECKPOINT_FILES = ('_CHECKPOINT_METADATA', 'commit_success.txt', 'meta/metadata',
                    'meta/commit_success.txt', 'metrics/metrics', 'metrics/commit_success.txt',
                    'checksums/metadata', 'checksums/commit_success.txt', 'state/_METADATA',
                    'state/_sharding', 'state/manifest.ocdbt', 'state/commit_success.txt',
                    'state/array_metadatas/process_0', 'state/d/*',
                    'state/ocdbt.process_0/manifest.ocdbt', 'state/ocdbt.process_0/d/*')
RUN_FILES = ('metrics.jsonl', 'config.json', 'config_history.jsonl', 'run.lock',
             'dataset_info.json', 'eval/{step}-1crop.json',
             *(f'checkpoints/{{step}}/{name}' for name in CHECKPOINT_FILES))
DAMAGES = ('json_list', 'json_number', 'json_string', 'json_null', 'json_empty_object',
           'json_other_object', 'non_utf8', 'folder', 'truncated', 'empty', 'nope', 'fifo',
           'link_loop')
ENV = {
    'JAX_PLATFORMS': ('gpu', 'tpu', 'nonsense', 'cpu,gpu', ','),
    'XLA_FLAGS': ('--no_such_flag', '--xla_force_host_platform_device_count=0', '\u00ff',
                  '--xla_force_host_platform_device_count=x'),
    'ALEXNET_JAX_TRACEBACK': ('1', 'yes', ''),
    'ALEXNET_JAX_LOG_PREFIX': ('1', 'x', '\u00ff'),
    'JAX_ENABLE_X64': ('1', 'maybe'),
    'JAX_DEFAULT_MATMUL_PRECISION': ('bogus',),
    'JAX_NUM_CPU_DEVICES': ('-1', 'x', '100000'),
    'JAX_DEBUG_NANS': ('1', 'x'),
    'JAX_DISABLE_JIT': ('1', 'x'),
    'JAX_TRACEBACK_FILTERING': ('x',),
    'JAX_LOGGING_LEVEL': ('x', 'DEBUG'),
    'JAX_COMPILATION_CACHE_DIR': ('{CASE}/cache_file', '{CASE}/nowhere/cache', '/proc/x'),
    'JAX_COORDINATOR_ADDRESS': ('no-port', 'nohost.invalid:1', ':'),
    'JAX_COORDINATOR_PORT': ('x', '0', '70000'),
    'JAX_LOCAL_DEVICE_IDS': ('x', '0,0'),
    'SLURM_NTASKS': ('0', 'x', '-3', '99999999999999999999'),
    'SLURM_PROCID': ('x', '-1'),
    'OMPI_COMM_WORLD_SIZE': ('x', '0'),
    'OMPI_COMM_WORLD_RANK': ('x', '5'),
    'OMPI_MCA_orte_hnp_uri': ('x', '1.0;tcp://'),
    'TPU_WORKER_HOSTNAMES': (',', 'a,b'),
    'TPU_PROCESS_ADDRESSES': (',', 'x'),
    'TF_CPP_MIN_LOG_LEVEL': ('x', '-1', '9'),
    'TF_CPP_MAX_VLOG_LEVEL': ('x', '-1'),
    'OMP_NUM_THREADS': ('0', 'x'),
    'PYTHONWARNINGS': ('bogus', 'ignore::NoSuchWarning'),
    'TMPDIR': ('{CASE}/nowhere', '{CASE}/cache_file', '{CASE}/readonly', ''),
    'HOME': ('{CASE}/nowhere', '{CASE}/readonly', ''),
    'XDG_CACHE_HOME': ('{CASE}/cache_file',),
}
# Variables that name a folder where programs keep caches and temporary files.
WRITABLE_PLACES = ('TMPDIR', 'HOME', 'XDG_CACHE_HOME', 'JAX_COMPILATION_CACHE_DIR')
# The rest of a launcher's environment, so that a drawn variable is the one wrong value.
SLURM_REST = {'SLURM_JOB_ID': '1', 'SLURM_STEP_NODELIST': 'localhost', 'SLURM_PROCID': '0',
              'SLURM_LOCALID': '0', 'SLURM_NTASKS': '1'}
OMPI_REST = {'OMPI_MCA_orte_hnp_uri': '1.0;tcp://127.0.0.1:1', 'OMPI_COMM_WORLD_SIZE': '1',
             'OMPI_COMM_WORLD_RANK': '0'}


# ----------------------------------------------------------------------------- what to draw


@dataclasses.dataclass(frozen=True)
class Draw:
  """What a strategy drew; Fixtures.build makes it a Case."""
  kind: str
  what: str
  tool: str
  args: tuple[str, ...]  # with {PLACEHOLDERS} Fixtures.build fills
  needs: tuple[str, ...] = ()  # ('run',): a copy of the tiny run at {RUN}; FS kinds at {P}
  env: tuple[tuple[str, str], ...] = ()
  outputs: tuple[str, ...] = ()  # with placeholders
  elsewhere: str = ''
  damage: tuple[str, str] = ('', '')  # (run file, damage) for workdir_file


def _dry_run(*args: str) -> tuple[str, ...]:
  return (f'--config={CONFIG_FILE}', '--workdir={CASE}/new', '--config.data.dir={DATA}',
          '--dry_run', *args)


@st.composite
def config_overrides(draw: Callable) -> Draw:
  field = draw(st.sampled_from(FIELDS))
  how = draw(st.sampled_from(('unknown', 'through_leaf', 'wrong_type', 'number', 'odd_string',
                              'text')))
  if how == 'unknown':
    flag = draw(st.sampled_from((f'--config.{field}x=1', f'--config.nosuch.{field}=1',
                                 f'--config.{field.rsplit(".", 1)[0]}.nosuch=1')))
  elif how == 'through_leaf':
    flag = f'--config.{field}.{draw(st.sampled_from(("x", "0", "x.y")))}=1'
  else:
    value = draw({'wrong_type': st.sampled_from(WRONG_TYPES), 'number': st.sampled_from(NUMBERS),
                  'odd_string': st.sampled_from(ODD_STRINGS),
                  'text': st.text(st.characters(exclude_categories=('Cs',),
                                                exclude_characters='\x00'), max_size=20)}[how])
    flag = f'--config.{field}={value}'
  tool = draw(st.sampled_from(('launch', 'summary')))
  args = _dry_run(flag) if tool == 'launch' else (f'--config={CONFIG_FILE}', flag)
  elsewhere = ''
  if field in ('data.worker_count', 'data.num_threads') and how == 'number':
    elsewhere = 'worker processes'
  return Draw('config', f'{how} {flag[:80]}', tool, args, elsewhere=elsewhere)


def config_files() -> st.SearchStrategy[Draw]:
  forms = (f'{CONFIG_FILE}:small', f'{CONFIG_FILE}:', f'{CONFIG_FILE}::x', ':x', 'configs',
           f'{CONFIG_FILE}x', '')
  return st.sampled_from(forms).map(lambda c: Draw(
      'config', f'--config={c}', 'launch',
      (f'--config={c}', '--workdir={CASE}/new', '--dry_run')))


@st.composite
def plan_numbers(draw: Callable) -> Draw:
  name = draw(st.sampled_from(('device_memory_gib', 'images_per_sec', 'peak_tflops',
                               'efficiency', 'devices', 'processes', 'host_cores',
                               'train_images')))
  value = draw(st.sampled_from(NUMBERS + ('1e-9', '0.5', '3', '1e12', '1e6')))
  args = [f'--plan_{name}={value}']
  if name in ('processes', 'host_cores') or draw(st.booleans()):
    args += ['--plan_devices=2', '--plan_platform=gpu']
  if name == 'peak_tflops':
    args.append('--plan_efficiency=0.5')
  if name == 'efficiency':
    args.append('--plan_peak_tflops=100')
  return Draw('plan', ' '.join(args), 'launch', _dry_run(*args))


# (tool, args with {P} for the path, needs a run, outputs, elsewhere)
PATH_FLAGS = (
    ('launch', _dry_run('--workdir={P}'), False, (), ''),
    ('launch', (f'--config={{P}}', '--workdir={CASE}/new', '--dry_run'), False, (), ''),
    ('launch', _dry_run('--config.data.dir={P}'), False, (), ''),
    ('launch', _dry_run('--config.data.dir={CASE}/nodata', '--config.data.prepare_from={P}'),
     False, (), ''),
    ('summary', ('--config={P}',), False, (), ''),
    ('prepare', ('--source={P}', '--output={CASE}/out', '--image_size=16'), False,
     ('{CASE}/out',), ''),
    ('evaluate', ('--workdir={P}',), False, (), ''),
    ('evaluate', ('--workdir={RUN}', '--data_dir={P}', '--crops=1'), True, ('{RUN}/eval',), ''),
    ('predict', ('--workdir={P}', '{IMAGE}'), True, (), ''),
    ('plot', ('--workdir={P}',), False, (), ''),
    # Outputs and image inputs: another feature's (see runner.Case.elsewhere).
    ('predict', ('--workdir={RUN}', '{P}'), True, (), 'image inputs'),
    ('evaluate', ('--workdir={RUN}', '--crops=1', '--output={P}'), True,
     ('{RUN}/eval', '{P}'), 'outputs'),
    ('plot', ('--workdir={RUN}', '--plots_dir={P}'), True, ('{P}',), 'outputs'),
    ('prepare', ('--source=digits', '--output={P}', '--image_size=16'), False, ('{P}',),
     'outputs'),
)


@st.composite
def path_flags(draw: Callable, slow: bool = True) -> Draw:
  flags = PATH_FLAGS if slow else [f for f in PATH_FLAGS if f[0] in ('launch', 'summary')]
  tool, args, needs_run, outputs, elsewhere = draw(st.sampled_from(flags))
  kind = draw(st.sampled_from(FS_KINDS))
  flag = next(a for a in args if '{P}' in a)
  return Draw('path', f'{tool} {flag} given {kind}', tool, args,
              needs=(('run',) if needs_run else ()) + (f'fs:{kind}',), outputs=outputs,
              elsewhere=elsewhere)


@st.composite
def odd_names(draw: Callable, slow: bool = True) -> Draw:
  name = draw(st.one_of(st.sampled_from(ODD_NAMES), st.text(
      st.characters(exclude_categories=('Cs',), exclude_characters='/\x00'), min_size=1,
      max_size=40).filter(lambda n: n not in ('.', '..'))))
  uses = ['workdir_dry_run', 'data_dir_dry_run', 'plot_run']
  if slow:
    uses.append('prepare_output')
  use = draw(st.sampled_from(uses))
  if use == 'workdir_dry_run':
    return Draw('name', f'a workdir named {name!r}', 'launch',
                _dry_run('--workdir={CASE}/{NAME}'), needs=(f'name:{name}',))
  if use == 'data_dir_dry_run':
    return Draw('name', f'a dataset folder named {name!r}', 'launch',
                _dry_run('--config.data.dir={CASE}/{NAME}'), needs=(f'name:{name}', 'data_copy'))
  if use == 'plot_run':
    return Draw('name', f'plot of a run named {name!r}', 'plot', ('--workdir={CASE}/{NAME}',),
                needs=(f'name:{name}', 'run_named'), outputs=('{CASE}/{NAME}/plots',))
  return Draw('name', f'prepare into a folder named {name!r}', 'prepare',
              ('--source={SMALL_SOURCE}', '--output={CASE}/{NAME}', '--image_size=16'),
              needs=(f'name:{name}', 'small_source'), outputs=('{CASE}/{NAME}',))


@st.composite
def workdir_files(draw: Callable, slow: bool = True) -> Draw:
  target = draw(st.sampled_from(RUN_FILES))
  damage = draw(st.sampled_from(DAMAGES))
  readers = ['dry_run', 'plot', 'predict', 'evaluate']
  if slow:
    readers.append('resume')
  reader = draw(st.sampled_from(readers))
  args, outputs = {
      'dry_run': (('--config={RUN}/config.py', '--workdir={RUN}', '--dry_run'), ()),
      'resume': (('--config={RUN}/config.py', '--workdir={RUN}', '--config.num_train_steps=6'),
                 ('{RUN}',)),
      'plot': (('--workdir={RUN}',), ('{RUN}/plots',)),
      'predict': (('--workdir={RUN}', '{IMAGE}'), ()),
      'evaluate': (('--workdir={RUN}', '--crops=1'), ('{RUN}/eval',)),
  }[reader]
  tool = 'launch' if reader in ('dry_run', 'resume') else reader
  return Draw('workdir_file', f'{target} replaced by {damage}, then {reader}', tool, args,
              needs=('run',), outputs=outputs, damage=(target, damage))


@st.composite
def environment(draw: Callable, slow: bool = True) -> Draw:
  name = draw(st.sampled_from(sorted(ENV)))
  value = draw(st.sampled_from(ENV[name]))
  env = {}
  if name.startswith('SLURM_'):
    env.update(SLURM_REST)
  if name.startswith('OMPI_'):
    env.update(OMPI_REST)
  env[name] = value
  tools = ['launch', 'summary']
  if slow:
    tools += ['evaluate', 'predict', 'plot', 'prepare', 'resume']
  tool = draw(st.sampled_from(tools))
  args, needs, outputs = {
      'launch': (_dry_run(), (), ()),
      'summary': ((f'--config={CONFIG_FILE}',), (), ()),
      'evaluate': (('--workdir={RUN}', '--crops=1'), ('run',), ('{RUN}/eval',)),
      'predict': (('--workdir={RUN}', '{IMAGE}'), ('run',), ()),
      'plot': (('--workdir={RUN}',), ('run',), ('{RUN}/plots',)),
      'prepare': (('--source={SMALL_SOURCE}', '--output={CASE}/out', '--image_size=16'), (),
                  ('{CASE}/out',)),
      'resume': (('--config={RUN}/config.py', '--workdir={RUN}', '--config.num_train_steps=6'),
                 ('run',), ('{RUN}',)),
  }[tool]
  if name in WRITABLE_PLACES and value.startswith('{CASE}'):
    outputs += (value,)  # a cache or temporary file there is the variable's purpose
  return Draw('env', f'{name}={value!r}, then {tool}', 'launch' if tool == 'resume' else tool,
              args, needs=needs + ('env_targets',), env=tuple(sorted(env.items())),
              outputs=outputs)


# ----------------------------------------------------------------------------- making the case


def _json_damage(damage: str, original: bytes) -> bytes:
  return {'json_list': b'[1, 2]', 'json_number': b'7', 'json_string': b'"x"',
          'json_null': b'null', 'json_empty_object': b'{}',
          'json_other_object': b'{"step": "x", "val_error": "bad", "format": 3}',
          'non_utf8': b'\xff\xfe\x80 not text \xc3', 'empty': b'', 'nope': b'nope\n',
          'truncated': original[:len(original) // 2]}[damage]


def damage_file(path: str, damage: str) -> None:
  """Replaces the file at `path` (made if missing) by `damage` (DAMAGES); `*` as its name:
  the first file of that folder."""
  if os.path.basename(path) == '*':
    folder = os.path.dirname(path)
    path = os.path.join(folder, sorted(os.listdir(folder))[0])
  original = b''
  if os.path.isfile(path):
    with open(path, 'rb') as f:
      original = f.read()
  if os.path.lexists(path):
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if damage == 'folder':
    os.makedirs(os.path.join(path, 'inside'))
    return
  if damage in ('fifo', 'link_loop'):
    make_fs_object(path, damage)
    return
  with open(path, 'wb') as f:
    f.write(_json_damage(damage, original or b'{"a": 1}\n'))


def make_fs_object(path: str, kind: str) -> str:
  """Puts a file-system object of `kind` (FS_KINDS) at or near `path`; returns the path to
  give the flag."""
  folder = os.path.dirname(path)
  if kind == 'devnull':
    # A node with the null device's numbers in the case folder: a command that replaced its
    # output path would otherwise replace the machine's /dev/null when the harness runs as root.
    try:
      os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
      return os.devnull  # not root: nothing can replace /dev/null
    return path
  if kind == 'empty_name':
    return ''
  if kind == 'file':
    with open(path, 'w') as f:
      f.write('a plain file\n')
  elif kind == 'folder':
    os.makedirs(path)
  elif kind == 'fifo':
    os.mkfifo(path)
  elif kind == 'socket':
    with socket.socket(socket.AF_UNIX) as s:
      s.bind(path)
  elif kind == 'link_to_file':
    make_fs_object(path + '.target', 'file')
    os.symlink(path + '.target', path)
  elif kind == 'link_to_folder':
    os.makedirs(path + '.target')
    os.symlink(path + '.target', path)
  elif kind == 'dangling_link':
    os.symlink(path + '.gone', path)
  elif kind == 'link_loop':
    os.symlink(path + '.loop', path)
    os.symlink(path, path + '.loop')
  elif kind == 'unreadable':
    make_fs_object(path, 'file')
    os.chmod(path, 0)
  elif kind == 'in_readonly_folder':
    os.makedirs(path + '.ro')
    os.chmod(path + '.ro', 0o555)
    return os.path.join(path + '.ro', 'inside')
  elif kind == 'in_missing_folder':
    return os.path.join(path + '.nowhere', 'inside')
  else:
    assert kind == 'missing', kind
  return path


class Fixtures:
  """Makes each drawn case's folder under `root` from a tiny trained run and its dataset."""

  def __init__(self, root: str, run: str, data: str, image: str, small_source: str):
    self.root, self.run, self.data, self.image = root, run, data, image
    self.small_source = small_source
    self._count = itertools.count()

  def build(self, d: Draw, timeout: float) -> runner.Case:
    case_dir = os.path.join(self.root, f'case{next(self._count):04d}')
    os.makedirs(case_dir)
    values = {'CASE': case_dir, 'CONFIG': CONFIG_FILE, 'DATA': self.data, 'IMAGE': self.image,
              'SMALL_SOURCE': self.small_source, 'RUN': os.path.join(case_dir, 'run')}
    for need in d.needs:
      if need == 'run':
        shutil.copytree(self.run, values['RUN'], symlinks=True)
      elif need.startswith('fs:'):
        values['P'] = make_fs_object(os.path.join(case_dir, 'target'), need[3:])
      elif need.startswith('name:'):
        values['NAME'] = need[5:]
      elif need == 'data_copy':
        shutil.copytree(self.data, os.path.join(case_dir, values['NAME']),
                        copy_function=os.link)
      elif need == 'env_targets':  # what the environment cases point at
        with open(os.path.join(case_dir, 'cache_file'), 'w') as f:
          f.write('a plain file\n')
        os.makedirs(os.path.join(case_dir, 'readonly'), mode=0o555)
      elif need == 'run_named':
        shutil.copytree(self.run, os.path.join(case_dir, values['NAME']), symlinks=True)
    target, damage = d.damage
    if target:
      steps = sorted(int(n) for n in os.listdir(os.path.join(values['RUN'], 'checkpoints'))
                     if n.isdigit())
      damage_file(os.path.join(values['RUN'], target.format(step=steps[-1])), damage)

    def fill(text: str) -> str:
      for key, value in values.items():
        text = text.replace('{' + key + '}', value)
      return text
    outputs = [fill(o) for o in d.outputs]
    outputs += [os.path.realpath(o) for o in outputs]  # written through a link to a folder
    return runner.Case(kind=d.kind, what=d.what, tool=d.tool, args=[fill(a) for a in d.args],
                       cwd=case_dir, outputs=outputs,
                       env={k: fill(v) for k, v in d.env},
                       timeout=timeout, elsewhere=d.elsewhere)
