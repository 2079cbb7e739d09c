"""Tests for miajax.attacks against independent float64 numpy/scipy formulas."""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import jax.scipy.stats
import numpy as np
import pytest
import scipy.stats
from scipy.special import log_ndtr
from sklearn.metrics import roc_auc_score, roc_curve

from miajax import attacks, metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------ data helpers


def ragged(models, examples, queries, seed, min_count=2):
  """Random scores and a random keep whose IN counts vary over examples within
  [min_count, models - min_count]; IN scores are shifted up a little."""
  rng = np.random.default_rng(seed)
  counts = rng.integers(min_count, models - min_count + 1, size=examples)
  keep = rng.random((models, examples)).argsort(0) < counts
  loc = rng.normal(0, 3, size=(1, examples, 1))
  scale = rng.uniform(0.2, 2, size=(1, examples, 1))
  scores = (
    loc
    + scale * rng.normal(size=(models, examples, queries))
    + 0.7 * keep[..., None]
  )
  return scores, keep


# ------------------------------------------- reference semantics in numpy


def reference_numpy(shadow, keep, target, offline, fix_variance):
  """tensorflow/privacy mi_lira_2021/plot.py semantics, written out per example in float64."""
  ins = [shadow[keep[:, j], j, :] for j in range(shadow.shape[1])]
  outs = [shadow[~keep[:, j], j, :] for j in range(shadow.shape[1])]
  n_in = min(len(v) for v in ins)
  n_out = min(len(v) for v in outs)
  dat_in = np.array([v[:n_in] for v in ins])  # [examples, n_in, queries]
  dat_out = np.array([v[:n_out] for v in outs])
  loc_out = np.median(dat_out, axis=1)
  if offline:
    sd_out = np.std(dat_out) if fix_variance else np.std(dat_out, axis=1)
    lp = scipy.stats.norm.logpdf(target, loc_out, sd_out + 1e-30)
    return -lp.mean(-1)
  loc_in = np.median(dat_in, axis=1)
  if fix_variance:
    sd_in = sd_out = np.std(dat_in)
  else:
    sd_in, sd_out = np.std(dat_in, axis=1), np.std(dat_out, axis=1)
  lp_in = scipy.stats.norm.logpdf(target, loc_in, sd_in + 1e-30)
  lp_out = scipy.stats.norm.logpdf(target, loc_out, sd_out + 1e-30)
  return (lp_in - lp_out).mean(-1)


@pytest.mark.parametrize("shape,seed", [((9, 23, 1), 0), ((14, 37, 3), 1)])
@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("fix_variance", [False, True])
def test_reference_matches_numpy(shape, seed, offline, fix_variance):
  shadow, keep = ragged(*shape, seed=seed)
  target = np.random.default_rng(seed + 10).normal(0, 3, size=(4,) + shape[1:])
  # Ragged counts are the point: truncation must actually happen.
  assert len(np.unique(keep.sum(0))) > 1
  fn = attacks.lira_offline if offline else attacks.lira_online
  got = fn(shadow, keep, target, fix_variance=fix_variance, variant="reference")
  want = reference_numpy(shadow, keep, target, offline, fix_variance)
  assert (
    isinstance(got, np.ndarray)
    and got.dtype == np.float64
    and got.shape == (4, shape[1])
  )
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("offline", [False, True])
def test_reference_leave_one_out_matches_numpy(offline):
  scores, keep = ragged(10, 19, 2, seed=3, min_count=3)
  got = attacks.leave_one_out(
    scores,
    keep,
    attack="lira_offline" if offline else "lira_online",
    variant="reference",
  )
  for t in range(10):
    others = np.arange(10) != t
    want = reference_numpy(
      scores[others], keep[others], scores[t : t + 1], offline, False
    )[0]
    np.testing.assert_allclose(got[t], want, rtol=1e-9, atol=1e-12)


# ---------------------------------------------- miajax semantics in numpy


def miajax_numpy(shadow, keep, target, offline, fix_variance, use=None):
  """The documented miajax variant, per example in float64.

  use: optional bool[models, examples], which shadow models count at each example.
  """
  examples, queries = shadow.shape[1:]
  use = np.ones(keep.shape, bool) if use is None else use
  fits = {}
  for group, mask in (("in", keep & use), ("out", ~keep & use)):
    loc = np.zeros((examples, queries))
    var = np.zeros((examples, queries))
    ss = np.zeros(queries)
    dof = 0
    for j in range(examples):
      v = shadow[mask[:, j], j, :]
      if len(v) == 0:
        continue
      loc[j] = v.mean(0)
      var[j] = v.var(0, ddof=1) if len(v) > 1 else 0.0
      ss += ((v - loc[j]) ** 2).sum(0)
      dof += len(v) - 1
    if fix_variance:
      var[:] = ss / dof
    sd = np.maximum(np.sqrt(var), 1e-6 * (1 + np.abs(loc)))
    fits[group] = (loc, sd)
  loc_out, sd_out = fits["out"]
  if offline:
    z = (target - loc_out) / sd_out
    return (log_ndtr(z) - log_ndtr(-z)).mean(-1)
  loc_in, sd_in = fits["in"]
  lp_in = scipy.stats.norm.logpdf(target, loc_in, sd_in)
  lp_out = scipy.stats.norm.logpdf(target, loc_out, sd_out)
  return (lp_in - lp_out).mean(-1)


