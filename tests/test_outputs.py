"""Output transforms checked against float64 numpy formulas and the documented invariances."""

import json

import jax
import numpy as np
import pytest

import dataclasses

import jax.numpy as jnp

from miajax import defenses as D
from miajax import scores

C = 10
RNG = np.random.default_rng(1)
LOGITS = (RNG.normal(size=(4, 5, C)) * 3).astype(np.float32)
RANDOM = (RNG.normal(size=(4, 5, C)) * 2).astype(np.float32)
LABELS = RNG.integers(0, C, size=(4, 5)).astype(np.int32)


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_top_k_mask(p, k):
  order = np.argsort(-p, axis=-1, kind="stable")[..., :k]
  mask = np.zeros(p.shape, bool)
  np.put_along_axis(mask, order, True, axis=-1)
  return mask


def np_hamp(z, u):
  rank = np.argsort(
    np.argsort(z, axis=-1, kind="stable"), axis=-1, kind="stable"
  )
  return np_softmax(np.take_along_axis(np.sort(u, axis=-1), rank, axis=-1))


def test_temperature_matches_formula():
  for t in (0.5, 2.0, 10.0):
    view = D.apply_output(D.temperature(t), LOGITS)
    np.testing.assert_allclose(
      np.exp(view), np_softmax(LOGITS / t), rtol=2e-5, atol=1e-7
    )


@pytest.mark.parametrize("k", [1, 3, C])
def test_top_k_matches_ml_leaks_masking(k):
  p = np_softmax(LOGITS)
  mask = np_top_k_mask(p, k)
  released = np.where(mask, p, 0.0)  # no renormalisation
  np.testing.assert_allclose(
    D.released_probabilities(D.top_k(k), LOGITS), released, rtol=2e-5, atol=1e-7
  )
  view = np.asarray(D.apply_output(D.top_k(k), LOGITS), np.float64)
  np.testing.assert_allclose(view[mask], np.log(p[mask]), rtol=2e-5, atol=1e-5)
  if k < C:
    fill = np.log((1 - released.sum(-1, keepdims=True)) / (C - k))
    np.testing.assert_allclose(
      view[~mask], np.broadcast_to(fill, p.shape)[~mask], atol=2e-3
    )
    # the attacker's softmax of the view gives back the released probabilities on kept classes
    np.testing.assert_allclose(np_softmax(view)[mask], p[mask], rtol=1e-4)
  floor = np.asarray(D.apply_output(D.top_k(k), LOGITS, fill="floor"))
  if k < C:
    assert np.all(floor[~mask] == np.float32(D.FLOOR_LOG_PROB))


@pytest.mark.parametrize("d", [0, 1, 2, 3])
def test_rounding_matches_formula(d):
  p = np_softmax(LOGITS)
  want = np.round(p, d)
  got = np.asarray(D.released_probabilities(D.rounding(d), LOGITS))
  np.testing.assert_allclose(got, want, atol=1e-6)
  view = np.asarray(D.apply_output(D.rounding(d), LOGITS), np.float64)
  assert np.all(np.isfinite(view))
  nz = want > 0
  np.testing.assert_allclose(view[nz], np.log(want[nz]), atol=1e-5)
  assert np.all(view[~nz] <= np.log(0.5 * 10.0**-d) + 1e-6)


def test_label_only_is_one_hot_argmax():
  view = np.asarray(D.apply_output(D.label_only(), LOGITS))
  top = np.argmax(LOGITS, -1)
  np.testing.assert_array_equal(
    D.released_probabilities(D.label_only(), LOGITS), np.eye(C)[top]
  )
  np.testing.assert_array_equal(np.argmax(view, -1), top)
  assert np.all(view[np.eye(C)[top] > 0] == 0.0)
  assert np.all(view[np.eye(C)[top] == 0] == np.float32(D.FLOOR_LOG_PROB))
  # logit-scaled becomes a two-valued correctness signal
  s = np.asarray(scores.logit_scaled(view, LABELS))
  correct = top == LABELS
  np.testing.assert_allclose(
    s[correct], -D.FLOOR_LOG_PROB - np.log(C - 1), rtol=1e-5
  )
  assert np.all(s[~correct] < -60)


