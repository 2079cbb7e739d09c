"""RMIA on true-label probabilities.

S. Zarifzadeh, P. Liu, P. Cheng, R. Shokri, "Low-Cost High-Power Membership
Inference Attacks", ICML 2024. With ratio(x) = p(x|target) / Pr(x), Pr(x)
the reference models' mean probability (offline: `((1 + a) * mean_OUT +
(1 - a)) / 2`), the score is the fraction of population samples z with
ratio(x) / ratio(z) > gamma, found by sorting ratio(z) once and binary
search: O((N + Z) log Z) time and O(N + Z) memory per target. Without a
population the examples themselves stand in for it.

`rmia_fit` and `rmia_score` are jit- and vmap-able cores; `rmia` checks its
inputs eagerly and scores many targets.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from miajax.attacks._checks import (
  _as_float,
  _as_prob,
  _check_counts,
  _check_rmia_params,
  _check_shadow_target,
  _nan_for_too_few,
  _on_columns,
)

# p_y and probabilities below it are treated as this value in RMIA's Pr(x).
_TINY = float(np.finfo(np.float32).tiny)


def _pr_offline(mean_out, a):
  return 0.5 * ((1 + a) * mean_out + (1 - a))


def _rank_1d(ratio_x, ratio_z, gamma):
  """Fraction of z with ratio(x) / ratio(z) > gamma, i.e. ratio(z) < ratio(x) / gamma.

  ratio_x float[examples], ratio_z float[population] -> float[examples].
  """
  # Ratios are >= 0 and never nan; there (abs turns -0.0 into +0.0) the IEEE bit
  # patterns read as signed integers keep the order, and XLA's CPU sort is
  # several times faster on integers than on floats.
  key = jnp.dtype(f"int{8 * ratio_z.dtype.itemsize}")
  ordered = jax.lax.sort(jax.lax.bitcast_convert_type(jnp.abs(ratio_z), key))
  queries = jax.lax.bitcast_convert_type(
    jnp.abs(ratio_x / gamma).astype(ratio_z.dtype), key
  )
  below = jnp.searchsorted(ordered, queries, side="left")
  return below.astype(ratio_x.dtype) / ratio_z.shape[-1]


# [targets, examples] and [targets, population] -> [targets, examples].
_rank_against_population = jax.vmap(_rank_1d, in_axes=(0, 0, None))


class RmiaFit(NamedTuple):
  """RMIA's reference-model averages (`rmia_fit`).

  Attributes:
    pr_x: float[examples], Pr(x): the reference models' mean probability
      (online) or `((1 + a) * mean_OUT + (1 - a)) / 2` (offline).
    pr_z: float[population], Pr(z) of the population samples, or None when
      the examples themselves serve as the population.
  """

  pr_x: jax.Array
  pr_z: jax.Array | None


def _check_probs_3d(x, name, models=None):
  x = _as_float(x)
  if x.ndim != 3 or (models is not None and x.shape[0] != models):
    want = "models" if models is None else str(models)
    raise ValueError(
      f"{name} must be float[{want}, examples, queries], got shape {x.shape}"
    )
  return x


@jax.jit
def rmia_fit(
  ref_probs, keep=None, population_probs=None, *, a=0.3, offline=False
) -> RmiaFit:
  """Fit RMIA's Pr(x) (and Pr(z)) once from the reference models.

  Zarifzadeh, Liu, Cheng, Shokri, "Low-Cost High-Power Membership Inference
  Attacks", ICML 2024. Probabilities are averaged over queries first. Pure
  `jax.numpy`: jit- and vmap-able (`a` and `offline` may be traced); no
  value checks.

  Args:
    ref_probs: float[models, examples, queries], the reference models'
      true-label probabilities p_y (e.g. `scores.confidence`).
    keep: bool[models, examples], True where a reference model trained on the
      example; needed offline (may be None otherwise).
    population_probs: None (the examples stand in for the population) or
      float[models, population, queries], the same reference models'
      probabilities on samples none of them trained on. Pr(z) is their mean
      over all models (offline: with the same `a` correction).
    a: offline correction, Pr(x) = ((1 + a) * mean_OUT + (1 - a)) / 2.
    offline: use only the OUT reference models for Pr(x).

  Returns:
    An `RmiaFit`.
  """
  p = jnp.mean(_check_probs_3d(ref_probs, "ref_probs"), axis=-1)
  pr_all = jnp.mean(p, axis=0)
  if keep is None:
    if not (isinstance(offline, bool) and not offline):
      raise ValueError(
        "rmia_fit needs keep unless offline is the Python value False "
        "(offline=True, or offline traced by jit)"
      )
    pr_x = pr_all
  else:
    keep = jnp.asarray(keep)
    if keep.dtype != jnp.bool_ or keep.shape != p.shape:
      raise ValueError(
        f"keep must be bool[models, examples] = {p.shape}, got "
        f"{keep.dtype}{list(keep.shape)}"
      )
    out = ~keep
    # max(., 1): an example without OUT models is only valid online.
    mean_out = jnp.sum(jnp.where(out, p, 0), axis=0) / jnp.maximum(
      jnp.sum(out, axis=0), 1
    )
    pr_x = jnp.where(offline, _pr_offline(mean_out, a), pr_all)
  pr_z = None
  if population_probs is not None:
    pz = _check_probs_3d(population_probs, "population_probs", p.shape[0])
    pr_z = jnp.mean(jnp.mean(pz, axis=-1), axis=0)
    pr_z = jnp.where(offline, _pr_offline(pr_z, a), pr_z)
  return RmiaFit(pr_x, pr_z)


def _mean_target_probs(x, size, name, what):
  x = _as_float(x)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2 or x.shape[0] != size:
    raise ValueError(
      f"{name} must be float[{size}, queries] [{what}, queries] (one target; "
      f"jax.vmap for several), got shape {x.shape}"
    )
  return jnp.mean(x, axis=-1)


@jax.jit
def rmia_score(
  fit: RmiaFit, target_probs, target_population_probs=None, *, gamma=2.0
) -> jax.Array:
  """RMIA score of one target: the fraction of population samples it dominates.

  Zarifzadeh, Liu, Cheng, Shokri, "Low-Cost High-Power Membership Inference
  Attacks", ICML 2024: with ratio(x) = p(x|theta) / Pr(x), the fraction of
  population samples z with ratio(x) / ratio(z) > gamma; computed by sorting
  ratio(z) once and binary-searching ratio(x) / gamma (O((N + Z) log Z)).
  Jit- and vmap-able: `jax.vmap(rmia_score, in_axes=(None, 0, 0))(fit,
  targets, target_populations)` scores many targets (vmap maps keyword
  arguments, so bind `gamma` with `functools.partial` there).

  Args:
    fit: from `rmia_fit`.
    target_probs: float[examples, queries] (or float[examples]), the target
      model's true-label probabilities; averaged over queries.
    target_population_probs: float[population, queries], the target's
      probabilities on the population samples; None exactly when the fit has
      no population (the examples' own ratios are the population then).
    gamma: a sample z counts when ratio(x) / ratio(z) > gamma.

  Returns:
    float[examples] in [0, 1], higher = member.
  """
  p_x = _mean_target_probs(
    target_probs, fit.pr_x.shape[0], "target_probs", "examples"
  )
  ratio_x = p_x / jnp.maximum(fit.pr_x, _TINY)
  if (fit.pr_z is None) != (target_population_probs is None):
    raise ValueError(
      "target_population_probs must be given exactly when rmia_fit got "
      "population_probs"
    )
  if fit.pr_z is None:
    ratio_z = ratio_x
  else:
    p_z = _mean_target_probs(
      target_population_probs,
      fit.pr_z.shape[0],
      "target_population_probs",
      "population",
    )
    ratio_z = p_z / jnp.maximum(fit.pr_z, _TINY)
  return _rank_1d(ratio_x, ratio_z, gamma)


@jax.jit
def _rmia_targets(fit, p_target, pz_target, gamma):
  axes = (None, 0, None if pz_target is None else 0)
  score = functools.partial(rmia_score, gamma=gamma)
  return jax.vmap(score, in_axes=axes)(fit, p_target, pz_target)


def rmia(
  shadow_conf,
  shadow_keep,
  target_conf,
  *,
  a=0.3,
  gamma=2.0,
  population_conf=None,
  offline=False,
  too_few_shadows="raise",
):
  """RMIA on true-label probabilities: checks, then `rmia_fit`, `rmia_score`.

  Zarifzadeh, Liu, Cheng, Shokri, "Low-Cost High-Power Membership Inference
  Attacks", ICML 2024.

  Args:
    shadow_conf: float[models, examples, queries], reference models' p_y in [0, 1]
      (e.g. `scores.confidence`); averaged over queries.
    shadow_keep: bool[models, examples]; used offline (OUT models only).
    target_conf: float[targets, examples, queries], the attacked models' p_y.
    a: offline approximation Pr(x) = ((1 + a) * mean_OUT + (1 - a)) / 2.
    gamma: a population sample z counts when ratio(x) / ratio(z) > gamma.
    population_conf: None (the examples themselves are the population) or a pair
      (float[models, population, queries] of the reference models,
      float[targets, population, queries] of the targets) on samples that no
      model trained on; their Pr(z) is the mean over all reference models
      (with the same offline approximation when offline=True).
    offline: use only OUT reference models for Pr(x).
    too_few_shadows: offline, an example without OUT reference models:
      "raise" (default) a ValueError, or "nan": score it NaN and the others
      as if it were absent (nor in the population the examples make).

  Returns:
    float[targets, examples] in [0, 1]: fraction of population samples the
    example dominates; higher = member. float32 jax array.

  Raises:
    ValueError: bad shapes/dtypes, probabilities outside [0, 1], non-finite values,
      or (offline, too_few_shadows="raise") an example without OUT reference
      models.
  """
  _check_rmia_params(a, gamma)
  nan_mode = _nan_for_too_few(too_few_shadows)
  shadow, keep, target = _check_shadow_target(
    shadow_conf,
    shadow_keep,
    target_conf,
    names=("shadow_conf", "shadow_keep", "target_conf"),
  )
  shadow = _as_prob(shadow, "shadow_conf")
  target = _as_prob(target, "target_conf")
  ok = None
  if offline and nan_mode:
    ok = (~keep).sum(0) >= 1
  elif offline:
    _check_counts(
      (~keep).sum(0),
      1,
      "OUT",
      "rmia(offline=True)",
      "Train more reference models or use offline=False.",
    )
  pz_shadow = pz_target = None
  if population_conf is not None:
    if (
      not isinstance(population_conf, (tuple, list))
      or len(population_conf) != 2
    ):
      raise ValueError(
        "population_conf must be a pair (reference probabilities "
        "[models, population, queries], target probabilities "
        "[targets, population, queries])"
      )
    zs = _as_prob(population_conf[0], "population_conf[0]")
    zt = _as_prob(population_conf[1], "population_conf[1]")
    if (
      zs.shape[0] != shadow.shape[0]
      or zs.shape[2] != shadow.shape[2]
      or zs.shape[1] < 1
    ):
      raise ValueError(
        f"population_conf[0] must have shape [{shadow.shape[0]}, population, "
        f"{shadow.shape[2]}], got {zs.shape}"
      )
    if zt.shape != (target.shape[0],) + zs.shape[1:]:
      raise ValueError(
        f"population_conf[1] must have shape "
        f"{(target.shape[0],) + zs.shape[1:]}, got {zt.shape}"
      )
    pz_shadow = jnp.asarray(zs, dtype=float)
    pz_target = jnp.asarray(zt, dtype=float)

  def score(columns):
    s, k, t = (
      (shadow, keep, target)
      if columns is None
      else (shadow[:, columns], keep[:, columns], target[:, columns])
    )
    fit = rmia_fit(
      jnp.asarray(s, dtype=float),
      jnp.asarray(k),
      pz_shadow,
      a=float(a),
      offline=bool(offline),
    )
    return _rmia_targets(
      fit, jnp.asarray(t, dtype=float), pz_target, float(gamma)
    )

  return _on_columns(ok, score, target.shape[0])
