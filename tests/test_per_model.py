"""Per-model hyperparameters: a sweep in one program equals one run per recipe."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

import miajax
from miajax import data, defenses, engine

LRS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2)
DECAYS = (0.0, 1e-4, 1e-3, 1e-2)
SMOOTHINGS = (0.0, 0.2)


@pytest.fixture(scope="module")
def pool():
  ds = data.load("digits")
  x, y = ds.x_train[:320], ds.y_train[:320]
  return x, y, data.paired_keep(8, len(x), seed=1)


def _recipe(**kw):
  base = dict(
    model_kwargs={"widths": (32,), "activation": "relu"},
    epochs=2,
    batch_size=32,
    seed=3,
  )
  return miajax.TrainConfig(**{**base, **kw})


def _logits(cfg, x, y, keep, low):
  res = miajax.train_models(cfg, x, y, keep, num_classes=10, lowering=low)
  out = miajax.predict(cfg, res.variables, x[:64], num_classes=10, lowering=low)
  return out, res.loss


def _one_recipe_per_run(recipes, x, y, keep, low):
  # Run m trains every row of keep with recipe m alone (the same keys and
  # chunks as the sweep); its model m is what the sweep's model m must be.
  logits, losses = [], []
  for m, cfg in enumerate(recipes):
    out, loss = _logits(cfg, x, y, keep, low)
    logits.append(out[m])
    losses.append(loss[m])
  return np.stack(logits), np.stack(losses)


LOWERINGS = {
  "vmap": miajax.Lowering(model_axis="vmap", models_per_step=8),
  "unroll": miajax.Lowering(model_axis="unroll", models_per_step=4),
  "loop": miajax.Lowering(model_axis="loop", microbatch=32),
}


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["vmap", "unroll", "loop"])
def test_eight_learning_rates_in_one_program_equal_eight_runs(pool, axis):
  x, y, keep = pool
  low = LOWERINGS[axis]
  sweep, sweep_loss = _logits(_recipe(learning_rate=list(LRS)), x, y, keep, low)
  want, want_loss = _one_recipe_per_run(
    [_recipe(learning_rate=lr) for lr in LRS], x, y, keep, low
  )
  np.testing.assert_array_equal(sweep, want)
  np.testing.assert_array_equal(sweep_loss, want_loss)
  # The rates matter: the fastest and slowest models end far apart.
  assert sweep_loss[-1, -1] < 0.9 * sweep_loss[0, -1]


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["vmap", "unroll"])
def test_weight_decay_by_label_smoothing_grid_equals_eight_runs(pool, axis):
  x, y, keep = pool
  low = LOWERINGS[axis]
  grid = [(wd, eps) for wd in DECAYS for eps in SMOOTHINGS]
  wds, epss = zip(*grid)
  cfg = _recipe(
    weight_decay=list(wds),
    defense=defenses.label_smoothing(miajax.per_model(epss)),
  )
  sweep, sweep_loss = _logits(cfg, x, y, keep, low)
  want, want_loss = _one_recipe_per_run(
    [
      _recipe(weight_decay=wd, defense=defenses.label_smoothing(eps))
      for wd, eps in grid
    ],
    x,
    y,
    keep,
    low,
  )
  # A scalar strength is a constant XLA folds into the program, a per-model
  # one an input: the two round the soft targets up to an ulp apart
  # (measured: 1.5e-7 on logits of ~0.3 after 2 epochs).
  np.testing.assert_allclose(sweep, want, rtol=0, atol=1e-6)
  np.testing.assert_allclose(sweep_loss, want_loss, rtol=0, atol=1e-6)
  # Smoothing 0.2 keeps each loss above its unsmoothed twin's.
  assert np.all(sweep_loss[1::2, -1] > sweep_loss[0::2, -1])


def test_a_user_inject_hyperparams_optimizer_takes_per_model_values(pool):
  x, y, keep = pool
  keep = keep[:4]
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
  rates = (0.01, 0.05, 0.1, 0.2)
  low = LOWERINGS["vmap"]
  cfg = _recipe(optimizer=tx, hyperparams={"learning_rate": rates})
  res = miajax.train_models(cfg, x, y, keep, num_classes=10, lowering=low)
  for m, lr in enumerate(rates):
    one = _recipe(
      optimizer=optax.inject_hyperparams(optax.sgd)(
        learning_rate=lr, momentum=0.9
      )
    )
    ref = miajax.train_models(one, x, y, keep, num_classes=10, lowering=low)
    for a, b in zip(
      jax.tree_util.tree_leaves(res.variables),
      jax.tree_util.tree_leaves(ref.variables),
    ):
      np.testing.assert_allclose(a[m], b[m], rtol=0, atol=1e-6)
  assert not np.allclose(res.loss[0], res.loss[-1])


def test_per_model_values_are_checked_before_training(pool):
  x, y, keep = pool
  with pytest.raises(ValueError, match="8 models"):
    miajax.train_models(
      _recipe(learning_rate=[0.1, 0.2, 0.3]), x, y, keep, num_classes=10
    )
  with pytest.raises(ValueError, match=r"learning_rate\[1\] must be >= 0"):
    _recipe(learning_rate=[0.1, -0.2]).validate()
  with pytest.raises(ValueError, match="learning_rate must be positive"):
    _recipe(learning_rate=0.0).validate()
  with pytest.raises(ValueError, match=r"momentum\[0\] must lie in \[0, 1\)"):
    _recipe(momentum=[1.5, 0.9]).validate()
  with pytest.raises(ValueError, match="not hyperparameters of the optimizer"):
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    cfg = _recipe(optimizer=tx, hyperparams={"momentum": [0.1] * 8})
    miajax.train_models(cfg, x, y, keep, num_classes=10)
  with pytest.raises(ValueError, match="hyperparams: name the values"):
    _recipe(hyperparams={"learning_rate": 0.1}).validate()


def test_a_sweep_shares_one_compiled_program_with_its_single_runs():
  a = engine.program_key(_recipe(learning_rate=[0.1, 0.2]))
  b = engine.program_key(_recipe(learning_rate=0.3, seed=9))
  assert a == b
  # Whether weight decay is used at all changes the program; its value not.
  c = engine.program_key(_recipe(weight_decay=0.0))
  d = engine.program_key(_recipe(weight_decay=[1e-3, 0.0]))
  assert c != d
  e = engine.program_key(
    dataclasses.replace(
      _recipe(), defense=defenses.label_smoothing(miajax.per_model([0.1, 0.2]))
    )
  )
  f = engine.program_key(
    dataclasses.replace(
      _recipe(), defense=defenses.label_smoothing(miajax.per_model([0.3, 0.0]))
    )
  )
  assert e == f


EPOCHS = (5, 10, 20, 40)


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["vmap", "unroll"])
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_four_epoch_counts_in_one_program_equal_four_runs(pool, axis, schedule):
  # Each model stops after its own epochs, its schedule scaled to them:
  # model m of the 5/10/20/40 program is model m of a run of EPOCHS[m].
  x, y, keep = pool
  x, y, keep = x[:160], y[:160], keep[:4, :160]
  low = dataclasses.replace(LOWERINGS[axis], models_per_step=4)
  kw = dict(schedule=schedule, warmup_epochs=1.0 if schedule == "cosine" else 0)

  def run(epochs):
    cfg = _recipe(epochs=epochs, **kw)
    res = miajax.train_models(cfg, x, y, keep, num_classes=10, lowering=low)
    out = miajax.predict(
      cfg, res.variables, x[:64], num_classes=10, lowering=low
    )
    return res, out

  sweep, sweep_out = run(list(EPOCHS))
  for m, e in enumerate(EPOCHS):
    alone, out = run(e)
    for a, b in zip(
      jax.tree_util.tree_leaves(sweep.variables),
      jax.tree_util.tree_leaves(alone.variables),
    ):
      # Constant rates: the same bits. Cosine: XLA fuses the schedule of a
      # traced length differently, a float32 rounding (<= 2.4e-7 measured).
      np.testing.assert_allclose(np.asarray(a)[m], np.asarray(b)[m], atol=1e-6)
    # Logits to 1e-6 of their scale (|logit| ~ 10, sums of 32 products).
    scale = np.abs(out[m]).max()
    np.testing.assert_allclose(sweep_out[m], out[m], rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(sweep.loss[m, :e], alone.loss[m], atol=1e-6)
    # No loss is recorded after a model's own epochs.
    assert np.isnan(sweep.loss[m, e:]).all()
    if schedule == "constant":
      np.testing.assert_array_equal(sweep_out[m], out[m])
  # The lengths matter.
  assert sweep.loss[3, -1] < 0.5 * sweep.loss[0, 4]


def test_per_model_epochs_are_checked_and_identify_the_recipe():
  with pytest.raises(
    ValueError, match=r"epochs\[1\] must be a positive integer"
  ):
    _recipe(epochs=[5, 2.5]).validate()
  with pytest.raises(ValueError, match="per-model epochs need a built-in"):
    _recipe(epochs=[5, 10], optimizer=optax.sgd(0.1)).validate()
  cfg = _recipe(epochs=[5, 10])
  assert cfg.max_epochs == 10 and cfg.per_model_epochs and cfg.num_models() == 2
  assert engine.fingerprint(cfg)["epochs"] == [5.0, 10.0]
  # One compiled program for any lengths.
  assert engine.program_key(cfg) == engine.program_key(_recipe(epochs=[7, 3]))
  assert engine.program_key(cfg) != engine.program_key(_recipe(epochs=10))