def test_hamp_output_matches_formula():
  view = D.apply_output(D.hamp_output(), LOGITS, random_logits=RANDOM)
  want = np_hamp(LOGITS, RANDOM)
  np.testing.assert_allclose(np.exp(view), want, rtol=2e-5, atol=1e-7)
  # the confidence profile is the random input's: same multiset of probabilities
  np.testing.assert_allclose(
    np.sort(np.exp(view), -1),
    np.sort(np_softmax(RANDOM), -1),
    rtol=2e-5,
    atol=1e-7,
  )
  # ranking of every class kept
  np.testing.assert_array_equal(np.argsort(view, -1), np.argsort(LOGITS, -1))
  # one random vector broadcast over queries
  view1 = D.apply_output(D.hamp_output(), LOGITS, random_logits=RANDOM[0, 0])
  np.testing.assert_allclose(
    np.exp(view1),
    np_hamp(LOGITS, np.broadcast_to(RANDOM[0, 0], LOGITS.shape)),
    rtol=2e-5,
    atol=1e-7,
  )


CHAINS = [
  D.temperature(3.0),
  D.top_k(1),
  D.top_k(3),
  D.rounding(1),
  D.rounding(3),
  D.label_only(),
  D.hamp_output(),
  D.chain(D.temperature(2.0), D.top_k(3), D.rounding(2)),
  D.chain(D.hamp_output(), D.top_k(2)),
  D.identity_output(),
]


@pytest.mark.parametrize("t", CHAINS, ids=D.short_name)
def test_label_preserved_and_finite(t):
  big = LOGITS.copy()
  big[0] *= 1e4  # gaps far beyond float32 exp range
  big[1, 0] = [1e30, -1e30] + [0.0] * (C - 2)
  for z in (LOGITS, big):
    view = np.asarray(D.apply_output(t, z, random_logits=RANDOM))
    assert view.dtype == np.float32 and view.shape == z.shape
    assert np.all(np.isfinite(view)), D.short_name(t)
    argmax_same = np.argmax(view, -1) == np.argmax(z, -1)
    if isinstance(t, D.Rounding) or D.short_name(t).count("rounding"):
      # rounding may tie the top two classes; every mismatch must be such a tie
      r = np.asarray(D.released_probabilities(t, z, random_logits=RANDOM))
      top2 = np.sort(r, -1)[..., -2:]
      assert np.all(argmax_same | (top2[..., 0] == top2[..., 1]))
    else:
      assert np.all(argmax_same)
    assert np.all(np.isfinite(scores.logit_scaled(view, LABELS)))


def test_documented_invariances():
  z = LOGITS.copy()
  z[0, :, :] += (
    40 * np.eye(C)[LABELS[0]]
  )  # very confident rows: 1 - p_y ~ 1e-17, far below float32 eps
  p = np_softmax(z)
  # top-k keeps the top-1 confidence: a max-confidence threshold attack is unchanged
  for k in (1, 3):
    view = D.apply_output(D.top_k(k), z)
    np.testing.assert_allclose(
      scores.max_confidence(view), p.max(-1), rtol=1e-5
    )
    # p_y signals unchanged for labels among the k largest, confident rows included
    kept = np.take_along_axis(np_top_k_mask(p, k), LABELS[..., None], -1)[
      ..., 0
    ]
    assert kept[0].all() and kept.sum() < kept.size
    np.testing.assert_allclose(
      np.asarray(scores.logit_scaled(view, LABELS))[kept],
      np.asarray(scores.logit_scaled(z, LABELS))[kept],
      rtol=1e-5,
      atol=1e-4,
    )
  # two classes: temperature divides the logit-scaled score by t
  z2 = LOGITS[..., :2]
  y2 = LABELS % 2
  np.testing.assert_allclose(
    scores.logit_scaled(D.apply_output(D.temperature(4.0), z2), y2),
    np.asarray(scores.logit_scaled(z2, y2)) / 4.0,
    rtol=1e-4,
    atol=1e-5,
  )


def test_jit_with_transform_argument():
  t = D.chain(D.temperature(2.0), D.top_k(3))
  f = jax.jit(lambda tr, z: D.apply_output(tr, z))
  np.testing.assert_allclose(f(t, LOGITS), D.apply_output(t, LOGITS), rtol=1e-6)


def test_random_inputs():
  key = jax.random.PRNGKey(0)
  u = np.asarray(D.random_inputs(key, (64, 8, 8, 1), low=-1.0, high=1.0))
  assert (
    u.shape == (64, 8, 8, 1)
    and u.min() >= -1
    and u.max() < 1
    and abs(u.mean()) < 0.05
  )
  b = np.asarray(D.random_inputs(key, (2000, 5), distribution="bernoulli"))
  assert set(np.unique(b)) == {0.0, 1.0} and abs(b.mean() - 0.5) < 0.03
  with pytest.raises(ValueError, match="distribution"):
    D.random_inputs(key, (2,), distribution="normal")


