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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from miajax.engine import devices as devices_lib
from miajax.engine import query

__all__ = ["SharedNoise", "predict_view_labels"]


class SharedNoise(NamedTuple):
  """Noise views whose draws a group of examples shares.

  ``draws(group_ids, shape) -> float32[groups, V, *shape]``: the standard
  normal draws of each group (hashable: it keys the compiled program, e.g.
  ``LabelOnlyQueries.group_draws``); ``sigmas``: the level of each of the V
  views; ``group``: examples per group (example i is in group ``i //
  group``). View v of example i is ``x_i + sigmas[v] * draws(i // group)[v]``.
  """

  draws: Callable
  sigmas: tuple
  group: int


def _shared_noise_views(noise: SharedNoise, xb, start):
  """``float[V, block, ...]``: the noise views made example by example (any model)."""
  eps = noise.draws(
    (start + jnp.arange(xb.shape[0])) // noise.group, xb.shape[1:]
  )
  sig = jnp.asarray(noise.sigmas, xb.dtype).reshape((-1,) + (1,) * xb.ndim)
  return xb[None] + sig * jnp.moveaxis(eps, 1, 0)


@functools.lru_cache(maxsize=16)
def _views_fn(views, skip_first: bool, noise):
  def make(xb, start):
    parts = []
    if views is not None:
      v = views(xb, start)  # [views, block, ...]
      parts.append(v[1:] if skip_first else v)
    if noise is not None:
      parts.append(_shared_noise_views(noise, xb, start))
    v = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    return v.reshape((v.shape[0] * v.shape[1],) + v.shape[2:])

  return jax.jit(make)