def loo_numpy(scores, keep, offline, fix_variance, balanced, seed=0):
  """Leave-one-out by refitting per target; balanced also drops, per example, the
  partner model (from the group the target is not in)."""
  models, examples = keep.shape
  partners = np.asarray(attacks.leave_one_out_partners(keep, seed=seed))
  rows = []
  for t in range(models):
    use = np.ones(keep.shape, bool)
    use[t] = False
    if balanced:
      use[partners[t], np.arange(examples)] = False
    rows.append(
      miajax_numpy(scores, keep, scores[t : t + 1], offline, fix_variance, use)[
        0
      ]
    )
  return np.stack(rows)


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("fix_variance", [False, True])
def test_miajax_matches_numpy(offline, fix_variance):
  shadow, keep = ragged(14, 37, 3, seed=5)
  target = np.random.default_rng(6).normal(0, 3, size=(4, 37, 3))
  fn = attacks.lira_offline if offline else attacks.lira_online
  got = np.asarray(fn(shadow, keep, target, fix_variance=fix_variance))
  want = miajax_numpy(shadow, keep, target, offline, fix_variance)
  assert got.dtype == np.float32
  np.testing.assert_allclose(
    got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max()
  )


def test_variants_differ_where_documented():
  # One example whose target score lies far below the OUT scores: the one-sided
  # offline test calls it a non-member, the reference's two-sided density a member.
  shadow, keep = ragged(12, 30, 1, seed=7)
  target = shadow[:1].copy()
  target[0, 0, 0] = shadow[~keep[:, 0], 0, 0].mean() - 20
  sound = np.asarray(attacks.lira_offline(shadow, keep, target))[0]
  ref = attacks.lira_offline(shadow, keep, target, variant="reference")[0]
  assert sound[0] == sound.min()
  assert ref[0] > np.quantile(ref, 0.9)


@pytest.mark.parametrize("z", [-40.0, -15.0, -5.0, 5.0, 15.0, 40.0])
def test_offline_score_tails_match_float64_scipy(z):
  # float32 log Phi(z) is -0.0 above z ~ 13: the log-odds keeps both tails.
  got = float(np.asarray(attacks.offline_log_odds(jnp.float32(z))))
  want = scipy.stats.norm.logcdf(z) - scipy.stats.norm.logsf(z)
  assert got == pytest.approx(want, rel=1e-5)
  if z == 15.0:
    # The paper's log Phi(z) has no float32 value to tell members apart here.
    assert float(jax.scipy.stats.norm.logcdf(jnp.float32(z))) == 0.0


def test_offline_has_no_ties_beyond_float64_and_resolves_low_fpr():
  # Six models (3 IN / 3 OUT shadows): members sit 14-40 OUT standard deviations
  # above the OUT fit, where float32 log Phi(z) ties at -0.0 for all of them.
  rng = np.random.default_rng(3)
  models, examples = 6, 4000
  keep = np.zeros((models, examples), bool)
  for j in range(examples):
    keep[rng.permutation(models)[:3], j] = True
  out_scores = rng.normal(0, 1, size=(models, examples, 1))
  shift = rng.uniform(14, 40, size=(1, examples, 1))
  shadow = np.where(keep[..., None], out_scores + shift, out_scores)
  is_member = rng.random(examples) < 0.5
  target = is_member[None, :, None] * shift + rng.normal(
    0, 1, size=(1, examples, 1)
  )
  got = np.asarray(attacks.lira_offline(shadow[1:], keep[1:], target))[0]
  want = miajax_numpy(shadow[1:], keep[1:], target, True, False)[0]
  assert np.unique(got).size == np.unique(want).size == examples
  tpr = metrics.tpr_at_fpr(got, is_member, 0.01)
  assert tpr > 0.5
  assert tpr == metrics.tpr_at_fpr(want, is_member, 0.01)


# --------------------------------------------------------- leave-one-out


@pytest.mark.parametrize("attack", ["lira_online", "lira_offline"])
@pytest.mark.parametrize("fix_variance", [False, True])
def test_leave_one_out_equals_per_target_runs(attack, fix_variance):
  models = 10
  scores, keep = ragged(models, 45, 2, seed=11, min_count=3)
  scores = scores.astype(np.float32)
  loo = np.asarray(
    attacks.leave_one_out(
      scores, keep, attack=attack, fix_variance=fix_variance, balanced=False
    )
  )
  fn = getattr(attacks, attack)
  direct = np.stack(
    [
      np.asarray(
        fn(
          scores[np.arange(models) != t],
          keep[np.arange(models) != t],
          scores[t : t + 1],
          fix_variance=fix_variance,
        )
      )[0]
      for t in range(models)
    ]
  )
  np.testing.assert_allclose(
    loo, direct, rtol=1e-4, atol=1e-4 * np.abs(direct).max()
  )


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("fix_variance", [False, True])
def test_balanced_leave_one_out_matches_numpy(offline, fix_variance):
  scores, keep = ragged(10, 45, 2, seed=13, min_count=3)
  scores = scores.astype(np.float32)
  attack = "lira_offline" if offline else "lira_online"
  got = np.asarray(
    attacks.leave_one_out(
      scores, keep, attack=attack, fix_variance=fix_variance
    )
  )
  want = loo_numpy(
    scores.astype(np.float64), keep, offline, fix_variance, balanced=True
  )
  np.testing.assert_allclose(
    got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
  )


