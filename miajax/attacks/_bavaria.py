"""BaVarIA: LiRA's per-example fits under conjugate normal-inverse-gamma priors.

R. Brännvall, "Exponential-Family Membership Inference: From LiRA and RMIA
to BaVarIA", arXiv:2603.11799 (2026). Per example, query and group (IN,
OUT), the shadow scores update an NIG(mu0, kappa0, alpha0, beta0) prior
whose mu0 and variance are those of the group's scores pooled over all
examples and shadow models (empirical Bayes). An example with no or one
score of a group is carried by the prior, so few shadow models never give
NaN. BaVarIA-t scores the log ratio of the two posterior-predictive
Student-t densities, BaVarIA-n a Gaussian log-likelihood ratio with the
posterior-mean variance. Offline, the IN group is its prior alone, built from
the IN scores pooled over all examples as the author's demo does
(github.com/rickardbrannvall/exponential-family-mia, methods.py).

`bavaria_fit` and `bavaria_score` are pure `jax.numpy` cores (jit- and
vmap-able, shape checks only); `bavaria` checks its inputs and scores many
targets.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import t as student_t

from miajax.attacks._checks import (
  _align_target,
  _as_float,
  _check_shadow_target,
)
from miajax.attacks._lira import _STD_FLOOR, _moments

KINDS = ("t", "n")
# The paper's alpha0 per kind: 2 gives BaVarIA-t's prior predictive a
# finite variance; 1 makes BaVarIA-n's prior variance the pooled one.
ALPHA0 = {"t": 2.0, "n": 1.0}
BAVARIA_ATTACKS = (
  "bavaria_t",
  "bavaria_n",
  "bavaria_t_offline",
  "bavaria_n_offline",
)
# Elements of the per-target [chunk, examples, queries, models] temporaries.
_CHUNK_ELEMENTS = 1 << 22


class BavariaFit(NamedTuple):
  """NIG posteriors of the IN and OUT shadow scores (`bavaria_fit`).

  Attributes (IN shown; `*_out` alike):
    loc_in: float[examples, queries], the mean of the example's IN scores
      (the prior's mu0 where it has none): BaVarIA-n's location.
    mu_in: float[examples, queries], the posterior mean mu_n: BaVarIA-t's
      location.
    kappa_in: float[examples], kappa_n = kappa0 + n.
    alpha_in: float[examples], alpha_n = alpha0 + n / 2.
    beta_in: float[examples, queries], beta_n.
    n_in: int32[examples], IN scores in the posterior (0 offline, where the
      IN group is the prior).
  """

  loc_in: jax.Array
  mu_in: jax.Array
  kappa_in: jax.Array
  alpha_in: jax.Array
  beta_in: jax.Array
  loc_out: jax.Array
  mu_out: jax.Array
  kappa_out: jax.Array
  alpha_out: jax.Array
  beta_out: jax.Array
  n_in: jax.Array
  n_out: jax.Array


def _prior(n, mean, m2, alpha0):
  """mu0 and beta0 float[queries] of a group's scores pooled over examples.

  n float[examples], mean and m2 float[examples, queries] per example. The
  pooled variance v (ddof 0) is floored like LiRA's std so that constant
  scores stay finite; beta0 = v (alpha0 - 1), or v when alpha0 <= 1.
  """
  total = jnp.maximum(jnp.sum(n), 1)
  mu0 = jnp.sum(n[:, None] * mean, axis=0) / total
  between = n[:, None] * jnp.square(mean - mu0)
  v = (jnp.sum(m2, axis=0) + jnp.sum(between, axis=0)) / total
  v = jnp.maximum(v, jnp.square(_STD_FLOOR * (1 + jnp.abs(mu0))))
  return mu0, jnp.where(alpha0 > 1, v * (alpha0 - 1), v)


def _group(y_t, mask_t, alpha0, kappa0, prior_only=False):
  """One group's posterior: (loc, mu, kappa, alpha, beta, n).

  y_t float[examples, queries, models], mask_t bool[examples, models].
  prior_only (may be traced): every example gets the prior itself.
  """
  n, mean, m2, _ = _moments(y_t, mask_t)
  mu0, beta0 = _prior(n, mean, m2, alpha0)
  n = jnp.where(prior_only, 0, n)
  nq = n[:, None]
  kappa = kappa0 + n
  loc = jnp.where(nq > 0, mean, mu0)
  mu = (kappa0 * mu0 + nq * mean) / kappa[:, None]
  shift = kappa0 * nq * jnp.square(mean - mu0) / (2 * kappa[:, None])
  beta = beta0 + 0.5 * jnp.where(nq > 0, m2, 0) + shift
  return loc, mu, kappa, alpha0 + n / 2, beta, n.astype(jnp.int32)


def _fit_masks(y_t, in_t, out_t, alpha0, kappa0, offline) -> BavariaFit:
  loc_i, mu_i, k_i, a_i, b_i, n_i = _group(y_t, in_t, alpha0, kappa0, offline)
  loc_o, mu_o, k_o, a_o, b_o, n_o = _group(y_t, out_t, alpha0, kappa0)
  return BavariaFit(
    loc_i, mu_i, k_i, a_i, b_i, loc_o, mu_o, k_o, a_o, b_o, n_i, n_o
  )


def _as_3d(shadow_scores):
  shadow = _as_float(shadow_scores)
  if shadow.ndim == 2:
    shadow = shadow[..., None]
  if shadow.ndim != 3:
    raise ValueError(
      "shadow_scores must be float[references, examples, queries] (or "
      f"float[references, examples]), got shape {shadow.shape}"
    )
  return shadow


@jax.jit
def bavaria_fit(
  shadow_scores, keep, *, alpha0=2.0, kappa0=1.0, offline=False
) -> BavariaFit:
  """Fit BaVarIA's per-example IN and OUT NIG posteriors once for all targets.

  Brännvall, "Exponential-Family Membership Inference: From LiRA and RMIA
  to BaVarIA", arXiv:2603.11799 (2026). Per query and group the prior is
  NIG(mu0, kappa0, alpha0, beta0): mu0 the mean and v the variance (ddof 0)
  of the group's scores pooled over all examples and references, beta0 =
  v (alpha0 - 1) (v when alpha0 <= 1). With n scores of mean xbar and sum of
  squared deviations SS: kappa_n = kappa0 + n, mu_n = (kappa0 mu0 + n xbar)
  / kappa_n, alpha_n = alpha0 + n / 2, beta_n = beta0 + SS / 2 + kappa0 n
  (xbar - mu0)^2 / (2 kappa_n). Pure `jax.numpy`: jit- and vmap-able
  (`alpha0`, `kappa0` and `offline` may be traced); no value checks.

  Args:
    shadow_scores: float[references, examples, queries] (or
      float[references, examples]), e.g. `logit_scaled`.
    keep: bool[references, examples], True where the reference trained on
      the example.
    alpha0: the prior's shape; 2 is BaVarIA-t's default, 1 BaVarIA-n's
      (`ALPHA0`).
    kappa0: the prior's pseudo-count on mu0 (the paper's 1).
    offline: the IN group is its prior alone (mu0 and v still from the IN
      scores pooled over all examples, as in the author's demo); each
      example's own IN scores are not used.

  Returns:
    A `BavariaFit`.
  """
  shadow = _as_3d(shadow_scores)
  keep = jnp.asarray(keep)
  if keep.dtype != jnp.bool_ or keep.shape != shadow.shape[:2]:
    raise ValueError(
      f"keep must be bool[references, examples] = {shadow.shape[:2]}, got "
      f"{keep.dtype}{list(keep.shape)}"
    )
  y_t = jnp.transpose(shadow, (1, 2, 0))
  return _fit_masks(y_t, keep.T, ~keep.T, alpha0, kappa0, offline)


def _variance(alpha, beta):
  """Posterior-mean variance beta / (alpha - 1), or beta when alpha <= 1."""
  a = alpha[:, None]
  return jnp.where(a > 1, beta / jnp.where(a > 1, a - 1, 1), beta)


def _log_normal(y, loc, var):
  return -0.5 * (jnp.square(y - loc) / var + jnp.log(2 * jnp.pi * var))


def _log_student(y, mu, kappa, alpha, beta):
  k, a = kappa[:, None], alpha[:, None]
  scale = jnp.sqrt(beta * (k + 1) / (a * k))
  return student_t.logpdf(y, 2 * a, loc=mu, scale=scale)


def _llr(fit: BavariaFit, y, kind):
  """float[examples, queries]: log p(y | IN) - log p(y | OUT)."""
  if kind == "n":
    var_in = _variance(fit.alpha_in, fit.beta_in)
    var_out = _variance(fit.alpha_out, fit.beta_out)
    return _log_normal(y, fit.loc_in, var_in) - _log_normal(
      y, fit.loc_out, var_out
    )
  log_in = _log_student(y, fit.mu_in, fit.kappa_in, fit.alpha_in, fit.beta_in)
  log_out = _log_student(
    y, fit.mu_out, fit.kappa_out, fit.alpha_out, fit.beta_out
  )
  return log_in - log_out


def _check_kind(kind):
  if not isinstance(kind, str) or kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return kind


def _align(fit, target):
  return _align_target(target, fit.beta_out.shape, "target_scores")


@functools.partial(jax.jit, static_argnames=("kind",))
def bavaria_score(fit: BavariaFit, target_scores, *, kind="t") -> jax.Array:
  """BaVarIA score of one target model: the IN/OUT log-likelihood ratio.

  Brännvall, arXiv:2603.11799 (2026). kind "t" (BaVarIA-t): log ratio of
  the posterior-predictive Student-t densities, 2 alpha_n degrees of
  freedom, location mu_n, scale sqrt(beta_n (kappa_n + 1) / (alpha_n
  kappa_n)). kind "n" (BaVarIA-n): Gaussian log-likelihood ratio with
  location `loc` (the example's mean, mu0 without scores) and variance
  beta_n / (alpha_n - 1) (beta_n when alpha_n <= 1). Averaged over queries
  as LiRA does. Jit- and vmap-able: bind `kind` with `functools.partial`
  before `jax.vmap(..., in_axes=(None, 0))`.

  Args:
    fit: from `bavaria_fit` (fit with the kind's `alpha0`).
    target_scores: float[examples, queries] (or float[examples] with one
      query), the target model's scores in the fit's signal.
    kind: "t" or "n".

  Returns:
    float[examples], higher = member.
  """
  kind = _check_kind(kind)
  y = _align(fit, target_scores)
  return jnp.mean(_llr(fit, y, kind), axis=-1)


def _check_prior(kind, alpha0, kappa0):
  alpha0 = ALPHA0[kind] if alpha0 is None else alpha0
  for name, value in (("alpha0", alpha0), ("kappa0", kappa0)):
    if isinstance(value, bool) or not (
      isinstance(value, (int, float)) and np.isfinite(value) and value > 0
    ):
      raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
  return float(alpha0), float(kappa0)


def _check_pooled(n_in, n_out, context, keep_name):
  """Both priors need scores pooled over examples: at least 2 per group."""
  for count, what in ((n_in, "IN"), (n_out, "OUT")):
    if count < 2:
      raise ValueError(
        f"{context} needs at least 2 {what} scores pooled over all examples "
        f"for its {what} prior (its mean and variance); {keep_name} has "
        f"{int(count)}. Offline too: the IN prior comes from the IN scores "
        "of other examples."
      )


def _batch_size(targets, elements):
  return max(1, min(targets, _CHUNK_ELEMENTS // max(1, elements)))


@functools.partial(jax.jit, static_argnames=("kind", "offline", "batch_size"))
def _bavaria_targets(
  shadow, keep, target, alpha0, kappa0, *, kind, offline, batch_size
):
  fit = bavaria_fit(shadow, keep, alpha0=alpha0, kappa0=kappa0, offline=offline)
  score = functools.partial(bavaria_score, kind=kind)
  return jax.lax.map(lambda x: score(fit, x), target, batch_size=batch_size)


def bavaria(
  shadow_scores,
  shadow_keep,
  target_scores,
  *,
  kind="t",
  offline=False,
  alpha0=None,
  kappa0=1.0,
):
  """BaVarIA: LiRA's IN/OUT likelihood ratio under NIG priors; checks, then the cores.

  Brännvall, "Exponential-Family Membership Inference: From LiRA and RMIA
  to BaVarIA", arXiv:2603.11799 (2026). `bavaria_fit` once, then
  `bavaria_score` for every target. Any number of IN or OUT scores per
  example works (0 and 1 included: the prior carries the example).

  Args:
    shadow_scores: float[references, examples, queries], e.g. `logit_scaled`.
    shadow_keep: bool[references, examples], True where the reference trained
      on the example.
    target_scores: float[targets, examples, queries].
    kind: "t" (BaVarIA-t, Student-t predictive) or "n" (BaVarIA-n, Gaussian
      with the posterior-mean variance).
    offline: ignore each example's IN scores; its IN group is the prior built
      from the IN scores pooled over all examples (the author's demo).
    alpha0: the prior's shape; None: 2 for "t", 1 for "n" (the paper's).
    kappa0: the prior's pseudo-count on its mean (the paper's 1).

  Returns:
    float[targets, examples], mean over queries of log p(x | IN) - log
    p(x | OUT); higher = member. float32 jax array.

  Raises:
    ValueError: bad shapes/dtypes, non-finite scores, bad kind/alpha0/kappa0,
      or fewer than 2 IN or 2 OUT scores in all of `shadow_keep` (no prior).
  """
  kind = _check_kind(kind)
  alpha0, kappa0 = _check_prior(kind, alpha0, kappa0)
  shadow, keep, target = _check_shadow_target(
    shadow_scores, shadow_keep, target_scores
  )
  _check_pooled(
    keep.sum(),
    (~keep).sum(),
    f"bavaria(kind={kind!r}, offline={bool(offline)})",
    "shadow_keep",
  )
  return _bavaria_targets(
    jnp.asarray(shadow, dtype=float),
    jnp.asarray(keep),
    jnp.asarray(target, dtype=float),
    alpha0,
    kappa0,
    kind=kind,
    offline=bool(offline),
    batch_size=_batch_size(target.shape[0], target[0].size),
  )


# ------------------------------------------------------------ leave-one-out


def _other_group_partner(keep, partners):
  """int32[models, examples]: for target t and example i, the model that a
  balanced leave-one-out also drops where it lies in t's other group, else
  -1. partners: None (not balanced) or `keep -> int[models, examples]`
  (`leave_one_out_partners`)."""
  if partners is None:
    return jnp.full(keep.shape, -1, jnp.int32)
  partner = np.asarray(partners(keep))
  valid = keep[partner, np.arange(keep.shape[1])] != keep
  return jnp.asarray(np.where(valid, partner, -1), jnp.int32)


def _loo_use(models, t, partner):
  """bool[examples, models]: the shadows of target t (t and its partner out)."""
  model = jnp.arange(models)
  return (model[None, :] != t) & (model[None, :] != partner[:, None])


@functools.partial(jax.jit, static_argnames=("kind", "offline", "batch_size"))
def _bavaria_loo_core(
  scores, keep, partner, alpha0, kappa0, *, kind, offline, batch_size
):
  models = scores.shape[0]
  y_t = jnp.transpose(scores, (1, 2, 0))

  def one_target(args):
    t, p = args
    use = _loo_use(models, t, p)
    fit = _fit_masks(y_t, keep.T & use, ~keep.T & use, alpha0, kappa0, offline)
    return jnp.mean(_llr(fit, scores[t], kind), axis=-1)

  targets = jnp.arange(models)
  return jax.lax.map(one_target, (targets, partner), batch_size=batch_size)


def bavaria_leave_one_out(x, keep, *, attack, alpha0, partners):
  """`leave_one_out` for the BaVarIA attacks on checked x float[models,
  examples, queries] and keep bool[models, examples]. partners (balanced,
  see `_other_group_partner`): at each example the target's other group also
  loses one model, as LiRA's does."""
  kind = "n" if attack.startswith("bavaria_n") else "t"
  offline = attack.endswith("_offline")
  alpha0, kappa0 = _check_prior(kind, alpha0, 1.0)
  partner = _other_group_partner(keep, partners)
  # The fewest pooled IN / OUT scores any target's shadows keep.
  p = np.asarray(partner)
  dropped = (p >= 0) & ~keep  # a partner is dropped from the IN group
  n_in = keep.sum() - (keep.sum(1) + dropped.sum(1))
  n_out = (~keep).sum() - ((~keep).sum(1) + ((p >= 0) & keep).sum(1))
  _check_pooled(
    n_in.min(),
    n_out.min(),
    f"leave_one_out({attack!r}) once a target (and its partner) is removed,",
    "keep",
  )
  return _bavaria_loo_core(
    jnp.asarray(x, dtype=float),
    jnp.asarray(keep),
    partner,
    alpha0,
    kappa0,
    kind=kind,
    offline=offline,
    batch_size=_batch_size(x.shape[0], x.size),
  )
