"""Training dynamics: logits recorded during training (resumable), trajectory
LiRA and LT-IQR on them."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

import miajax
from miajax import attacks, data, engine, metrics, scores
from miajax.runs import checkpoint

LOWERINGS = {
  "vmap": miajax.Lowering(model_axis="vmap", models_per_step=4),
  "unroll": miajax.Lowering(model_axis="unroll", models_per_step=2),
  "loop": miajax.Lowering(model_axis="loop", microbatch=32),
}


class Boom(Exception):
  pass


class BatchNormMLP(nn.Module):
  """Batch statistics: state the recording's forward must take too."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16)(x.reshape((x.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(10)(nn.relu(x))


@pytest.fixture(scope="module")
def pool():
  ds = data.load("digits")
  x, y = ds.x_train[:240], ds.y_train[:240]
  return x, y, data.paired_keep(4, len(x), seed=1)


def _recipe(epochs, **kw):
  base = dict(
    model_kwargs={"widths": (32,), "activation": "relu"},
    epochs=epochs,
    batch_size=32,
    seed=3,
    # The cosine schedule depends on the total epochs: a constant rate makes
    # epoch 1 of a 3-epoch run the whole of a 1-epoch run.
    schedule="constant",
  )
  return miajax.TrainConfig(**{**base, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["vmap", "unroll", "loop"])
def test_recordings_equal_predict_on_a_run_of_that_many_epochs(pool, axis):
  x, y, keep = pool
  low = LOWERINGS[axis]
  examples = np.arange(5, 240, 3)
  rec = engine.Record(epochs=(1, 3), examples=examples, batch_size=50)
  res = miajax.train_models(
    _recipe(3), x, y, keep, num_classes=10, lowering=low, record=rec
  )
  assert res.recorded.shape == (4, 2, len(examples), 10)
  assert res.recorded.dtype == np.float32
  last = miajax.predict(
    _recipe(3),
    res.variables,
    x[examples],
    num_classes=10,
    lowering=low,
    batch_size=50,
  )[:, :, 0]
  np.testing.assert_array_equal(res.recorded[:, 1], last)
  one = miajax.train_models(
    _recipe(1), x, y, keep, num_classes=10, lowering=low
  )
  first = miajax.predict(
    _recipe(1),
    one.variables,
    x[examples],
    num_classes=10,
    lowering=low,
    batch_size=50,
  )[:, :, 0]
  np.testing.assert_array_equal(res.recorded[:, 0], first)
  # The epochs differ: the models learned in between.
  assert np.abs(res.recorded[:, 1] - res.recorded[:, 0]).max() > 0.1
  # Recording changes no bit of training.
  plain = miajax.train_models(
    _recipe(3), x, y, keep, num_classes=10, lowering=low
  )
  assert plain.recorded is None
  np.testing.assert_array_equal(plain.loss, res.loss)
  for a, b in zip(
    jax.tree_util.tree_leaves(plain.variables),
    jax.tree_util.tree_leaves(res.variables),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)


def _chunks(cfg, x, y, keep, low, **kw):
  return list(
    engine.train_chunks(cfg, x, y, keep, num_classes=10, lowering=low, **kw)
  )


def _fail_at(models_done, epoch):
  def progress(p):
    if p["models_done"] == models_done and p["epoch"] == epoch:
      raise Boom

  return progress


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["vmap", "loop"])
def test_a_chunk_resumed_mid_way_returns_every_recording_bit_for_bit(
  pool, tmp_path, axis
):
  x, y, keep = pool
  low = LOWERINGS[axis]
  if axis == "vmap":  # batch statistics travel through the checkpoint
    cfg = _recipe(
      4,
      model=BatchNormMLP(),
      model_kwargs={},
      optimizer="adam",
      learning_rate=1e-2,
    )
  else:
    cfg = _recipe(4)
  low = engine.Lowering(
    model_axis=low.model_axis, models_per_step=2, microbatch=32
  )
  rec = engine.Record(epochs=(1, 2, 4))
  ref = _chunks(cfg, x, y, keep, low, record=rec)

  # A checkpoint written without recordings is set aside, never used.
  lines = []
  saver = checkpoint.Checkpointer(tmp_path, every_epochs=1, log=lines.append)
  with pytest.raises(Boom):
    _chunks(cfg, x, y, keep, low, checkpoints=saver, progress=_fail_at(2, 1))
  # With a record: fails after epoch 3 of the second chunk, saved at 3.
  with pytest.raises(Boom):
    _chunks(
      cfg,
      x,
      y,
      keep,
      low,
      checkpoints=saver,
      progress=_fail_at(2, 3),
      record=rec,
    )
  assert lines[0].startswith("ignoring the checkpoint checkpoint_00002_00004")
  # The checkpoint holds the recordings of epochs 1 and 2.
  with np.load(tmp_path / "checkpoint_00002_00004.npz") as z:
    shapes = [z[k].shape for k in z.files if k.startswith("leaf_")]
  assert (2, 2, 240, 10) in shapes
  lines.clear()
  got = _chunks(cfg, x, y, keep, low, checkpoints=saver, record=rec)
  assert lines == ["resuming models [2, 4) from the checkpoint at epoch 3 of 4"]
  assert [g.resumed_epoch for g in got] == [0, 3]
  # Batch statistics included: the last recording is predict's.
  last = miajax.predict(cfg, got[1].variables, x, num_classes=10, lowering=low)
  np.testing.assert_array_equal(got[1].recorded[:, -1], last[:, :, 0])
  for g, r in zip(got, ref, strict=True):
    assert g.recorded.shape == (2, 3, 240, 10)
    np.testing.assert_array_equal(g.recorded, r.recorded)
    np.testing.assert_array_equal(g.loss, r.loss)


