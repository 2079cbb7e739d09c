"""Where models live: a 1-D ``("models",)`` mesh over this process's devices, padding, free memory.

The models of a chunk are sharded over every local device (each device steps
its own block of models inside ``jax.shard_map``); the data is replicated. A
chunk whose size does not divide the device count is padded with copies of
its last model, whose results are dropped. In a multi-process run each
process uses only its local devices.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

__all__ = ["models_mesh", "pad_to_devices", "bytes_available", "model_shards"]


def models_mesh() -> Mesh:
  """A 1-D mesh ``("models",)`` over this process's devices."""
  return Mesh(np.asarray(jax.local_devices()), ("models",))


def pad_to_devices(idx: np.ndarray, num_devices: int) -> np.ndarray:
  """``idx`` padded with copies of its last entry to a multiple of ``num_devices``."""
  pad = -len(idx) % num_devices
  return np.concatenate([idx, np.repeat(idx[-1:], pad)]) if pad else idx


def bytes_available() -> int:
  """Free memory for models: the sum over local accelerators, else host RAM."""
  devices = jax.local_devices()
  if devices[0].platform != "cpu":
    total = 0
    for device in devices:
      try:
        stats = device.memory_stats()
      except Exception:  # backends without memory stats
        stats = None
      if not stats or "bytes_limit" not in stats:
        total = 0
        break
      total += int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    if total:
      return total
  try:
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return 4 << 30


def model_shards(params) -> tuple[tuple[int, int], ...]:
  """``(device id, models held)`` per shard of a chunk's parameters (shapes only, no transfer)."""
  if isinstance(params, list):  # one model per array (loop mode)
    return tuple(
      (next(iter(jax.tree_util.tree_leaves(p)[0].devices())).id, 1)
      for p in params
    )
  leaf = jax.tree_util.tree_leaves(params)[0]
  return tuple(
    (s.device.id, int(s.data.shape[0])) for s in leaf.addressable_shards
  )
