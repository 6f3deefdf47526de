"""The job templates in scripts/: syntax, lint, documented settings, accelerator pins, and the
command lines they run, with fake `srun`/`scancel`/`scontrol`/`gcloud`/`python` on PATH.

Nothing here trains: the fakes record their arguments (and the signals they get) in files.
"""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time

from absl import logging
from absl.testing import absltest
from absl.testing import parameterized
from packaging import markers

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ('slurm_gpu.sbatch', 'tpu_vm.sh', 'single_node.sh')
NAMED_SCRIPTS = [(n.split('.')[0], n) for n in SCRIPTS]  # test names: ..._slurm_gpu etc.
DOC = REPO / 'docs' / 'cluster.md'
JOB_ID = '4242'
WAIT_S = 20  # upper bound for anything below to happen; each normally takes milliseconds

# A user setting is a line `NAME=${NAME:-default}` (or `${NAME:?...}`) in the settings block.
SETTING = re.compile(r'^([A-Z][A-Z0-9_]*)=\$\{\1:?[-?]((?:[^{}]|\{[^{}]*\})*)\}', re.M)
ASSIGNED = re.compile(r'(?:^|[\s;(])(?:export\s+|local\s+)?([A-Za-z_][A-Za-z0-9_]*)=', re.M)
READ = re.compile(r'\$\{?([A-Z][A-Z0-9_]*)')
# Read from the environment but set by the system, not by the user.
SYSTEM_VARS = re.compile(r'^(SLURM_\w+|SRUN_\w+|HOME|PATH|PWD|BASH_SOURCE)$')

# Fake commands. Each appends one line per call to $FAKE_LOG: its name, then its arguments,
# separated by the unit separator \x1f so that arguments with spaces survive.
RECORD = r'''
record() { local IFS=$'\x1f'; printf '%s\n' "$*" >> "$FAKE_LOG"; }
'''
FAKE_SRUN = '#!/usr/bin/env bash\n' + RECORD + r'''
record srun "$@"
case "${FAKE_SRUN_MODE:-exit0}" in
  exit0) exit 0 ;;
  exit3) exit 3 ;;
  wait)  # tasks that save a checkpoint and exit 0 on SIGTERM, as launch.py does
    trap 'record srun-got-TERM; kill "$child" 2>/dev/null; exit 0' TERM
    sleep 60 & child=$!
    echo "$$" > "$FAKE_DIR/srun.pid"  # only now: the trap is set
    wait "$child" ;;
esac
'''
FAKE_SCANCEL = '#!/usr/bin/env bash\n' + RECORD + r'''
record scancel "$@"
# slurmstepd's part: deliver the signal to the step's tasks.
kill -TERM "$(cat "$FAKE_DIR/srun.pid")"
'''
FAKE_SCONTROL = '#!/usr/bin/env bash\n' + RECORD + 'record scontrol "$@"\n'
FAKE_PYTHON = '#!/usr/bin/env bash\n' + RECORD + r'''
record python "$@"
env > "$FAKE_DIR/python.env"
if [[ "${FAKE_PYTHON_MODE:-exit0}" == wait ]]; then
  trap 'record python-got-TERM; kill "$child" 2>/dev/null; exit 0' TERM
  sleep 60 & child=$!
  echo "$$" > "$FAKE_DIR/python.pid"  # only now: the trap is set
  wait "$child"
fi
'''
# The worker's interpreter: `-c` checks pass, `-m venv DIR` makes DIR/bin/python a recorder
# (pip installs succeed; launch.py runs until SIGTERM).
FAKE_WORKER_PYTHON = '#!/usr/bin/env bash\n' + r'''
case "$1" in
  -c|-V) exit 0 ;;
  -m) [[ "$2" == venv ]] || exit 1
      mkdir -p "$3/bin"
      cat > "$3/bin/python" <<'EOF'
#!/usr/bin/env bash
''' + RECORD + r'''
if [[ "$1" == launch.py ]]; then
  trap 'record launch-got-TERM; kill "$child" 2>/dev/null; exit 0' TERM
  sleep 60 & child=$!
fi
record venv-python "$@"  # only now: the trap is set
if [[ "$1" == launch.py ]]; then
  wait "$child"
fi
EOF
      chmod +x "$3/bin/python" ;;
  *) exit 1 ;;
esac
'''
# gcloud: `scp SRC TPU:DEST` copies into the fake worker home; `ssh --command=C` runs C there
# with bash, as one worker would.
FAKE_GCLOUD = '#!/usr/bin/env bash\n' + RECORD + r'''
record gcloud "$@"
[[ "$1 $2 $3" == "compute tpus tpu-vm" ]] || exit 1
case "$4" in
  scp) cp "$5" "$FAKE_HOME/${6#*:}" ;;
  ssh) for arg in "$@"; do
         if [[ "$arg" == --command=* ]]; then
           cd "$FAKE_HOME" && HOME="$FAKE_HOME" exec bash -c "${arg#--command=}"
         fi
       done
       exit 1 ;;
  *) exit 1 ;;
esac
'''