def test_structure_and_validation():
  t = D.chain(D.temperature(2.0), D.chain(D.top_k(3), None), D.rounding(2))
  assert [p.name for p in t.parts] == ["temperature", "top_k", "rounding"]
  assert D.chain(D.top_k(2)) == D.top_k(2)
  assert D.needs_random_logits(D.chain(D.hamp_output(), D.top_k(1)))
  assert not D.needs_random_logits(t)
  desc = D.describe(t)
  assert json.loads(json.dumps(desc)) == desc and desc["parts"][1] == {
    "name": "top_k",
    "k": 3,
  }
  assert D.short_name(t) == "temperature(2)+top_k(3)+rounding(2)"
  assert D.describe(D.identity_output()) == {"name": "identity"}
  assert D.short_name(D.identity_output()) == "identity"
  for bad in (
    lambda: D.top_k(0),
    lambda: D.rounding(-1),
    lambda: D.rounding(11),
    lambda: D.temperature(0.0),
    lambda: D.temperature(float("inf")),
  ):
    with pytest.raises(ValueError):
      bad()
  with pytest.raises(TypeError):
    D.top_k(2.5)
  with pytest.raises(ValueError, match="a defense.*an output transform"):
    D.chain(D.top_k(1), D.label_smoothing(0.1))
  with pytest.raises(ValueError, match="k <= classes"):
    D.apply_output(D.top_k(C + 1), LOGITS)
  with pytest.raises(ValueError, match="random_logits"):
    D.apply_output(D.hamp_output(), LOGITS)
  with pytest.raises(ValueError, match="random_logits"):
    D.apply_output(D.hamp_output(), LOGITS, random_logits=RANDOM[..., :3])
  with pytest.raises(ValueError, match="fill"):
    D.apply_output(D.top_k(1), LOGITS, fill="zero")
  with pytest.raises(ValueError, match="classes"):
    D.apply_output(D.top_k(1), LOGITS[..., :1])


@dataclasses.dataclass(frozen=True)
class MixUniform(D.OutputTransform):
  """A user transform: release ``(1 - lam) p + lam / C`` (keeps the label)."""

  lam: float
  name = "mix_uniform"

  def probabilities(self, p):
    return (1.0 - self.lam) * p + self.lam / p.shape[-1]


@dataclasses.dataclass(frozen=True)
class NoisyLogits(D.OutputTransform):
  """A randomised user transform on the log-space release: noise on log q."""

  sigma: float

  def apply(self, release, *, key=None, random_logits=None):
    noise = self.sigma * jax.random.normal(key, release.log_probs.shape)
    return D.Release.from_logits(release.log_probs + noise)


def test_user_output_transform_through_probabilities():
  p = np_softmax(LOGITS)
  mixed = 0.8 * p + 0.2 / C
  t = MixUniform(0.2)
  np.testing.assert_allclose(
    D.released_probabilities(t, LOGITS), mixed, rtol=2e-5, atol=1e-7
  )
  np.testing.assert_allclose(
    D.apply_output(t, LOGITS), np.log(mixed), rtol=2e-5, atol=1e-6
  )
  # composed with a built-in: top-2 of the mixed vector, the rest filled with
  # the evenly spread missing mass
  both = D.chain(t, D.top_k(2))
  mask = np_top_k_mask(mixed, 2)
  np.testing.assert_allclose(
    D.released_probabilities(both, LOGITS),
    np.where(mask, mixed, 0.0),
    rtol=2e-5,
    atol=1e-7,
  )
  fill = np.log((1 - np.where(mask, mixed, 0).sum(-1, keepdims=True)) / (C - 2))
  view = np.asarray(D.apply_output(both, LOGITS), np.float64)
  np.testing.assert_allclose(
    view, np.where(mask, np.log(mixed), fill), rtol=1e-4, atol=1e-4
  )
  # a user value is static under jit, and describes itself
  f = jax.jit(lambda tr, z: D.apply_output(tr, z))
  np.testing.assert_allclose(f(both, LOGITS), view, rtol=1e-4, atol=1e-4)
  assert D.describe(both) == {
    "name": "output_chain",
    "parts": [{"name": "mix_uniform", "lam": 0.2}, {"name": "top_k", "k": 2}],
  }
  assert D.short_name(both) == "mix_uniform(0.2)+top_k(2)"
  assert not D.needs_random_logits(both)
  with pytest.raises(NotImplementedError, match="probabilities"):
    D.apply_output(D.OutputTransform(), LOGITS)


