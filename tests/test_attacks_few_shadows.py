"""BASE and BaVarIA (miajax.attacks) against independent float64 numpy/scipy formulas.

BASE: Lassila, Östman, Ngo, NeurIPS 2025 (arXiv:2505.24089). BaVarIA:
Brännvall, arXiv:2603.11799 (2026). The numpy references below are written
from the papers' formulas, per example, without the cores' vectorisation.
"""

import functools

import jax
import numpy as np
import pytest
import scipy.stats
from scipy.special import log_softmax, logsumexp
from sklearn.metrics import roc_auc_score

import miajax
from miajax import attacks

BASE_ATTACKS = ("base", "base_offline")
BAVARIA_ATTACKS = (
  "bavaria_t",
  "bavaria_n",
  "bavaria_t_offline",
  "bavaria_n_offline",
)


# ------------------------------------------------------------------- data


def thin_groups(models=9, examples=40, queries=3, seed=0):
  """Random scores and keep with ragged IN counts, and at examples 0-3 an IN
  group of 0 and 1 scores, an OUT group of 0 and 1 scores."""
  rng = np.random.default_rng(seed)
  counts = rng.integers(2, models - 1, size=examples)
  counts[:4] = [0, 1, models, models - 1]
  keep = rng.random((models, examples)).argsort(0) < counts
  loc = rng.normal(0, 3, size=(1, examples, 1))
  scale = rng.uniform(0.3, 2, size=(1, examples, 1))
  noise = rng.normal(size=(models, examples, queries))
  scores = loc + scale * noise + 0.8 * keep[..., None]
  target = loc + scale * rng.normal(size=(4, examples, queries))
  return scores, keep, target


def log_probs(models, examples, queries, seed):
  """Random true-label log-probabilities in [log 0.01, 0]."""
  rng = np.random.default_rng(seed)
  return np.log(rng.uniform(0.01, 1, size=(models, examples, queries)))


# ------------------------------------------------- numpy, from the papers


def nig_posterior(x, pooled, alpha0, kappa0, prior_only=False):
  """NIG(mu0, kappa0, alpha0, beta0) updated by one example's scores.

  x float[n, queries] (n may be 0), pooled float[count, queries] the
  group's scores over all examples. Returns (xbar, mu_n, kappa_n, alpha_n,
  beta_n); xbar is mu0 without scores.
  """
  mu0, v = pooled.mean(0), pooled.var(0)
  beta0 = v * (alpha0 - 1) if alpha0 > 1 else v
  n = 0 if prior_only else len(x)
  if n == 0:
    return mu0, mu0, kappa0, alpha0, beta0
  xbar = x.mean(0)
  ss = ((x - xbar) ** 2).sum(0)
  kappa_n = kappa0 + n
  mu_n = (kappa0 * mu0 + n * xbar) / kappa_n
  beta_n = beta0 + ss / 2 + kappa0 * n * (xbar - mu0) ** 2 / (2 * kappa_n)
  return xbar, mu_n, kappa_n, alpha0 + n / 2, beta_n


def group_logpdf(y, post, kind):
  xbar, mu, kappa, alpha, beta = post
  if kind == "n":
    var = beta / (alpha - 1) if alpha > 1 else beta
    return scipy.stats.norm.logpdf(y, xbar, np.sqrt(var))
  scale = np.sqrt(beta * (kappa + 1) / (alpha * kappa))
  return scipy.stats.t.logpdf(y, 2 * alpha, mu, scale)


def bavaria_numpy(
  shadow, keep, target, kind, offline, alpha0, kappa0=1.0, use=None
):
  """float[targets, examples]: mean over queries of the IN/OUT log ratio.

  use: optional bool[models, examples], which shadow scores count at all.
  """
  use = np.ones(keep.shape, bool) if use is None else use
  out = np.zeros(target.shape[:2])
  for group, mask in (("in", keep & use), ("out", ~keep & use)):
    pooled = shadow[mask]
    for i in range(shadow.shape[1]):
      post = nig_posterior(
        shadow[mask[:, i], i],
        pooled,
        alpha0,
        kappa0,
        prior_only=offline and group == "in",
      )
      lp = group_logpdf(target[:, i], post, kind).mean(-1)
      out[:, i] += lp if group == "in" else -lp
  return out