@pytest.mark.parametrize("balanced", [False, True])
def test_leave_one_out_is_stable_for_offset_scores(balanced):
  # Scores ~300 with spread 0.01 and a few outliers: sums of squares of raw
  # float32 scores would cancel to noise; centring, the Welford down-date and
  # the direct fit without the dominant outlier must not.
  scores, keep = ragged(10, 45, 2, seed=12, min_count=3)
  rng = np.random.default_rng(12)
  scores[rng.integers(0, 10, 15), rng.integers(0, 45, 15)] += rng.normal(
    0, 50, size=(15, 2)
  )
  scores = (300 + 0.01 * (scores - scores.mean())).astype(np.float32)
  loo = np.asarray(
    attacks.leave_one_out(scores, keep, attack="lira_online", balanced=balanced)
  )
  want = loo_numpy(scores.astype(np.float64), keep, False, False, balanced)
  assert np.all(np.isfinite(loo))
  np.testing.assert_allclose(
    loo, want, rtol=2e-3, atol=2e-3 * np.median(np.abs(want))
  )


def test_partners_are_uniform_over_the_other_group():
  rng = np.random.default_rng(4)
  keep = rng.random((8, 20000)).argsort(0) < 4
  keep[:, :5000] = rng.random((8, 5000)) < 0.5  # some ragged examples too
  keep[0, :5000], keep[1, :5000] = True, False
  partners = np.asarray(attacks.leave_one_out_partners(keep))
  cols = np.arange(keep.shape[1])
  assert np.all(keep[partners, cols] != keep)
  # Uniform: in the balanced part, t's neighbour t^1 is the partner with
  # probability P(t^1 in the other group) / 4 = (4/7) / 4.
  t = np.arange(8)[:, None]
  assert abs(np.mean(partners[:, 5000:] == (t ^ 1)) - 1 / 7) < 0.01
  assert np.array_equal(
    partners, np.asarray(attacks.leave_one_out_partners(keep))
  )


def test_balanced_leave_one_out_seed_draws_the_partners():
  scores, keep = ragged(10, 45, 2, seed=13, min_count=3)
  scores = scores.astype(np.float32)

  def loo(**kwargs):
    return np.asarray(
      attacks.leave_one_out(scores, keep, attack="lira_online", **kwargs)
    )

  default, other = loo(), loo(seed=1)
  np.testing.assert_array_equal(loo(seed=0), default)
  np.testing.assert_array_equal(loo(seed=1), other)
  assert not np.array_equal(other, default)
  partners = np.asarray(attacks.leave_one_out_partners(keep, seed=1))
  assert not np.array_equal(
    partners, np.asarray(attacks.leave_one_out_partners(keep))
  )
  assert np.all(keep[partners, np.arange(keep.shape[1])] != keep)
  want = loo_numpy(scores.astype(np.float64), keep, False, False, True, seed=1)
  np.testing.assert_allclose(
    other, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
  )
  # Plain leave-one-out drops no partner, so the seed cannot matter.
  np.testing.assert_array_equal(
    loo(balanced=False, seed=1), loo(balanced=False)
  )
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match="seed"):
      loo(seed=bad)


def test_numpy_baseline_matches_leave_one_out():
  spec = importlib.util.spec_from_file_location(
    "lira_numpy", ROOT / "experiments" / "lira_numpy.py"
  )
  lira_numpy = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(lira_numpy)
  scores, keep = ragged(10, 45, 2, seed=11, min_count=3)
  scores = scores.astype(np.float32)
  online, offline = lira_numpy.lira_loo_numpy(
    scores, keep, attacks.leave_one_out_partners(keep)
  )
  for attack, want in (("lira_online", online), ("lira_offline", offline)):
    got = np.asarray(attacks.leave_one_out(scores, keep, attack=attack))
    np.testing.assert_allclose(
      got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
    )


# ------------------------------------------------- calibration and power


def population(shift, seed=0, models=32, examples=2000, queries=2):
  """Per-example Gaussian scores; members' scores are shifted by `shift` example stds."""
  rng = np.random.default_rng(seed)
  keep = rng.random((models, examples)) < 0.5
  loc = rng.normal(0, 2, size=examples)
  scale = rng.uniform(0.5, 2, size=examples)
  noise = 0.8 * rng.normal(size=(models, examples, 1)) + 0.6 * rng.normal(
    size=(models, examples, queries)
  )
  scores = loc[:, None] + scale[:, None] * (noise + shift * keep[..., None])
  conf = 1 / (1 + np.exp(-scores))  # a probability signal for RMIA
  return scores.astype(np.float32), conf.astype(np.float32), keep


ALL_ATTACKS = [
  ("lira_online", False, "miajax"),
  ("lira_online", True, "miajax"),
  ("lira_offline", False, "miajax"),
  ("lira_offline", True, "miajax"),
  ("lira_online", False, "reference"),
  ("lira_online", True, "reference"),
  ("lira_offline", False, "reference"),
  ("lira_offline", True, "reference"),
  ("global_threshold", False, "miajax"),
  ("rmia", False, "miajax"),
  ("rmia_offline", False, "miajax"),
]