def test_record_refuses_what_it_cannot_record(pool):
  x, y, keep = pool
  for bad, match in [
    (dict(epochs=()), "non-empty"),
    (dict(epochs=(3, 2)), "increasing"),
    (dict(epochs=(0, 2)), "1-based"),
    (dict(epochs=(1.5,)), "integers"),
    (dict(epochs=(1,), examples=[-1]), ">= 0"),
    (dict(epochs=(1,), batch_size=0), "batch_size"),
  ]:
    with pytest.raises(ValueError, match=match):
      engine.Record(**bad)
  for rec, match in [
    (engine.Record(epochs=(1, 5)), "beyond the recipe's 2 epochs"),
    (engine.Record(epochs=(1,), examples=[240]), "x has 240 examples"),
    ((1, 2), "must be a miajax.engine.Record"),
  ]:
    with pytest.raises(ValueError, match=match):
      miajax.train_models(_recipe(2), x, y, keep, num_classes=10, record=rec)


# --------------------------------------------------------- trajectory LiRA


def _synthetic(models=24, targets=3, epochs=5, examples=200, seed=0):
  rng = np.random.default_rng(seed)
  keep = rng.random((models + targets, examples)) < 0.5
  difficulty = rng.normal(0, 3, (1, 1, examples))
  trend = np.linspace(0, 2, epochs)[None, :, None]
  per_model = 0.8 * rng.normal(size=(models + targets, 1, examples))
  traj = (
    difficulty
    + trend
    + 1.2 * keep[:, None, :]
    + per_model
    + rng.normal(size=(models + targets, epochs, examples))
  ).astype(np.float32)
  return traj[:models], keep[:models], traj[models:], keep[models:]