def base_numpy(shadow, keep, target, offline, scale, use=None):
  """BASE1: log p_target - log mean_j p_j (offline: scale * log mean_OUT)."""
  use = np.ones(keep.shape, bool) if use is None else use
  refs = (~keep & use) if offline else use
  out = np.zeros(target.shape[:2])
  for i in range(shadow.shape[1]):
    x = shadow[refs[:, i], i]
    thr = logsumexp(x, axis=0) - np.log(len(x))
    thr = scale * thr if offline else thr
    out[:, i] = (target[:, i] - thr).mean(-1)
  return out


def loo_numpy(fn, scores, keep, balanced, seed=0, **kw):
  """Leave-one-out by refitting per target; balanced also drops, per example,
  the partner model where it is in the target's other group."""
  models, examples = keep.shape
  partners = np.asarray(attacks.leave_one_out_partners(keep, seed=seed))
  cols = np.arange(examples)
  rows = []
  for t in range(models):
    use = np.ones(keep.shape, bool)
    use[t] = False
    if balanced:
      p = partners[t]
      other = keep[p, cols] != keep[t]
      use[p[other], cols[other]] = False
    rows.append(fn(scores, keep, scores[t : t + 1], use=use, **kw)[0])
  return np.stack(rows)


# ------------------------------------------------------- BaVarIA: formulas


@pytest.mark.parametrize("kind", ["t", "n"])
@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("alpha0", [None, 0.5, 3.0])
def test_bavaria_matches_float64_numpy(kind, offline, alpha0):
  shadow, keep, target = thin_groups(seed=1)
  a0 = {"t": 2.0, "n": 1.0}[kind] if alpha0 is None else alpha0
  want = bavaria_numpy(shadow, keep, target, kind, offline, a0)
  assert np.all(np.isfinite(want))
  with jax.enable_x64(True):
    got = attacks.bavaria(
      shadow, keep, target, kind=kind, offline=offline, alpha0=alpha0
    )
    assert got.dtype == np.float64 and got.shape == (4, 40)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  got32 = np.asarray(
    attacks.bavaria(
      shadow, keep, target, kind=kind, offline=offline, alpha0=alpha0
    )
  )
  assert got32.dtype == np.float32
  np.testing.assert_allclose(
    got32, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
  )


def test_bavaria_fit_matches_float64_numpy_with_two_axes():
  # [references, examples] scores: one query.
  shadow, keep, _ = thin_groups(queries=1, seed=2)
  shadow = shadow[..., 0]
  with jax.enable_x64(True):
    fit = attacks.bavaria_fit(shadow, keep, alpha0=2.0)
    assert fit.beta_in.shape == (40, 1)
    for group, mask in (("in", keep), ("out", ~keep)):
      for i in range(40):
        xbar, mu, kappa, alpha, beta = nig_posterior(
          shadow[mask[:, i], i][:, None], shadow[mask][:, None], 2.0, 1.0
        )
        got = [getattr(fit, f"{f}_{group}")[i] for f in ("loc", "mu")]
        np.testing.assert_allclose(got, [xbar, mu], rtol=1e-12, atol=1e-12)
        got = getattr(fit, f"beta_{group}")[i]
        np.testing.assert_allclose(got, beta, rtol=1e-12)
        assert getattr(fit, f"kappa_{group}")[i] == kappa
        assert getattr(fit, f"alpha_{group}")[i] == alpha
  np.testing.assert_array_equal(fit.n_in, keep.sum(0))
  np.testing.assert_array_equal(fit.n_out, (~keep).sum(0))
  off = attacks.bavaria_fit(shadow, keep, offline=True)
  np.testing.assert_array_equal(off.n_in, 0)
  np.testing.assert_allclose(off.loc_in, shadow[keep].mean(), rtol=1e-6)