_POOLED = {}


def pooled_metrics(setting, attack, fix_variance, variant):
  """Pooled (AUC, TPR at 1 % FPR) of a leave-one-out attack on a population.

  Memoised per setting object (the module's fixtures): the calibration, power
  and comparison tests read the same attacks, ~1.5 s each for the reference's.
  """
  key = (id(setting), attack, fix_variance, variant)
  if (
    key not in _POOLED
  ):  # the setting is kept too, so that its id stays its own
    _POOLED[key] = (
      setting,
      _pooled_metrics(setting, attack, fix_variance, variant),
    )
  return _POOLED[key][1]


def _pooled_metrics(setting, attack, fix_variance, variant):
  scores, conf, keep = setting
  x = conf if attack.startswith("rmia") else scores
  s = np.asarray(
    attacks.leave_one_out(
      x, keep, attack=attack, fix_variance=fix_variance, variant=variant
    )
  ).ravel()
  y = keep.ravel()
  fpr, tpr, _ = roc_curve(y, s)
  return roc_auc_score(y, s), tpr[fpr <= 0.01].max()


@pytest.fixture(scope="module")
def null_setting():
  return population(shift=0.0, seed=0)


@pytest.fixture(scope="module")
def leaky_setting():
  return population(shift=2.0, seed=1)


@pytest.mark.parametrize("attack,fix_variance,variant", ALL_ATTACKS)
def test_null_calibration(null_setting, attack, fix_variance, variant):
  auc, tpr = pooled_metrics(null_setting, attack, fix_variance, variant)
  assert abs(auc - 0.5) <= 0.02, auc
  assert 0.005 <= tpr <= 0.02, tpr


@pytest.mark.parametrize("attack,fix_variance,variant", ALL_ATTACKS)
def test_leak_is_detected(leaky_setting, attack, fix_variance, variant):
  auc, _ = pooled_metrics(leaky_setting, attack, fix_variance, variant)
  assert auc > 0.7, auc


def test_balanced_leave_one_out_is_calibrated_with_few_models():
  # 8 models, every example IN for 4: leaving only the target out fits its own
  # group on 3 models and the other on 4, which scores members lower under the
  # null. The scores come from a paired design (model 2i+1 trains on the
  # complement of model 2i), attacked with an independent keep: dropping the
  # adjacent model instead of a random one would pick the complement too often.
  rng = np.random.default_rng(2)
  pairs = rng.random((4, 3000)) < 0.5
  true_keep = np.stack([pairs, ~pairs], axis=1).reshape(8, 3000)
  scores, _, _ = population(shift=0.0, seed=2, models=8, examples=3000)
  scores = scores + 4.0 * true_keep[..., None]
  keep = rng.random((8, 3000)).argsort(0) < 4
  y = keep.ravel()
  for attack in ("lira_online", "lira_offline"):
    s = np.asarray(attacks.leave_one_out(scores, keep, attack=attack)).ravel()
    fpr, tpr, _ = roc_curve(y, s)
    assert (
      abs(roc_auc_score(y, s) - 0.5) <= 0.02
      and 0.005 <= tpr[fpr <= 0.01].max() <= 0.02
    )
  s = np.asarray(
    attacks.leave_one_out(scores, keep, attack="lira_online", balanced=False)
  ).ravel()
  assert roc_auc_score(y, s) < 0.46


def test_lira_online_beats_global_threshold_on_heterogeneous_examples(
  leaky_setting,
):
  # Per-example calibration is LiRA's point: with example locations spread
  # wider than the member shift, the global threshold is much weaker.
  lira_auc, lira_tpr = pooled_metrics(
    leaky_setting, "lira_online", False, "miajax"
  )
  glob_auc, glob_tpr = pooled_metrics(
    leaky_setting, "global_threshold", False, "miajax"
  )
  assert lira_auc > glob_auc + 0.05 and lira_tpr > 2 * glob_tpr


def test_miajax_variant_is_stronger_than_reference(leaky_setting):
  # Same data, ragged keep: no truncation, mean/std fits and the one-sided
  # offline test use the evidence better than the released evaluation.
  for attack in ("lira_online", "lira_offline"):
    auc_m, tpr_m = pooled_metrics(leaky_setting, attack, False, "miajax")
    auc_r, tpr_r = pooled_metrics(leaky_setting, attack, False, "reference")
    assert auc_m > auc_r and tpr_m > 1.5 * tpr_r, (
      attack,
      auc_m,
      auc_r,
      tpr_m,
      tpr_r,
    )


# -------------------------------------------------------------------- RMIA