def _numpy_trajectory_lira(shadow, keep, target, covariance, shrinkage=0.5):
  """float64, one example and one Gaussian at a time."""
  shadow, target = shadow.astype(np.float64), target.astype(np.float64)
  out = np.full((target.shape[0], shadow.shape[2]), np.nan)
  for i in range(shadow.shape[2]):
    fits = []
    for members in (keep[:, i], ~keep[:, i]):
      s = shadow[members, :, i]
      cov = np.cov(s, rowvar=False, ddof=1)
      diag = np.diag(np.diag(cov))
      if covariance == "diagonal":
        cov = diag
      else:
        cov = (1 - shrinkage) * cov + shrinkage * diag
      fits.append((s.mean(0), cov))
    for t in range(target.shape[0]):
      log_n = [
        -0.5
        * (target[t, :, i] - mu)
        @ np.linalg.solve(cov, target[t, :, i] - mu)
        - 0.5 * np.linalg.slogdet(cov)[1]
        for mu, cov in fits
      ]
      out[t, i] = log_n[0] - log_n[1]
  return out


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_trajectory_lira_matches_a_float64_numpy_implementation(covariance):
  shadow, keep, target, target_keep = _synthetic()
  want = _numpy_trajectory_lira(shadow, keep, target, covariance)
  got = np.asarray(
    attacks.trajectory_lira(shadow, keep, target, covariance=covariance)
  )
  assert got.shape == (3, 200) and got.dtype == np.float32
  # float32 against float64: 1e-6 of the largest score.
  np.testing.assert_allclose(
    got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max()
  )
  # Under jit and vmap: the fit once, the targets mapped.
  fit = jax.jit(attacks.trajectory_lira_fit, static_argnames="covariance")(
    shadow, keep, covariance=covariance
  )
  mapped = jax.jit(jax.vmap(attacks.trajectory_lira_score, in_axes=(None, 0)))
  np.testing.assert_allclose(mapped(fit, target), got, rtol=1e-6, atol=1e-6)
  # vmapped over shadow sets: two fits at once equal two calls.
  per_set = functools.partial(attacks.trajectory_lira, covariance=covariance)
  pair = jax.vmap(per_set, in_axes=(0, 0, None))(
    np.stack([shadow, shadow[::-1]]), np.stack([keep, keep[::-1]]), target
  )
  np.testing.assert_allclose(pair[0], got, rtol=1e-6, atol=1e-5)
  assert metrics.auc(got.ravel(), target_keep.ravel()) > 0.6


def test_diagonal_trajectory_lira_is_lira_online_over_epochs_summed():
  shadow, keep, target, _ = _synthetic(epochs=4, seed=1)
  got = attacks.trajectory_lira(shadow, keep, target)
  # LiRA with the epochs as queries averages the same per-epoch ratios.
  lira = attacks.lira_online(
    shadow.transpose(0, 2, 1), keep, target.transpose(0, 2, 1)
  )
  np.testing.assert_allclose(got, 4 * np.asarray(lira), rtol=1e-5, atol=1e-4)


def test_trajectory_lira_scores_nan_where_a_group_has_under_two_models():
  shadow, _, target, _ = _synthetic(models=6, examples=10, seed=2)
  keep = np.tile(np.array([True, False] * 3)[:, None], (1, 10))
  keep[:, 0] = [True] + [False] * 5  # one IN model
  keep[:, 1] = [True] * 5 + [False]  # one OUT model
  for covariance in ("diagonal", "full"):
    got = np.asarray(
      attacks.trajectory_lira(shadow, keep, target, covariance=covariance)
    )
    assert np.isnan(got[:, :2]).all() and np.isfinite(got[:, 2:]).all()
  with pytest.raises(ValueError, match="covariance must be one of"):
    attacks.trajectory_lira(shadow, keep, target, covariance="low-rank")
  with pytest.raises(ValueError, match="keep must be bool"):
    attacks.trajectory_lira(shadow, keep[:, :5], target)
  with pytest.raises(ValueError, match="target_traj must be"):
    attacks.trajectory_lira(shadow, keep, target[:, :2])


@pytest.fixture(scope="module")
def digits_trajectories():
  """The digits recipe (MLP 256-128, 30 epochs, batch 64) on all 1297
  training examples, 16 models, every 5th epoch recorded."""
  ds = data.load("digits")
  x, y = ds.x_train, ds.y_train
  keep = data.paired_keep(16, len(x), seed=0)
  cfg = miajax.TrainConfig(
    model_kwargs={"widths": (256, 128), "activation": "relu"},
    epochs=30,
    batch_size=64,
    seed=0,
  )
  record = engine.Record(epochs=(5, 10, 15, 20, 25, 30))
  res = miajax.train_models(cfg, x, y, keep, num_classes=10, record=record)
  return res.recorded, y, keep


def _leave_one_out(traj, keep, **kw):
  """Every model scored as the target of the other 15: float[models, examples]."""
  out = []
  for t in range(traj.shape[0]):
    others = np.arange(traj.shape[0]) != t
    out.append(
      attacks.trajectory_lira(
        traj[others], keep[others], traj[t : t + 1], **kw
      )[0]
    )
  return np.stack(out)


