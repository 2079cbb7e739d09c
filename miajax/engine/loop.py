"""The training loop: every model of a keep mask, chunk by chunk, each only on its own members.

``train_models`` trains every row of a keep mask ``bool[models, examples]``:
model ``m`` only ever sees examples with ``keep[m]``. Inside a chunk one
compiled step (:mod:`miajax.engine.step`) updates all its models, an epoch
of steps runs in one ``lax.scan``, and the data stays on the device, each
step gathering its batches there. How is one
:class:`miajax.engine.lowering.Lowering`; this module is the same on every
backend.

Determinism: model ``m`` draws every random number from
``fold_in(PRNGKey(seed), m)`` and its own hyperparameter values, so its
result does not depend on the chunk it was trained in.

The loop never writes files: a checkpointer it is handed (an object with
``restore``, ``start``, ``due``, ``save``, ``discard`` and ``every_s``, e.g.
:class:`miajax.runs.checkpoint.Checkpointer`) saves and restores a chunk in
flight.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from miajax import hyperparams as hyperparams_lib
from miajax.engine import batches
from miajax.engine import devices as devices_lib
from miajax.engine import inputs
from miajax.engine import optimizers
from miajax.engine import identity
from miajax.engine import recipe
from miajax.engine import record as record_lib
from miajax.engine import chunk as chunk_lib
from miajax.engine.compiled import compile_program
from miajax.engine.lowering import Lowering, resolve_lowering
from miajax.engine.planner import plan_models_per_step

__all__ = ["TrainResult", "train_models", "train_chunks"]

TrainResult = chunk_lib.TrainResult


def _setup(
  config, x, y, keep, num_classes, lowering, progress, checkpoints, record
):
  x, y, keep = inputs.check_inputs(x, y, keep, config, num_classes)
  if record is not None:
    if not isinstance(record, record_lib.Record):
      raise ValueError(
        "record must be a miajax.engine.Record(epochs=..., examples=...), "
        f"got {type(record).__name__}"
      )
    record.check(x.shape[0], config.max_epochs)
  num_models = keep.shape[0]
  shape = tuple(x.shape[1:])
  steps = batches.steps_per_epoch(keep, config.batch_size)
  # Every model of keep, not only this call's chunks: the processes and
  # resumes of one run decide alike.
  low = resolve_lowering(
    config,
    shape,
    num_classes,
    lowering=lowering,
    steps=num_models * config.max_epochs * steps,
  )
  compiled = compile_program(
    identity.program_key(config),
    _program_lowering(low),
    num_classes,
    steps,
    shape,
  )
  spc = low.steps_per_call or steps
  if steps % spc:
    spc = math.gcd(steps, spc)
  mesh = devices_lib.models_mesh()
  if low.call_per_model:  # each model's step runs on its own device
    data = tuple(
      [jax.device_put(a, d) for d in mesh.devices.flat] for a in (x, y)
    )
  else:
    replicated = NamedSharding(mesh, PartitionSpec())
    data = (jax.device_put(x, replicated), jax.device_put(y, replicated))
  return chunk_lib.Run(
    config,
    low,
    compiled,
    keep,
    optimizers.hyperparam_values(config, num_models),
    hyperparams_lib.collect(config.defense),
    steps,
    spc,
    data,
    progress,
    checkpoints,
    None
    if record is None
    else record_lib.plan(record, config, low, num_classes, x),
  ), plan_models_per_step(config, num_classes, shape, num_models, lowering=low)


def _program_lowering(low: Lowering) -> Lowering:
  # Chunking is a runtime matter: one compiled program for every chunk size.
  return dataclasses.replace(low, models_per_step=None)


def train_chunks(
  config: recipe.TrainConfig,
  x,
  y,
  keep,
  *,
  num_classes: int,
  chunks: Sequence[Sequence[int]] | None = None,
  progress: Callable[[dict], None] | None = None,
  lowering: Lowering | None = None,
  checkpoints=None,
  record: record_lib.Record | None = None,
) -> Iterator[TrainResult]:
  """Yields one :class:`TrainResult` per chunk of models, as each finishes.

  Args:
    config: a :class:`miajax.TrainConfig` (per-model values ``[models]``
      allowed, see :mod:`miajax.hyperparams`).
    x: ``float[examples, ...]`` training inputs (all candidates; keep selects).
    y: ``int[examples]`` labels.
    keep: ``bool[models, examples]`` (numpy or JAX); model m trains only on
      ``x[keep[m]]``.
    num_classes: number of classes.
    chunks: optional list of model-index lists to train (e.g. the unfinished
      ones when resuming); default: consecutive chunks of the planned size.
    progress: called after every epoch with a dict: ``models_done``,
      ``chunk_models``, ``epoch`` (1-based) of ``epochs``, ``start_epoch``
      (where the chunk resumed, 0 if fresh), ``epoch_seconds`` (wall time of
      this epoch; the chunk's first epoch includes any compilation),
      ``epoch_examples`` (training examples of the epoch, all models),
      ``examples_per_s`` (since the chunk started) and ``model_shards`` (how
      many models of the chunk each device holds).
    lowering: a :class:`miajax.Lowering`; its ``None`` fields (all, by
      default) are decided for this backend.
    checkpoints: optional checkpointer (e.g.
      :class:`miajax.runs.checkpoint.Checkpointer`). A chunk with a matching
      checkpoint resumes from it; the chunk's state is saved at the epoch
      boundaries the checkpointer asks for; the checkpoint is discarded when
      the next chunk is asked for (the caller has then written this one's
      outputs).
    record: an optional :class:`miajax.engine.Record`: every model's logits
      on ``record.examples`` after each of ``record.epochs``, returned as
      ``TrainResult.recorded`` and kept in the checkpoints
      (:mod:`miajax.engine.record`).
  """
  run, per_step = _setup(
    config, x, y, keep, num_classes, lowering, progress, checkpoints, record
  )
  num_models = run.keep.shape[0]
  if chunks is None:
    chunks = [
      list(range(s, min(s + per_step, num_models)))
      for s in range(0, num_models, per_step)
    ]
  done = 0
  for chunk in chunks:
    idx = np.asarray(chunk, np.int64)
    if idx.size == 0:
      continue
    result = chunk_lib.train_chunk(run, idx, done)
    done += len(idx)
    yield result
    if checkpoints is not None:
      checkpoints.discard(idx)


def train_models(
  config: recipe.TrainConfig | None,
  x,
  y,
  keep,
  *,
  num_classes: int,
  progress: Callable[[dict], None] | None = None,
  lowering: Lowering | None = None,
  record: record_lib.Record | None = None,
) -> TrainResult:
  """Trains one model per row of ``keep`` and returns them stacked.

  Args:
    config: :class:`miajax.TrainConfig` (None: ``TrainConfig()``): a
      registry model or your own Flax module / ``(init, apply)`` pair, a
      built-in optimizer or your own optax transformation, an optional loss;
      learning rate, momentum, weight decay and defense strengths may be
      per-model arrays ``[models]`` (one compiled program trains the sweep).
    x: ``float[examples, ...]`` inputs; y: ``int[examples]`` labels.
    keep: ``bool[models, examples]`` membership: model m trains on ``keep[m]``.
    num_classes: number of classes.
    lowering: how to run it (:class:`miajax.Lowering`; default: decided for
      this backend).
    record: an optional :class:`miajax.engine.Record` (epochs, examples):
      every model's logits after those epochs, in ``TrainResult.recorded``
      ``float32[models, len(record.epochs), examples, classes]``.

  Returns:
    A :class:`TrainResult` whose ``variables`` have a leading ``[models]`` axis.
  """
  config = recipe.TrainConfig() if config is None else config
  parts = list(
    train_chunks(
      config,
      x,
      y,
      keep,
      num_classes=num_classes,
      progress=progress,
      lowering=lowering,
      record=record,
    )
  )
  cat = lambda *leaves: jnp.concatenate(leaves, 0)
  recorded = None
  if record is not None:
    recorded = np.concatenate([p.recorded for p in parts])
  return TrainResult(
    model_indices=np.concatenate([p.model_indices for p in parts]),
    variables=jax.tree_util.tree_map(cat, *[p.variables for p in parts]),
    loss=np.concatenate([p.loss for p in parts]),
    diverged=np.concatenate([p.diverged for p in parts]),
    train_seconds=sum(p.train_seconds for p in parts),
    recorded=recorded,
  )