def rmia_numpy(shadow, keep, target, a, gamma, offline, pop=None):
  """The paper's formula with a dense [examples, population] comparison, float64."""
  shadow, target = (
    shadow.astype(np.float64).mean(-1),
    target.astype(np.float64).mean(-1),
  )
  if offline:
    pr_x = (
      (1 + a) * np.nanmean(np.where(keep, np.nan, shadow), axis=0) + (1 - a)
    ) / 2
  else:
    pr_x = shadow.mean(0)
  ratio_x = target / pr_x
  if pop is None:
    ratio_z = ratio_x
  else:
    zs, zt = (
      pop[0].astype(np.float64).mean(-1),
      pop[1].astype(np.float64).mean(-1),
    )
    pr_z = zs.mean(0)
    if offline:
      pr_z = ((1 + a) * pr_z + (1 - a)) / 2
    ratio_z = zt / pr_z
  dense = (
    ratio_x[:, :, None] / ratio_z[:, None, :] > gamma
  )  # [targets, examples, population]
  return dense.mean(-1)


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("gamma", [1.0, 2.0])
@pytest.mark.parametrize("with_population", [False, True])
def test_rmia_matches_dense_formula(offline, gamma, with_population):
  rng = np.random.default_rng(21)
  models, examples, queries, targets, pop_size = 8, 150, 2, 3, 90
  shadow = rng.uniform(0.01, 1, size=(models, examples, queries)).astype(
    np.float32
  )
  keep = rng.random((models, examples)) < 0.5
  keep[0], keep[1] = True, False  # every example has IN and OUT references
  target = rng.uniform(0.01, 1, size=(targets, examples, queries)).astype(
    np.float32
  )
  pop = None
  if with_population:
    pop = (
      rng.uniform(0.01, 1, size=(models, pop_size, queries)).astype(np.float32),
      rng.uniform(0.01, 1, size=(targets, pop_size, queries)).astype(
        np.float32
      ),
    )
  got = np.asarray(
    attacks.rmia(
      shadow,
      keep,
      target,
      a=0.3,
      gamma=gamma,
      population_conf=pop,
      offline=offline,
    )
  )
  want = rmia_numpy(shadow, keep, target, 0.3, gamma, offline, pop)
  assert got.shape == (targets, examples)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
  assert want.std() > 0.1  # a non-trivial spread of fractions was compared


def test_rmia_default_gamma_and_a():
  import inspect

  params = inspect.signature(attacks.rmia).parameters
  assert params["gamma"].default == 2.0 and params["a"].default == 0.3


@pytest.mark.parametrize("attack", ["rmia", "rmia_offline"])
@pytest.mark.parametrize("with_population", [False, True])
def test_rmia_leave_one_out_equals_per_target_runs(attack, with_population):
  rng = np.random.default_rng(22)
  models, examples = 8, 120
  conf = rng.uniform(0.01, 1, size=(models, examples, 2))
  keep = rng.random((models, examples)) < 0.5
  keep[:2], keep[2:4] = True, False
  pop = rng.uniform(0.01, 1, size=(models, 70, 2)) if with_population else None
  loo = np.asarray(
    attacks.leave_one_out(conf, keep, attack=attack, population=pop)
  )
  direct = []
  for t in range(models):
    o = np.arange(models) != t
    p = None if pop is None else (pop[o], pop[t : t + 1])
    direct.append(
      rmia_numpy(
        conf[o], keep[o], conf[t : t + 1], 0.3, 2.0, attack == "rmia_offline", p
      )[0]
    )
  np.testing.assert_allclose(loo, np.stack(direct), rtol=1e-6, atol=0)


# ------------------------------------------------------------ public cores


def fit_numpy(shadow, keep, fix_variance):
  """LiRA's IN and OUT Gaussians per example and query, float64:
  [(loc, sd) for IN, (loc, sd) for OUT], each float[examples, queries]."""
  fits = []
  for mask in (keep, ~keep):
    groups = [shadow[mask[:, j], j, :] for j in range(shadow.shape[1])]
    loc = np.array([g.mean(0) for g in groups])
    if fix_variance:
      ss = sum(((g - g.mean(0)) ** 2).sum(0) for g in groups)
      var = np.broadcast_to(ss / sum(len(g) - 1 for g in groups), loc.shape)
    else:
      var = np.array([g.var(0, ddof=1) for g in groups])
    fits.append((loc, np.maximum(np.sqrt(var), 1e-6 * (1 + np.abs(loc)))))
  return fits


@pytest.mark.parametrize("fix_variance", [False, True])
def test_lira_fit_matches_float64_numpy(fix_variance):
  shadow, keep = ragged(11, 30, 3, seed=31)
  shadow[:, 4] = 2.5  # constant scores: the std floor decides
  (loc_in, sd_in), (loc_out, sd_out) = fit_numpy(shadow, keep, fix_variance)
  with jax.enable_x64(True):
    fit = attacks.lira_fit(shadow, keep, fix_variance=fix_variance)
    assert fit.std_in.dtype == np.float64
    np.testing.assert_allclose(fit.center + fit.mean_in, loc_in, rtol=1e-12)
    np.testing.assert_allclose(fit.center + fit.mean_out, loc_out, rtol=1e-12)
    np.testing.assert_allclose(fit.std_in, sd_in, rtol=1e-10)
    np.testing.assert_allclose(fit.std_out, sd_out, rtol=1e-10)
  np.testing.assert_array_equal(fit.n_in, keep.sum(0))
  np.testing.assert_array_equal(fit.n_out, (~keep).sum(0))
  fit32 = attacks.lira_fit(
    shadow.astype(np.float32), keep, fix_variance=fix_variance
  )
  assert fit32.std_out.dtype == np.float32
  np.testing.assert_allclose(fit32.std_out, sd_out, rtol=2e-5)


