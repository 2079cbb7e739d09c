"""LiRA: per-example Gaussian fits of IN and OUT shadow scores.

N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramèr, "Membership
Inference Attacks From First Principles", IEEE S&P 2022.

Cores (`lira_fit`, `lira_online_score`, `lira_offline_score`) are pure
`jax.numpy`, check shapes only and run under `jit` / `vmap`; the wrappers
(`lira_online`, `lira_offline`) check their inputs eagerly and score many
targets. Both use the `variant="miajax"` estimators: all IN and OUT scores,
mean and ddof=1 std floored at `1e-6 * (1 + |mean|)`, a one-sided offline
test on the OUT fit; `variant="reference"` (the released code's estimators)
is in `_reference`, and docs/lira.md explains each difference. Scores are
centred on model 0's before any sum so that a large common offset does not
eat float32 resolution.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from miajax.attacks._reference import _lira_reference, _run_reference
from miajax.attacks._checks import (
  _align_target,
  _as_float,
  _check_lira_counts,
  _check_shadow_target,
  _check_variant,
  _lira_scorable,
  _nan_for_too_few,
  _on_columns,
)

# Floor on a fitted std relative to the location's size: about 8 float32 ulps.
_STD_FLOOR = 1e-6
# Elements of one [chunk, examples, queries] temporary: bounds the memory of
# the per-target scoring to a few tens of MB whatever the number of targets.
_CHUNK_ELEMENTS = 1 << 21


def _moments(y_t, mask_t):
  """Count, mean, m2 and masked deviations of the masked models.

  Model-minor arrays because reductions over the last, contiguous axis are
  several times faster on CPU than over the first. y_t float[examples,
  queries, models] (centred), mask_t bool[examples, models].
  """
  w = mask_t[:, None, :]
  n = jnp.sum(mask_t, axis=-1).astype(y_t.dtype)
  mean = jnp.sum(jnp.where(w, y_t, 0), axis=-1) / jnp.maximum(n, 1)[:, None]
  dev = jnp.where(w, y_t - mean[..., None], 0)
  m2 = jnp.sum(jnp.square(dev), axis=-1)
  return n, mean, m2, dev


def _centred(scores):
  """Model 0's scores and the centred float[examples, queries, models]."""
  center = scores[0]
  return center, jnp.transpose(scores - center, (1, 2, 0))


def offline_log_odds(z):
  """One-sided offline LiRA score `log Phi(z) - log Phi(-z)` of standardised scores `z`.

  Carlini et al., "Membership Inference Attacks From First Principles"
  (S&P 2022), offline test: a monotone function of `log Phi(z)` that keeps
  float32 resolution in both tails (`log Phi(z)` rounds to -0.0 above z ~ 13).

  Args:
    z: float[...], `(score - mean_out) / std_out`.

  Returns:
    float[...], same shape; higher = member.
  """
  return log_ndtr(z) - log_ndtr(-z)


def _floored_std(var, mean):
  return jnp.maximum(
    jnp.sqrt(jnp.maximum(var, 0)), _STD_FLOOR * (1 + jnp.abs(mean))
  )


def _scale(n, mean, m2, center, fix_variance):
  """Floored std float[examples, queries]: per example (ddof=1) or pooled.

  fix_variance: a Python bool picks one branch; a traced bool (a core under
  the caller's jit) computes both and selects.
  """
  per_example = m2 / jnp.maximum(n - 1, 1)[:, None]
  dof = jnp.sum(jnp.maximum(n - 1, 0))
  pooled = jnp.sum(m2, axis=0, keepdims=True) / jnp.maximum(dof, 1)
  if isinstance(fix_variance, bool):
    var = pooled if fix_variance else per_example
  else:
    var = jnp.where(fix_variance, pooled, per_example)
  return _floored_std(var, center + mean)


def _online_llr(y, mean_in, std_in, mean_out, std_out):
  """Mean over queries of log N(y; IN) - log N(y; OUT): float[..., examples]."""
  z_out = (y - mean_out) / std_out
  z_in = (y - mean_in) / std_in
  llr = (
    0.5 * (jnp.square(z_out) - jnp.square(z_in))
    + jnp.log(std_out)
    - jnp.log(std_in)
  )
  return jnp.mean(llr, axis=-1)


def _offline_llr(y, mean_out, std_out):
  """Mean over queries of the OUT fit's CDF log-odds: float[..., examples]."""
  return jnp.mean(offline_log_odds((y - mean_out) / std_out), axis=-1)