def script_text(name: str) -> str:
  return (REPO / 'scripts' / name).read_text()


def code_lines(text: str) -> str:
  """The script without comment lines (#SBATCH lines included) and trailing comments."""
  lines = []
  for line in text.splitlines():
    if line.lstrip().startswith('#'):
      continue
    lines.append(re.sub(r'\s+#\s.*$', '', line))
  return '\n'.join(lines)


def user_settings(name: str) -> dict[str, str]:
  """NAME -> default text of each `NAME=${NAME:-default}` line."""
  return {m.group(1): m.group(2) for m in SETTING.finditer(script_text(name))}


def doc_section(name: str) -> str:
  """The part of docs/cluster.md under the `## ...` heading that names scripts/NAME."""
  text = DOC.read_text()
  sections = re.split(r'^(?=## )', text, flags=re.M)
  matches = [s for s in sections if s.startswith('## ') and f'scripts/{name}' in s.splitlines()[0]]
  if len(matches) != 1:
    raise AssertionError(f'docs/cluster.md needs one "## ..." heading naming scripts/{name}')
  return matches[0]


# The Python ranges the requirement files pin jax for (PEP 508 markers): each has its own jax.
PYTHON_RANGES = ('python_version < "3.12"', 'python_version >= "3.12"')


def requirement_pins(name: str) -> dict[str, dict[str, str]]:
  """marker ('' for a line without one) -> {package: version} of the `==` lines of a file."""
  pins = {}
  for line in (REPO / name).read_text().splitlines():
    line = line.split('#', 1)[0].strip()
    m = re.fullmatch(r'([A-Za-z0-9_.\-]+(?:\[[a-z0-9_,\-]+\])?)==([^;\s]+)\s*(?:;\s*(.+))?', line)
    if m:
      pins.setdefault(m.group(3) or '', {})[m.group(1).lower()] = m.group(2)
  return pins


def read_log(path: pathlib.Path) -> list[list[str]]:
  if not path.exists():
    return []
  return [line.split('\x1f') for line in path.read_text().splitlines()]


class ScriptTextTest(parameterized.TestCase):

  @parameterized.named_parameters(*NAMED_SCRIPTS)
  def test_bash_syntax_and_shellcheck(self, name):
    path = REPO / 'scripts' / name
    result = subprocess.run(['bash', '-n', str(path)], capture_output=True, text=True)
    self.assertEqual(result.returncode, 0, result.stderr)
    shellcheck = shutil.which('shellcheck')
    if shellcheck:
      result = subprocess.run([shellcheck, '-x', str(path)], capture_output=True, text=True,
                              cwd=REPO)
      self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
    else:
      logging.warning('shellcheck not installed: %s checked with bash -n only', name)

  @parameterized.named_parameters(*NAMED_SCRIPTS)
  def test_strict_mode_and_executable(self, name):
    self.assertIn('\nset -euo pipefail\n', script_text(name))
    self.assertTrue(os.access(REPO / 'scripts' / name, os.X_OK), f'chmod +x scripts/{name}')

  @parameterized.named_parameters(*NAMED_SCRIPTS)
  def test_every_setting_is_documented(self, name):
    settings = user_settings(name)
    self.assertContainsSubset({'DATA_DIR', 'WORKDIR', 'CONFIG'}, settings)
    section = doc_section(name)
    for var, default in settings.items():
      self.assertTrue(f'`{var}`' in section, f'{var} of scripts/{name} is not in docs/cluster.md')
      if default and '$' not in default:  # a literal placeholder: the doc shows it
        self.assertTrue(default in section, f'default of {var} ({default}) is not in the doc')

  @parameterized.named_parameters(*NAMED_SCRIPTS)
  def test_reads_no_undocumented_variable(self, name):
    code = code_lines(script_text(name))
    known = set(user_settings(name)) | set(ASSIGNED.findall(code))
    unknown = {v for v in READ.findall(code) if v not in known and not SYSTEM_VARS.match(v)}
    self.assertEmpty(unknown, f'scripts/{name} reads variables that are neither settings '
                              f'(documented) nor set by the system')

  def test_doc_mentions_install_targets(self):
    text = DOC.read_text()
    for name in ('requirements.txt', 'requirements-cuda.txt', 'requirements-tpu.txt'):
      self.assertIn(f'pip install -r {name}', text)