def lira_cases():
  shadow, keep = ragged(10, 40, 3, seed=32)
  target = np.random.default_rng(33).normal(0, 3, size=(5, 40, 3))
  return shadow.astype(np.float32), keep, target.astype(np.float32)


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("fix_variance", [False, True])
def test_lira_cores_under_jit_and_vmap_equal_wrappers(offline, fix_variance):
  shadow, keep, target = lira_cases()
  wrapper = attacks.lira_offline if offline else attacks.lira_online
  want = np.asarray(wrapper(shadow, keep, target, fix_variance=fix_variance))
  score = attacks.lira_offline_score if offline else attacks.lira_online_score

  @jax.jit
  def audit(shadow, keep, target, fix_variance):
    # fix_variance arrives traced: the fit must not branch on it in Python.
    fit = attacks.lira_fit(shadow, keep, fix_variance=fix_variance)
    return jax.vmap(score, in_axes=(None, 0))(fit, target)

  got = np.asarray(audit(shadow, keep, target, fix_variance))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  fit = jax.jit(attacks.lira_fit)(shadow, keep, fix_variance=fix_variance)
  one = np.asarray(jax.jit(score)(fit, target[2]))
  np.testing.assert_allclose(one, want[2], rtol=1e-6, atol=1e-6)
  # Guard against a vacuous comparison: the fixed and per-example fits differ.
  other = np.asarray(
    wrapper(shadow, keep, target, fix_variance=not fix_variance)
  )
  assert np.abs(other - want).max() > 1e-2


def test_lira_scores_accept_one_query_as_1d():
  shadow, keep, target = lira_cases()
  fit = attacks.lira_fit(shadow[..., :1], keep)
  want = np.asarray(attacks.lira_online(shadow[..., :1], keep, target[..., :1]))
  got = jax.vmap(attacks.lira_online_score, in_axes=(None, 0))(
    fit, target[..., 0]
  )
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"target_scores must be float\[40, 1\]"):
    attacks.lira_offline_score(fit, target[0, :-1, 0])
  with pytest.raises(ValueError, match="keep must be bool"):
    attacks.lira_fit(shadow, keep.astype(np.int8))


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("with_population", [False, True])
def test_rmia_cores_under_jit_and_vmap_equal_wrapper(offline, with_population):
  rng = np.random.default_rng(34)
  models, examples, queries, targets = 8, 60, 2, 4
  ref = rng.uniform(0.01, 1, size=(models, examples, queries))
  keep = rng.random((models, examples)) < 0.5
  keep[0], keep[1] = True, False
  target = rng.uniform(0.01, 1, size=(targets, examples, queries))
  pop = None
  if with_population:
    pop = (
      rng.uniform(0.01, 1, size=(models, 50, queries)),
      rng.uniform(0.01, 1, size=(targets, 50, queries)),
    )
  want = np.asarray(
    attacks.rmia(
      ref, keep, target, a=0.4, gamma=1.5, population_conf=pop, offline=offline
    )
  )
  np.testing.assert_allclose(
    want, rmia_numpy(ref, keep, target, 0.4, 1.5, offline, pop), atol=1e-6
  )

  @jax.jit
  def audit(ref, keep, target, pop, offline):
    fit = attacks.rmia_fit(
      ref, keep, None if pop is None else pop[0], a=0.4, offline=offline
    )
    score = functools.partial(attacks.rmia_score, gamma=1.5)
    if pop is None:
      return jax.vmap(score, in_axes=(None, 0))(fit, target)
    return jax.vmap(score, in_axes=(None, 0, 0))(fit, target, pop[1])

  got = np.asarray(audit(ref, keep, target, pop, offline))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert np.unique(want).size > examples // 2  # not a constant score


def test_rmia_core_argument_errors():
  ref = np.full((3, 5, 1), 0.5)
  with pytest.raises(ValueError, match="needs keep"):
    attacks.rmia_fit(ref, offline=True)
  fit = attacks.rmia_fit(ref)
  with pytest.raises(ValueError, match="target_population_probs"):
    attacks.rmia_score(fit, ref[0], ref[0])
  with pytest.raises(ValueError, match=r"target_probs must be float\[5, q"):
    attacks.rmia_score(fit, ref[0, :4])


# ------------------------------------------------------------------ errors


def test_global_threshold_is_query_mean():
  x = np.random.default_rng(0).normal(size=(3, 5, 4))
  np.testing.assert_allclose(
    np.asarray(attacks.global_threshold(x)), x.mean(-1), rtol=1e-6
  )


def test_too_few_in_or_out_scores_raise():
  shadow, keep = ragged(9, 23, 1, seed=0)
  keep = keep.copy()
  keep[:, 5] = False
  keep[0, 5] = True  # example 5: one IN score
  target = shadow[:2]
  with pytest.raises(
    ValueError, match=r"2 IN .* 1 of 23 examples .* example 5 has 1"
  ):
    attacks.lira_online(shadow, keep, target)
  with pytest.raises(ValueError, match="IN"):
    attacks.lira_online(shadow, keep, target, variant="reference")
  # Offline ignores IN counts; fixed variance needs only one IN score.
  assert np.all(
    np.isfinite(np.asarray(attacks.lira_offline(shadow, keep, target)))
  )
  assert np.all(
    np.isfinite(
      np.asarray(attacks.lira_online(shadow, keep, target, fix_variance=True))
    )
  )
  keep[:, 7] = True
  keep[0, 7] = False  # example 7: one OUT score
  with pytest.raises(ValueError, match=r"2 OUT .* example 7 has 1"):
    attacks.lira_offline(shadow, keep, target)
  with pytest.raises(ValueError, match="leave_one_out"):
    attacks.leave_one_out(shadow, keep, attack="lira_offline")


