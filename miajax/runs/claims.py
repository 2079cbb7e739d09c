"""Which process trains which models: per-model locks in a run directory or store entry.

Several processes may train into one directory at once (two audits sharing a
``--shadow_store``, two ``train_models.py`` runs of one ``--output_dir``, the
processes of a multi-host run). Before a process trains a chunk it takes the
advisory lock of every model in it (``locks/model_00003.lock``, see
:func:`miajax.runs.io.try_lock`), without waiting: a chunk any of whose models
another process holds is skipped, and the process goes on with the next one.
Once it has nothing left it could take, it waits for the models others are
training and plans again, so processes split the work, never train a model
twice, and one that dies (its locks die with it) has its models trained by
the others. Locks are per model, not per chunk name, because processes may
plan different chunk sizes (the planner sees the free memory of its moment).

A chunk's lock is held from before its training starts until its files are
written and recorded, so "holds the locks of models [a, b)" is also what
makes it safe to delete the temporaries of, or set aside, whatever covers
them.
"""

from __future__ import annotations

import itertools
import os
import pathlib
from typing import Callable, Iterable, Iterator, Sequence

from miajax.runs import io

__all__ = ["Claims", "train_claimed"]


def _describe(models: Sequence[int]) -> str:
  return f"[{models[0]}, {models[-1] + 1})"


class Claims:
  """The model locks this process holds in one directory."""

  def __init__(self, directory, log: Callable[[str], None] = print):
    self.directory = pathlib.Path(directory) / "locks"
    self.log = log
    self._held: dict[int, io.Lock] = {}

  def path(self, model: int) -> pathlib.Path:
    return self.directory / f"model_{int(model):05d}.lock"

  def take(self, models: Sequence[int]) -> bool:
    """Takes every lock of ``models`` or, if another process holds one, none."""
    got = []
    for m in models:
      if int(m) in self._held:
        continue
      held = io.try_lock(self.path(m), holder=True)
      if held is None:
        for lock in got:
          lock.release()
        return False
      got.append(held)
      self._held[int(m)] = held
    return True

  def release(self, models: Iterable[int] | None = None) -> None:
    for m in list(self._held) if models is None else models:
      held = self._held.pop(int(m), None)
      if held is not None:
        held.release()

  def holder(self, models: Sequence[int]) -> str:
    """Who holds (or last held) the first of ``models`` that is taken."""
    for m in models:
      if int(m) in self._held:
        continue
      probe = io.try_lock(self.path(m))
      if probe is None:
        return io.lock_holder(self.path(m))
      probe.release()
    return "another process"

  def wait(self, models: Sequence[int]) -> None:
    """Returns once no other process holds any of ``models``."""
    for m in models:
      if int(m) not in self._held:
        io.lock(self.path(m)).release()

  def sweep(self, directory, prefixes=(io.CHUNK, io.CHECKPOINT)) -> int:
    """Deletes the temporaries in ``directory`` of chunks nobody is writing.

    A temporary ``.chunk_00000_00008.npz.x1y2.tmp`` is left by a process
    killed mid-write; whoever writes that chunk holds its models' locks, so a
    temporary whose models are all free is nobody's.
    """
    removed = 0
    for tmp in sorted(pathlib.Path(directory).glob(".*")):
      target = io.temporary_target(tmp.name)
      models = _models(target, prefixes) if target else None
      if models is None or not self.take(models):
        continue
      try:
        removed += io.remove_temporaries(tmp.parent / target)
      finally:
        self.release(models)
    return removed


def _models(name: str, prefixes) -> range | None:
  stem = name.split(".")[0]
  for prefix in prefixes:
    if (models := io.parse_chunk_name(stem, prefix)) is not None:
      return models
  return None


class _Claimed:
  """The planned chunks this process could take, as the engine asks for them.

  The engine asks for the next chunk only after the previous one's results
  were written (``train_chunks`` is a generator), so that is when the
  previous chunk's locks are released.
  """

  def __init__(self, plan, claims: Claims, covered, started):
    self.plan, self.claims = plan, claims
    self.covered, self.started = covered, started
    self.trained: list[list[int]] = []
    self.skipped: list[list[int]] = []

  def __iter__(self) -> Iterator[list[int]]:
    previous = None
    try:
      for chunk in self.plan:
        if previous is not None:
          self.claims.release(previous)
          previous = None
        if not self.claims.take(chunk):
          self.skipped.append(chunk)
          continue
        # Planned before the locks were taken: another process may have
        # finished these models in between.
        if self.covered(chunk):
          self.claims.release(chunk)
          continue
        self.started(chunk)
        self.claims.log(f"pid {os.getpid()} trains models {_describe(chunk)}")
        previous = chunk
        self.trained.append(chunk)
        yield chunk
    finally:
      if previous is not None:
        self.claims.release(previous)


def train_claimed(
  claims: Claims,
  plan: Callable[[], list[list[int]]],
  covered: Callable[[list[int]], bool],
  train: Callable[[Iterable[list[int]]], object],
  started: Callable[[list[int]], object] = lambda chunk: None,
) -> list[list[int]]:
  """Trains ``plan()``'s chunks under their locks until none is left; returns those this process trained.

  Args:
    claims: this process's locks of the directory.
    plan: the chunks still to train, from what is on disk now.
    covered: whether a chunk file now holds any of a chunk's models (asked
      once its locks are held).
    train: runs the engine over the chunks it is given (lazily: each is
      locked when the engine asks for it) and writes each one's files.
    started: called for each chunk once locked, before it trains (cleans
      its temporaries).
  """
  trained = []
  try:
    while todo := plan():
      claimed = _Claimed(todo, claims, covered, started)
      chunks = iter(claimed)
      # The engine sets up (data on the devices, programs) before it asks
      # for a chunk: only worth it if there is one to take.
      first = next(chunks, None)
      if first is not None:
        train(itertools.chain([first], chunks))
      trained += claimed.trained
      if claimed.skipped:
        first = claimed.skipped[0]
        claims.log(
          f"pid {os.getpid()} waits for models {_describe(first)}: "
          f"{claims.holder(first)} is training them"
        )
        claims.wait(first)
      elif not claimed.trained:
        # Every planned chunk was finished elsewhere since planning; a plan
        # from the files now on disk either is empty or differs.
        continue
  finally:
    claims.release()
  return trained