def test_bavaria_empty_and_single_groups_are_finite():
  shadow, keep, target = thin_groups(seed=3)
  for kind in ("t", "n"):
    for offline in (False, True):
      got = np.asarray(
        attacks.bavaria(shadow, keep, target, kind=kind, offline=offline)
      )
      assert np.all(np.isfinite(got)), (kind, offline)
  # An example without IN scores is scored against the IN prior alone,
  # exactly as offline scores every example.
  on = attacks.bavaria(shadow, keep, target)
  off = attacks.bavaria(shadow, keep, target, offline=True)
  np.testing.assert_allclose(on[:, 0], off[:, 0], rtol=1e-5)
  # Constant scores: the floored pooled variance keeps them finite.
  flat = np.full_like(shadow, 2.5)
  assert np.all(np.isfinite(np.asarray(attacks.bavaria(flat, keep, target))))


@pytest.mark.parametrize("kind", ["t", "n"])
@pytest.mark.parametrize("offline", [False, True])
def test_bavaria_cores_under_jit_and_vmap_equal_wrapper(kind, offline):
  shadow, keep, target = thin_groups(seed=4)
  shadow, target = shadow.astype(np.float32), target.astype(np.float32)
  want = np.asarray(
    attacks.bavaria(shadow, keep, target, kind=kind, offline=offline)
  )
  score = functools.partial(attacks.bavaria_score, kind=kind)

  @jax.jit
  def audit(shadow, keep, target, alpha0, offline):
    # alpha0 and offline arrive traced: the fit must not branch on them.
    fit = attacks.bavaria_fit(shadow, keep, alpha0=alpha0, offline=offline)
    return jax.vmap(score, in_axes=(None, 0))(fit, target)

  a0 = {"t": 2.0, "n": 1.0}[kind]
  got = np.asarray(audit(shadow, keep, target, a0, offline))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  fit = jax.jit(attacks.bavaria_fit)(shadow, keep, alpha0=a0, offline=offline)
  one = np.asarray(jax.jit(score)(fit, target[2]))
  np.testing.assert_allclose(one, want[2], rtol=1e-5, atol=1e-5)
  # Not vacuous: online and offline, t and n differ.
  other = attacks.bavaria(
    shadow, keep, target, kind="n" if kind == "t" else "t", offline=offline
  )
  assert np.abs(np.asarray(other) - want).max() > 1e-2
  flipped = attacks.bavaria(
    shadow, keep, target, kind=kind, offline=not offline
  )
  assert np.abs(np.asarray(flipped) - want).max() > 1e-2


def test_bavaria_score_accepts_one_query_as_1d_and_checks_shapes():
  shadow, keep, target = thin_groups(queries=1, seed=5)
  fit = attacks.bavaria_fit(shadow, keep)
  want = np.asarray(attacks.bavaria(shadow, keep, target))
  got = jax.vmap(attacks.bavaria_score, in_axes=(None, 0))(fit, target[..., 0])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"target_scores must be float\[40, 1\]"):
    attacks.bavaria_score(fit, target[0, :-1, 0])
  with pytest.raises(ValueError, match="kind must be one of"):
    attacks.bavaria_score(fit, target[0], kind="gauss")
  with pytest.raises(ValueError, match="keep must be bool"):
    attacks.bavaria_fit(shadow, keep.astype(np.int8))
  with pytest.raises(ValueError, match="shadow_scores must be float"):
    attacks.bavaria_fit(shadow[0, 0], keep)


