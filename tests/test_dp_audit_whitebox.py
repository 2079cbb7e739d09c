"""White-box DP-SGD audit with a Dirac gradient canary: the canary's arithmetic, the coordinate, and broken DP-SGD caught."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miajax
from miajax import defenses as D
from miajax import dp_audit
from miajax.defenses import DpSgd


def _grads(batch):
  return {
    "w0": jnp.ones((batch, 3, 2), jnp.float32),
    "b0": jnp.ones((batch, 2), jnp.float32),
  }


def test_canary_rows_are_clipped_like_examples():
  # No noise: the aggregate is the mean over batch + 2 rows of the clipped
  # rows. Canary 0 is magnitude 5 on w0[1, 1] (flat index 3), canary 1 on
  # b0[0], each clipped to C = 2, present by the model's coins; each data
  # row has norm sqrt(8) and is clipped to 2 as well.
  inner = D.dp_sgd(2.0, 0.0)
  key = jax.random.PRNGKey(0)
  coords = (("w0", 3), ("b0", 0))
  seen = set()
  for model in range(8):
    coins = np.asarray(dp_audit.canary_coins(7, model, 2))
    seen.add(tuple(coins))
    canary = dp_audit.GradientCanary(inner, coords, 5.0, float(model), 7)
    out = canary.aggregate_grads(_grads(4), key)
    data_row = 2.0 / np.sqrt(8.0)
    want_w = np.full((3, 2), 4 * data_row / 6)
    want_w[1, 1] += coins[0] * 2.0 / 6
    want_b = np.full(2, 4 * data_row / 6)
    want_b[0] += coins[1] * 2.0 / 6
    np.testing.assert_allclose(out["w0"], want_w, rtol=1e-6)
    np.testing.assert_allclose(out["b0"], want_b, rtol=1e-6)
  assert len(seen) > 1  # the coins differ between models


def test_canary_sampled_at_its_rate():
  model = next(m for m in range(100) if dp_audit.canary_coins(0, m, 1)[0])
  coords = (("b0", 0),)
  canary = dp_audit.GradientCanary(
    D.dp_sgd(1.0, 0.0), coords, 1.0, float(model), 0, 0.3
  )
  keys = jax.random.split(jax.random.PRNGKey(1), 4000)
  grads = {"w0": jnp.zeros((1, 3, 2)), "b0": jnp.zeros((1, 2))}
  got = jax.vmap(lambda k: canary.aggregate_grads(grads, k)["b0"][0])(keys)
  present = np.asarray(got) > 0
  assert abs(present.mean() - 0.3) < 0.03  # 4.4 binomial sd
  np.testing.assert_allclose(np.asarray(got)[present], 0.5, rtol=1e-6)


def test_canary_errors():
  c = (("w0", 0),)
  with pytest.raises(ValueError, match="gradient processor"):
    dp_audit.GradientCanary(D.label_smoothing(0.1), c, 1.0, 0.0)
  with pytest.raises(ValueError, match="distinct"):
    dp_audit.GradientCanary(D.dp_sgd(1.0, 1.0), c + c, 1.0, 0.0)
  with pytest.raises(ValueError, match="coordinates"):
    dp_audit.GradientCanary(D.dp_sgd(1.0, 1.0), "w0", 1.0, 0.0)
  with pytest.raises(ValueError, match="magnitude"):
    dp_audit.GradientCanary(D.dp_sgd(1.0, 1.0), c, 0.0, 0.0)
  with pytest.raises(ValueError, match="rate"):
    dp_audit.GradientCanary(D.dp_sgd(1.0, 1.0), c, 1.0, 0.0, 0, 0.0)
  canary = dp_audit.GradientCanary(D.dp_sgd(1.0, 1.0), (("nope", 0),), 1.0, 0.0)
  with pytest.raises(ValueError, match="no parameter 'nope'"):
    canary.aggregate_grads(_grads(2), jax.random.PRNGKey(0))


def _config(defense, *, hidden=0, steps=10, batch=128):
  return miajax.TrainConfig(
    model=dp_audit.fixed_init_mlp(hidden, 10),
    epochs=steps,
    batch_size=batch,
    learning_rate=0.5,
    momentum=0.0,
    weight_decay=0.0,
    schedule="constant",
    defense=defense,
  )


def test_unused_input_coordinate_on_digits():
  x = miajax.load("digits").x_train
  coords = dp_audit.unused_input_coordinates(
    _config(D.dp_sgd(1.0, 1.0), hidden=16), x, num_classes=10
  )
  flat = x.reshape(len(x), -1)
  blank = np.flatnonzero(np.all(flat == 0, axis=0))
  assert len(blank) == 3  # digits: 3 pixels are 0 in every training image
  assert len(coords) == 3 * 16 and {leaf for leaf, _ in coords} == {"w0"}
  assert {i // 16 for _, i in coords} == set(blank)
  with pytest.raises(ValueError, match="zero in every example"):
    dp_audit.unused_input_coordinates(
      _config(D.dp_sgd(1.0, 1.0)), x + 1.0, num_classes=10
    )


@dataclasses.dataclass(frozen=True)
class _NoClipping(DpSgd):
  """Forgets to clip (the canary's magnitude, 4 C, goes in whole)."""

  name = "dp_sgd_no_clipping"

  def aggregate_grads(self, per_example_grads, key):
    big = 1e9
    return D.clip_and_noise(
      per_example_grads,
      key,
      l2_norm_clip=big,
      noise_multiplier=self.noise_multiplier * self.l2_norm_clip / big,
    )


@pytest.mark.slow
def test_white_box_catches_each_broken_dp_sgd_and_not_the_correct_one():
  """128 full-batch softmax regressions on 128 digits, 10 steps, claimed epsilon 2 (PLD).

  Every first-layer weight of a pixel blank in all 128 images is a canary
  coordinate (a few hundred trials per model). The same models and bounds
  for every variant. Caught: noise silently
  halved (trained at sigma / 2, claimed at sigma), clipping skipped, the
  sample rate told to the accountant 10x too small (claimed 0.1, run 1).
  """
  ds = miajax.load("digits")
  x, y = ds.x_train[:128], ds.y_train[:128]
  mu = dp_audit.gdp_mu(2.0, 1e-5)
  sigma = np.sqrt(10) / mu  # full batch: exactly mu-GDP, PLD epsilon 2
  good = D.dp_sgd(1.0, sigma)
  cases = {
    "correct": (good, None, None),
    "noise_halved": (D.dp_sgd(1.0, sigma / 2), good, None),
    "no_clipping": (_NoClipping(1.0, sigma), None, None),
    "rate_misreported": (good, None, 0.1),
  }
  results = {}
  for name, (trained, claimed, claimed_rate) in cases.items():
    res = dp_audit.gradient_canary_audit(
      _config(trained),
      x,
      y,
      num_models=128,
      num_classes=10,
      delta=1e-5,
      claimed_defense=claimed,
      claimed_sample_rate=claimed_rate,
    )
    results[name] = res
    print(
      f"{name}: claimed {res['claimed_epsilon']:.3f}, clopper_pearson "
      f"{res['clopper_pearson']['epsilon']:.3f}, gdp {res['gdp']['epsilon']:.3f}"
    )
    assert res["accounting"]["accountant"] == "pld"
    assert res["steps"] == 10 and res["true_sample_rate"] == 1.0
    k = res["num_canaries"]
    assert k >= 30 and res["scores"].shape == res["include"].shape == (128, k)
    assert {leaf for leaf, _ in res["coordinates"]} == {"w0"}
  ok = results["correct"]
  assert ok["claimed_epsilon"] == pytest.approx(2.0, rel=1e-4)
  assert ok["gdp"]["epsilon"] <= ok["claimed_epsilon"]
  assert ok["clopper_pearson"]["epsilon"] <= ok["claimed_epsilon"]
  # an included canary moved its coordinate by ~ mu noise sds
  s, inc = ok["scores"], ok["include"]
  shift = (s[inc].mean() - s[~inc].mean()) / s[~inc].std()
  assert abs(shift - mu) < 0.1, shift
  assert ok["gdp"]["epsilon"] > 0.5 * ok["claimed_epsilon"]  # and tight-ish
  for name in ("noise_halved", "no_clipping", "rate_misreported"):
    res = results[name]
    assert res["gdp"]["epsilon"] > res["claimed_epsilon"], name
  assert results["no_clipping"]["clopper_pearson"]["epsilon"] > 2.0
  assert results["rate_misreported"]["claimed_epsilon"] < 0.5


def test_white_box_errors():
  ds = miajax.load("digits")
  x, y = ds.x_train[:32], ds.y_train[:32]
  with pytest.raises(ValueError, match="num_models"):
    dp_audit.gradient_canary_audit(
      _config(D.dp_sgd(1.0, 1.0)),
      x,
      y,
      num_models=2,
      num_classes=10,
      delta=1e-5,
    )
  with pytest.raises(ValueError, match="gradient processor"):
    dp_audit.gradient_canary_audit(
      _config(None), x, y, num_models=8, num_classes=10, delta=1e-5
    )
