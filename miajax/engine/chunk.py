"""One chunk of models through its epochs: initialise or resume, step, checkpoint, report."""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from miajax.engine import batches
from miajax.engine import devices as devices_lib
from miajax.engine import recipe
from miajax.engine import record as record_lib
from miajax.engine.compiled import Compiled
from miajax.engine.cpu import unroll
from miajax.engine.lowering import Lowering

__all__ = ["Run", "TrainResult", "train_chunk"]


class TrainResult(NamedTuple):
  """Trained models of one chunk (or all of them); a pytree.

  ``model_indices``: ``int[models]`` rows of the keep mask. ``variables``:
  variables stacked on a leading ``[models]`` axis. ``loss``:
  ``float32[models, epochs]`` mean training loss per epoch (NaN for a
  diverged model). ``diverged``: ``bool[models]``; a diverged model stopped
  updating at the first non-finite loss. ``train_seconds`` counts the time
  before a checkpoint too; ``resumed_epoch``: the epoch the chunk resumed
  from a checkpoint at (0: trained from the start). ``recorded``: with a
  :class:`miajax.engine.Record`, ``float32[models, len(record.epochs),
  examples, classes]`` logits after each recorded epoch
  (:mod:`miajax.engine.record`), else None.
  """

  model_indices: np.ndarray
  variables: Any
  loss: np.ndarray
  diverged: np.ndarray
  train_seconds: float
  resumed_epoch: int = 0
  recorded: Any = None


class Run(NamedTuple):
  """What every chunk of one ``train_chunks`` call shares."""

  config: recipe.TrainConfig
  low: Lowering
  compiled: Compiled
  keep: np.ndarray
  opt_values: dict  # name -> float32[models]
  defense_values: dict  # path -> float32[models]
  steps: int  # per epoch
  steps_per_call: int
  data: tuple  # (x, y) replicated, or per-device copies in loop mode
  progress: Callable | None
  checkpoints: Any
  record: record_lib.Plan | None = None


def _digest(array) -> str:
  """A short content hash of an array (what a checkpoint's identity compares)."""
  a = np.ascontiguousarray(array)
  return hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()[:16]


def _chunk_inputs(run: Run, padded: np.ndarray, start: int):
  rows = lambda values: {k: v[padded] for k, v in values.items()}
  return unroll.ChunkInputs(
    keys=np.asarray(batches.model_keys(run.config.seed, padded)),
    keep=run.keep[padded],
    opt_values=rows(run.opt_values),
    defense_values=rows(run.defense_values),
    epochs=_chunk_epochs(run, padded),
    steps_per_epoch=run.steps,
    steps_per_call=run.steps_per_call,
    batch_size=run.config.batch_size,
    start_epoch=start,
  )


def _chunk_epochs(run: Run, idx) -> int:
  """The epochs a chunk steps through: its longest-trained model's."""
  if run.config.per_model_epochs:
    return int(run.opt_values["epochs"][idx].max())
  return int(run.config.epochs)


def _identity(run: Run, idx: np.ndarray) -> dict:
  """What a chunk's randomness and data depend on besides the state's shapes.

  Not the padding (a device-count matter): padded models are copies of the
  last one.
  """
  values = {**run.opt_values, **run.defense_values}
  # Only with a record: checkpoints of runs without one keep their identity.
  extra = {} if run.record is None else {"record": run.record.record.identity()}
  return dict(
    **extra,
    seed=int(run.config.seed),
    steps_per_epoch=run.steps,
    batch_size=int(run.config.batch_size),
    members=_digest(run.keep[idx]),
    hyperparams={k: _digest(values[k][idx]) for k in sorted(values)},
    # What changes the bits of a step (not the chunk size or calls).
    lowering={
      f: getattr(run.low, f)
      for f in ("model_axis", "microbatch", "conv_impl", "compute_dtype")
    },
  )


def _host_state(snapshot: dict, rows: int) -> dict:
  """A chunk's training state as host arrays ``[models, ...]``, padding dropped."""
  return jax.tree_util.tree_map(lambda a: np.asarray(a)[:rows], snapshot)


def _pad_rows(tree, rows: int):
  """``tree``'s leaves ``[models, ...]`` padded to ``rows`` by the last model."""

  def pad(a):
    a = np.asarray(a)
    extra = rows - a.shape[0]
    return np.concatenate([a, np.repeat(a[-1:], extra, 0)]) if extra else a

  return jax.tree_util.tree_map(pad, tree)


def _restore(run: Run, idx, ci: unroll.ChunkInputs, identity):
  """``(restored state padded to the chunk, start epoch, seconds spent)`` from a checkpoint, if any."""
  if run.checkpoints is None:
    return None, 0, 0.0
  n = len(idx)
  values = (ci.opt_values, ci.defense_values)
  rows = lambda tree: jax.tree_util.tree_map(lambda a: a[:n], tree)

  def like(epoch):
    state = jax.eval_shape(
      run.compiled.init_abstract, ci.keys[:n], *rows(values)
    )
    loss = jax.ShapeDtypeStruct((n, epoch), np.float32)
    tree = {"state": state, "loss_sum": loss}
    if run.record is not None:
      p = run.record
      shape = (n, p.record.count(epoch), p.num_examples, p.num_classes)
      tree["recorded"] = jax.ShapeDtypeStruct(shape, np.float32)
    return tree

  saved = run.checkpoints.restore(idx, ci.epochs, identity, like)
  run.checkpoints.start()
  if saved is None:
    return None, 0, 0.0
  return (
    _pad_rows(saved.tree, len(ci.keys)),
    saved.epoch,
    saved.train_seconds,
  )


