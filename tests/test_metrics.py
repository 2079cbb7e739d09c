"""miajax.metrics against scikit-learn, brute force, naive bootstraps and known ROCs."""

import warnings

import numpy as np
import pytest
from scipy.stats import norm, rankdata
from sklearn import metrics as skm

from miajax import metrics


def _tie_heavy(rng, n):
  """Random data with many ties (small integer scores) or none (floats)."""
  if rng.random() < 0.5:
    scores = rng.integers(0, rng.integers(1, 8), size=n).astype(float)
  else:
    scores = rng.normal(size=n)
  is_member = rng.random(n) < rng.uniform(0.2, 0.8)
  is_member[:2] = [True, False]  # both classes present
  return scores, is_member


def _gaussian(rng, mu, n_pos, n_neg):
  scores = np.concatenate(
    [rng.normal(mu, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
  )
  return scores, np.arange(n_pos + n_neg) < n_pos


def _true_tpr(mu, fpr):
  return 1.0 - norm.cdf(norm.ppf(1.0 - fpr) - mu)


# ------------------------------------------------------------------ point metrics


def test_roc_auc_balanced_accuracy_match_sklearn_with_ties():
  rng = np.random.default_rng(0)
  for _ in range(150):
    scores, is_member = _tie_heavy(rng, int(rng.integers(2, 80)))
    fpr, tpr, thr = metrics.roc_curve(scores, is_member)
    fpr2, tpr2, thr2 = skm.roc_curve(is_member, scores, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, fpr2)
    np.testing.assert_array_equal(tpr, tpr2)
    np.testing.assert_array_equal(thr, thr2)
    assert metrics.auc(scores, is_member) == pytest.approx(
      skm.roc_auc_score(is_member, scores), abs=1e-12
    )
    assert metrics.balanced_accuracy(scores, is_member) == pytest.approx(
      np.max((tpr2 + 1 - fpr2) / 2), abs=1e-12
    )


def test_any_shape_and_label_types():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(3, 40)).astype(np.float32)
  is_member = rng.random((3, 40)) < 0.5
  want = skm.roc_auc_score(is_member.ravel(), scores.ravel())
  assert metrics.auc(scores, is_member) == pytest.approx(want, abs=1e-12)
  assert metrics.auc(scores, is_member.astype(int)) == pytest.approx(
    want, abs=1e-12
  )
  assert metrics.auc(scores, is_member.astype(float)) == pytest.approx(
    want, abs=1e-12
  )


def _brute_rate(scores, positive, level):
  """Max TPR over sklearn's ROC points with FPR <= level."""
  fpr, tpr, _ = skm.roc_curve(positive, scores, drop_intermediate=False)
  return tpr[fpr <= level].max()


def test_tpr_at_fpr_and_tnr_at_fnr_brute_force():
  rng = np.random.default_rng(2)
  for _ in range(80):
    scores, is_member = _tie_heavy(rng, int(rng.integers(20, 120)))
    n_neg, n_pos = int((~is_member).sum()), int(is_member.sum())
    for level in (0.05, 0.1, 0.25, 1 / 3, 0.5):
      if n_neg * level >= 1:
        assert metrics.tpr_at_fpr(scores, is_member, level) == _brute_rate(
          scores, is_member, level
        )
      if n_pos * level >= 1:
        # Swapped roles: non-members are the positives and lower = non-member.
        assert metrics.tnr_at_fnr(scores, is_member, level) == _brute_rate(
          -scores, ~is_member, level
        )


def test_threshold_at_fpr_reproduces_the_point():
  rng = np.random.default_rng(3)
  for _ in range(50):
    scores, is_member = _tie_heavy(rng, 200)
    for level in (0.01, 0.1, 0.3):
      if (~is_member).sum() * level < 1:
        continue
      t = metrics.threshold_at_fpr(scores, is_member, level)
      predicted = scores >= t
      assert predicted[~is_member].mean() <= level
      assert predicted[is_member].mean() == metrics.tpr_at_fpr(
        scores, is_member, level
      )


def test_precision_recall_f1_matches_sklearn():
  rng = np.random.default_rng(4)
  scores, is_member = _tie_heavy(rng, 300)
  for t in [-np.inf, np.inf, *np.quantile(scores, [0.1, 0.5, 0.9])]:
    got = metrics.precision_recall_f1(scores, is_member, float(t))
    p, r, f, s = skm.precision_recall_fscore_support(
      is_member, scores >= t, labels=[True, False], zero_division=0.0
    )
    for i, key in enumerate(["member", "non_member"]):
      assert got[key]["precision"] == pytest.approx(p[i], abs=1e-12)
      assert got[key]["recall"] == pytest.approx(r[i], abs=1e-12)
      assert got[key]["f1"] == pytest.approx(f[i], abs=1e-12)
      assert got[key]["support"] == s[i]
    assert got["accuracy"] == pytest.approx(np.mean((scores >= t) == is_member))


def test_unresolvable_levels_are_nan_with_warning():
  rng = np.random.default_rng(5)
  scores, is_member = _gaussian(rng, 1.0, 50, 999)
  with pytest.warns(RuntimeWarning, match="unresolvable"):
    assert np.isnan(metrics.tpr_at_fpr(scores, is_member, 0.001))
  with pytest.warns(RuntimeWarning, match="unresolvable"):
    assert metrics.tpr_at_fpr_interval(
      scores, is_member, 0.001
    ) == pytest.approx((np.nan, np.nan), nan_ok=True)
  with pytest.warns(RuntimeWarning, match="members"):
    assert np.isnan(metrics.tnr_at_fnr(scores, is_member, 0.01))
  # Exactly 1/level non-members is enough, including 1 / 1e-5 = 99999.99...
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    scores, is_member = _gaussian(rng, 1.0, 50, 1000)
    assert np.isfinite(metrics.tpr_at_fpr(scores, is_member, 0.001))
    scores, is_member = _gaussian(rng, 1.0, 10, 100_000)
    assert np.isfinite(metrics.tpr_at_fpr(scores, is_member, 1e-5))


def test_bad_inputs():
  s = np.array([0.1, 0.5, 0.3, 0.9])
  m = np.array([True, False, True, False])
  for level in (0.0, 1.0, -0.1, 1.5):
    with pytest.raises(ValueError, match="fpr"):
      metrics.tpr_at_fpr(s, m, level)
  with pytest.raises(ValueError, match="fnr"):
    metrics.tnr_at_fnr(s, m, 0.0)
  with pytest.raises(ValueError, match="scores"):
    metrics.auc(np.array([0.1, np.nan, 0.3, 0.9]), m)
  with pytest.raises(ValueError, match="scores"):
    metrics.roc_curve(np.array([0.1, np.inf, 0.3, 0.9]), m)
  with pytest.raises(ValueError, match="both"):
    metrics.auc(s, np.ones(4, bool))
  with pytest.raises(ValueError, match="shape"):
    metrics.auc(s, m[:3])
  with pytest.raises(ValueError, match="is_member"):
    metrics.auc(s, np.array([0, 1, 2, 1]))
  with pytest.raises(TypeError, match="is_member"):
    metrics.auc(s, np.array(["a", "b", "a", "b"]))
  with pytest.raises(ValueError, match="confidence"):
    metrics.auc_interval(s, m, confidence=1.0)
  with pytest.raises(ValueError, match="delta"):
    metrics.epsilon_lower_bound(s, m, delta=1.0)
  with pytest.raises(ValueError, match="method"):
    metrics.tpr_at_fpr_interval(s, m, 0.5, method="bca")


# ------------------------------------------------------------------ intervals


def _naive_tpr_bootstrap(scores, is_member, fpr, num, rng):
  """Index-resampling stratified bootstrap of tpr_at_fpr, written plainly."""
  pos, neg = scores[is_member], scores[~is_member]
  m = int(np.floor(fpr * neg.size + 1e-9))
  draws = np.empty(num)
  for b in range(num):
    neg_b = np.sort(rng.choice(neg, neg.size))[::-1]
    pos_b = rng.choice(pos, pos.size)
    draws[b] = np.mean(pos_b > neg_b[m])  # strictly above the (m+1)-th largest
  return np.quantile(draws, [0.025, 0.975])


def test_tpr_bootstrap_method_equals_naive_bootstrap():
  # The Beta/binomial shortcut must have the law of real resampling.
  rng = np.random.default_rng(6)
  scores, is_member = _gaussian(rng, 1.5, 400, 2000)
  got = metrics.tpr_at_fpr_interval(
    scores, is_member, 0.01, method="bootstrap", num_bootstrap=20000, seed=1
  )
  want = _naive_tpr_bootstrap(scores, is_member, 0.01, 3000, rng)
  np.testing.assert_allclose(got, want, atol=0.012)


@pytest.mark.parametrize(
  "n_pos,n_neg,fpr", [(5000, 5000, 0.01), (5000, 20000, 0.001)]
)
def test_tpr_interval_coverage_and_width(n_pos, n_neg, fpr):
  """>= 93 % of 400 repetitions cover the true TPR@FPR, at a mean width of
  <= 1.5x a plain stratified percentile bootstrap."""
  reps = 400
  for mu in (1.0, 2.0, 3.0):
    truth = _true_tpr(mu, fpr)
    covered, width, boot_width = 0, 0.0, 0.0
    for rep in range(reps):
      scores, is_member = _gaussian(
        np.random.default_rng([rep, 10]), mu, n_pos, n_neg
      )
      low, high = metrics.tpr_at_fpr_interval(
        scores, is_member, fpr, seed=rep, num_bootstrap=1000
      )
      covered += low <= truth <= high
      if rep < 100:  # widths settle long before coverage does
        b_low, b_high = metrics.tpr_at_fpr_interval(
          scores,
          is_member,
          fpr,
          seed=rep,
          num_bootstrap=1000,
          method="bootstrap",
        )
        width += high - low
        boot_width += b_high - b_low
    assert covered / reps >= 0.93, (mu, covered / reps)
    assert width / boot_width <= 1.5, (mu, width / boot_width)


def test_tnr_interval_coverage():
  # Equal-variance Gaussians are symmetric: TNR@FNR f equals TPR@FPR f.
  reps, fnr, mu = 300, 0.01, 2.0
  truth = _true_tpr(mu, fnr)
  covered = 0
  for rep in range(reps):
    scores, is_member = _gaussian(
      np.random.default_rng([rep, 11]), mu, 5000, 3000
    )
    low, high = metrics.tnr_at_fnr_interval(
      scores, is_member, fnr, seed=rep, num_bootstrap=1000
    )
    covered += low <= truth <= high
  assert covered / reps >= 0.93


def test_auc_interval_equals_naive_bootstrap():
  rng = np.random.default_rng(7)
  for n_pos, n_neg in [
    (300, 200),
    (2500, 2500),
  ]:  # exact groups; merged (> 4096 distinct)
    scores, is_member = _gaussian(rng, 0.8, n_pos, n_neg)
    got = metrics.auc_interval(scores, is_member, num_bootstrap=4000, seed=3)
    pos, neg = scores[is_member], scores[~is_member]
    reps = []
    for _ in range(15):  # 15 x 100 naive replicates, rank AUC
      p = pos[rng.integers(0, n_pos, (100, n_pos))]
      q = neg[rng.integers(0, n_neg, (100, n_neg))]
      ranks = rankdata(np.concatenate([p, q], axis=1), axis=1)
      reps.append(
        (ranks[:, :n_pos].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
      )
    want = np.quantile(np.concatenate(reps), [0.025, 0.975])
    width = want[1] - want[0]
    np.testing.assert_allclose(got, want, atol=0.06 * width)


@pytest.mark.slow
def test_auc_interval_coverage():
  """>= 93 % of 400 repetitions (300 + 300
  scores, 500 bootstrap replicates to keep the test fast) cover Phi(mu / sqrt 2).

  The interval is the plain stratified percentile bootstrap, so its width is
  the reference width itself (ratio 1); test_auc_interval_equals_naive_bootstrap
  checks it against index resampling."""
  reps = 400
  for mu in (0.5, 1.5):
    truth = norm.cdf(mu / np.sqrt(2))
    covered = 0
    for rep in range(reps):
      scores, is_member = _gaussian(
        np.random.default_rng([rep, 12]), mu, 300, 300
      )
      low, high = metrics.auc_interval(
        scores, is_member, num_bootstrap=500, seed=rep
      )
      covered += low <= truth <= high
    assert covered / reps >= 0.93, (mu, covered / reps)


def test_balanced_accuracy_interval_covers():
  reps, mu = 150, 1.0
  truth = norm.cdf(mu / 2)  # best threshold mu/2
  covered = 0
  for rep in range(reps):
    scores, is_member = _gaussian(
      np.random.default_rng([rep, 13]), mu, 500, 500
    )
    low, high = metrics.balanced_accuracy_interval(
      scores, is_member, num_bootstrap=200, seed=rep
    )
    covered += low <= truth <= high
  # Measured 0.913 here (0.893 over 300 repetitions); the percentile bootstrap gives ~0.83.
  assert covered / reps >= 0.88


def test_intervals_are_deterministic_and_contain_estimate():
  rng = np.random.default_rng(8)
  scores, is_member = _gaussian(rng, 1.0, 3000, 3000)
  a = metrics.tpr_at_fpr_interval(scores, is_member, 0.01, seed=5)
  assert a == metrics.tpr_at_fpr_interval(scores, is_member, 0.01, seed=5)
  assert a[0] <= metrics.tpr_at_fpr(scores, is_member, 0.01) <= a[1]
  b = metrics.auc_interval(scores, is_member, seed=5)
  assert b == metrics.auc_interval(scores, is_member, seed=5)
  assert b[0] <= metrics.auc(scores, is_member) <= b[1]


# ------------------------------------------------------------------ empirical epsilon


def _randomised_response(rng, eps, n):
  p = np.exp(eps) / (1 + np.exp(eps))
  scores = np.concatenate([rng.random(n) < p, rng.random(n) < 1 - p]).astype(
    float
  )
  return scores, np.arange(2 * n) < n


def test_epsilon_randomised_response_eps2():
  scores, is_member = _randomised_response(
    np.random.default_rng(9), 2.0, 200_000
  )
  for seed in (0, 1):
    eps = metrics.epsilon_lower_bound(scores, is_member, seed=seed)
    assert 1.7 <= eps <= 2.0, eps
  # delta eats the true-positive rate: with delta >= TPR nothing is proven.
  assert metrics.epsilon_lower_bound(scores, is_member, delta=0.9) == 0.0
  assert metrics.epsilon_lower_bound(scores, is_member, delta=0.1) < eps


def test_epsilon_null_scores():
  rng = np.random.default_rng(10)
  for seed in range(3):
    scores = rng.normal(size=40_000)
    is_member = rng.random(40_000) < 0.5
    assert metrics.epsilon_lower_bound(scores, is_member, seed=seed) <= 0.1
    discrete = rng.integers(0, 3, size=40_000).astype(float)
    assert metrics.epsilon_lower_bound(discrete, is_member, seed=seed) <= 0.1


def test_epsilon_bound_holds_with_stated_confidence():
  # Randomised response is exactly eps-DP: the bound may exceed 2 in at most
  # ~5 % of repetitions (Clopper-Pearson + Bonferroni make it rarer).
  exceed = 0
  for rep in range(200):
    scores, is_member = _randomised_response(
      np.random.default_rng([rep, 14]), 2.0, 2000
    )
    exceed += metrics.epsilon_lower_bound(scores, is_member, seed=rep) > 2.0
  assert exceed / 200 <= 0.05


# ------------------------------------------------------------------ all at once


def test_evaluate_equals_single_metric_functions():
  scores, is_member = _gaussian(np.random.default_rng(15), 1.2, 1500, 2500)
  kw = dict(seed=4, confidence=0.9)
  with pytest.warns(RuntimeWarning, match=r"^TNR@FNR 0\.0001 unresolvable"):
    got = metrics.evaluate(
      scores,
      is_member,
      fpr_levels=(0.01, 0.002),
      fnr_levels=(0.05, 1e-4),
      num_bootstrap=300,
      num_draws=400,
      delta=0.01,
      **kw,
    )
  assert got.auc == metrics.auc(scores, is_member)
  assert got.auc_ci == metrics.auc_interval(
    scores, is_member, num_bootstrap=300, **kw
  )
  assert got.balanced_accuracy == metrics.balanced_accuracy(scores, is_member)
  assert got.balanced_accuracy_ci == metrics.balanced_accuracy_interval(
    scores, is_member, num_bootstrap=300, **kw
  )
  for level in (0.01, 0.002):
    assert got.tpr_at_fpr[level] == metrics.tpr_at_fpr(scores, is_member, level)
    assert got.tpr_at_fpr_ci[level] == metrics.tpr_at_fpr_interval(
      scores, is_member, level, num_bootstrap=400, **kw
    )
  assert got.tnr_at_fnr[0.05] == metrics.tnr_at_fnr(scores, is_member, 0.05)
  assert got.tnr_at_fnr_ci[0.05] == metrics.tnr_at_fnr_interval(
    scores, is_member, 0.05, num_bootstrap=400, **kw
  )
  # 1500 members cannot resolve an FNR of 1e-4.
  assert np.isnan(got.tnr_at_fnr[1e-4]) and np.isnan(got.tnr_at_fnr_ci[1e-4][0])
  assert got.epsilon_lower_bound == metrics.epsilon_lower_bound(
    scores, is_member, delta=0.01, **kw
  )
  assert (got.num_members, got.num_non_members) == (1500, 2500)
  with pytest.raises(ValueError, match="fnr_levels"):
    metrics.evaluate(scores, is_member, fnr_levels=(1.0,))
  with pytest.raises(TypeError, match="delta"):
    metrics.evaluate(scores, is_member, delta="0")
