"""Who the processes of a run are: read from the flags or the cluster launcher's environment.

The three flags (--coordinator_address, --num_processes, --process_id), a SLURM
step (srun) or Open MPI (mpirun) give a `Membership`: process 0's address, the
process count and this process's id. Every value is checked here, before
anything waits; a bad one is one errors.InputError line naming the flag or the
variable. Nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
from typing import Any, Mapping, Optional

from alexnet_jax.core import errors

# Seconds every process waits for the others at start (--distributed_timeout).
DEFAULT_TIMEOUT_S = 120
# Ports derived for a SLURM step: below Linux's ephemeral range (32768-60999), from which the
# kernel picks the local ports of outgoing connections, so none of those can hold it.
PORT_RANGE = (10000, 32768)
# The most processes a run may have: far above any cluster JAX runs on, and below the C
# integers the sockets and JAX take, so a mistyped count fails in one line, not deep inside.
MAX_PROCESSES = 65536
# Variables whose presence makes a task of a SLURM step (srun), as JAX's own detection reads it.
SLURM_VARIABLES = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
                   'SLURM_LOCALID')
# Open MPI's mpirun sets the first for every process it starts.
OMPI_VARIABLES = ('OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE')


@dataclasses.dataclass(frozen=True)
class Membership:
  """How this process joins the run: what jax.distributed.initialize gets."""
  coordinator: str  # host:port of process 0
  num_processes: int
  process_id: int
  local_device_ids: Optional[tuple[int, ...]] = None
  source: str = 'flags'  # where the values came from, for messages: flags, SLURM, Open MPI

  @property
  def port(self) -> int:
    return parse_address(self.coordinator, 'coordinator')[1]


# ----------------------------------------------------------------------------- flags


def parse_address(address: str, what: str) -> tuple[str, int]:
  """(host, port) of 'host:port' or '[v6]:port'; errors.InputError naming `what` otherwise."""
  text = (address or '').strip()
  host, sep, port = text.rpartition(':')
  if not sep or not host:
    raise errors.InputError(f'{what}={address!r} must be host:port (the address of process 0 '
                            'and a free port on it, e.g. node001:23456)')
  if host.startswith('[') and host.endswith(']'):
    host = host[1:-1]
  elif ':' in host:
    raise errors.InputError(f'{what}={address!r}: write an IPv6 address in brackets, '
                            f'[{host}]:{port}')
  return host, check_port(port, f'{what}={address!r}: the port')


def check_port(value: Any, what: str) -> int:
  text = str(value).strip()
  if not text.isdigit() or not 1 <= int(text) <= 65535:
    raise errors.InputError(f'{what} must be an integer in [1, 65535], got {value!r}')
  return int(text)


def check_timeout(timeout_s: Any) -> int:
  if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s < 1:
    raise errors.InputError(f'--distributed_timeout must be a positive number of seconds, got '
                            f'{timeout_s!r}')
  return timeout_s


def from_flags(coordinator_address: Optional[str], num_processes: Optional[int],
               process_id: Optional[int]) -> Optional[Membership]:
  """The membership the three flags give (None for one process); InputError naming a bad flag."""
  if num_processes is None:
    raise errors.InputError('--num_processes is required with --coordinator_address/--process_id')
  if not 1 <= num_processes <= MAX_PROCESSES:
    raise errors.InputError(f'--num_processes must be in [1, {MAX_PROCESSES}], got '
                            f'{num_processes}')
  if num_processes == 1:
    return None
  if process_id is None or not 0 <= process_id < num_processes:
    raise errors.InputError(f'--process_id must be in [0, {num_processes}), got {process_id}')
  what = '--coordinator_address'
  if not coordinator_address and os.environ.get('JAX_COORDINATOR_ADDRESS'):
    coordinator_address, what = os.environ['JAX_COORDINATOR_ADDRESS'], 'JAX_COORDINATOR_ADDRESS'
  if not coordinator_address:
    raise errors.InputError('--coordinator_address (host:port of process 0) is required for '
                            f'{num_processes} processes')
  host, port = parse_address(coordinator_address, what)
  _check_resolves(host, what)
  return Membership(_join(host, port), num_processes, process_id)


def _join(host: str, port: int) -> str:
  return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'


def _check_resolves(host: str, what: str) -> None:
  try:
    socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
  except (socket.gaierror, UnicodeError):
    raise errors.InputError(f'{what}: host {host!r} cannot be resolved; give the name or '
                            'address of the node that runs process 0') from None


# ----------------------------------------------------------------------------- launchers


def env_int(env: Mapping[str, str], name: str, lowest: int, highest: int = 2**31 - 1) -> int:
  """The integer in [lowest, highest] a cluster launcher put in environment variable `name`;
  one line naming the variable when it holds something else."""
  value = env.get(name, '')
  try:
    number = int(value)
  except ValueError:
    number = None
  if number is None or number < lowest:
    bound = f'an integer >= {lowest}'
  elif number > highest:
    bound = f'at most {highest}'
  else:
    return number
  raise errors.InputError(f'the environment variable {name}={value!r} must be {bound} (the '
                          'cluster launcher sets it; unset it, or fix the job script that sets '
                          'it)')


def slurm_present(env: Mapping[str, str]) -> bool:
  """Whether this is a task of a SLURM step (srun), as JAX's own detection sees it."""
  return all(k in env for k in SLURM_VARIABLES)


def ompi_present(env: Mapping[str, str]) -> bool:
  """Whether Open MPI's mpirun started this process."""
  return all(k in env for k in OMPI_VARIABLES)


