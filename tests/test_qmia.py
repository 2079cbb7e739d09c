"""QMIA (Bertran et al., NeurIPS 2023): the cores against float64 numpy, the
regressors trained through the engine, and the null check on digits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import miajax
from miajax import attacks, data, metrics

# ------------------------------------------------------- float64 numpy formulas


def pinball_numpy(pred, y, alphas):
  """Mean over levels of max(a d, (a - 1) d), d = y - q_a."""
  out = np.zeros(y.shape)
  for k, a in enumerate(alphas):
    d = y - pred[..., k]
    out += np.where(d >= 0, a * d, (a - 1) * d)
  return out / len(alphas)


def nll_numpy(pred, y):
  mu, log_std = pred[..., 0], pred[..., 1]
  sd = np.exp(log_std)
  # The exact Gaussian NLL less its constant log(2 pi) / 2.
  return -norm.logpdf(y, mu, sd) - 0.5 * np.log(2 * np.pi)


def level_numpy(s, q, alphas):
  """The level of s among quantiles q (float[levels]) at alphas: interpolated, extended linearly."""
  order = np.argsort(q)
  q, a = q[order], np.sort(alphas)
  if s < q[0]:
    return a[0] + (a[1] - a[0]) * (s - q[0]) / (q[1] - q[0])
  if s > q[-1]:
    return a[-1] + (a[-1] - a[-2]) * (s - q[-1]) / (q[-1] - q[-2])
  return np.interp(s, q, a)


def qmia_numpy(s, pred, alphas=None):
  if alphas is None:
    return (s - pred[..., 0]) / np.exp(pred[..., 1])
  flat_s, flat_q = s.reshape(-1), pred.reshape(-1, pred.shape[-1])
  out = [level_numpy(a, b, np.asarray(alphas)) for a, b in zip(flat_s, flat_q)]
  return np.array(out).reshape(s.shape)


def cases(seed=0, targets=3, examples=40, levels=5):
  rng = np.random.default_rng(seed)
  s = rng.normal(2, 3, size=(targets, examples))
  gauss = np.stack(
    [
      rng.normal(2, 2, size=(targets, examples)),
      rng.normal(0, 0.7, size=(targets, examples)),
    ],
    -1,
  )
  # Unsorted columns (a quantile head's outputs may cross), spread out.
  quant = rng.normal(2, 3, size=(targets, examples, levels))
  alphas = np.sort(rng.uniform(0.02, 0.98, size=levels))
  return s, gauss, quant, alphas


def test_pinball_and_gaussian_losses_match_float64_numpy():
  s, gauss, quant, alphas = cases()
  with jax.enable_x64(True):
    got = attacks.pinball_loss(quant, s, alphas)
    assert got.dtype == jnp.float64 and got.shape == s.shape
    np.testing.assert_allclose(got, pinball_numpy(quant, s, alphas), rtol=1e-12)
    got = attacks.gaussian_nll(gauss, s)
    np.testing.assert_allclose(got, nll_numpy(gauss, s), rtol=1e-12)
  # float32: within 1e-6 of the largest value, against float64 on the same
  # (float32-rounded) inputs.
  s, gauss, quant, alphas = (np.float32(a) for a in (s, gauss, quant, alphas))
  want = pinball_numpy(*(np.float64(a) for a in (quant, s, alphas)))
  got = np.asarray(attacks.pinball_loss(quant, s, alphas))
  assert got.dtype == np.float32
  assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
  want = nll_numpy(np.float64(gauss), np.float64(s))
  got = np.asarray(attacks.gaussian_nll(gauss, s))
  assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_pinball_loss_is_minimised_by_the_quantile():
  y = np.random.default_rng(1).normal(size=20001)
  grid = np.linspace(-2, 2, 401)
  for a in (0.1, 0.5, 0.9):
    losses = [
      float(attacks.pinball_loss(np.full((y.size, 1), q), y, [a]).mean())
      for q in grid
    ]
    assert abs(grid[int(np.argmin(losses))] - np.quantile(y, a)) < 0.02


@pytest.mark.parametrize("parameterisation", ["gaussian", "quantiles"])
def test_qmia_score_matches_float64_numpy(parameterisation):
  s, gauss, quant, alphas = cases(seed=2)
  pred, a = (gauss, None) if parameterisation == "gaussian" else (quant, alphas)
  want = qmia_numpy(s, pred, a)
  # Every regime of the quantile score is exercised: below, inside, above.
  if a is not None:
    assert (want < alphas[0]).any() and (want > alphas[-1]).any()
  with jax.enable_x64(True):
    got = attacks.qmia_score(s, pred, a)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
  # float32: within 1e-6 of the largest value, against float64 on the same
  # (float32-rounded) inputs (a narrow quantile gap amplifies the rounding of
  # the inputs themselves, not the core's).
  s, pred = np.float32(s), np.float32(pred)
  a = None if a is None else np.float32(a)
  want = qmia_numpy(
    np.float64(s), np.float64(pred), None if a is None else np.float64(a)
  )
  got = np.asarray(attacks.qmia_score(s, pred, a))
  assert got.dtype == np.float32
  assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


@pytest.mark.parametrize("parameterisation", ["gaussian", "quantiles"])
def test_qmia_cores_under_jit_and_vmap(parameterisation):
  s, gauss, quant, alphas = cases(seed=3)
  pred, a = (gauss, None) if parameterisation == "gaussian" else (quant, alphas)
  with jax.enable_x64(True):
    want = qmia_numpy(s, pred, a)

    @jax.jit
    def audit(s, pred, alphas):
      # alphas traced: the score sorts and interpolates without Python branches.
      one = lambda st, pt: attacks.qmia_score(st, pt, alphas)
      return jax.vmap(one)(s, pred)

    np.testing.assert_allclose(audit(s, pred, a), want, rtol=1e-10, atol=1e-12)
    if a is not None:
      losses = jax.jit(jax.vmap(attacks.pinball_loss, in_axes=(0, 0, None)))(
        quant, s, alphas
      )
      np.testing.assert_allclose(
        losses, pinball_numpy(quant, s, alphas), rtol=1e-12
      )
    else:
      losses = jax.jit(jax.vmap(attacks.gaussian_nll))(gauss, s)
      np.testing.assert_allclose(losses, nll_numpy(gauss, s), rtol=1e-12)


def test_qmia_score_reads_the_levels_it_was_given():
  alphas = np.array([0.5, 0.9, 0.99])
  q = np.array([[1.0, 3.0, 4.0]])
  # At a predicted quantile, its level; between, the line; one level alone: s - q.
  got = attacks.qmia_score(
    np.array([1.0, 3.0, 4.0, 3.5]), np.repeat(q, 4, 0), alphas
  )
  np.testing.assert_allclose(got, [0.5, 0.9, 0.99, 0.945], rtol=1e-6)
  got = attacks.qmia_score(np.array([2.5]), np.array([[2.0]]), [0.9])
  np.testing.assert_allclose(got, [1.4], rtol=1e-6)
  # Gaussian: the threshold at level a is mean + std Phi^-1(a).
  z = attacks.qmia_score(
    np.array([1 + 2 * norm.ppf(0.99)]), np.array([[1.0, np.log(2.0)]])
  )
  np.testing.assert_allclose(z, [norm.ppf(0.99)], rtol=1e-5)


def test_qmia_cores_refuse_mismatched_shapes():
  s, gauss, quant, alphas = cases()
  with pytest.raises(ValueError, match=r"float\[\.\.\., 2\]"):
    attacks.qmia_score(s, quant)
  with pytest.raises(ValueError, match=r"alphas must be float\[5\]"):
    attacks.qmia_score(s, quant, alphas[:3])
  with pytest.raises(ValueError, match="y's shape"):
    attacks.pinball_loss(quant, s[:, :3], alphas)
  with pytest.raises(ValueError, match="y's shape"):
    attacks.gaussian_nll(gauss[:1], s)


# ------------------------------------------------- training through the engine


def synthetic(targets=3, n=512, seed=0):
  """Each target's score a different linear function of x plus its own noise."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, size=(n, 4)).astype(np.float32)
  w = rng.normal(0, 2, size=(targets, 4))
  c = np.array([-5.0, 0.0, 10.0])[:targets]
  sd = np.array([0.5, 1.0, 2.0])[:targets]
  mean = x @ w.T + c  # [n, targets]
  scores = (mean + sd * rng.normal(size=mean.shape)).T
  return x, scores, mean.T, sd


