"""Input-space canaries for DP audits (mislabeled examples, out-of-distribution noise) and a fixed-initialisation model."""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = [
  "CANARY_KINDS",
  "mislabeled_canaries",
  "noise_canaries",
  "fixed_init_mlp",
]

CANARY_KINDS = ("mislabeled", "noise")


def mislabeled_canaries(x, y, k: int, *, num_classes: int, seed: int = 0):
  """``k`` examples of ``(x, y)`` (e.g. held-out data) with a wrong label.

  Args:
    x: ``float[examples, ...]``; y: ``int[examples]``; k: canaries.
    num_classes: classes; each canary's label is shifted by a random
      ``1..num_classes-1``.

  Returns:
    ``(x_canary float32[k, ...], y_canary int32[k])``.
  """
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(y), size=k, replace=False)
  shift = rng.integers(1, num_classes, size=k)
  y_c = (np.asarray(y)[idx] + shift) % num_classes
  return np.asarray(x)[idx].astype(np.float32), y_c.astype(np.int32)


def noise_canaries(
  shape, k: int, *, label: int = 0, low=0.0, high=1.0, seed: int = 0
):
  """``k`` out-of-distribution inputs: uniform noise in ``[low, high)``, one label.

  Returns:
    ``(x_canary float32[k, *shape], y_canary int32[k])``.
  """
  rng = np.random.default_rng(seed)
  x_c = rng.uniform(low, high, size=(k, *tuple(shape))).astype(np.float32)
  return x_c, np.full((k,), label, np.int32)


def fixed_init_mlp(hidden: int, num_classes: int, *, seed: int = 0):
  """An ``(init, apply)`` MLP whose initial parameters ignore the model key.

  DP holds for any fixed initialisation; one initialisation for every model
  removes its variance from the canary scores, which tightens the audit
  (Nasr et al. 2023). ``hidden=0`` is softmax regression; else one ReLU
  layer of ``hidden`` units (LeCun-normal weights from ``seed``, zero biases).
  The same ``(hidden, num_classes, seed)`` returns the same functions, so
  compiled programs are reused.
  """
  return _fixed_init_mlp(int(hidden), int(num_classes), int(seed))


@functools.lru_cache(maxsize=None)
def _fixed_init_mlp(hidden: int, num_classes: int, seed: int):
  import jax
  import jax.numpy as jnp

  widths = ([hidden] if hidden else []) + [num_classes]

  def init(key, x):
    del key  # the point: every model starts from the same parameters
    d = int(np.prod(x.shape[1:]))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(widths))
    params = {}
    for i, (k, w) in enumerate(zip(keys, widths)):
      params[f"w{i}"] = jax.random.normal(k, (d, w), jnp.float32) / math.sqrt(d)
      params[f"b{i}"] = jnp.zeros((w,), jnp.float32)
      d = w
    return {"params": params}

  def apply(variables, x, *, train=False, rngs=None):
    del train, rngs
    p = variables["params"]
    h = x.reshape(x.shape[0], -1)
    for i in range(len(widths)):
      h = h @ p[f"w{i}"] + p[f"b{i}"]
      if i < len(widths) - 1:
        h = jax.nn.relu(h)
    return h

  return init, apply