class LiraFit(NamedTuple):
  """Per-example Gaussian fits of IN and OUT shadow scores (`lira_fit`).

  All score arrays are float[examples, queries]. Means are stored relative to
  `center` (model 0's shadow scores): scores that share a large offset (say
  300 +- 0.01) keep their float32 resolution. The IN Gaussian of example i,
  query q is N(center + mean_in, std_in^2), likewise OUT.

  Attributes:
    center: float[examples, queries], the reference the means are taken from.
    mean_in: float[examples, queries], IN mean minus `center`.
    std_in: float[examples, queries], floored IN std (ddof=1, or pooled).
    mean_out: float[examples, queries], OUT mean minus `center`.
    std_out: float[examples, queries], floored OUT std.
    n_in: int32[examples], IN shadow scores per example.
    n_out: int32[examples], OUT shadow scores per example.
  """

  center: jax.Array
  mean_in: jax.Array
  std_in: jax.Array
  mean_out: jax.Array
  std_out: jax.Array
  n_in: jax.Array
  n_out: jax.Array


@jax.jit
def lira_fit(shadow_scores, keep, *, fix_variance=False) -> LiraFit:
  """Fit LiRA's per-example IN and OUT Gaussians once for all targets.

  Carlini, Chien, Nasr, Song, Terzis, Tramèr, "Membership Inference Attacks
  From First Principles", IEEE S&P 2022 (the `variant="miajax"` estimators:
  mean, ddof=1 std floored at `1e-6 * (1 + |mean|)`, all shadow scores;
  docs/lira.md). Pure `jax.numpy`: jit-able (`fix_variance` may be
  traced) and vmap-able; no value checks.

  Args:
    shadow_scores: float[models, examples, queries], e.g. `logit_scaled`.
    keep: bool[models, examples], True where the shadow model trained on the
      example.
    fix_variance: False: per-example variances (needs >= 2 IN and >= 2 OUT
      scores per example). True: one pooled variance per query and group,
      the spread around each example's own mean, `sum_i m2_i / sum_i (n_i -
      1)`; better with few shadow models.

  Returns:
    A `LiraFit` of float[examples, queries] arrays (counts int32[examples]).
  """
  shadow = _as_float(shadow_scores)
  keep = jnp.asarray(keep)
  if shadow.ndim != 3:
    raise ValueError(
      "shadow_scores must be float[models, examples, queries], got shape "
      f"{shadow.shape}"
    )
  if keep.dtype != jnp.bool_ or keep.shape != shadow.shape[:2]:
    raise ValueError(
      f"keep must be bool[models, examples] = {shadow.shape[:2]}, got "
      f"{keep.dtype}{list(keep.shape)}"
    )
  center, y_t = _centred(shadow)
  fits = []
  for mask in (keep.T, ~keep.T):
    n, mean, m2, _ = _moments(y_t, mask)
    fits += [mean, _scale(n, mean, m2, center, fix_variance)]
  counts = jnp.sum(keep, axis=0, dtype=jnp.int32)
  return LiraFit(center, *fits, counts, keep.shape[0] - counts)


def _align(fit, target):
  return _align_target(target, fit.center.shape, "target_scores")


@jax.jit
def lira_online_score(fit: LiraFit, target_scores) -> jax.Array:
  """LiRA online score of one target model: the IN/OUT likelihood ratio.

  Carlini et al., "Membership Inference Attacks From First Principles"
  (S&P 2022), online attack: log N(x; IN fit) - log N(x; OUT fit), averaged
  over queries. Jit- and vmap-able; `jax.vmap(lira_online_score, in_axes=(None,
  0))(fit, targets)` scores float[targets, examples, queries].

  Args:
    fit: from `lira_fit`.
    target_scores: float[examples, queries] (or float[examples] with one
      query), the target model's scores in the fit's signal.

  Returns:
    float[examples], higher = member.
  """
  y = _align(fit, target_scores) - fit.center
  return _online_llr(y, fit.mean_in, fit.std_in, fit.mean_out, fit.std_out)


@jax.jit
def lira_offline_score(fit: LiraFit, target_scores) -> jax.Array:
  """LiRA offline score of one target model, against the OUT fit only.

  Carlini et al., "Membership Inference Attacks From First Principles"
  (S&P 2022), offline attack, one-sided: `offline_log_odds((x - mean_out) /
  std_out)` = log Phi(z) - log Phi(-z), averaged over queries (a monotone
  function of the paper's log Phi(z) without its float32 ties at 0). Only
  the OUT half of `fit` is used. Jit- and vmap-able like `lira_online_score`.

  Args:
    fit: from `lira_fit`.
    target_scores: float[examples, queries] (or float[examples]).

  Returns:
    float[examples], higher = member.
  """
  y = _align(fit, target_scores) - fit.center
  return _offline_llr(y, fit.mean_out, fit.std_out)