def test_each_target_is_regressed_by_its_own_models():
  x, scores, mean, sd = synthetic()
  models = miajax.qmia_train(
    x, scores, seeds=2, widths=(32,), epochs=40, learning_rate=1e-2
  )
  assert models.targets.tolist() == [0, 0, 1, 1, 2, 2]
  assert not models.diverged.any()
  per_model = miajax.qmia_predict(models, x, per_model=True)
  assert per_model.shape == (6, 512, 2)
  # Two seeds of one target: two initialisations, the same fit.
  assert np.abs(per_model[0] - per_model[1]).max() > 1e-4
  pred = miajax.qmia_predict(models, x)
  assert pred.shape == (3, 512, 2)
  np.testing.assert_allclose(
    pred, per_model.reshape(3, 2, 512, 2).mean(1), rtol=1e-5, atol=1e-5
  )
  for t in range(3):
    # Its own target's mean and noise, not another's.
    rmse = np.sqrt(np.mean((pred[t, :, 0] - mean[t]) ** 2))
    assert rmse < 0.35 * sd[t] + 0.1, (t, rmse)
    std = np.exp(np.median(pred[t, :, 1]))
    assert 0.75 * sd[t] < std < 1.33 * sd[t], (t, std)
  # The score is the standardised residual: about N(0, 1) on the training data.
  z = miajax.qmia_attack(models, x, scores)
  assert z.shape == (3, 512)
  assert abs(np.mean(z)) < 0.15 and 0.8 < np.std(z) < 1.25


