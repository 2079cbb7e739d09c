"""Models as separate programs on CPU: unrolled inside one call, or one model per call and device.

XLA:CPU runs a vmapped dot as a batched dot ~30 % slower than a plain one,
and a vmapped convolution as a grouped convolution; once one model's step
is large, plain per-model programs win (``experiments/benchmark.py``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["UNROLL_MAX_MODELS", "unrolled", "ChunkInputs", "run_loop_chunk"]

UNROLL_MAX_MODELS = (
  8  # compile time grows with the models unrolled into one step
)


def unrolled(step_one):
  """A step over stacked models that runs each model's ``step_one`` as its own program.

  ``step_one(ts, key, order, x, y, step) -> (ts, loss)``; the returned
  function takes the same arguments with ``ts``, ``key`` and ``order``
  stacked on a leading ``[models]`` axis.
  """

  def vstep(ts, keys, order, x, y, step):
    outs = [
      step_one(
        *jax.tree_util.tree_map(lambda a: a[i], (ts, keys, order)), x, y, step
      )
      for i in range(keys.shape[0])
    ]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)

  return vstep


class ChunkInputs(NamedTuple):
  """One chunk's per-model inputs (host arrays, padded to the devices) and its schedule."""

  keys: np.ndarray  # key[models]
  keep: np.ndarray  # bool[models, examples]
  opt_values: dict  # name -> float32[models]
  defense_values: dict  # path -> float32[models]
  epochs: int
  steps_per_epoch: int
  steps_per_call: int
  batch_size: int
  start_epoch: int = 0


def _rows(tree, m: int):
  return jax.tree_util.tree_map(lambda a: a[m : m + 1], tree)


def run_loop_chunk(
  compiled,
  chunk: ChunkInputs,
  *,
  devices,
  xs,
  ys,
  report_epoch: Callable,
  restored: dict | None = None,
):
  """Trains one chunk with one model per call, model ``m``'s arrays on device ``m % devices``.

  No batched dots, and no stacking or slicing of the chunk's state between
  epochs. ``compiled``: the engine's compiled functions (``init_single``,
  ``order``, ``single_step``). ``report_epoch(epoch, loss_sums, states,
  snapshot)`` runs after every epoch (``states``: a list of one-model
  ``TrainState``, each on its device); ``snapshot()`` returns the host state
  ``{"state": TrainState [models], "loss_sum": float32[models, epochs]}``,
  which ``restored`` takes to resume at ``chunk.start_epoch``.

  Returns ``(TrainState [models] on the host, losses)``, ``losses`` a list
  of ``float32[models]`` mean losses per epoch.
  """
  on = [devices[m % len(devices)] for m in range(len(chunk.keys))]
  put = lambda tree, m: jax.device_put(_rows(tree, m), on[m])
  keys = [put(chunk.keys, m) for m in range(len(on))]
  if restored is None:
    values = (chunk.opt_values, chunk.defense_values)
    states = [
      compiled.init_single(keys[m], *put(values, m)) for m in range(len(on))
    ]
    sums = []
  else:
    states = [put(restored["state"], m) for m in range(len(on))]
    sums = [
      [s[m : m + 1] for m in range(len(on))] for s in restored["loss_sum"].T
    ]

  def snapshot():
    cat = lambda *a: np.concatenate([np.asarray(b) for b in a])
    state = jax.tree_util.tree_map(cat, *states)
    return {"state": state, "loss_sum": np.stack([cat(*s) for s in sums], 1)}

  keeps = [put(chunk.keep, m) for m in range(len(on))]
  steps = chunk.steps_per_epoch
  for epoch in range(chunk.start_epoch, chunk.epochs):
    carries = [
      (ts, jax.device_put(np.zeros(1, np.float32), d))
      for ts, d in zip(states, on)
    ]
    orders = [
      compiled.order(kp, k, epoch, steps, chunk.batch_size)
      for kp, k in zip(keeps, keys)
    ]
    for s in range(0, steps, chunk.steps_per_call):
      for m in range(len(on)):
        j = m % len(devices)
        carries[m] = compiled.single_step(
          carries[m],
          keys[m],
          orders[m],
          xs[j],
          ys[j],
          epoch * steps + s,
          chunk.steps_per_call,
        )
    states = [c[0] for c in carries]
    sums.append([c[1] for c in carries])
    report_epoch(epoch, sums[-1], states, snapshot)
  state = jax.tree_util.tree_map(
    lambda *a: np.concatenate([np.asarray(b) for b in a]), *states
  )
  losses = [
    np.concatenate([np.asarray(v) for v in epoch_sums]) / steps
    for epoch_sums in sums
  ]
  return state, losses