def _batch_size(targets: int, examples: int, queries: int) -> int:
  """Targets per vectorised chunk: bounded by _CHUNK_ELEMENTS, preferably a divisor
  of `targets` (a remainder chunk costs a second compiled body)."""
  bound = max(1, min(targets, _CHUNK_ELEMENTS // max(1, examples * queries)))
  divisor = max(d for d in range(1, bound + 1) if targets % d == 0)
  return divisor if 2 * divisor >= bound else bound


@functools.partial(
  jax.jit, static_argnames=("offline", "fix_variance", "batch_size")
)
def _lira_miajax(shadow, keep, target, *, offline, fix_variance, batch_size):
  fit = lira_fit(shadow, keep, fix_variance=fix_variance)
  score = lira_offline_score if offline else lira_online_score
  # Chunks of targets bound the [chunk, examples, queries] temporaries.
  return jax.lax.map(lambda x: score(fit, x), target, batch_size=batch_size)


def _lira(
  shadow_scores,
  shadow_keep,
  target_scores,
  *,
  offline,
  fix_variance,
  variant,
  name,
  too_few_shadows,
):
  _check_variant(variant)
  nan_mode = _nan_for_too_few(too_few_shadows)
  shadow, keep, target = _check_shadow_target(
    shadow_scores, shadow_keep, target_scores
  )
  n_in, n_out = keep.sum(0), (~keep).sum(0)
  ok = None
  if nan_mode:
    ok = _lira_scorable(
      n_in, n_out, offline=offline, fix_variance=bool(fix_variance)
    )
  else:
    _check_lira_counts(
      n_in,
      n_out,
      offline=offline,
      fix_variance=fix_variance,
      context=f"{name}(variant={variant!r}, fix_variance={fix_variance})",
    )

  def score(columns):
    s, k, t = (
      (shadow, keep, target)
      if columns is None
      else (shadow[:, columns], keep[:, columns], target[:, columns])
    )
    if variant == "reference":
      return _run_reference(
        _lira_reference,
        s,
        k,
        t,
        offline=offline,
        fix_variance=bool(fix_variance),
      )
    return _lira_miajax(
      jnp.asarray(s, dtype=float),
      jnp.asarray(k),
      jnp.asarray(t, dtype=float),
      offline=offline,
      fix_variance=bool(fix_variance),
      batch_size=_batch_size(*t.shape),
    )

  return _on_columns(ok, score, target.shape[0], variant == "reference")


def lira_online(
  shadow_scores,
  shadow_keep,
  target_scores,
  *,
  fix_variance=False,
  variant="miajax",
  too_few_shadows="raise",
):
  """LiRA online: Gaussian likelihood ratio of IN versus OUT shadow scores.

  Carlini, Chien, Nasr, Song, Terzis, Tramèr, "Membership Inference Attacks
  From First Principles", IEEE S&P 2022. Checks the inputs, then (variant
  "miajax") `lira_fit` once and `lira_online_score` for every target.

  Args:
    shadow_scores: float[models, examples, queries], e.g. `scores.logit_scaled`.
    shadow_keep: bool[models, examples], True where the shadow model trained on the example.
    target_scores: float[targets, examples, queries], the attacked models' scores.
    fix_variance: use one pooled variance per query (and per IN/OUT fit) for all
      examples instead of per-example variances; better with few shadow models.
    variant: "miajax" (sound version, docs/lira.md) or "reference"
      (tensorflow/privacy plot.py semantics, float64).
    too_few_shadows: an example with fewer than 2 IN or 2 OUT shadow scores
      (1 with fix_variance=True): "raise" (default) a ValueError, or "nan":
      score it NaN for every target and the others as if it were absent
      (the same numbers as this attack on only the scorable examples).

  Returns:
    float[targets, examples]: mean over queries of log N(x; IN fit) - log N(x; OUT fit);
    higher = member. float32 jax array ("miajax") or float64 numpy array ("reference").

  Raises:
    ValueError: bad shapes/dtypes, non-finite scores, or (too_few_shadows="raise")
      an example with too few shadow scores.
  """
  return _lira(
    shadow_scores,
    shadow_keep,
    target_scores,
    offline=False,
    fix_variance=fix_variance,
    variant=variant,
    name="lira_online",
    too_few_shadows=too_few_shadows,
  )


def lira_offline(
  shadow_scores,
  shadow_keep,
  target_scores,
  *,
  fix_variance=False,
  variant="miajax",
  too_few_shadows="raise",
):
  """LiRA offline: a test against the OUT shadow scores only.

  Carlini et al., IEEE S&P 2022 (see `lira_online`). Checks the inputs,
  then (variant "miajax") `lira_fit` once and `lira_offline_score` for
  every target.

  Args: as `lira_online` (`shadow_keep` only selects the OUT scores, and
    too_few_shadows counts only those).

  Returns:
    float[targets, examples], higher = member: for "miajax" the one-sided
    mean over queries of log Phi((x - mean_out) / std_out); for "reference" the
    negated mean over queries of the two-sided Gaussian log density of the OUT fit.

  Raises:
    ValueError: as `lira_online`, counting OUT shadow scores only.
  """
  return _lira(
    shadow_scores,
    shadow_keep,
    target_scores,
    offline=True,
    fix_variance=fix_variance,
    variant=variant,
    name="lira_offline",
    too_few_shadows=too_few_shadows,
  )