def test_bavaria_wrapper_errors_name_the_argument():
  shadow, keep, target = thin_groups(seed=6)
  with pytest.raises(ValueError, match="shadow_keep"):
    attacks.bavaria(shadow, keep.astype(int), target)
  with pytest.raises(ValueError, match="target_scores"):
    attacks.bavaria(shadow, keep, target[:, :-1])
  with pytest.raises(ValueError, match=r"shadow_scores must be finite"):
    attacks.bavaria(np.where(keep[..., None], np.nan, shadow), keep, target)
  with pytest.raises(ValueError, match="kind must be one of"):
    attacks.bavaria(shadow, keep, target, kind="T")
  for bad in (0, -1.0, np.inf, True):
    with pytest.raises(ValueError, match="alpha0 must be"):
      attacks.bavaria(shadow, keep, target, alpha0=bad)
  with pytest.raises(ValueError, match="kappa0 must be"):
    attacks.bavaria(shadow, keep, target, kappa0=0)
  # No IN score anywhere: no IN prior, online or offline.
  none_in = np.zeros_like(keep)
  none_in[0, 0] = True
  for offline in (False, True):
    with pytest.raises(ValueError, match=r"2 IN scores pooled .* has 1"):
      attacks.bavaria(shadow, none_in, target, offline=offline)
  with pytest.raises(ValueError, match="OUT scores pooled"):
    attacks.bavaria(shadow, ~none_in, target)


# ---------------------------------------------------------- BASE: formulas


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("scale", [0.33, 1.0, 0.0])
def test_base_matches_float64_numpy(offline, scale):
  _, keep, _ = thin_groups(seed=7)
  keep[:, 2:4] = False  # offline needs an OUT reference per example
  shadow = log_probs(9, 40, 3, seed=7)
  target = log_probs(4, 40, 3, seed=8)
  want = base_numpy(shadow, keep, target, offline, scale)
  with jax.enable_x64(True):
    got = attacks.base(shadow, keep, target, offline=offline, scale=scale)
    assert got.dtype == np.float64 and got.shape == (4, 40)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  got32 = np.asarray(
    attacks.base(shadow, keep, target, offline=offline, scale=scale)
  )
  np.testing.assert_allclose(got32, want, rtol=1e-5, atol=1e-5)


def test_base_log_mean_is_stable_for_confident_models():
  # Log-probabilities near 0 and near -1e3: p underflows float32, the
  # log-sum-exp does not.
  rng = np.random.default_rng(9)
  shadow = -np.abs(rng.normal(0, 1e-6, size=(6, 20, 1)))
  shadow[:, 10:] -= 1000
  target = shadow[:2] + rng.normal(0, 1e-7, size=(2, 20, 1)).clip(max=0)
  got = np.asarray(
    attacks.base(shadow.astype(np.float32), np.ones((6, 20), bool), target)
  )
  want = base_numpy(shadow, np.ones((6, 20), bool), target, False, 1.0)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize("offline", [False, True])
def test_base_cores_under_jit_and_vmap_equal_wrapper(offline):
  rng = np.random.default_rng(10)
  shadow = log_probs(8, 60, 2, seed=10).astype(np.float32)
  target = log_probs(5, 60, 2, seed=11).astype(np.float32)
  keep = rng.random((8, 60)) < 0.5
  keep[0] = False
  want = np.asarray(attacks.base(shadow, keep, target, offline=offline))

  @jax.jit
  def audit(shadow, keep, target, offline, scale):
    fit = attacks.base_fit(shadow, keep, offline=offline, scale=scale)
    return jax.vmap(attacks.base_score, in_axes=(None, 0))(fit, target)

  got = np.asarray(audit(shadow, keep, target, offline, 0.33))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  fit = attacks.base_fit(shadow[..., :1], keep, offline=offline)
  one = np.asarray(attacks.base_score(fit, target[3, :, 0]))
  np.testing.assert_allclose(
    one,
    base_numpy(shadow[..., :1], keep, target[3:4, :, :1], offline, 0.33)[0],
    rtol=1e-5,
    atol=1e-5,
  )
  np.testing.assert_array_equal(
    fit.n_ref, (~keep).sum(0) if offline else np.full(60, 8)
  )
  with pytest.raises(ValueError, match="needs keep"):
    attacks.base_fit(shadow, offline=True)
  with pytest.raises(
    ValueError, match=r"target_log_conf must be float\[60, 1\]"
  ):
    attacks.base_score(fit, target[0, :-1, 0])