def test_leave_one_out_needs_three():
  scores, keep = ragged(9, 23, 1, seed=0, min_count=3)
  keep = keep.copy()
  keep[:, 3] = False
  keep[:2, 3] = True  # two IN models: one left when either is the target
  with pytest.raises(
    ValueError, match=r"after removing the target.* example 3 has 1"
  ):
    attacks.leave_one_out(scores, keep, attack="lira_online")
  assert attacks.leave_one_out(
    scores, keep, attack="lira_online", fix_variance=True
  ).shape == (9, 23)


def _with_thin_examples(models, examples, queries, seed, in_counts):
  """ragged() (at least 3 IN and 3 OUT models per example) with the examples
  of in_counts {example: IN models} changed; the models [0, n) are IN."""
  scores, keep = ragged(models, examples, queries, seed=seed, min_count=3)
  keep = keep.copy()
  for i, n in in_counts.items():
    keep[:, i] = np.arange(models) < n
  return scores, keep


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("fix_variance", [False, True])
def test_too_few_shadows_nan_scores_the_rest_as_if_alone(offline, fix_variance):
  # Example 2 has no IN model, 5 one OUT model, 13 no OUT model.
  shadow, keep = _with_thin_examples(11, 40, 2, 41, {2: 0, 5: 10, 13: 11})
  target = np.random.default_rng(42).normal(0, 3, size=(3, 40, 2))
  fn = attacks.lira_offline if offline else attacks.lira_online
  with pytest.raises(ValueError, match="shadow score"):
    fn(shadow, keep, target, fix_variance=fix_variance)
  got = np.asarray(
    fn(shadow, keep, target, fix_variance=fix_variance, too_few_shadows="nan")
  )
  need = 1 if fix_variance else 2
  ok = (~keep).sum(0) >= need
  if not offline:
    ok &= keep.sum(0) >= need
  assert (~ok).sum() == (2 if offline else 3) - fix_variance
  assert got.shape == (3, 40) and got.dtype == np.float32
  np.testing.assert_array_equal(np.isnan(got), np.broadcast_to(~ok, got.shape))
  # Independent float64 numbers of the attack on the scorable examples
  # alone: an unscored example's spread is not in the pooled variance.
  want = miajax_numpy(
    shadow[:, ok], keep[:, ok], target[:, ok], offline, fix_variance
  )
  np.testing.assert_allclose(
    got[:, ok], want, rtol=2e-4, atol=2e-4 * np.abs(want).max()
  )
  ref = np.asarray(
    fn(
      shadow,
      keep,
      target,
      fix_variance=fix_variance,
      variant="reference",
      too_few_shadows="nan",
    )
  )
  assert ref.dtype == np.float64
  np.testing.assert_allclose(
    ref[:, ok],
    reference_numpy(
      shadow[:, ok], keep[:, ok], target[:, ok], offline, fix_variance
    ),
    rtol=1e-9,
  )
  assert np.isnan(ref[:, ~ok]).all()


@pytest.mark.parametrize("attack", ["lira_online", "lira_offline"])
@pytest.mark.parametrize("balanced", [False, True])
def test_leave_one_out_too_few_shadows_nan_matches_numpy(attack, balanced):
  # One OUT model at example 5, two IN at 11, two OUT at 13; none empty
  # (loo_numpy would drop a partner from an empty group).
  scores, keep = _with_thin_examples(10, 45, 2, 43, {5: 9, 11: 2, 13: 8})
  scores = scores.astype(np.float32)
  offline = attack == "lira_offline"
  got = np.asarray(
    attacks.leave_one_out(
      scores, keep, attack=attack, balanced=balanced, too_few_shadows="nan"
    )
  )
  # Once the target is gone: >= 2 left of each group, so 3 models.
  ok = (~keep).sum(0) >= 3
  if not offline:
    ok &= keep.sum(0) >= 3
  assert (~ok).sum() == (2 if offline else 3)
  np.testing.assert_array_equal(np.isnan(got), np.broadcast_to(~ok, got.shape))
  want = loo_numpy(
    scores[:, ok].astype(np.float64), keep[:, ok], offline, False, balanced
  )
  np.testing.assert_allclose(
    got[:, ok], want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
  )
  ref = np.asarray(
    attacks.leave_one_out(
      scores, keep, attack=attack, variant="reference", too_few_shadows="nan"
    )
  )
  np.testing.assert_array_equal(np.isnan(ref), np.isnan(got))
  np.testing.assert_array_equal(
    ref[:, ok],
    attacks.leave_one_out(
      scores[:, ok], keep[:, ok], attack=attack, variant="reference"
    ),
  )