class RequirementsTest(absltest.TestCase):

  def test_accelerator_builds_pin_the_same_jax(self):
    cpu = requirement_pins('requirements.txt')
    cuda = requirement_pins('requirements-cuda.txt')
    tpu = requirement_pins('requirements-tpu.txt')
    # jax is pinned once per Python range, never on a line that holds for every Python.
    self.assertEmpty({'jax', 'jaxlib', 'flax'} & set(cpu.get('', {})))
    self.assertEqual(set(cpu) - {''}, set(PYTHON_RANGES))
    self.assertEqual(set(cuda), set(PYTHON_RANGES))
    self.assertEqual(set(tpu), set(PYTHON_RANGES))
    for marker in PYTHON_RANGES:
      version = cpu[marker]['jax']
      self.assertEqual(cpu[marker]['jaxlib'], version, marker)
      self.assertEqual(cuda[marker], {'jax[cuda13]': version, 'jax-cuda13-plugin': version,
                                      'jax-cuda13-pjrt': version}, marker)
      self.assertEqual(tpu[marker]['jax[tpu]'], version, marker)
      self.assertIn('libtpu', tpu[marker], marker)
    for name in ('requirements-cuda.txt', 'requirements-tpu.txt'):
      lines = (REPO / name).read_text().splitlines()
      self.assertIn('-r requirements.txt', lines, f'{name} must include the CPU pins')

  def test_each_python_gets_exactly_one_range(self):
    # The markers are valid PEP 508 and split the Pythons with no gap and no overlap.
    ranges = [markers.Marker(m) for m in PYTHON_RANGES]
    for python in ('3.10', '3.11', '3.12', '3.13', '3.14'):
      chosen = [m for m in ranges if m.evaluate({'python_version': python})]
      self.assertLen(chosen, 1, python)