def test_base_signal_is_temperature_scaled_log_softmax():
  rng = np.random.default_rng(12)
  logits = rng.normal(0, 5, size=(3, 7, 2, 10))
  labels = rng.integers(0, 10, size=7)
  for temperature in (1.0, 2.0, 0.5):
    got = np.asarray(
      attacks.base_signal(
        logits, labels[None, :, None], temperature=temperature
      )
    )
    want = np.take_along_axis(
      log_softmax(logits / temperature, axis=-1),
      np.broadcast_to(labels[None, :, None, None], (3, 7, 2, 1)),
      axis=-1,
    )[..., 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    np.exp(attacks.base_signal(logits, labels[None, :, None])),
    miajax.confidence(logits, labels[None, :, None]),
    rtol=1e-5,
  )
  for bad in (0, -1.0, np.nan, True):
    with pytest.raises(ValueError, match="temperature must be"):
      attacks.base_signal(logits, labels[None, :, None], temperature=bad)


def test_base_wrapper_errors_and_too_few_shadows():
  rng = np.random.default_rng(13)
  shadow = log_probs(6, 30, 1, seed=13)
  keep = rng.random((6, 30)) < 0.5
  keep[:, 4] = True  # no OUT reference: offline cannot score it
  target = log_probs(3, 30, 1, seed=14)
  with pytest.raises(ValueError, match=r"shadow_log_conf must hold log-prob"):
    attacks.base(np.exp(shadow), keep, target)
  with pytest.raises(ValueError, match=r"target_log_conf must hold log-prob"):
    attacks.base(shadow, keep, np.exp(target))
  with pytest.raises(ValueError, match="shadow_keep"):
    attacks.base(shadow, keep[:, 1:], target)
  with pytest.raises(ValueError, match="scale must be"):
    attacks.base(shadow, keep, target, scale=1.5)
  # Online needs no OUT reference.
  assert np.all(np.isfinite(np.asarray(attacks.base(shadow, keep, target))))
  with pytest.raises(ValueError, match=r"1 OUT .* example 4 has 0"):
    attacks.base(shadow, keep, target, offline=True)
  got = np.asarray(
    attacks.base(shadow, keep, target, offline=True, too_few_shadows="nan")
  )
  ok = (~keep).sum(0) >= 1
  np.testing.assert_array_equal(np.isnan(got), np.broadcast_to(~ok, got.shape))
  np.testing.assert_allclose(
    got[:, ok],
    base_numpy(shadow[:, ok], keep[:, ok], target[:, ok], True, 0.33),
    rtol=1e-5,
    atol=1e-5,
  )
  with pytest.raises(ValueError, match="too_few_shadows"):
    attacks.base(shadow, keep, target, too_few_shadows="skip")


# ------------------------------------------------- BASE ranks as RMIA does


def count_below(x):
  """int[targets, examples]: per target, how many examples score strictly
  below each one."""
  return (x[:, None, :] < x[:, :, None]).sum(-1)


def test_base_ranks_exactly_as_rmia_with_gamma_1():
  # One query, no population samples, gamma = 1: RMIA's score is the
  # fraction of examples z with ratio(z) < ratio(x), ratio = p / mean_ref p,
  # and BASE's is log ratio(x). Offline, scale = 1 and a = 1 give the same
  # Pr(x) = mean_OUT p.
  rng = np.random.default_rng(15)
  shadow = rng.uniform(0.01, 1, size=(8, 200, 1))
  target = rng.uniform(0.01, 1, size=(5, 200, 1))
  keep = rng.random((8, 200)) < 0.5
  keep[0] = False
  with jax.enable_x64(True):
    for offline in (False, True):
      b = np.asarray(
        attacks.base(
          np.log(shadow), keep, np.log(target), offline=offline, scale=1.0
        )
      )
      r = np.asarray(
        attacks.rmia(shadow, keep, target, gamma=1.0, a=1.0, offline=offline)
      )
      np.testing.assert_array_equal(np.round(200 * r), count_below(b))