def tpu_workers(env: Mapping[str, str]) -> int:
  """TPU workers listed in the environment (0 when none are; a pod slice's come from JAX)."""
  workers = env.get('TPU_PROCESS_ADDRESSES') or env.get('TPU_WORKER_HOSTNAMES') or ''
  return len([w for w in workers.split(',') if w.strip()])


def cluster_process_count(environ: Optional[Mapping[str, str]] = None) -> int:
  """Processes a cluster launcher says this job has (1 when none is recognised).

  Recognises what `jax.distributed.initialize()` can read by itself: a SLURM
  step (srun), Open MPI (mpirun) and TPU workers listed in the environment.
  """
  env = os.environ if environ is None else environ
  if slurm_present(env):
    # JAX reads the process id and local id as integers too, with a traceback for text.
    env_int(env, 'SLURM_PROCID', 0)
    env_int(env, 'SLURM_LOCALID', 0)
    return env_int(env, 'SLURM_NTASKS', 1, MAX_PROCESSES)
  if ompi_present(env):
    return env_int(env, 'OMPI_COMM_WORLD_SIZE', 1, MAX_PROCESSES)
  return tpu_workers(env) or 1


def slurm_port(job_id: int, step_id: int) -> int:
  """The coordinator port of SLURM step `step_id` of job `job_id` (docs/cluster.md).

  A hash of both ids over PORT_RANGE: jobs whose ids differ by 4096 (which share
  JAX's own choice, job id mod 4096) or steps of one job get different ports.
  """
  digest = hashlib.sha256(f'{job_id}.{step_id}'.encode()).digest()
  return PORT_RANGE[0] + int.from_bytes(digest[:8], 'big') % (PORT_RANGE[1] - PORT_RANGE[0])


def first_slurm_node(node_list: str) -> str:
  """The first host of a SLURM node list: 'node001', 'node[001-015],gpu2' -> 'node001'.

  A node list is names separated by commas, where a bracket holds numbers and
  ranges ('node[001,007-015]'); the first name is the prefix and the first number.
  """
  match = re.match(r'([^,\[]*)(?:\[([^,\-\]]*))?', node_list.strip())
  return match.group(1) + (match.group(2) or '')


def from_slurm(env: Mapping[str, str], port: Optional[int]) -> Membership:
  """The membership of an srun task, from its SLURM variables; InputError naming a bad one."""
  count = env_int(env, 'SLURM_NTASKS', 1, MAX_PROCESSES)
  rank = env_int(env, 'SLURM_PROCID', 0)
  local = env_int(env, 'SLURM_LOCALID', 0)
  if rank >= count:
    raise errors.InputError(f'the SLURM variables disagree: SLURM_PROCID={rank} but '
                            f'SLURM_NTASKS={count} (task ids run from 0 to {count - 1})')
  job = env_int(env, 'SLURM_JOB_ID', 0)
  step = env.get('SLURM_STEP_ID', '0').strip()
  step_id = int(step) if step.isdigit() else 0
  nodes = env.get('SLURM_STEP_NODELIST', '').strip()
  host = first_slurm_node(nodes)
  if not host:
    raise errors.InputError('the SLURM variable SLURM_STEP_NODELIST is empty: run launch.py '
                            'under srun (scripts/slurm_gpu.sbatch)')
  chosen = slurm_port(job, step_id) if port is None else port
  # One device per task, as JAX's own detection gives it, unless the user lists them.
  devices = None if env.get('JAX_LOCAL_DEVICE_IDS') else (local,)
  return Membership(_join(host, chosen), count, rank, devices, 'SLURM')


def ompi_port(hnp_uri: str) -> int:
  """JAX's port for an Open MPI job: 61440 + (the job id / 4096) mod 4096."""
  job = hnp_uri.split('.', 1)[0]
  return 65536 - 4096 + (int(job) // 4096 if job.isdigit() else 0) % 4096


def from_ompi(env: Mapping[str, str], port: Optional[int]) -> Membership:
  """The membership of a process mpirun started: the launcher's host is process 0's."""
  count = env_int(env, 'OMPI_COMM_WORLD_SIZE', 1, MAX_PROCESSES)
  rank = env_int(env, 'OMPI_COMM_WORLD_RANK', 0)
  if rank >= count:
    raise errors.InputError(f'the Open MPI variables disagree: OMPI_COMM_WORLD_RANK={rank} but '
                            f'OMPI_COMM_WORLD_SIZE={count}')
  uri = env['OMPI_MCA_orte_hnp_uri']
  # e.g. 1531576320.0;tcp://10.96.0.1,10.148.0.1:34911 or ...;tcp6://[fe80::1,2620::2]:43370
  found = re.search(r'tcp://(.+?)[,:]|tcp6://\[(.+?)[,\]]', uri)
  if found is None:
    raise errors.InputError(f'the environment variable OMPI_MCA_orte_hnp_uri={uri!r} names no '
                            'address of the launcher (mpirun sets it; give --coordinator_address, '
                            '--num_processes and --process_id instead)')
  host = next(g for g in found.groups() if g is not None)
  # As JAX's own detection: each process drives the device of its local rank.
  local = (None if 'OMPI_COMM_WORLD_LOCAL_RANK' not in env
           else (env_int(env, 'OMPI_COMM_WORLD_LOCAL_RANK', 0),))
  return Membership(_join(host, ompi_port(uri) if port is None else port), count, rank,
                    local, 'Open MPI')
