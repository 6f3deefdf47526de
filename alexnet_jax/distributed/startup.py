"""Joining a multi-process run: checks, the roll call, then `jax.distributed.initialize`.

  init_distributed(...)   # launch.py, before any other JAX call
  sync_hosts(name)        # a barrier of all processes (no-op for one)

The flags or the cluster launcher's variables give the members
(environment.py); the roll call (rollcall.py) meets them all or stops with one
line; the watch (watch.py) runs from then on; JAX is initialised last, with
the flags' values and detection off. A Cloud TPU pod slice (--auto_distributed,
or TPU workers listed in the environment) is the one case JAX detects itself:
there no roll call or watch is held (docs/cluster.md says what a user sees).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils

from alexnet_jax.core import errors
from alexnet_jax.distributed import environment
from alexnet_jax.distributed import rollcall
from alexnet_jax.distributed import watch
from alexnet_jax.distributed.environment import DEFAULT_TIMEOUT_S, Membership

# Seconds without heartbeats after which JAX's coordinator declares a process dead (JAX's
# default). The watch stops the others first: within a second of a process's end, or after
# TCP keepalive's ~25 s for a host that vanished.
HEARTBEAT_TIMEOUT_S = 100
# Seconds a process that ends normally waits in JAX's shutdown barrier for the others, which
# may still be writing their last checkpoint or plots (JAX's default).
SHUTDOWN_TIMEOUT_S = 300


def init_distributed(coordinator_address: Optional[str] = None,
                     num_processes: Optional[int] = None, process_id: Optional[int] = None, *,
                     local_device_ids: Optional[Sequence[int]] = None,
                     auto_detect: bool = False, timeout_s: int = DEFAULT_TIMEOUT_S,
                     coordinator_port: Optional[int] = None) -> bool:
  """Joins a multi-process run; call before any other JAX call. True if it initialised.

  - explicit `num_processes` > 1: uses the three arguments (the coordinator
    may also come from JAX_COORDINATOR_ADDRESS);
  - nothing explicit: joins the SLURM step or Open MPI job the environment
    describes when it lists more than one process, else does nothing;
  - `auto_detect=True`, or TPU workers in the environment: JAX finds the
    cluster itself, e.g. a Cloud TPU pod slice from the TPU metadata.
  A single process needs none of this, and `num_processes=1` is a no-op.
  Every value is checked first (one line naming the flag or variable), then the
  roll call meets every process (at most `timeout_s` seconds) and JAX is
  initialised. `coordinator_port` replaces the port chosen for a SLURM step
  (environment.slurm_port), an Open MPI job or a TPU slice.
  """
  if jax.distributed.is_initialized():
    return False
  environment.check_timeout(timeout_s)
  if coordinator_port is not None:
    coordinator_port = environment.check_port(coordinator_port, '--coordinator_port')
  if any(v is not None for v in (coordinator_address, num_processes, process_id)):
    members = environment.from_flags(coordinator_address, num_processes, process_id)
  elif auto_detect or environment.cluster_process_count() <= 1:
    members = None
  else:
    members = _launcher_members(coordinator_port)
  if members is None:
    detected = num_processes is None and (auto_detect or environment.tpu_workers(os.environ) > 1)
    if detected:
      _initialize_detected(timeout_s, coordinator_port)
    return detected
  if local_device_ids is not None:
    members = dataclasses.replace(members, local_device_ids=tuple(local_device_ids))
  links = rollcall.hold(members, timeout_s)
  watch.start(members, links, timeout_s)
  logging.info('Process %d of %d: all %d processes reported in at %s.', members.process_id,
               members.num_processes, members.num_processes, members.coordinator)
  _initialize(timeout_s, coordinator_address=members.coordinator,
              num_processes=members.num_processes, process_id=members.process_id,
              local_device_ids=(None if members.local_device_ids is None
                                else list(members.local_device_ids)),
              cluster_detection_method='deactivate')
  return True


def _launcher_members(coordinator_port: Optional[int]) -> Optional[Membership]:
  """Who the processes are, from a SLURM step or Open MPI; None for TPU workers listed in
  the environment, which JAX's detection reads."""
  if environment.slurm_present(os.environ):
    return environment.from_slurm(os.environ, coordinator_port)
  if environment.ompi_present(os.environ):
    return environment.from_ompi(os.environ, coordinator_port)
  return None


def _initialize(timeout_s: int, **arguments: Any) -> None:
  """jax.distributed.initialize with this run's timeouts, as far as this JAX takes them."""
  timeouts = dict(initialization_timeout=timeout_s,
                  heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                  shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
  accepted = inspect.signature(jax.distributed.initialize).parameters
  jax.distributed.initialize(**{k: v for k, v in {**arguments, **timeouts}.items()
                                if k in accepted})


def _initialize_detected(timeout_s: int, coordinator_port: Optional[int]) -> None:
  """JAX's own cluster detection (Cloud TPU metadata, ...); one line when it finds none."""
  if coordinator_port is not None:
    os.environ['JAX_COORDINATOR_PORT'] = str(coordinator_port)  # JAX's detection reads it
  try:
    _initialize(timeout_s)
  except ValueError as e:
    if 'must be defined' in str(e) or 'should be defined' in str(e):
      raise errors.InputError('no cluster found to join (--auto_distributed): give '
                              '--coordinator_address, --num_processes and --process_id') from e
    raise


def sync_hosts(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