class FakeCommandsTest(absltest.TestCase):
  """Runs a script with fakes first on PATH; `self.log` has one row per fake call."""

  def setUp(self):
    super().setUp()
    # tempfile, not create_tempdir: that needs absl flags, which pytest does not parse.
    self.dir = pathlib.Path(tempfile.mkdtemp(prefix='test_scripts_'))
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
    self.bin = self.dir / 'bin'
    self.bin.mkdir()
    self.log = self.dir / 'calls.log'
    self.procs = []
    fakes = {'srun': FAKE_SRUN, 'scancel': FAKE_SCANCEL, 'scontrol': FAKE_SCONTROL,
             'python': FAKE_PYTHON, 'gcloud': FAKE_GCLOUD, 'worker_python3': FAKE_WORKER_PYTHON}
    for name, text in fakes.items():
      path = self.bin / name
      path.write_text(text)
      path.chmod(0o755)
    self.workdir = self.dir / 'shared' / 'runs' / 'alexnet'
    self.data_dir = self.dir / 'shared' / 'imagenet prepared'  # a space: quoting is tested too
    self.env = {
        'PATH': f'{self.bin}:{os.environ["PATH"]}', 'HOME': str(self.dir),
        'FAKE_LOG': str(self.log), 'FAKE_DIR': str(self.dir),
        'VENV': str(self.dir / 'no_venv'), 'WORKDIR': str(self.workdir),
        'DATA_DIR': str(self.data_dir),
    }

  def tearDown(self):
    for pid_file in self.dir.glob('worker_home/*/logs/train.pid'):
      try:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
      except (OSError, ValueError):
        pass
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
      proc.wait()
    super().tearDown()

  def start(self, script, *args, **env):
    proc = subprocess.Popen(['bash', str(script), *args], cwd=REPO, env={**self.env, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.procs.append(proc)
    return proc

  def run_script(self, script, *args, **env):
    proc = self.start(script, *args, **env)
    out, _ = proc.communicate(timeout=WAIT_S)
    return proc.returncode, out

  def calls(self, name: str) -> list[list[str]]:
    return [row[1:] for row in read_log(self.log) if row[0] == name]

  def wait_for(self, predicate, what: str):
    deadline = time.monotonic() + WAIT_S
    while not predicate():
      if time.monotonic() > deadline:
        self.fail(f'timed out waiting for {what}; calls: {read_log(self.log)}')
      time.sleep(0.02)


class SlurmTemplateTest(FakeCommandsTest):

  def setUp(self):
    super().setUp()
    self.script = REPO / 'scripts' / 'slurm_gpu.sbatch'
    # What a SLURM batch step sets (one node, 4 GPUs, 4 tasks).
    self.env.update({'SLURM_JOB_ID': JOB_ID, 'SLURM_SUBMIT_DIR': str(REPO),
                     'SLURM_CPUS_PER_TASK': '8', 'SLURM_GPUS_ON_NODE': '4',
                     'SLURM_NTASKS_PER_NODE': '4', 'SLURM_NTASKS': '4', 'SLURM_JOB_NUM_NODES': '1'})

  def test_srun_runs_launch_py_with_the_settings_and_extra_args(self):
    rc, out = self.run_script(self.script, '--config.batch_size=256')
    self.assertEqual(rc, 0, out)
    [srun_args] = self.calls('srun')
    python_at = srun_args.index('python')
    self.assertEqual(srun_args[python_at:], [
        'python', 'launch.py', '--config=configs/imagenet.py', f'--workdir={self.workdir}',
        f'--config.data.dir={self.data_dir}', '--config.batch_size=256'])
    self.assertIn('--kill-on-bad-exit=1', srun_args[:python_at])
    self.assertTrue(self.workdir.is_dir())
    self.assertEmpty(self.calls('scontrol'), 'a finished run is not requeued')
    self.assertEmpty(self.calls('scancel'))

  def test_time_limit_signal_checkpoints_then_requeues(self):
    # SLURM's `--signal=B:USR1@300` reaches only the batch shell; the tasks must get SIGTERM
    # (srun itself would turn a SIGTERM into SIGKILL for them).
    proc = self.start(self.script, FAKE_SRUN_MODE='wait')
    self.wait_for(lambda: (self.dir / 'srun.pid').exists(), 'srun to start')
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=WAIT_S)
    self.assertEqual(proc.returncode, 0, out)
    self.assertEqual(self.calls('scancel'), [['--signal=TERM', JOB_ID]])
    self.assertEqual(self.calls('srun-got-TERM'), [[]])
    self.assertEqual(self.calls('scontrol'), [['requeue', JOB_ID]])

  def test_sigterm_to_the_batch_shell_waits_for_the_checkpoint_without_requeue(self):
    # scancel / preemption: SLURM signals the batch shell and the tasks itself.
    proc = self.start(self.script, FAKE_SRUN_MODE='wait')
    self.wait_for(lambda: (self.dir / 'srun.pid').exists(), 'srun to start')
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    self.assertIsNone(proc.poll(), 'the batch shell must outlive SIGTERM until srun ends')
    os.kill(int((self.dir / 'srun.pid').read_text()), signal.SIGTERM)
    out, _ = proc.communicate(timeout=WAIT_S)
    self.assertEqual(proc.returncode, 0, out)
    self.assertEqual(self.calls('srun-got-TERM'), [[]])
    self.assertEmpty(self.calls('scontrol'))
    self.assertEmpty(self.calls('scancel'))

  def test_failed_run_keeps_its_exit_status_and_is_not_requeued(self):
    rc, out = self.run_script(self.script, FAKE_SRUN_MODE='exit3')
    self.assertEqual(rc, 3, out)
    self.assertEmpty(self.calls('scontrol'))

  def test_tasks_per_node_must_equal_gpus_per_node(self):
    rc, out = self.run_script(self.script, SLURM_NTASKS_PER_NODE='1')
    self.assertEqual(rc, 2)
    self.assertIn('one process per GPU', out)
    self.assertEmpty(self.calls('srun'))


class SingleNodeTemplateTest(FakeCommandsTest):

  def test_one_process_gets_sigterm_and_no_slurm_step(self):
    script = REPO / 'scripts' / 'single_node.sh'
    proc = self.start(script, '--dry_run', FAKE_PYTHON_MODE='wait', SLURM_JOB_ID=JOB_ID,
                      SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_STEP_NODELIST='node1')
    self.wait_for(lambda: (self.dir / 'python.pid').exists(), 'python to start')
    self.assertEqual(int((self.dir / 'python.pid').read_text()), proc.pid,
                     'python must replace the script (exec) so SIGTERM reaches it')
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=WAIT_S)
    self.assertEqual(proc.returncode, 0, out)
    self.assertEqual(self.calls('python'), [[
        'launch.py', '--config=configs/imagenet.py', f'--workdir={self.workdir}',
        f'--config.data.dir={self.data_dir}', '--dry_run']])
    self.assertEqual(self.calls('python-got-TERM'), [[]])
    env = (self.dir / 'python.env').read_text().splitlines()
    self.assertIn(f'SLURM_JOB_ID={JOB_ID}', env)
    self.assertEmpty([v for v in env if v.startswith(('SLURM_PROCID=', 'SLURM_LOCALID=',
                                                      'SLURM_STEP_NODELIST='))])


