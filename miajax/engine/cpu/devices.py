"""One JAX device per CPU core, so that the engine's models run on every core.

XLA:CPU runs the small matmuls of a small model's step on one thread: a
vmapped step of 16 digits MLPs keeps one of two cores busy.  Split into one
host device per core, the engine's model sharding (:mod:`miajax.engine.devices`) gives
each core its own slice of the models: 1.9x on the digits MLPs of
``experiments/benchmark.py`` on a 2-core machine, unchanged for the large
Purchase MLPs and the CNN, whose operations already use both cores.  This is
the same device split that ``numpyro.set_host_device_count`` makes.

It must run before JAX executes anything (the CPU client is created once);
the experiment scripts call it first thing.  It has no effect on which
accelerator JAX uses by default.
"""

from __future__ import annotations

import os
import re

import jax
from absl import logging

__all__ = ["use_all_cores"]

_FORCE_FLAG = "--xla_force_host_platform_device_count"


def usable_cores() -> int:
  """CPUs this process may run on (its affinity mask), else the machine's count."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):  # not on Linux
    return os.cpu_count() or 1


def use_all_cores(max_devices: int = 8) -> int:
  """Asks JAX for ``min(cores, max_devices)`` CPU devices; returns the CPU device count to expect.

  Leaves an explicit ``XLA_FLAGS=--xla_force_host_platform_device_count`` (or
  ``jax_num_cpu_devices``) alone.  Called after JAX has already run something,
  it changes nothing and logs a warning: the split is a speed setting, never a
  correctness one.  The cap keeps chunks of a few models from being padded to
  many devices on large machines (the gain measured is on 2 cores).
  """
  if (
    isinstance(max_devices, bool)
    or not isinstance(max_devices, int)
    or max_devices < 1
  ):
    raise ValueError(
      f"max_devices must be a positive integer, got {max_devices!r}"
    )
  forced = re.search(_FORCE_FLAG + r"=(\d+)", os.environ.get("XLA_FLAGS", ""))
  if forced:
    return int(forced.group(1))
  current = jax.config.jax_num_cpu_devices
  if current not in (None, -1, 0):
    return int(current)
  n = min(usable_cores(), max_devices)
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:
    n = len(jax.devices("cpu"))
    logging.warning(
      "use_all_cores: JAX already started with %d CPU device(s); call it before any "
      "JAX computation to split the CPU into one device per core",
      n,
    )
  return n