def test_rmia_too_few_shadows_nan():
  rng = np.random.default_rng(44)
  conf = rng.uniform(0.01, 1, size=(8, 60, 2))
  keep = rng.random((8, 60)) < 0.5
  keep[:, 7] = True  # no OUT model: offline RMIA cannot score it
  keep[:7, 9] = True  # one OUT model, none once it is the target
  keep[7, 9] = False
  with pytest.raises(ValueError, match="OUT"):
    attacks.rmia(conf[:6], keep[:6], conf[6:], offline=True)
  got = np.asarray(
    attacks.rmia(
      conf[:6], keep[:6], conf[6:], offline=True, too_few_shadows="nan"
    )
  )
  ok = (~keep[:6]).sum(0) >= 1
  assert not ok[7] and not ok[9] and ok.sum() > 50
  np.testing.assert_array_equal(np.isnan(got), np.broadcast_to(~ok, got.shape))
  # The scorable examples alone, also as the population.
  want = rmia_numpy(conf[:6, ok], keep[:6, ok], conf[6:, ok], 0.3, 2.0, True)
  np.testing.assert_allclose(got[:, ok], want, rtol=1e-6, atol=0)
  loo = np.asarray(
    attacks.leave_one_out(
      conf, keep, attack="rmia_offline", too_few_shadows="nan"
    )
  )
  ok = (~keep).sum(0) >= 2  # one OUT model left when a target is removed
  assert not ok[7] and not ok[9]
  np.testing.assert_array_equal(np.isnan(loo), np.broadcast_to(~ok, loo.shape))
  # Online RMIA needs no OUT model: "nan" changes nothing.
  np.testing.assert_array_equal(
    attacks.leave_one_out(conf, keep, attack="rmia", too_few_shadows="nan"),
    attacks.leave_one_out(conf, keep, attack="rmia"),
  )


def test_too_few_shadows_nothing_scorable_and_bad_values():
  scores, keep = ragged(9, 23, 1, seed=0)
  # fix_variance with no example holding 2 OUT scores: no pooled variance.
  thin = np.zeros_like(keep)
  thin[1:] = True
  got = np.asarray(
    attacks.lira_offline(
      scores, thin, scores[:2], fix_variance=True, too_few_shadows="nan"
    )
  )
  assert got.shape == (2, 23) and got.dtype == np.float32
  assert np.isnan(got).all()
  assert np.isnan(
    attacks.leave_one_out(scores, thin, too_few_shadows="nan")
  ).all()
  for bad in ("skip", None, True):
    with pytest.raises(ValueError, match="too_few_shadows must be one of"):
      attacks.lira_online(scores, keep, scores[:2], too_few_shadows=bad)
    with pytest.raises(ValueError, match="too_few_shadows"):
      attacks.leave_one_out(scores, keep, too_few_shadows=bad)
    with pytest.raises(ValueError, match="too_few_shadows"):
      attacks.rmia(
        1 / (1 + np.exp(-scores)),
        keep,
        0.5 * np.ones((1, 23, 1)),
        too_few_shadows=bad,
      )


def test_bad_inputs_raise():
  shadow, keep = ragged(9, 23, 1, seed=0)
  target = shadow[:2]
  with pytest.raises(ValueError, match="shadow_keep"):
    attacks.lira_online(shadow, keep.astype(int), target)
  with pytest.raises(ValueError, match="shadow_keep"):
    attacks.lira_online(shadow, keep[:, :-1], target)
  with pytest.raises(ValueError, match="target_scores"):
    attacks.lira_online(shadow, keep, target[:, :-1])
  with pytest.raises(ValueError, match="shadow_scores"):
    attacks.lira_offline(shadow[..., 0], keep, target)
  with pytest.raises(ValueError, match="shadow_scores"):
    attacks.lira_online(shadow.astype(bool), keep, target)
  bad = shadow.copy()
  bad[2, 4, 0] = np.nan
  with pytest.raises(
    ValueError, match=r"shadow_scores must be finite.*\(2, 4, 0\)"
  ):
    attacks.lira_online(bad, keep, target)
  with pytest.raises(ValueError, match="target_scores must be finite"):
    attacks.lira_offline(shadow, keep, np.full_like(target, np.inf))
  with pytest.raises(ValueError, match="variant"):
    attacks.lira_online(shadow, keep, target, variant="paper")
  with pytest.raises(ValueError, match="attack"):
    attacks.leave_one_out(shadow, keep, attack="lira")
  with pytest.raises(ValueError, match="keep"):
    attacks.leave_one_out(shadow, keep.astype(np.int8))
  with pytest.raises(ValueError, match="target_scores must be finite"):
    attacks.global_threshold(np.full((2, 3, 1), np.nan))
  conf = 1 / (1 + np.exp(-shadow))
  with pytest.raises(ValueError, match=r"shadow_conf .*\[0, 1\]"):
    attacks.rmia(shadow, keep, conf[:2])
  with pytest.raises(ValueError, match="gamma"):
    attacks.rmia(conf, keep, conf[:2], gamma=0)
  with pytest.raises(ValueError, match="population_conf"):
    attacks.rmia(conf, keep, conf[:2], population_conf=conf)
  with pytest.raises(ValueError, match="variant"):
    attacks.leave_one_out(conf, keep, attack="rmia", variant="reference")
  with pytest.raises(ValueError, match="fix_variance"):
    attacks.leave_one_out(conf, keep, attack="rmia", fix_variance=True)