def test_user_output_transform_gets_a_key_per_chain_part():
  key = jax.random.PRNGKey(3)
  t = D.chain(D.temperature(2.0), NoisyLogits(0.5))
  got = np.asarray(D.apply_output(t, LOGITS, key))
  # part 1 of the chain draws from fold_in(key, 1)
  noise = 0.5 * np.asarray(
    jax.random.normal(jax.random.fold_in(key, 1), LOGITS.shape), np.float64
  )
  want = np.log(np_softmax(np.log(np_softmax(LOGITS / 2.0)) + noise))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  other = D.apply_output(t, LOGITS, jax.random.PRNGKey(4))
  assert not np.allclose(other, got)
  assert D.describe(NoisyLogits(0.5)) == {
    "name": "NoisyLogits",
    "sigma": 0.5,
  }
  assert jnp.all(jnp.isfinite(other))


# ---------------------------------------------------------------------------
# one vocabulary for defenses and output transforms


def test_chain_of_outputs_applies_the_parts_one_after_another():
  parts = (D.temperature(2.0), D.top_k(3), NoisyLogits(0.1), D.rounding(2))
  key = jax.random.PRNGKey(5)
  t = D.chain(parts[0], D.chain(parts[1], None), *parts[2:])
  # the value chain_outputs gave: one flat OutputChain
  assert isinstance(t, D.OutputChain) and t == D.OutputChain(parts)
  by_hand = D.Release.from_logits(jnp.asarray(LOGITS))
  for i, part in enumerate(parts):
    by_hand = part.apply(by_hand, key=jax.random.fold_in(key, i))
  got = t.apply(D.Release.from_logits(jnp.asarray(LOGITS)), key=key)
  for a, b in zip(got, by_hand):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
    D.released_probabilities(t, LOGITS, key), by_hand.probabilities()
  )


def test_chain_refuses_to_mix_defenses_and_output_transforms():
  with pytest.raises(
    ValueError,
    match=r"argument 1 is an output transform \(top_k\(3\)\), but argument 0 "
    r"\(label_smoothing\(0\.1\)\) is a defense, so a defense was expected",
  ):
    D.chain(D.label_smoothing(0.1), D.top_k(3))
  with pytest.raises(
    ValueError,
    match=r"argument 2 is a defense \(dropout\(0\.5\)\+label_smoothing\(0\.1\)\)"
    r", but argument 0 \(temperature\(2\)\+top_k\(3\)\) is an output transform",
  ):
    D.chain(
      D.chain(D.temperature(2.0), D.top_k(3)),
      None,
      D.chain(D.dropout(0.5), D.label_smoothing(0.1)),
    )
  with pytest.raises(ValueError, match="a defense.*an output transform"):
    D.chain(D.hamp_output(), D.hamp(0.9, 0.01))
  with pytest.raises(TypeError, match="defense or an output transform"):
    D.chain(D.top_k(1), "rounding")


def test_describe_and_short_name_work_for_both_kinds():
  d = D.chain(D.dropout(0.5), D.label_smoothing(0.1))
  o = D.chain(D.temperature(2.0), D.top_k(3))
  assert D.describe(d) == {
    "name": "chain",
    "parts": [
      {"name": "dropout", "rate": 0.5},
      {"name": "label_smoothing", "eps": 0.1},
    ],
  }
  assert D.describe(o) == {
    "name": "output_chain",
    "parts": [{"name": "temperature", "t": 2.0}, {"name": "top_k", "k": 3}],
  }
  assert D.short_name(d) == "dropout(0.5)+label_smoothing(0.1)"
  assert D.short_name(o) == "temperature(2)+top_k(3)"
  assert D.describe(D.top_k(3)) == {"name": "top_k", "k": 3}
  assert D.describe(D.hamp(0.95, 0.01)) == {
    "name": "hamp",
    "gamma": 0.95,
    "alpha": 0.01,
  }
  assert D.short_name(D.hamp_output()) == "hamp_output"
  assert D.short_name(D.hamp(0.95, 0.01)) == "hamp(0.95, 0.01)"
  assert D.short_name(MixUniform(0.2)) == "mix_uniform(0.2)"
  assert D.describe(None) == {"name": "none"} and D.short_name(None) == "none"
  with pytest.raises(TypeError, match="defense or an output transform"):
    D.describe("top_k")