# ------------------------------------------------------------ leave-one-out


def _wrapper(attack):
  if attack in BASE_ATTACKS:
    return functools.partial(attacks.base, offline=attack == "base_offline")
  kind = attack.split("_")[1]
  return functools.partial(
    attacks.bavaria, kind=kind, offline=attack.endswith("offline")
  )


def _numpy(attack):
  if attack in BASE_ATTACKS:
    return functools.partial(
      base_numpy, offline=attack == "base_offline", scale=0.33
    )
  kind = attack.split("_")[1]
  return functools.partial(
    bavaria_numpy,
    kind=kind,
    offline=attack.endswith("offline"),
    alpha0={"t": 2.0, "n": 1.0}[kind],
  )


def _loo_data(attack, seed):
  shadow, keep, _ = thin_groups(models=10, examples=35, queries=2, seed=seed)
  keep[:, 2:4] = keep[:, 4:6]  # every example keeps >= 2 OUT models
  if attack in BASE_ATTACKS:
    shadow = log_probs(10, 35, 2, seed=seed)
  return shadow.astype(np.float32), keep


@pytest.mark.parametrize("attack", BASE_ATTACKS + BAVARIA_ATTACKS)
def test_leave_one_out_equals_per_target_runs(attack):
  scores, keep = _loo_data(attack, seed=16)
  loo = np.asarray(
    attacks.leave_one_out(scores, keep, attack=attack, balanced=False)
  )
  fn = _wrapper(attack)
  direct = np.stack(
    [
      np.asarray(fn(scores[o], keep[o], scores[t : t + 1]))[0]
      for t in range(10)
      for o in [np.arange(10) != t]
    ]
  )
  np.testing.assert_allclose(loo, direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attack", BASE_ATTACKS + BAVARIA_ATTACKS)
def test_balanced_leave_one_out_matches_numpy(attack):
  scores, keep = _loo_data(attack, seed=17)
  got = np.asarray(attacks.leave_one_out(scores, keep, attack=attack, seed=3))
  want = loo_numpy(
    _numpy(attack),
    scores.astype(np.float64),
    keep,
    # Online BASE averages all other models: nothing to balance.
    balanced=attack != "base",
    seed=3,
  )
  np.testing.assert_allclose(
    got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
  )


def test_leave_one_out_checks():
  scores, keep = _loo_data("base", seed=18)
  keep[:, 7] = True
  keep[0, 7] = False  # one OUT model: none once it is the target
  with pytest.raises(ValueError, match=r"after removing the target.*example 7"):
    attacks.leave_one_out(scores, keep, attack="base_offline")
  got = np.asarray(
    attacks.leave_one_out(
      scores, keep, attack="base_offline", too_few_shadows="nan"
    )
  )
  assert np.isnan(got[:, 7]).all() and not np.isnan(np.delete(got, 7, 1)).any()
  with pytest.raises(ValueError, match="variant"):
    attacks.leave_one_out(scores, keep, attack="bavaria_t", variant="reference")
  with pytest.raises(ValueError, match="fix_variance"):
    attacks.leave_one_out(scores, keep, attack="bavaria_n", fix_variance=True)
  with pytest.raises(ValueError, match="log-prob"):
    attacks.leave_one_out(np.exp(scores), keep, attack="base")
  thin = np.zeros_like(keep)
  thin[:2, 0] = True  # two IN scores in all: one once a target is removed
  with pytest.raises(ValueError, match=r"2 IN scores pooled"):
    attacks.leave_one_out(scores, thin, attack="bavaria_t")


# ---------------------------------------------------- trained digits models

MODELS = 32


@pytest.fixture(scope="module")
def digits():
  """32 MLPs (64 hidden units, 20 epochs) on all 1297 digits training
  examples in complementary pairs (`paired_keep`): their signals and keep."""
  ds = miajax.load("digits")
  x, y = ds.x_train, ds.y_train
  keep = miajax.paired_keep(MODELS, len(x), seed=0)
  cfg = miajax.TrainConfig(model_kwargs={"widths": (64,)}, epochs=20)
  res = miajax.train_models(cfg, x, y, keep, num_classes=10)
  assert not res.diverged.any()
  logits = miajax.predict(cfg, res.variables, x, num_classes=10)
  labels = y[None, :, None]
  return dict(
    keep=keep,
    conf=np.asarray(miajax.confidence(logits, labels)),
    log_conf=np.asarray(attacks.base_signal(logits, labels)),
    scaled=np.asarray(miajax.logit_scaled(logits, labels)),
  )


def _signal(digits, attack):
  return digits["log_conf" if attack in BASE_ATTACKS else "scaled"]


def test_base_ranks_like_rmia_on_digits(digits):
  # References: the first 16 models; targets: the last 16.
  ref, tgt = slice(0, 16), slice(16, None)
  keep = digits["keep"]
  b = np.asarray(
    attacks.base(digits["log_conf"][ref], keep[ref], digits["log_conf"][tgt])
  )
  r = np.asarray(
    attacks.rmia(digits["conf"][ref], keep[ref], digits["conf"][tgt], gamma=1.0)
  )
  rho = [scipy.stats.spearmanr(b[t], r[t]).statistic for t in range(16)]
  assert min(rho) > 0.99, rho
  # Some examples tie in RMIA (p rounds to 1 in float32), none in BASE.
  assert np.unique(b[0]).size >= np.unique(r[0]).size


@pytest.mark.parametrize("attack", BASE_ATTACKS + BAVARIA_ATTACKS)
def test_null_auc_on_digits(digits, attack):
  # Membership labels from designs the models were not trained with: every
  # attack must be at chance. Two ways: each half of the models the
  # references of the other half, with reference and target labels drawn
  # independently (a reference design where every example is IN for 8 of
  # 16, so no example's counts tell its target labels), and balanced
  # leave-one-out over all 32.
  x = _signal(digits, attack)
  n = x.shape[1]
  fn = _wrapper(attack)
  halves = (slice(0, 16), slice(16, None))
  scores, labels = [], []
  for seed, (ref, tgt) in enumerate((halves, halves[::-1])):
    ref_keep = miajax.lira_keep(16, n, seed=10 + seed)
    scores.append(np.asarray(fn(x[ref], ref_keep, x[tgt])).ravel())
    labels.append(miajax.lira_keep(16, n, seed=20 + seed).ravel())
  auc = roc_auc_score(np.concatenate(labels), np.concatenate(scores))
  assert abs(auc - 0.5) <= 0.01, auc
  fake = miajax.lira_keep(MODELS, n, seed=7)
  loo = np.asarray(attacks.leave_one_out(x, fake, attack=attack)).ravel()
  auc = roc_auc_score(fake.ravel(), loo)
  assert abs(auc - 0.5) <= 0.01, auc


@pytest.mark.parametrize("attack", BASE_ATTACKS + BAVARIA_ATTACKS)
def test_leak_is_detected_on_digits(digits, attack):
  # Leave-one-out on the real design; offline BaVarIA's IN group is the
  # wide pooled prior, which makes it nearly a two-sided test: weaker.
  x = _signal(digits, attack)
  keep = digits["keep"]
  loo = np.asarray(attacks.leave_one_out(x, keep, attack=attack)).ravel()
  auc = roc_auc_score(keep.ravel(), loo)
  assert auc > (0.52 if attack.endswith("offline") else 0.58), auc
