"""Predicted labels of perturbed views, made, queried and compared on the device.

The label-only attacks keep one ``int16`` label per model, example and view.
Building the views on the host and bringing whole logits
``[models, examples x views, classes]`` back only to take an argmax spends
most of the job's time in copies; here, per block of examples, one compiled
program makes the views from the inputs and keys (once for every model) and
one runs each model and takes the argmax, and only the labels come back.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from miajax.engine import devices as devices_lib
from miajax.engine import query

__all__ = ["predict_view_labels"]


@functools.lru_cache(maxsize=16)
def _views_fn(views: Callable, skip_first: bool):
  def make(xb, start):
    v = views(xb, start)  # [views, block, ...]
    v = v[1:] if skip_first else v
    return v.reshape((v.shape[0] * v.shape[1],) + v.shape[2:])

  return jax.jit(make)


@functools.lru_cache(maxsize=16)
def _labels_fn(fns, per_model: bool, num_views: int):
  def one(variables, flat_views):
    logits = fns.apply(variables, flat_views, train=False)
    labels = jnp.argmax(logits, -1).astype(jnp.int16)
    return labels.reshape(num_views, -1).T  # [block, views]

  return jax.jit(one if per_model else jax.vmap(one, in_axes=(0, None)))


def _meshes():
  """Where the models may run: spread over every local device, or (CPU with
  several devices) all on the first, whose operations then use every core."""
  spread = devices_lib.models_mesh()
  if spread.size == 1 or jax.default_backend() != "cpu":
    return [spread]
  return [spread, Mesh(np.asarray(jax.local_devices()[:1]), ("models",))]


def _fastest(placements, run_first_block):
  """``(placement, labels of the first block)``: the placement that ran the first block fastest.

  One device per core (what training uses on CPU) lets small models run on
  every core, but large inference blocks are faster on one device whose
  matmuls take every core (measured: 113 against 236 GFLOP/s for 16
  Fashion-MNIST MLPs on a 2-core AMD EPYC); which wins depends on the model
  and the machine, so it is timed, not assumed. Each candidate runs the
  block twice (compile, then time); the labels are the same bits.
  """
  if len(placements) == 1:
    return placements[0], run_first_block(placements[0])
  best = None
  for p in placements:
    jax.block_until_ready(run_first_block(p))
    t = time.perf_counter()
    labels = jax.block_until_ready(run_first_block(p))
    took = time.perf_counter() - t
    if best is None or took < best[0]:
      best = (took, p, labels)
  return best[1], best[2]


def predict_view_labels(
  config,
  variables,
  x,
  *,
  views: Callable,
  num_views: int,
  num_classes: int,
  block: int = 256,
  identity_labels=None,
  lowering=None,
) -> np.ndarray:
  """Predicted labels ``int16[models, examples, views]`` of ``views(x)``.

  Args:
    config: the :class:`miajax.TrainConfig` the models were trained with.
    variables: stacked on a leading ``[models]`` axis.
    x: ``float[examples, ...]``.
    views: a jit-able ``views(x_block, start) -> float[num_views, block,
      ...]`` (``start``: the block's first example, a traced int32, for
      per-example keys), e.g. ``LabelOnlyQueries.views``; hashable (it keys
      the compiled program).
    num_views: how many views ``views`` makes.
    block: examples per compiled call (the last block is padded).
    identity_labels: ``int[models, examples]`` labels of ``x`` itself, already
      computed; when given, view 0 must be ``x`` itself and is not recomputed.
    lowering: as in :func:`miajax.predict`.
  """
  x = np.asarray(x, np.float32)
  n = x.shape[0]
  leaves = jax.tree_util.tree_leaves(variables)
  if not leaves or n == 0:
    raise ValueError("need stacked variables and at least one example")
  num_models = leaves[0].shape[0]
  if isinstance(block, bool) or not isinstance(block, int) or block < 1:
    raise ValueError(f"block must be a positive integer, got {block!r}")
  skip = identity_labels is not None
  if skip:
    identity_labels = np.asarray(identity_labels)
    if identity_labels.shape != (num_models, n):
      raise ValueError(
        f"identity_labels must be [models, examples] = {(num_models, n)}, "
        f"got {identity_labels.shape}"
      )
  # The views are made once per block, for every model (under one-program-
  # per-model lowerings too), and stay on the device.
  make_views = _views_fn(views, skip)
  bs = min(block, n)
  blocks = [x[s : s + bs] for s in range(0, n, bs)]
  if blocks[-1].shape[0] < bs:  # one compiled shape for every block
    pad = bs - blocks[-1].shape[0]
    blocks[-1] = np.concatenate(
      [blocks[-1], np.repeat(blocks[-1][-1:], pad, 0)]
    )
  placements = [
    query.prepared(
      config,
      variables,
      tuple(x.shape[1:]),
      num_classes,
      lowering,
      num_models,
      mesh,
    )
    for mesh in _meshes()
  ]

  def run(placement, s, xb):
    fns, stacked, models, replicated = placement
    fn = _labels_fn(fns, models is not None, num_views - int(skip))
    flat = make_views(jax.device_put(xb, replicated), jnp.int32(s))
    if models is not None:
      return jnp.stack(
        [jax.device_put(fn(vm, flat), jax.devices()[0]) for vm in models]
      )
    return fn(stacked, flat)

  placement, first = _fastest(placements, lambda p: run(p, 0, blocks[0]))
  out = [np.asarray(first)]
  for i, xb in enumerate(blocks[1:], 1):
    out.append(np.asarray(run(placement, i * bs, xb)))
  out[-1] = out[-1][:, : n - (len(blocks) - 1) * bs]
  out = [o[:num_models] for o in out]
  labels = np.concatenate(out, 1)
  if skip:
    labels = np.concatenate(
      [identity_labels.astype(np.int16)[:, :, None], labels], 2
    )
  if labels.shape[2] != num_views:
    raise ValueError(
      f"views made {labels.shape[2]} views per example, num_views={num_views}"
    )
  return labels
