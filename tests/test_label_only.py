"""Label-only attacks against independent numpy/scipy formulas, and their views through a real run."""

import json

import jax
import jax.numpy as jnp

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from miajax import attacks, data, runs, engine
from miajax.attacks import label_only


# ----------------------------------------------------------------- views


def test_augmentation_views_are_flips_and_reflect_shifts():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 6, 5, 2)).astype(np.float32)
  got = np.asarray(label_only.augmentation_views(x, shift=2))
  assert got.shape == (18, 3, 6, 5, 2)
  want = []
  for img in (x, x[:, :, ::-1]):
    padded = np.pad(img, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for dy in (0, -2, 2):
      for dx in (0, -2, 2):
        want.append(padded[:, 2 + dy : 8 + dy, 2 + dx : 7 + dx])
  np.testing.assert_array_equal(got, np.stack(want))
  np.testing.assert_array_equal(got[0], x)
  np.testing.assert_array_equal(got[9], x[:, :, ::-1])
  # View 2 (dx = +2) reads two columns to the right: the content moves left by 2.
  np.testing.assert_array_equal(got[2][:, :, :-2], x[:, :, 2:])


def test_noise_views_do_not_depend_on_batching_and_have_the_asked_scale():
  import jax

  x = np.zeros((40, 4, 4, 1), np.float32)
  key = jax.random.key(3)
  whole = np.asarray(
    label_only.noise_views(key, x, sigmas=(0.1, 1.0), copies=50)
  )
  assert whole.shape == (100, 40, 4, 4, 1)
  parts = [
    np.asarray(
      label_only.noise_views(
        key, x[s : s + 7], sigmas=(0.1, 1.0), copies=50, start=s
      )
    )
    for s in range(0, 40, 7)
  ]
  np.testing.assert_array_equal(np.concatenate(parts, 1), whole)
  # 50 x 40 x 16 = 32,000 draws per level: the sample std is within 2 % of sigma.
  assert whole[:50].std() == pytest.approx(0.1, rel=0.02)
  assert whole[50:].std() == pytest.approx(1.0, rel=0.02)
  assert (
    abs(np.corrcoef(whole[0].ravel(), whole[1].ravel())[0, 1]) < 0.1
  )  # copies differ


def test_queries_count_views_and_refuse_what_cannot_apply():
  q = label_only.LabelOnlyQueries(shift=1, sigmas=(0.1, 0.2), copies=3)
  assert q.num_views((8, 8, 1)) == 18 + 6
  assert q.num_views((20,)) == 6  # tabular rows: noise views only
  assert np.asarray(q.views(np.zeros((5, 8, 8, 1), np.float32))).shape == (
    24,
    5,
    8,
    8,
    1,
  )
  with pytest.raises(ValueError, match="no views of inputs of shape"):
    label_only.LabelOnlyQueries(shift=1, sigmas=()).check((20,))
  with pytest.raises(ValueError, match="shift 8 must be below the image size"):
    label_only.LabelOnlyQueries(shift=8).check((8, 8, 1))
  with pytest.raises(ValueError, match="sigmas must be positive"):
    label_only.LabelOnlyQueries(sigmas=(0.1, -1.0))
  with pytest.raises(ValueError, match="copies must be a positive integer"):
    label_only.LabelOnlyQueries(copies=0)
  with pytest.raises(
    ValueError, match="shift must be None or a positive integer"
  ):
    label_only.LabelOnlyQueries(shift=0)
  with pytest.raises(ValueError, match="needs augmentation"):
    label_only.LabelOnlyQueries(shift=None, sigmas=())


# ---------------------------------------------------------------- scores


def _synthetic(models, examples, views, seed, leak):
  """Correct-view bits whose per-example rate rises by `leak` for the models that trained on it."""
  rng = np.random.default_rng(seed)
  keep = data.lira_keep(models, examples, seed=seed)
  base = rng.uniform(0.2, 0.9, size=examples)
  rate = np.clip(base + leak * keep, 0, 1)
  correct = rng.random((models, examples, views)) < rate[..., None]
  return correct, keep


def _llr_scipy(k, views, p_in, p_out):
  return scipy.stats.binom.logpmf(k, views, p_in) - scipy.stats.binom.logpmf(
    k, views, p_out
  )


def test_binomial_lira_matches_scipy():
  correct, keep = _synthetic(12, 30, 7, seed=1, leak=0.1)
  target = correct[:3]
  got = label_only.binomial_lira(correct[3:], keep[3:], target)
  counts = correct[3:].sum(-1)
  want = np.empty((3, 30))
  for j in range(30):
    k_in, k_out = counts[keep[3:, j], j], counts[~keep[3:, j], j]
    p_in = (k_in.sum() + 0.5) / (k_in.size * 7 + 1)
    p_out = (k_out.sum() + 0.5) / (k_out.size * 7 + 1)
    want[:, j] = _llr_scipy(target[:, j].sum(-1), 7, p_in, p_out)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("balanced", [True, False])
def test_leave_one_out_equals_refitting_without_the_target(balanced):
  correct, keep = _synthetic(10, 25, 5, seed=2, leak=0.2)
  got = label_only.binomial_lira_leave_one_out(correct, keep, balanced=balanced)
  partners = np.asarray(attacks.leave_one_out_partners(keep))
  for t in range(10):
    for j in range(25):
      use = np.ones(10, bool)
      use[t] = False
      if balanced:
        use[partners[t, j]] = False
      want = label_only.binomial_lira(
        correct[use][:, j : j + 1],
        keep[use][:, j : j + 1],
        correct[t : t + 1, j : j + 1],
      )[0, 0]
      assert got[t, j] == pytest.approx(want, rel=1e-10, abs=1e-10)


def test_threshold_is_the_fraction_correct_and_leaks_are_found_but_nulls_are_not():
  correct, keep = _synthetic(32, 3000, 9, seed=4, leak=0.08)
  frac = label_only.correct_fraction(correct)
  np.testing.assert_array_equal(frac, correct.mean(-1))
  assert roc_auc_score(keep.ravel(), frac.ravel()) > 0.55
  assert (
    roc_auc_score(
      keep.ravel(),
      label_only.binomial_lira_leave_one_out(correct, keep).ravel(),
    )
    > 0.6
  )
  null, null_keep = _synthetic(32, 3000, 9, seed=5, leak=0.0)
  # A naive leave-one-out (the target's group one model short) would drift below 0.5; balanced must not.
  auc = roc_auc_score(
    null_keep.ravel(),
    label_only.binomial_lira_leave_one_out(null, null_keep).ravel(),
  )
  assert abs(auc - 0.5) < 0.01


def test_attack_scores_names_and_fixed_references():
  q = label_only.LabelOnlyQueries(shift=1, sigmas=(0.1,), copies=4)
  rng = np.random.default_rng(7)
  labels = rng.integers(0, 3, size=20)
  keep = data.paired_keep(8, 20, seed=1)
  pred = rng.integers(0, 3, size=(8, 20, 22)).astype(np.int16)
  out = label_only.attack_scores(pred, labels, keep, q)
  assert set(out) == set(label_only.ATTACKS)
  correct = pred == labels[None, :, None]
  np.testing.assert_array_equal(
    out["label_gap"], correct[:, :, 0].astype(float)
  )
  np.testing.assert_array_equal(out["label_aug"], correct[:, :, :18].mean(-1))
  np.testing.assert_array_equal(out["label_noise"], correct[:, :, 18:].mean(-1))
  refs = label_only.attack_scores(pred, labels, keep, q, num_references=4)
  np.testing.assert_array_equal(
    refs["label_noise_lira"],
    label_only.binomial_lira(
      correct[:4, :, 18:], keep[:4], correct[4:, :, 18:]
    ),
  )
  assert refs["label_aug"].shape == (4, 20)
  tab = label_only.attack_scores(
    pred[:, :, 18:], labels, keep, q
  )  # no augmentation views
  assert set(tab) == {"label_noise", "label_noise_lira"}
  with pytest.raises(ValueError, match="pred has 21 views per example"):
    label_only.attack_scores(pred[:, :, 1:], labels, keep, q)


@pytest.mark.parametrize(
  "call, match",
  [
    (
      lambda: label_only.correct_views(np.zeros((2, 3, 4)), np.zeros(3, int)),
      "pred must be integer",
    ),
    (
      lambda: label_only.correct_views(
        np.zeros((2, 3, 4), int), np.zeros(4, int)
      ),
      "labels must be integer",
    ),
    (
      lambda: label_only.correct_fraction(np.zeros((2, 3, 4), int)),
      "correct must be bool",
    ),
    (
      lambda: label_only.binomial_lira(
        np.zeros((4, 3, 2), bool),
        np.zeros((4, 3), int),
        np.zeros((1, 3, 2), bool),
      ),
      "shadow_keep must be bool",
    ),
    (
      lambda: label_only.binomial_lira(
        np.zeros((4, 3, 2), bool),
        np.zeros((4, 3), bool),
        np.zeros((1, 3, 5), bool),
      ),
      "target_correct must have shape",
    ),
    (
      lambda: label_only.binomial_lira_leave_one_out(
        np.zeros((2, 3, 2), bool), np.zeros((2, 3), bool)
      ),
      "at least 3 models",
    ),
    (
      lambda: label_only.augmentation_views(np.zeros((2, 8, 8)), shift=1),
      "needs images",
    ),
    (
      lambda: label_only.augmentation_views(np.zeros((2, 8, 8, 1)), shift=8),
      "shift must be an integer in",
    ),
  ],
)
def test_bad_inputs_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ------------------------------------------------------- through a real run


@pytest.mark.slow
def test_run_keeps_view_labels_that_equal_a_direct_prediction(tmp_path):
  cfg = engine.TrainConfig(
    model="mlp",
    model_kwargs=(("widths", (32,)),),
    epochs=2,
    batch_size=32,
    seed=0,
  )
  q = label_only.LabelOnlyQueries(shift=1, sigmas=(0.2,), copies=3, seed=5)
  spec = runs.RunSpec(
    dataset="digits", num_examples=120, num_models=4, train=cfg, label_only=q
  )
  res = runs.run_training(spec, tmp_path / "run", log=lambda s: None)
  assert (
    res.label_views.shape == (4, 120, 21) and res.label_views.dtype == np.int16
  )
  assert res.label_only == q
  ds = runs.load_dataset(spec)
  trained = engine.train_models(
    cfg, ds.x_train, ds.y_train, runs.make_keep(spec, 120), num_classes=10
  )
  views = np.asarray(q.views(ds.x_train))
  logits = engine.predict(
    cfg, trained.variables, views.reshape((-1, 8, 8, 1)), num_classes=10
  )[:, :, 0]
  want = logits.argmax(-1).reshape(4, 21, 120).transpose(0, 2, 1)
  # Training is deterministic, but a logit near a tie can flip with float reassociation.
  assert np.mean(res.label_views == want) > 0.999
  loaded = runs.load_run(tmp_path / "run")
  np.testing.assert_array_equal(loaded.label_views, res.label_views)
  assert loaded.label_only == q
  assert (
    json.loads((tmp_path / "run" / "config.json").read_text())["label_only"][
      "copies"
    ]
    == 3
  )
  other = runs.RunSpec(
    dataset="digits",
    num_examples=120,
    num_models=4,
    train=cfg,
    label_only=label_only.LabelOnlyQueries(
      shift=1, sigmas=(0.3,), copies=3, seed=5
    ),
  )
  with pytest.raises(ValueError, match="differs in: label_only.sigmas"):
    runs.run_training(other, tmp_path / "run", log=lambda s: None)
  plain = runs.run_training(
    runs.RunSpec(dataset="digits", num_examples=120, num_models=4, train=cfg),
    tmp_path / "plain",
    log=lambda s: None,
  )
  assert plain.label_views is None
  assert "label_only" not in json.loads(
    (tmp_path / "plain" / "config.json").read_text()
  )


@pytest.mark.parametrize("model_axis", ["vmap", "unroll"])
def test_device_view_labels_equal_host_views_then_predict(model_axis):
  """Views, forward and argmax fused on the device give the labels of the host path.

  Same inputs, same keys: the views are bit-identical; the labels equal the
  argmax of ``predict`` on the host-built views (no tie flipped here), in
  any block size, with or without the identity view taken from the run's
  own identity query.
  """
  from miajax.engine import labels as labels_lib
  from miajax.runs import label_views

  ds = runs.load_dataset(runs.RunSpec(dataset="digits", num_examples=150))
  x, y = ds.x_train, ds.y_train
  cfg = engine.TrainConfig(
    model="mlp", model_kwargs=(("widths", (32,)),), epochs=2, batch_size=32
  )
  keep = np.random.default_rng(0).random((3, len(y))) < 0.5
  trained = engine.train_models(cfg, x, y, keep, num_classes=10)
  q = label_only.LabelOnlyQueries(shift=1, sigmas=(0.2, 0.4), copies=2, seed=3)
  low = engine.Lowering(model_axis=model_axis)
  views = np.asarray(q.views(np.asarray(x, np.float32)))
  v = views.shape[0]
  logits = engine.predict(
    cfg,
    trained.variables,
    views.reshape((-1,) + x.shape[1:]),
    num_classes=10,
    lowering=low,
  )[:, :, 0]
  want = logits.argmax(-1).reshape(3, v, len(y)).transpose(0, 2, 1)
  ident = engine.predict(cfg, trained.variables, x, num_classes=10)[:, :, 0]
  for block, identity in ((64, None), (150, ident.argmax(-1)), (7, None)):
    got = label_views.label_view_predictions(
      cfg,
      trained.variables,
      x,
      q,
      10,
      block=block,
      identity_labels=identity,
      lowering=low,
    )
    assert got.dtype == np.int16 and got.shape == (3, len(y), v)
    np.testing.assert_array_equal(got, want)
  for bad, match in (
    (dict(identity_labels=np.zeros((2, 2), int)), "identity_labels"),
    (dict(block=0), "block"),
  ):
    with pytest.raises(ValueError, match=match):
      labels_lib.predict_view_labels(
        cfg,
        trained.variables,
        x,
        views=q.views,
        num_views=v,
        num_classes=10,
        **bad,
      )


def test_shared_noise_groups():
  """noise_group G: G consecutive examples share their draws, each example's
  views are x + sigma * eps as before, and G = 1 is the per-example design
  bit for bit."""
  x = jax.random.uniform(jax.random.PRNGKey(0), (10, 4, 4, 1))
  key = jax.random.key(3)
  one = label_only.noise_views(key, x, sigmas=(0.5,), copies=2)
  same = label_only.noise_views(key, x, sigmas=(0.5,), copies=2, group=1)
  np.testing.assert_array_equal(one, same)
  shared = np.asarray(
    label_only.noise_views(key, x, sigmas=(0.5,), copies=2, start=2, group=4)
  )
  eps = (shared - np.asarray(x)[None]) / 0.5
  # examples 0-1 are global 2-3 (group 0), 2-5 group 1, 6-9 group 2
  for a, b in ((0, 1), (2, 5), (6, 9)):
    np.testing.assert_allclose(eps[:, a], eps[:, b], atol=1e-5)
  assert np.abs(eps[:, 1] - eps[:, 2]).max() > 0.1
  q = label_only.LabelOnlyQueries(
    sigmas=(0.5,), copies=2, seed=3, noise_group=4
  )
  assert q.to_json()["noise_group"] == 4
  assert "noise_group" not in label_only.LabelOnlyQueries().to_json()
  draws = np.asarray(q.group_draws(jnp.arange(3), (4, 4, 1)))
  np.testing.assert_allclose(draws[1], eps[:, 2], atol=1e-5)
  with pytest.raises(ValueError, match="noise_group"):
    label_only.LabelOnlyQueries(noise_group=0)


@pytest.mark.parametrize("affine", [True, False])
def test_shared_noise_labels_equal_host_views(affine):
  """With shared draws, an MLP's first layer maps each draw once (affine
  split) and a model without the split gets its views made on the device:
  both give the labels of predict on the host-built views."""
  from miajax.runs import label_views

  ds = runs.load_dataset(runs.RunSpec(dataset="digits", num_examples=200))
  x, y = ds.x_train, ds.y_train
  cfg = engine.TrainConfig(
    model="mlp", model_kwargs=(("widths", (32, 16)),), epochs=2, batch_size=32
  )
  keep = np.random.default_rng(0).random((3, len(y))) < 0.5
  trained = engine.train_models(cfg, x, y, keep, num_classes=10)
  if not affine:  # the same network as a plain (init, apply) pair: no split
    fns = engine.recipe.model_fns(cfg, 10)
    cfg = engine.TrainConfig(
      model=(
        fns.init,
        lambda v, xb, train=False, rngs=None: fns.apply(v, xb, train=False),
      ),
      epochs=2,
      batch_size=32,
    )
    assert engine.recipe.model_fns(cfg, 10).affine_split is None
  q = label_only.LabelOnlyQueries(
    shift=1, sigmas=(0.2, 0.4), copies=3, seed=4, noise_group=16
  )
  views = np.asarray(q.views(np.asarray(x, np.float32)))
  v = views.shape[0]
  logits = engine.predict(
    cfg, trained.variables, views.reshape((-1,) + x.shape[1:]), num_classes=10
  )[:, :, 0]
  want = logits.argmax(-1).reshape(3, v, len(y)).transpose(0, 2, 1)
  ident = logits.argmax(-1).reshape(3, v, len(y))[:, 0]
  for block, identity in ((7, None), (64, ident), (200, None)):
    got = label_views.label_view_predictions(
      cfg, trained.variables, x, q, 10, block=block, identity_labels=identity
    )
    assert got.shape == (3, len(y), v)
    # the first layer's float order differs: a near-tie may flip, rarely
    assert np.mean(got != want) <= 1e-3
