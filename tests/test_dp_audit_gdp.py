"""miajax.dp_audit.gdp: the GDP bound of Nasr et al. 2023 against jax-privacy's and against the truth."""

import math

import numpy as np
import pytest
from jax_privacy import auditing
from scipy import stats

from miajax.dp_audit import gdp


def _delta_of(mu, eps):
  # Dong, Roth and Su 2019, Corollary 2.13, in float64 without logs.
  return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(
    -eps / mu - mu / 2
  )


@pytest.mark.parametrize("mu", [0.3, 0.5, 1.0, 2.0, 4.0])
def test_gdp_epsilon_solves_the_delta_equation(mu):
  eps = gdp.gdp_epsilon(mu, 1e-5)
  assert eps > 0
  assert _delta_of(mu, eps) == pytest.approx(1e-5, rel=1e-6)
  assert gdp.gdp_mu(eps, 1e-5) == pytest.approx(mu, rel=1e-8)


def test_gdp_epsilon_edges_and_errors():
  assert gdp.gdp_epsilon(0.0, 1e-5) == 0.0
  # delta(0) = 2 Phi(mu / 2) - 1 <= delta: nothing to prove
  assert gdp.gdp_epsilon(1e-6, 1e-5) == 0.0
  with pytest.raises(ValueError, match="mu"):
    gdp.gdp_epsilon(-1.0, 1e-5)
  with pytest.raises(ValueError, match="delta"):
    gdp.gdp_epsilon(1.0, 0.0)
  with pytest.raises(ValueError, match="epsilon"):
    gdp.gdp_mu(0.0, 1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_equals_jax_privacy_where_its_best_mu_is_positive(seed):
  # A strong canary: jax-privacy's maximum |mu| is attained at a positive mu,
  # where its estimator and ours are the same computation.
  rng = np.random.default_rng(seed)
  a, b = rng.normal(3.0, 1.0, 400), rng.normal(0.0, 1.0, 500)
  ours = gdp.epsilon_lower_bound_gdp(a, b, delta=1e-5, confidence=0.95)
  theirs = auditing.CanaryScoreAuditor(a, b).epsilon_from_gdp(0.05, 1e-5)
  assert ours["mu"] > 1.5
  assert ours["epsilon"] == pytest.approx(theirs, abs=1e-6)
  assert ours["n_in"] == 400 and ours["n_out"] == 500
  # the reported threshold and rates reproduce mu
  assert stats.norm.isf(ours["fpr_ub"]) - stats.norm.ppf(
    ours["fnr_ub"]
  ) == pytest.approx(ours["mu"])


def test_sound_where_jax_privacy_is_not():
  # A weak canary: the Gaussian mechanism of epsilon 1 at delta 1e-5, 512
  # trials a side. jax-privacy's abs() counts the upper bounds of weak
  # thresholds as evidence for the reversed test and reports several times
  # the true epsilon; the positive-mu bound stays below it.
  mu = gdp.gdp_mu(1.0, 1e-5)
  theirs, ours = [], []
  for seed in range(10):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(mu, 1.0, 512), rng.normal(0.0, 1.0, 512)
    theirs.append(
      auditing.CanaryScoreAuditor(a, b).epsilon_from_gdp(0.05, 1e-5)
    )
    ours.append(gdp.epsilon_lower_bound_gdp(a, b, delta=1e-5)["epsilon"])
  assert max(ours) <= 1.0
  assert sum(t > 1.0 for t in theirs) >= 5, theirs


@pytest.mark.parametrize("eps", [1.0, 2.0, 4.0, 8.0])
def test_bound_below_truth_and_cap_reported(eps):
  mu = gdp.gdp_mu(eps, 1e-5)
  cap = gdp.gaussian_audit_cap(mu, 256, 256, delta=1e-5, draws=20, seed=1)
  assert cap["true_epsilon"] == pytest.approx(eps, rel=1e-6)
  for name in ("gdp", "clopper_pearson"):
    assert 0 <= cap[name]["p10"] <= cap[name]["median"] <= cap[name]["p90"]
    assert cap[name]["p90"] <= eps  # sound in at least 90 % of draws
  # the GDP estimator uses the Gaussian shape: never weaker than raw counts here
  assert cap["gdp"]["median"] >= cap["clopper_pearson"]["median"]


def test_no_separation_proves_nothing_and_errors():
  rng = np.random.default_rng(0)
  a = rng.normal(0.0, 1.0, 200)
  out = gdp.epsilon_lower_bound_gdp(a, a + 0.0, delta=1e-5)
  assert out["epsilon"] == 0.0 and out["mu"] == 0.0
  assert out["threshold"] == math.inf
  with pytest.raises(ValueError, match="finite"):
    gdp.epsilon_lower_bound_gdp([np.nan], [0.0], delta=1e-5)
  with pytest.raises(ValueError, match="confidence"):
    gdp.epsilon_lower_bound_gdp([1.0], [0.0], delta=1e-5, confidence=0.4)
  with pytest.raises(ValueError, match="at least one"):
    gdp.epsilon_lower_bound_gdp([], [0.0], delta=1e-5)