def test_quantile_regressors_learn_the_quantiles():
  x, scores, mean, sd = synthetic(targets=2, seed=1)
  alphas = [0.1, 0.5, 0.9]
  models = miajax.qmia_train(
    x, scores, alphas=alphas, widths=(32,), epochs=40, learning_rate=1e-2
  )
  pred = miajax.qmia_predict(models, x)
  assert pred.shape == (2, 512, 3)
  for t in range(2):
    want = mean[t][:, None] + sd[t] * norm.ppf(alphas)
    err = np.sqrt(np.mean((pred[t] - want) ** 2))
    assert err < 0.4 * sd[t] + 0.1, (t, err)
    # On the training data the predicted quantiles are exceeded at their levels.
    below = (scores[t][:, None] < pred[t]).mean(0)
    np.testing.assert_allclose(below, alphas, atol=0.08)
  levels = miajax.qmia_attack(models, x, scores)
  assert abs(np.median(levels) - 0.5) < 0.08


def test_labels_are_appended_one_hot_and_checked():
  x, scores, _, _ = synthetic(targets=1, n=128)
  labels = np.arange(128) % 3
  models = miajax.qmia_train(
    x, scores[0], labels=labels, num_classes=3, widths=(8,), epochs=2
  )
  assert models.num_classes == 3
  assert miajax.qmia_predict(models, x, labels).shape == (1, 128, 2)
  with pytest.raises(ValueError, match="labels: the regressors take"):
    miajax.qmia_predict(models, x)
  with pytest.raises(ValueError, match="labels and num_classes go together"):
    miajax.qmia_train(x, scores[0], labels=labels)
  with pytest.raises(ValueError, match="alphas must be increasing"):
    miajax.qmia_train(x, scores[0], alphas=[0.9, 0.5])
  with pytest.raises(
    ValueError, match=r"public_scores must be float\[targets, 128\]"
  ):
    miajax.qmia_train(x, scores[0][:5])
  with pytest.raises(
    ValueError, match=r"target_scores must be float\[1, 128\]"
  ):
    miajax.qmia_attack(models, x, scores[:, :5], labels)


# ------------------------------------------------------------- null on digits


@pytest.fixture(scope="module")
def digits_qmia():
  """8 models of the digits recipe on paired halves of the pool; QMIA regressors
  trained on the test split (members of none) score them on the pool."""
  ds = data.load("digits")
  keep = data.paired_keep(8, len(ds.y_train), seed=0)
  cfg = miajax.TrainConfig(
    model_kwargs={"widths": (256, 128), "activation": "relu"},
    epochs=30,
    batch_size=64,
    seed=0,
  )
  res = miajax.train_models(cfg, ds.x_train, ds.y_train, keep, num_classes=10)
  pool = miajax.predict(cfg, res.variables, ds.x_train, num_classes=10)
  test = miajax.predict(cfg, res.variables, ds.x_test, num_classes=10)
  s_pool = np.asarray(miajax.logit_scaled(pool[:, :, 0], ds.y_train))
  s_test = np.asarray(miajax.logit_scaled(test[:, :, 0], ds.y_test))
  models = miajax.qmia_train(
    ds.x_test, s_test, labels=ds.y_test, num_classes=10, epochs=10
  )
  got = miajax.qmia_attack(models, ds.x_train, s_pool, ds.y_train)
  return got, keep


@pytest.mark.slow
def test_qmia_on_digits_is_at_chance_for_an_independent_mask(digits_qmia):
  got, keep = digits_qmia
  assert got.shape == keep.shape and np.all(np.isfinite(got))
  # Membership drawn apart from training: nothing to find. Four independent
  # masks pooled (41,504 scores): the AUC's null spread is 0.003.
  null = np.random.default_rng(99).random((4,) + keep.shape) < 0.5
  pooled = np.broadcast_to(got, null.shape)
  auc = metrics.auc(pooled.ravel(), null.ravel())
  assert abs(auc - 0.5) < 0.01, auc
  # Measured 0.498. The real membership is found, weakly (measured: AUC
  # 0.535, as the global threshold: the regressor has 500 public examples).
  assert metrics.auc(got.ravel(), keep.ravel()) > 0.515
