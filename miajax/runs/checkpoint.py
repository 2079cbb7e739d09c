"""Checkpoints of a chunk in training, so that a killed run resumes mid-chunk.

A checkpoint is one ``.npz`` file per chunk, written atomically (a temporary
file, fsync, ``os.replace``) at an epoch boundary. It holds every leaf of the
chunk's training state (parameters, model state such as batch-norm
statistics, optimizer state, alive flags and per-epoch loss sums, each with a
leading ``[models]`` axis) and a JSON header: the epoch reached, the tree
structure, every leaf's shape and dtype, and what the chunk is (model
indices, seed, epochs, a hash of the membership rows and learning rates, the
caller's fingerprint).

Randomness needs no saving: model ``m`` draws its keys from ``(seed, m)`` and
each step's from the global step number (see :mod:`miajax.engine`), so the
epochs after a checkpoint see the same shuffles, augmentations, dropout masks
and DP noise as in an uninterrupted run.

A checkpoint that does not match the chunk being trained (another run's,
another code version's, an unreadable file) is never used: it is renamed
aside to ``<name>.stale`` (never deleted, never overwritten) with a log line,
and the chunk trains from its first epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from miajax.runs import io
from miajax.runs.io import digest

__all__ = [
  "Checkpointer",
  "Restored",
  "check_intervals",
  "checkpoint_files",
  "describe_models",
  "digest",
  "remove_temporaries",
]

FORMAT = 1


def check_intervals(every_s, every_epochs) -> None:
  """Raises ``ValueError`` naming the argument unless both are valid.

  Either may be 0 or None: that trigger is off.
  """
  if every_s is not None and (
    isinstance(every_s, bool)
    or not isinstance(every_s, (int, float, np.integer, np.floating))
    or not math.isfinite(every_s)
    or every_s < 0
  ):
    raise ValueError(
      f"checkpoint_every_s must be a finite number of seconds >= 0 (0: off), "
      f"got {every_s!r}"
    )
  if every_epochs is not None and (
    isinstance(every_epochs, bool)
    or not isinstance(every_epochs, (int, np.integer))
    or every_epochs < 0
  ):
    raise ValueError(
      f"checkpoint_every_epochs must be an integer >= 0 (0: off), "
      f"got {every_epochs!r}"
    )


def describe_models(models: Sequence[int]) -> str:
  """``[8, 16)`` for a contiguous run of model indices, else the list."""
  models = [int(m) for m in models]
  if models and models == list(range(models[0], models[-1] + 1)):
    return f"[{models[0]}, {models[-1] + 1})"
  return str(models)


def checkpoint_files(directory) -> dict[pathlib.Path, range]:
  """Checkpoint files in ``directory`` and the model range each name says."""
  return io.chunk_files(directory, io.CHECKPOINT)


def remove_temporaries(directory, models: Sequence[int]) -> None:
  """Deletes the chunk's half-written checkpoints (a kill during a save).

  Only this chunk's: in a multi-process run another process may be writing
  its own.
  """
  path = pathlib.Path(directory) / f"{io.chunk_name(models, io.CHECKPOINT)}.npz"
  for tmp in io.temporaries(path):
    tmp.unlink(missing_ok=True)


@dataclasses.dataclass
class Restored:
  """A checkpoint read back: epochs done, state (host arrays), seconds spent."""

  epoch: int
  tree: Any
  train_seconds: float


def _leaf_specs(leaves) -> list:
  return [[list(np.shape(a)), np.dtype(a.dtype).str] for a in leaves]


class Checkpointer:
  """Saves and restores chunk states in one directory.

  The training loop is handed one and only calls ``restore``, ``start``,
  ``due``, ``save`` and ``discard`` and reads ``every_s``: it never writes
  files itself, so it needs this class's behaviour, not this module.

  Args:
    directory: where checkpoint files go (created on the first save).
    every_s: save at the first epoch boundary at least this many seconds
      after the chunk started or was last saved (0 or None: never by time).
    every_epochs: save after every this many epochs (0 or None: never by
      epoch count).
    fingerprint: a string naming what is trained (e.g. a hash of the run's
      configuration); a checkpoint with another one is not used.
    log: receives one line per resume and per checkpoint set aside.
  """

  def __init__(
    self,
    directory,
    *,
    every_s: float | None = 300.0,
    every_epochs: int | None = 0,
    fingerprint: str = "",
    log: Callable[[str], None] = print,
  ):
    check_intervals(every_s, every_epochs)
    self.directory = pathlib.Path(directory)
    self.every_s = float(every_s or 0.0)
    self.every_epochs = int(every_epochs or 0)
    self.fingerprint = str(fingerprint)
    self.log = log
    self._last = time.monotonic()
    self.saves = 0  # checkpoints written by this object
    self.save_seconds = 0.0  # time spent writing them
    self.last_bytes = 0

  @property
  def enabled(self) -> bool:
    return self.every_s > 0 or self.every_epochs > 0

  def path(self, models: Sequence[int]) -> pathlib.Path:
    """The chunk's checkpoint file, named by its first model and last + 1."""
    return self.directory / f"{io.chunk_name(models, io.CHECKPOINT)}.npz"

  def start(self) -> None:
    """Restarts the clock of ``every_s`` (call when a chunk starts training)."""
    self._last = time.monotonic()

  def due(self, epochs_done: int) -> bool:
    """Whether to save now, after ``epochs_done`` epochs of the chunk."""
    if self.every_epochs and epochs_done % self.every_epochs == 0:
      return True
    return bool(self.every_s) and time.monotonic() - self._last >= self.every_s

  def save(
    self,
    models: Sequence[int],
    epoch: int,
    epochs: int,
    tree,
    identity: dict,
    train_seconds: float = 0.0,
  ) -> pathlib.Path:
    """Writes ``tree`` (arrays) as the chunk's state after ``epoch`` epochs."""
    t0 = time.perf_counter()
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [np.asarray(a) for a in leaves]
    header = dict(
      format=FORMAT,
      models=[int(m) for m in models],
      epoch=int(epoch),
      epochs=int(epochs),
      identity={**identity, "fingerprint": self.fingerprint},
      treedef=str(treedef),
      leaves=_leaf_specs(leaves),
      train_seconds=float(train_seconds),
    )
    arrays = {f"leaf_{i:05d}": a for i, a in enumerate(leaves)}
    arrays["header"] = np.asarray(json.dumps(header, sort_keys=True))
    path = self.path(models)
    self.directory.mkdir(parents=True, exist_ok=True)
    io.save_npz_atomic(path, **arrays)
    self._last = time.monotonic()
    self.saves += 1
    self.save_seconds += time.perf_counter() - t0
    self.last_bytes = path.stat().st_size
    return path

  def restore(
    self,
    models: Sequence[int],
    epochs: int,
    identity: dict,
    like: Callable[[int], Any],
  ) -> Restored | None:
    """The chunk's saved state; ``None`` if none or a mismatching one.

    Args:
      models: the chunk's model indices.
      epochs: the epochs the chunk trains in all.
      identity: what the chunk is (compared with the saved one).
      like: ``epoch -> tree`` of arrays or ``jax.ShapeDtypeStruct`` with the
        structure, shapes and dtypes the state has after ``epoch`` epochs.
    """
    path = self.path(models)
    if not path.exists():
      return None
    try:
      with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["header"][()]))
        leaves = [z[f"leaf_{i:05d}"] for i in range(len(header["leaves"]))]
    except Exception as e:  # a truncated or foreign file: never used
      self._set_aside(path, f"unreadable ({type(e).__name__}: {e})")
      return None
    reason = self._mismatch(header, models, epochs, identity, leaves, like)
    if reason:
      self._set_aside(path, reason)
      return None
    _, treedef = jax.tree_util.tree_flatten(like(header["epoch"]))
    self.log(
      f"resuming models {describe_models(models)} from the checkpoint at "
      f"epoch {header['epoch']} of {epochs}"
    )
    self._last = time.monotonic()
    return Restored(
      epoch=int(header["epoch"]),
      tree=jax.tree_util.tree_unflatten(treedef, leaves),
      train_seconds=float(header.get("train_seconds", 0.0)),
    )

  def discard(self, models: Sequence[int]) -> None:
    """Deletes the chunk's checkpoint (once its outputs are safely written)."""
    self.path(models).unlink(missing_ok=True)

  def _mismatch(self, header, models, epochs, identity, leaves, like) -> str:
    if header.get("format") != FORMAT:
      return f"format {header.get('format')!r}, expected {FORMAT}"
    if header.get("models") != [int(m) for m in models]:
      return (
        f"it holds models {describe_models(header.get('models') or [])}, "
        f"not {describe_models(models)}"
      )
    if header.get("epochs") != int(epochs):
      return f"it was written for {header.get('epochs')} epochs, not {epochs}"
    epoch = header.get("epoch")
    if not isinstance(epoch, int) or not 1 <= epoch <= epochs:
      return f"its epoch {epoch!r} is not in [1, {epochs}]"
    want = {**identity, "fingerprint": self.fingerprint}
    saved = header.get("identity") or {}
    diff = sorted(
      k for k in set(want) | set(saved) if want.get(k) != saved.get(k)
    )
    if diff:
      return f"it belongs to another run (differs in: {', '.join(diff)})"
    expect, treedef = jax.tree_util.tree_flatten(like(epoch))
    if header.get("treedef") != str(treedef):
      return "its state has another structure (another model or optimizer)"
    if _leaf_specs(leaves) != _leaf_specs(expect) or header.get(
      "leaves"
    ) != _leaf_specs(expect):
      return "its state has other shapes or dtypes"
    return ""

  def _set_aside(self, path: pathlib.Path, reason: str) -> None:
    aside = path.with_name(path.name + ".stale")
    n = 1
    while aside.exists():
      aside = path.with_name(f"{path.name}.stale{n}")
      n += 1
    os.replace(path, aside)
    self.log(
      f"ignoring the checkpoint {path.name}: {reason}; kept as {aside.name}, "
      "training its models from the first epoch"
    )