@pytest.mark.slow
def test_trajectory_lira_on_digits_is_at_chance_for_an_independent_mask(
  digits_trajectories,
):
  recorded, y, keep = digits_trajectories
  traj = np.asarray(scores.logit_scaled(recorded, y))
  assert traj.shape == (16, 6, 1297)
  # Membership drawn apart from training, independently per model and
  # example: nothing to find. (Not another paired_keep: its pairs are the
  # models' real pairs, and a target's partner would carry its membership.)
  null = np.random.default_rng(99).random((16, 1297)) < 0.5
  for covariance in ("diagonal", "full"):
    got = _leave_one_out(traj, null, covariance=covariance)
    ok = np.isfinite(got)  # under 2 IN or OUT among the other 15: ~0.05 %
    assert ok.mean() > 0.99
    assert abs(metrics.auc(got[ok], null[ok]) - 0.5) < 0.01
  # The real membership is found (measured: AUC 0.600; LiRA on the last
  # epoch alone 0.610).
  real = _leave_one_out(traj, keep)
  assert metrics.auc(real.ravel(), keep.ravel()) > 0.57


# ---------------------------------------------------------------- LT-IQR


def test_lt_iqr_matches_numpy_and_pools_the_models_trained_on_an_example():
  rng = np.random.default_rng(3)
  loss = rng.exponential(size=(6, 7, 50)).astype(np.float32)
  want = np.quantile(loss, 0.75, axis=1) - np.quantile(loss, 0.25, axis=1)
  np.testing.assert_allclose(attacks.lt_iqr(loss), want, rtol=1e-6, atol=1e-7)
  # One model's trace [epochs, examples], as in the paper.
  np.testing.assert_allclose(attacks.lt_iqr(loss[2]), want[2], rtol=1e-6)
  keep = rng.random((6, 50)) < 0.5
  keep[:, 0] = False
  pooled = np.asarray(attacks.lt_iqr(loss, keep))
  assert np.isnan(pooled[0])
  for i in range(1, 50):
    if keep[:, i].any():
      np.testing.assert_allclose(
        pooled[i], want[keep[:, i], i].mean(), rtol=1e-6
      )
  with pytest.raises(ValueError, match="with keep"):
    attacks.lt_iqr(loss[0], keep)


def test_precision_at_k_counts_the_shared_top_k():
  a = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
  b = np.array([1.0, 4.0, 5.0, 2.0, 3.0])
  assert float(attacks.precision_at_k(a, b, 2)) == 0.5  # {0, 1} vs {2, 1}
  assert float(attacks.precision_at_k(a, a, 3)) == 1.0
  assert float(attacks.precision_at_k(a, -a, 2)) == 0.0
  # NaN ranks last, ties go to the lower index.
  c = np.array([np.nan, 1.0, 1.0, 0.0, -np.inf])
  assert float(attacks.precision_at_k(c, np.array([0, 9, 8, 0, 0.0]), 2)) == 1.0
  rng = np.random.default_rng(0)
  x, z = rng.normal(size=300), rng.normal(size=300)
  top = lambda s: set(np.argsort(-s, kind="stable")[:30])
  assert float(attacks.precision_at_k(x, z, 30)) == pytest.approx(
    len(top(x) & top(z)) / 30
  )
  with pytest.raises(ValueError, match="k must be an integer"):
    attacks.precision_at_k(a, b, 6)


@pytest.mark.slow
def test_lt_iqr_ranks_the_members_lira_exposes(digits_trajectories):
  recorded, y, keep = digits_trajectories
  loss = np.asarray(scores.cross_entropy(recorded, y))
  vulnerability = np.asarray(attacks.lt_iqr(loss, keep))
  # The reference, as the paper's: LiRA on the final models, here each
  # model against the other 15, averaged over the models trained on it.
  final = np.asarray(scores.logit_scaled(recorded[:, -1:], y))
  lira = _leave_one_out(final, keep)
  exposed = np.nanmean(np.where(keep, lira, np.nan), axis=0)
  # Measured 0.51 at k = 65 (5 %), where a random ranking shares 5 %.
  assert float(attacks.precision_at_k(vulnerability, exposed, 65)) > 0.3
