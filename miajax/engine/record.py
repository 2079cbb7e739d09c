"""Training dynamics: every model's logits on chosen examples after chosen epochs, recorded in flight.

``train_models(..., record=Record(epochs=(5, 10, 20)))`` computes, right
after each of those (1-based) epochs, the logits of every model of the chunk
on the recorded examples with its current parameters: ``train=False``, the
identity query, the compiled forward of :func:`miajax.engine.predict` on the
device the parameters are on, so recording epoch ``E`` equals ``predict`` on
the variables of the same run stopped after ``E`` epochs. They come back as
``TrainResult.recorded``, ``float32[models, len(epochs), examples, classes]``
(full logits: any score, e.g. ``miajax.logit_scaled`` or
``miajax.cross_entropy``, is one reduction away). A checkpoint holds the
recordings made so far, so a chunk resumed after epoch ``e`` still returns
those of the epochs ``<= e``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from miajax.engine import devices as devices_lib
from miajax.engine import identity
from miajax.engine import query
from miajax.engine import recipe

__all__ = ["Record", "Plan", "Recorder", "plan"]


def _int_tuple(values, name: str) -> tuple[int, ...]:
  a = np.asarray(values)
  if a.ndim != 1 or a.size == 0:
    raise ValueError(
      f"Record.{name} must be a non-empty 1-D sequence of integers, got "
      f"shape {a.shape}"
    )
  if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"Record.{name} must be integers, got dtype {a.dtype}")
  return tuple(int(v) for v in a)


@dataclasses.dataclass(frozen=True)
class Record:
  """What to record during training (not part of a recipe's identity: it changes no step).

  ``epochs``: 1-based epoch numbers after which every model's logits are
  recorded (sorted, distinct; at most the recipe's epochs). ``examples``:
  indices into the training inputs ``x`` (None: all of them).
  ``batch_size``: examples per forward call (as ``predict``'s).
  """

  epochs: tuple = ()
  examples: Any = None
  batch_size: int = 1024

  def __post_init__(self):
    epochs = _int_tuple(self.epochs, "epochs")
    if min(epochs) < 1 or list(epochs) != sorted(set(epochs)):
      raise ValueError(
        "Record.epochs must be distinct 1-based epoch numbers in increasing "
        f"order, got {list(epochs)}"
      )
    object.__setattr__(self, "epochs", epochs)
    if self.examples is not None:
      examples = _int_tuple(self.examples, "examples")
      if min(examples) < 0:
        raise ValueError("Record.examples must be indices >= 0")
      object.__setattr__(self, "examples", examples)
    bs = self.batch_size
    if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
      raise ValueError(
        f"Record.batch_size must be a positive integer, got {bs!r}"
      )

  def check(self, num_examples: int, epochs: int) -> None:
    """Raises ValueError unless it fits ``num_examples`` inputs and ``epochs`` epochs."""
    if self.epochs[-1] > epochs:
      raise ValueError(
        f"Record.epochs {list(self.epochs)} go beyond the recipe's {epochs} "
        "epochs"
      )
    if self.examples is not None and max(self.examples) >= num_examples:
      raise ValueError(
        f"Record.examples holds index {max(self.examples)}, but x has "
        f"{num_examples} examples"
      )

  def count(self, epochs_done: int) -> int:
    """How many recordings exist after ``epochs_done`` epochs."""
    return sum(e <= epochs_done for e in self.epochs)

  def identity(self) -> dict:
    """What a checkpoint's recordings depend on."""
    idx = "all" if self.examples is None else np.asarray(self.examples)
    if not isinstance(idx, str):
      idx = hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest()[:16]
    return dict(epochs=list(self.epochs), examples=idx)


@dataclasses.dataclass(frozen=True)
class Plan:
  """A :class:`Record` made ready for one ``train_chunks`` call: the forward and the batches on the devices.

  ``batches``: ``(x [batch, ...], valid rows)`` per batch, replicated over
  the models mesh; in loop mode one copy per device (a list).
  """

  record: Record
  fn: Callable
  per_model: bool
  batches: list
  num_examples: int
  num_classes: int


def plan(record: Record, config, low, num_classes: int, x) -> Plan:
  """The :class:`Plan` of ``record`` for a run of ``config`` under lowering ``low`` on inputs ``x``.

  The forward is ``predict``'s, compiled for the training lowering's
  convolution and dtype, and batched as ``predict`` batches (the last batch
  padded by its last example): the same programs on the same shapes.
  """
  x = np.asarray(x, np.float32)
  if record.examples is not None:
    x = x[np.asarray(record.examples)]
  fns = recipe.model_fns(
    identity.program_key(config),
    num_classes,
    conv_impl=low.conv_function(),
    compute_dtype=low.compute_dtype,
  )
  per_model = low.per_model_programs
  mesh = devices_lib.models_mesh()
  replicated = NamedSharding(mesh, PartitionSpec())
  bs = min(record.batch_size, x.shape[0])
  batches = []
  for s in range(0, x.shape[0], bs):
    xb = x[s : s + bs]
    valid = xb.shape[0]
    if valid < bs:
      xb = np.concatenate([xb, np.repeat(xb[-1:], bs - valid, 0)])
    if low.call_per_model:
      put = [jax.device_put(xb, d) for d in mesh.devices.flat]
    else:
      put = jax.device_put(xb, replicated)
    batches.append((put, valid))
  return Plan(
    record,
    query._predict_fn(fns, per_model),
    per_model,
    batches,
    x.shape[0],
    num_classes,
  )


def _variables(ts):
  return {"params": ts.params, **ts.model_state}


class Recorder:
  """One chunk's recordings: device arrays until asked for on the host.

  Args:
    plan: the run's :class:`Plan`.
    rows: the chunk's models (padded to the devices).
    restored: ``float32[rows, recorded, examples, classes]`` read back from
      a checkpoint, or None.
  """

  def __init__(self, plan: Plan, rows: int, restored=None):
    self.plan, self.rows = plan, rows
    self.parts = [] if restored is None else list(np.moveaxis(restored, 1, 0))

  def after_epoch(self, epoch: int, states) -> None:
    """Records the models' logits if ``epoch`` (0-based) is to be recorded.

    ``states``: the chunk's ``TrainState`` stacked on ``[models]``, or a
    list of one-model states (leading axis 1) on their devices (loop mode).
    """
    if epoch + 1 not in self.plan.record.epochs:
      return
    fn, out = self.plan.fn, []
    if isinstance(states, list):  # loop mode: model m on its own device
      for m, ts in enumerate(states):
        v = jax.tree_util.tree_map(lambda a: a[0], _variables(ts))
        out.append([fn(v, xb[m % len(xb)])[:n] for xb, n in self.plan.batches])
      self.parts.append(("models", out))
      return
    variables = _variables(states)
    if not self.plan.per_model:
      out = [fn(variables, xb)[:, :n] for xb, n in self.plan.batches]
      self.parts.append(("batches", out))
      return
    models = [
      jax.tree_util.tree_map(lambda a: a[m], variables)
      for m in range(self.rows)
    ]
    for xb, n in self.plan.batches:
      out.append(jnp.stack([fn(vm, xb) for vm in models])[:, :n])
    self.parts.append(("batches", out))

  def _host(self, part) -> np.ndarray:
    if isinstance(part, np.ndarray):
      return part
    kind, arrays = part
    host = lambda a: np.asarray(a, np.float32)
    if kind == "models":
      return np.stack(
        [np.concatenate([host(b) for b in model]) for model in arrays]
      )
    return np.concatenate([host(b) for b in arrays], 1)

  def host(self, n: int) -> np.ndarray:
    """``float32[n, recorded so far, examples, classes]`` of the first ``n`` models."""
    self.parts = [self._host(p) for p in self.parts]
    if not self.parts:
      shape = (n, 0, self.plan.num_examples, self.plan.num_classes)
      return np.zeros(shape, np.float32)
    return np.stack([p[:n] for p in self.parts], 1)
