"""Gaussian-DP audit statistics (Nasr et al., USENIX Security 2023): a mu lower bound from canary scores, its epsilon, and what N trials can certify.

If a mechanism is mu-GDP (Dong, Roth and Su 2019), every test of "in" against
"out" has ``FNR >= Phi(Phi^-1(1 - FPR) - mu)``, i.e.
``mu >= Phi^-1(1 - FPR) - Phi^-1(FNR)``. Upper confidence bounds on FPR and
FNR at a threshold therefore give a lower bound on mu, which the GDP
conversion (Dong et al., Corollary 2.13) turns into epsilon at delta. This is
the estimator of Nasr et al. 2023, as jax-privacy 2.0 implements it in
``CanaryScoreAuditor.epsilon_from_gdp``, with one difference: jax-privacy
takes ``abs`` of the mu of each threshold, arguing that a negative value is a
bound for the reversed test. It is not: reversing the test needs *lower*
bounds on FPR and FNR, and the upper bounds make a weak threshold's mu
strongly negative, so jax-privacy reports epsilons far above the truth on
weak canaries (4.8 for a Gaussian mechanism of epsilon 1, 512 trials a side;
``tests/test_dp_audit_gdp.py``). Here only positive mu counts; where
jax-privacy's maximum is attained at a positive mu the two agree to 1e-9.

The GDP bound assumes the audited statistic has a Gaussian trade-off curve
(true for a Dirac gradient canary under full-batch DP-SGD: the statistic is
a sum of Gaussians); the Clopper-Pearson bound
(:func:`~miajax.dp_audit.epsilon_lower_bound_canaries`) assumes nothing.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

__all__ = [
  "gdp_epsilon",
  "gdp_mu",
  "epsilon_lower_bound_gdp",
  "gaussian_audit_cap",
]


def gdp_epsilon(mu: float, delta: float) -> float:
  """The epsilon of a mu-GDP mechanism at ``delta`` (Dong et al. 2019, Cor. 2.13).

  ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``; returns
  the eps where this equals ``delta`` (0 when ``delta(0) <= delta``).
  """
  mu, delta = float(mu), float(delta)
  if mu < 0 or not math.isfinite(mu):
    raise ValueError(f"mu must be finite and >= 0, got {mu}")
  if not 0 < delta < 1:
    raise ValueError(f"delta must lie in (0, 1), got {delta}")
  if mu == 0:
    return 0.0

  def gap(eps):  # log delta(eps) - log delta, stable in the tails
    a = stats.norm.logcdf(-eps / mu + mu / 2)
    b = eps + stats.norm.logcdf(-eps / mu - mu / 2)
    return a + np.log1p(-np.exp(min(b - a, 0.0))) - math.log(delta)

  if gap(0.0) <= 0:
    return 0.0
  hi = 1.0
  while gap(hi) > 0:
    hi *= 2
  return float(optimize.brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-12))


def gdp_mu(epsilon: float, delta: float) -> float:
  """The mu of the Gaussian mechanism whose epsilon at ``delta`` is ``epsilon`` (inverse of :func:`gdp_epsilon`)."""
  epsilon = float(epsilon)
  if not epsilon > 0:
    raise ValueError(f"epsilon must be > 0, got {epsilon}")
  hi = 1.0
  while gdp_epsilon(hi, delta) < epsilon:
    hi *= 2
  return float(
    optimize.brentq(
      lambda m: gdp_epsilon(m, delta) - epsilon, 1e-9, hi, xtol=1e-12
    )
  )


def epsilon_lower_bound_gdp(
  in_scores, out_scores, *, delta: float, confidence: float = 0.95
) -> dict:
  """GDP lower bound on epsilon from canary scores (Nasr et al. 2023).

  Higher scores mean "in". At every threshold of the Pareto frontier
  (jax-privacy's), one-sided Clopper-Pearson upper bounds on FPR and FNR at
  significance ``(1 - confidence) / (2 n)`` (Bonferroni over the ``n``
  thresholds, two rates each) give ``mu_t = Phi^-1(1 - FPR_ub) -
  Phi^-1(FNR_ub)``; ``mu = max(0, max_t mu_t)`` over thresholds where both
  upper bounds are below ``1 - delta``; epsilon is :func:`gdp_epsilon`.

  Args:
    in_scores: ``float[trials_in]``; out_scores: ``float[trials_out]``.
    delta: in (0, 1). confidence: in (0.5, 1).

  Returns:
    dict: ``epsilon``, ``mu``, ``threshold`` (``inf`` when mu is 0),
    ``fpr_ub``/``fnr_ub`` there, ``n_in``/``n_out``, ``confidence``,
    ``delta``.
  """
  from jax_privacy import auditing  # imported here: only audits need it

  from miajax.dp_audit.bounds import checked_scores

  in_scores, out_scores = checked_scores(
    in_scores, out_scores, delta=delta, confidence=confidence, open_delta=True
  )
  thresholds, tn, fn = auditing._get_tn_fn_counts(in_scores, out_scores)
  n_in, n_out = in_scores.size, out_scores.size
  alpha = (1.0 - confidence) / (2 * len(thresholds))
  fnr_ub = auditing._clopper_pearson_upper(fn, n_in, alpha)
  fpr_ub = auditing._clopper_pearson_upper(n_out - tn, n_out, alpha)
  usable = np.maximum(fnr_ub, fpr_ub) < 1 - delta
  with np.errstate(divide="ignore"):
    mus = np.where(
      usable, stats.norm.isf(fpr_ub) - stats.norm.ppf(fnr_ub), -np.inf
    )
  best = int(np.argmax(mus))
  mu = float(max(mus[best], 0.0))
  return {
    "epsilon": gdp_epsilon(mu, delta),
    "mu": mu,
    "threshold": float(thresholds[best]) if mu > 0 else math.inf,
    "fpr_ub": float(fpr_ub[best]),
    "fnr_ub": float(fnr_ub[best]),
    "n_in": int(n_in),
    "n_out": int(n_out),
    "confidence": float(confidence),
    "delta": float(delta),
  }


def gaussian_audit_cap(
  mu: float,
  n_in: int,
  n_out: int,
  *,
  delta: float,
  confidence: float = 0.95,
  draws: int = 50,
  seed: int = 0,
) -> dict:
  """What ``n_in + n_out`` trials can certify about a mu-GDP mechanism.

  Draws the optimal test statistic of the Gaussian pair itself
  (``N(mu, 1)`` for "in", ``N(0, 1)`` for "out"; any audit of the mechanism
  sees at best this) ``draws`` times and applies both estimators: the
  median is the cap an audit with this many trials reaches half the time.

  Returns:
    dict: ``mu``, ``true_epsilon`` (:func:`gdp_epsilon`), and for ``"gdp"``
    (:func:`epsilon_lower_bound_gdp`) and ``"clopper_pearson"``
    (:func:`~miajax.dp_audit.epsilon_lower_bound_canaries`, Bonferroni):
    ``{"median", "p10", "p90"}`` of the bound over the draws.
  """
  from miajax.dp_audit.bounds import epsilon_lower_bound_canaries

  rng = np.random.default_rng(seed)
  out = {"gdp": [], "clopper_pearson": []}
  for _ in range(int(draws)):
    a, b = rng.normal(mu, 1.0, n_in), rng.normal(0.0, 1.0, n_out)
    out["gdp"].append(
      epsilon_lower_bound_gdp(a, b, delta=delta, confidence=confidence)[
        "epsilon"
      ]
    )
    out["clopper_pearson"].append(
      epsilon_lower_bound_canaries(a, b, delta=delta, confidence=confidence)[
        "epsilon"
      ]
    )
  summary = lambda v: {
    "median": float(np.median(v)),
    "p10": float(np.percentile(v, 10)),
    "p90": float(np.percentile(v, 90)),
  }
  return {
    "mu": float(mu),
    "true_epsilon": gdp_epsilon(mu, delta),
    "n_in": int(n_in),
    "n_out": int(n_out),
    "draws": int(draws),
    **{k: summary(v) for k, v in out.items()},
  }