class _Epochs:
  """After each epoch of a chunk: record outputs, save a checkpoint if one is due, then report progress."""

  def __init__(self, run, idx, identity, start, spent, done, epochs, recorder):
    self.run, self.idx, self.identity = run, idx, identity
    self.recorder = recorder
    self.epochs = epochs
    self.start, self.spent, self.done = start, spent, done
    self.t0 = self.clock = time.perf_counter()
    # Without a listener the host runs ahead of the device, but a time-based
    # checkpoint needs to know when an epoch really ended.
    ck = run.checkpoints
    self.sync = run.progress is not None or (ck is not None and ck.every_s > 0)

  def __call__(self, epoch: int, loss_sums, states, snapshot) -> None:
    run, n = self.run, len(self.idx)
    if self.recorder is not None:
      self.recorder.after_epoch(epoch, states)
    if self.sync:
      jax.block_until_ready(loss_sums)
    ck = run.checkpoints
    if ck is not None and ck.due(epoch + 1):
      elapsed = self.spent + time.perf_counter() - self.t0
      state = _host_state(snapshot(), n)
      if self.recorder is not None:
        state["recorded"] = self.recorder.host(n)
      ck.save(self.idx, epoch + 1, self.epochs, state, self.identity, elapsed)
    if run.progress is None:
      return
    now = time.perf_counter()
    examples = n * run.steps * run.config.batch_size
    run.progress(
      dict(
        models_done=self.done,
        chunk_models=n,
        epoch=epoch + 1,
        epochs=self.epochs,
        start_epoch=self.start,
        model_shards=devices_lib.model_shards(
          [s.params for s in states]
          if isinstance(states, list)
          else states.params
        ),
        epoch_seconds=now - self.clock,
        epoch_examples=examples,
        examples_per_s=examples * (epoch + 1 - self.start) / (now - self.t0),
      )
    )
    self.clock = now


def _train_stacked(run: Run, ci: unroll.ChunkInputs, restored, on_epoch):
  """A chunk's models stacked on the models mesh; ``(TrainState, losses per epoch)``."""
  by_model = NamedSharding(devices_lib.models_mesh(), PartitionSpec("models"))
  put = lambda tree: jax.device_put(tree, by_model)
  keys = put(ci.keys)
  if restored is None:
    ts = put(run.compiled.init(keys, ci.opt_values, ci.defense_values))
    loss_sums = []
  else:
    ts = put(restored["state"])
    loss_sums = list(restored["loss_sum"].T)
  keep = put(ci.keep)
  x, y = run.data
  for epoch in range(ci.start_epoch, ci.epochs):
    order = run.compiled.order(keep, keys, epoch, run.steps, ci.batch_size)
    carry = (ts, put(np.zeros(len(ci.keys), np.float32)))
    for s in range(0, run.steps, run.steps_per_call):
      carry = run.compiled.multi_step(
        carry, keys, order, x, y, epoch * run.steps + s, run.steps_per_call
      )
    ts, loss_sum = carry
    loss_sums.append(loss_sum)
    snapshot = lambda: {
      "state": ts,
      "loss_sum": np.stack([np.asarray(v) for v in loss_sums], 1),
    }
    on_epoch(epoch, loss_sum, ts, snapshot)
  # Means on the host, as the loop form takes them: a resumed chunk divides
  # the very same sums.
  return ts, [np.asarray(v) / run.steps for v in loss_sums]


def train_chunk(run: Run, idx: np.ndarray, done: int) -> TrainResult:
  n, t0 = len(idx), time.perf_counter()
  mesh = devices_lib.models_mesh()
  padded = devices_lib.pad_to_devices(idx, mesh.size)
  identity = _identity(run, idx)
  ci = _chunk_inputs(run, padded, 0)
  restored, start, spent = _restore(run, idx, ci, identity)
  ci = ci._replace(start_epoch=start)
  recorder = None
  if run.record is not None:
    saved = None if restored is None else restored["recorded"]
    recorder = record_lib.Recorder(run.record, len(padded), saved)
  on_epoch = _Epochs(
    run, idx, identity, start, spent, done, ci.epochs, recorder
  )
  if run.low.call_per_model:
    state, losses = unroll.run_loop_chunk(
      run.compiled,
      ci,
      devices=list(mesh.devices.flat),
      xs=run.data[0],
      ys=run.data[1],
      report_epoch=on_epoch,
      restored=restored,
    )
    by_model = NamedSharding(mesh, PartitionSpec("models"))
    ts = jax.device_put(state, by_model)
  else:
    ts, losses = _train_stacked(run, ci, restored, on_epoch)
  alive = np.asarray(ts.alive)[:n]
  loss = np.stack([np.asarray(v)[:n] for v in losses], 1)
  loss[~alive] = np.nan
  if run.config.per_model_epochs:  # no loss after a model's own epochs
    loss = np.pad(
      loss,
      ((0, 0), (0, run.config.max_epochs - loss.shape[1])),
      constant_values=np.nan,
    )
    own = run.opt_values["epochs"][idx]
    loss[np.arange(loss.shape[1])[None, :] >= own[:, None]] = np.nan
  variables = {"params": ts.params, **ts.model_state}
  if len(padded) != n:
    variables = jax.tree_util.tree_map(lambda a: a[:n], variables)
  jax.block_until_ready(variables)
  return TrainResult(
    idx,
    variables,
    loss,
    ~alive,
    spent + time.perf_counter() - t0,
    resumed_epoch=start,
    recorded=None if recorder is None else recorder.host(n),
  )
