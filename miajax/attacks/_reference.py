"""LiRA `variant="reference"`: tensorflow/privacy's `mi_lira_2021/plot.py`.

Reproduces the evaluation of the LiRA release (Carlini et al., IEEE S&P
2022): each example's IN (OUT) list truncated to the smallest count over
examples, median and population std (+1e-30), the pooled IN std as the
fixed variance of both fits, a two-sided offline test. Computed in float64
inside `jax.enable_x64(True)` (the global setting is left alone); a
reproduction path where exactness wins over speed. docs/lira.md compares it
with the default `variant="miajax"`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _reference_fit(x, mask):
  """The reference's truncated fit of one group (float64).

  x float[models, examples, queries], mask bool[models, examples] -> median
  and ddof=0 std float[examples, queries] of the first n masked models of
  each example in model order (n = smallest masked count over examples), and
  the ddof=0 std of all those selected scores pooled (a scalar).
  """
  n = jnp.min(jnp.sum(mask, axis=0))
  rank = jnp.cumsum(mask, axis=0) - 1
  sel = (mask & (rank < n))[..., None]
  ordered = jnp.sort(jnp.where(sel, x, jnp.inf), axis=0)
  median = 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
  nf = n.astype(x.dtype)
  mean = jnp.sum(jnp.where(sel, x, 0), axis=0) / nf
  std = jnp.sqrt(jnp.sum(jnp.where(sel, jnp.square(x - mean), 0), axis=0) / nf)
  total = nf * x.shape[1] * x.shape[2]
  pooled_mean = jnp.sum(jnp.where(sel, x, 0)) / total
  pooled_std = jnp.sqrt(
    jnp.sum(jnp.where(sel, jnp.square(x - pooled_mean), 0)) / total
  )
  return median, std, pooled_std


def _gauss_logpdf(x, loc, scale):
  return -0.5 * jnp.square((x - loc) / scale) - jnp.log(scale) - _HALF_LOG_2PI


def _reference_score(shadow, in_mask, out_mask, target, offline, fix_variance):
  """target float[..., examples, queries] -> float[..., examples]."""
  med_out, std_out, pooled_out = _reference_fit(shadow, out_mask)
  if offline:
    s_out = (pooled_out if fix_variance else std_out) + 1e-30
    return -jnp.mean(_gauss_logpdf(target, med_out, s_out), axis=-1)
  med_in, std_in, pooled_in = _reference_fit(shadow, in_mask)
  if fix_variance:
    # The released code uses the pooled IN std for both fits.
    s_in = s_out = pooled_in + 1e-30
  else:
    s_in, s_out = std_in + 1e-30, std_out + 1e-30
  llr = _gauss_logpdf(target, med_in, s_in) - _gauss_logpdf(
    target, med_out, s_out
  )
  return jnp.mean(llr, axis=-1)


@functools.partial(jax.jit, static_argnames=("offline", "fix_variance"))
def _lira_reference(shadow, keep, target, *, offline, fix_variance):
  return _reference_score(shadow, keep, ~keep, target, offline, fix_variance)


@functools.partial(jax.jit, static_argnames=("offline", "fix_variance"))
def _lira_reference_loo(scores, keep, *, offline, fix_variance):
  models = jnp.arange(scores.shape[0])

  def one_target(t):
    shadow = (models != t)[:, None]
    return _reference_score(
      scores, keep & shadow, ~keep & shadow, scores[t], offline, fix_variance
    )

  return jax.lax.map(one_target, models)


def _run_reference(fn, *arrays, **kwargs) -> np.ndarray:
  with jax.enable_x64(True):
    args = [
      jnp.asarray(np.asarray(a, np.float64) if a.dtype != np.bool_ else a)
      for a in arrays
    ]
    return np.asarray(fn(*args, **kwargs), dtype=np.float64)