@functools.lru_cache(maxsize=16)
def _affine_noise_fn(split, per_model: bool, noise: SharedNoise):
  """Labels ``int16[block, V]`` of the noise views through an affine first layer.

  ``f1(x + s eps) = f1(x) + s (f1(eps) - f1(0))``: the first layer maps each
  example once and each shared draw once, instead of every view; the rest
  of the model runs on every view. Equal to the full forward pass up to
  float reassociation in the first layer.
  """
  first, rest = split
  sig = jnp.asarray(noise.sigmas, jnp.float32)

  def one(variables, xb, start):
    b, g = xb.shape[0], noise.group
    q = b // g
    eps = noise.draws(start // g + jnp.arange(q), xb.shape[1:])  # [q, V, ...]
    v = eps.shape[1]
    hx = first(variables, xb)  # [b, width]
    h0 = first(variables, jnp.zeros((1,) + xb.shape[1:], xb.dtype))
    he = first(variables, eps.reshape((q * v,) + xb.shape[1:])) - h0
    w = hx.shape[-1]
    pre = hx.reshape(q, 1, g, w) + sig[None, :, None, None] * he.reshape(
      q, v, 1, w
    )
    pre = pre.transpose(1, 0, 2, 3).reshape(v * b, w)  # view-major
    labels = jnp.argmax(rest(variables, pre), -1).astype(jnp.int16)
    return labels.reshape(v, b).T

  return jax.jit(one if per_model else jax.vmap(one, in_axes=(0, None, None)))


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
  if spread.size == 1 or spread.devices.flat[0].platform != "cpu":
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
  views: Callable | None,
  num_views: int,
  num_classes: int,
  block: int = 256,
  identity_labels=None,
  shared_noise: SharedNoise | None = None,
  lowering=None,
) -> np.ndarray:
  """Predicted labels ``int16[models, examples, views]`` of ``views(x)``, then of ``shared_noise``'s views.

  Args:
    config: the :class:`miajax.TrainConfig` the models were trained with.
    variables: stacked on a leading ``[models]`` axis.
    x: ``float[examples, ...]``.
    views: a jit-able ``views(x_block, start) -> float[A, block, ...]``
      (``start``: the block's first example, a traced int32, for
      per-example keys), e.g. ``LabelOnlyQueries.views``; hashable (it keys
      the compiled program). None: no such views.
    num_views: how many views there are in all.
    block: examples per compiled call (the last block is padded; rounded up
      to whole noise groups).
    identity_labels: ``int[models, examples]`` labels of ``x`` itself, already
      computed; when given, view 0 must be ``x`` itself and is not recomputed.
    shared_noise: noise views appended after ``views``' (:class:`SharedNoise`).
      A model whose :class:`~miajax.engine.recipe.ModelFns` has an
      ``affine_split`` maps each shared draw through its first layer once.
    lowering: as in :func:`miajax.predict`.
  """
  x = np.asarray(x, np.float32)
  n = x.shape[0]
  num_models, identity_labels = _check(
    variables, n, block, views, shared_noise, identity_labels
  )
  skip = identity_labels is not None
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
  split = placements[0][0].affine_split if shared_noise is not None else None
  group = shared_noise.group if shared_noise is not None else 1
  bs = min(-(-block // group), -(-n // group)) * group
  blocks = _padded_blocks(x, bs)
  # The views are made once per block, for every model (under one-program-
  # per-model lowerings too), and stay on the device; with an affine first
  # layer the noise views are never made at all.
  generic_noise = shared_noise if split is None else None
  make_views = None
  if views is not None or generic_noise is not None:
    made = num_views - int(skip)
    if split is not None:
      made -= len(shared_noise.sigmas)
    make_views = (_views_fn(views, skip, generic_noise), made)
  noise = (split, shared_noise) if split is not None else None
  run = lambda p, i: _run_block(p, make_views, noise, i * bs, blocks[i])
  placement, first = _fastest(placements, lambda p: run(p, 0))
  out = [np.asarray(first)]
  out += [np.asarray(run(placement, i)) for i in range(1, len(blocks))]
  labels = np.concatenate(out, 1)[:num_models, :n]
  if skip:
    labels = np.concatenate(
      [identity_labels.astype(np.int16)[:, :, None], labels], 2
    )
  if labels.shape[2] != num_views:
    raise ValueError(
      f"views made {labels.shape[2]} views per example, num_views={num_views}"
    )
  return labels


def _check(variables, n, block, views, shared_noise, identity_labels):
  """``(models, identity_labels as an array or None)``; ValueError naming the bad argument."""
  leaves = jax.tree_util.tree_leaves(variables)
  if not leaves or n == 0:
    raise ValueError("need stacked variables and at least one example")
  num_models = leaves[0].shape[0]
  if isinstance(block, bool) or not isinstance(block, int) or block < 1:
    raise ValueError(f"block must be a positive integer, got {block!r}")
  if views is None and shared_noise is None:
    raise ValueError("no views: give views or shared_noise")
  if identity_labels is None:
    return num_models, None
  if views is None:
    raise ValueError("identity_labels stand for views' view 0: give views")
  identity_labels = np.asarray(identity_labels)
  if identity_labels.shape != (num_models, n):
    raise ValueError(
      f"identity_labels must be [models, examples] = {(num_models, n)}, "
      f"got {identity_labels.shape}"
    )
  return num_models, identity_labels


def _padded_blocks(x, bs: int) -> list:
  """``x`` in blocks of ``bs`` examples, the last padded with its last example: one compiled shape."""
  blocks = [x[s : s + bs] for s in range(0, x.shape[0], bs)]
  pad = bs - blocks[-1].shape[0]
  if pad:
    blocks[-1] = np.concatenate(
      [blocks[-1], np.repeat(blocks[-1][-1:], pad, 0)]
    )
  return blocks


def _run_block(placement, make_views, noise, s: int, xb):
  """``int16[models, block, views]`` of one block: made views, then affine-noise views."""
  fns, stacked, models, replicated = placement
  per_model = models is not None
  xb = jax.device_put(xb, replicated)
  start = jnp.int32(s)
  calls = []
  if make_views is not None:
    make, made = make_views
    flat = make(xb, start)
    fn = _labels_fn(fns, per_model, made)
    calls.append(lambda m: fn(m, flat))
  if noise is not None:
    noise_fn = _affine_noise_fn(noise[0], per_model, noise[1])
    calls.append(lambda m: noise_fn(m, xb, start))

  def one(m):
    got = [c(m) for c in calls]
    return jnp.concatenate(got, -1) if len(got) > 1 else got[0]

  if per_model:
    return jnp.stack(
      [jax.device_put(one(vm), jax.devices()[0]) for vm in models]
    )
  return one(stacked)