class TpuTemplateTest(FakeCommandsTest):
  """tpu_vm.sh against a fake gcloud whose one 'worker' is a folder on this machine."""

  def setUp(self):
    super().setUp()
    # A checkout outside git with what the workers need (the script, the requirement files).
    self.repo = self.dir / 'checkout'
    (self.repo / 'scripts').mkdir(parents=True)
    shutil.copy2(REPO / 'scripts' / 'tpu_vm.sh', self.repo / 'scripts')
    for name in ('requirements.txt', 'requirements-tpu.txt', 'launch.py'):
      shutil.copy2(REPO / name, self.repo)
    self.script = self.repo / 'scripts' / 'tpu_vm.sh'
    self.home = self.dir / 'worker_home'
    self.home.mkdir()
    self.env.update({'TPU_NAME': 'my-v4-32', 'ZONE': 'us-central2-b',
                     'FAKE_HOME': str(self.home), 'PYTHON': str(self.bin / 'worker_python3')})
    del self.env['VENV']

  def test_run_installs_and_starts_on_every_worker_then_stop_checkpoints(self):
    rc, out = self.run_script(self.script, 'run', '--config.batch_size=256')
    self.assertEqual(rc, 0, out)
    gcloud = self.calls('gcloud')
    self.assertEqual([c[3] for c in gcloud], ['scp', 'ssh', 'ssh'])  # copy, unpack, start
    self.assertIn('my-v4-32:alexnet_jax_code.tgz', gcloud[0])
    for call in gcloud:
      self.assertEqual(call[:3], ['compute', 'tpus', 'tpu-vm'])
      self.assertIn('--zone=us-central2-b', call)
      self.assertIn('--worker=all', call)
    self.assertIn('my-v4-32', gcloud[2])
    self.assertTrue((self.home / 'alexnet_jax' / 'scripts' / 'tpu_vm.sh').exists())
    self.wait_for(lambda: any(c[:1] == ['launch.py'] for c in self.calls('venv-python')),
                  'launch.py to start on the worker')
    self.assertEqual(self.calls('venv-python'), [
        ['-m', 'pip', 'install', '-q', '-r', 'requirements-tpu.txt'],
        ['launch.py', '--config=configs/imagenet.py', f'--workdir={self.workdir}',
         f'--config.data.dir={self.data_dir}', '--auto_distributed', '--config.batch_size=256']])

    rc, out = self.run_script(self.script, 'run')
    self.assertEqual(rc, 2, 'a second run while training must be refused')
    self.assertIn('already training', out)

    rc, out = self.run_script(self.script, 'status')
    self.assertEqual(rc, 0, out)
    self.assertIn('training, pid', out)

    rc, out = self.run_script(self.script, 'stop')
    self.assertEqual(rc, 0, out)
    self.assertIn('SIGTERM sent', out)
    self.wait_for(lambda: self.calls('launch-got-TERM'), 'SIGTERM to reach launch.py')

  def test_missing_tpu_name_is_one_clear_error(self):
    rc, out = self.run_script(self.script, 'run', TPU_NAME='')
    self.assertEqual(rc, 2)
    self.assertIn('set TPU_NAME and ZONE', out)
    self.assertEmpty(self.calls('gcloud'))


if __name__ == '__main__':
  absltest.main()
