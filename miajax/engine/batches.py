"""What each model sees: its root key, its epoch's batches of its own members, their augmentation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "model_keys",
  "epoch_order",
  "augment",
  "steps_per_epoch",
  "dp_sampling",
]


def steps_per_epoch(keep: np.ndarray, batch_size: int) -> int:
  """Steps of every model per epoch: enough batches for the model with the most members."""
  return int(math.ceil(int(keep.sum(1).max()) / batch_size))


def dp_sampling(
  keep: np.ndarray, batch_size: int, epochs: int
) -> tuple[float, int]:
  """``(sample_rate, steps)`` for DP accounting of a run of ``keep``.

  ``steps = epochs * steps_per_epoch(keep, batch_size)``, the noisy steps
  every model takes; ``sample_rate = batch_size / fewest members``: the
  smallest training set has the largest rate, hence the largest epsilon.
  The engine draws shuffled fixed-size batches, which the accountant treats
  as Poisson sampling at that rate (see :mod:`miajax.defenses`).
  """
  return (
    batch_size / int(keep.sum(1).min()),
    int(epochs) * steps_per_epoch(keep, batch_size),
  )


def augment(x, key):
  """Random horizontal flip and reflect-pad-4 random crop of ``x: [batch, H, W, C]``."""
  b, h, w, _ = x.shape
  kf, kx, ky = jax.random.split(key, 3)
  flip = jax.random.bernoulli(kf, 0.5, (b,))
  x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  pad = 4
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  dx = jax.random.randint(kx, (b,), 0, 2 * pad + 1)
  dy = jax.random.randint(ky, (b,), 0, 2 * pad + 1)
  crop = lambda img, i, j: jax.lax.dynamic_slice(
    img, (i, j, 0), (h, w, img.shape[-1])
  )
  return jax.vmap(crop)(xp, dy, dx)


def model_keys(seed: int, model_indices):
  """``key[models]``: model ``m``'s root key ``fold_in(PRNGKey(seed), m)``."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
    jnp.asarray(model_indices, jnp.uint32)
  )


def epoch_order(keep, keys, epoch, steps: int, batch_size: int):
  """Batch indices ``int32[models, steps, batch]`` for one epoch.

  Each model's members come first in a fresh random order (from
  ``fold_in(fold_in(key, 1), epoch)``); a model with fewer members than
  ``steps * batch_size`` wraps around, so every model takes the same number
  of steps and sees each of its members at least once per epoch.
  """

  def one(keep_row, key):
    u = jax.random.uniform(
      jax.random.fold_in(jax.random.fold_in(key, 1), epoch), keep_row.shape
    )
    order = jnp.argsort(jnp.where(keep_row, u, 2.0))
    pos = jnp.arange(steps * batch_size) % keep_row.sum()
    return order[pos].reshape(steps, batch_size).astype(jnp.int32)

  return jax.vmap(one)(keep, keys)
