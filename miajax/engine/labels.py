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
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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
  fns, variables, models, replicated = query.prepared(
    config, variables, tuple(x.shape[1:]), num_classes, lowering, num_models
  )
  # The views are made once per block, for every model (under one-program-
  # per-model lowerings too), and stay on the device.
  make_views = _views_fn(views, skip)
  fn = _labels_fn(fns, models is not None, num_views - int(skip))
  bs = min(block, n)
  out = []
  for s in range(0, n, bs):
    xb = x[s : s + bs]
    pad = bs - xb.shape[0]
    if pad:  # one compiled shape for every block
      xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
    flat = make_views(jax.device_put(xb, replicated), jnp.int32(s))
    if models is not None:
      labels = jnp.stack([fn(vm, flat) for vm in models])
    else:
      labels = fn(variables, flat)
    out.append(np.asarray(labels[:num_models, : bs - pad]))
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
