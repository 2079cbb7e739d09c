"""miajax.scores against exact (60-digit decimal) formulas, in moderate and saturating regimes."""

import decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from miajax import scores

# --------------------------------------------------------------- exact references
# Python's decimal module at 60 digits: exp(-1e4) = 1e-4343 is representable,
# so the textbook probability formulas can be used as written.
_CTX = decimal.Context(prec=60, Emin=-(10**8), Emax=10**8)


def _ref_row(z, y):
  z = [_CTX.create_decimal(float(v)) for v in z]
  top = max(z)
  e = [_CTX.exp(_CTX.subtract(v, top)) for v in z]
  total = _CTX.add(sum(e[1:], e[0]), 0)
  p = [_CTX.divide(v, total) for v in e]

  def others(c):  # sum over c' != c, never total - e[c] (that would cancel)
    return sum((e[k] for k in range(len(z)) if k != c), decimal.Decimal(0))

  def one_minus_p(c):
    return _CTX.divide(others(c), total)

  def ln(x):
    return _CTX.ln(x)

  def plogp(v):
    return 0 if v == 0 else v * ln(v)

  mentr = -one_minus_p(y) * ln(p[y]) - sum(
    p[c] * ln(one_minus_p(c)) for c in range(len(z)) if c != y
  )
  return {
    "logit_scaled": float(ln(e[y]) - ln(others(y))),
    "cross_entropy": float(-ln(p[y])),
    "confidence": float(p[y]),
    "max_confidence": float(max(p)),
    "entropy": float(-sum(plogp(v) for v in p)),
    "modified_entropy": float(mentr),
  }


def _ref_all(logits, labels):
  z = np.asarray(logits, dtype=np.float64)
  y = np.broadcast_to(np.asarray(labels), z.shape[:-1])
  rows = [
    _ref_row(zz, int(yy))
    for zz, yy in zip(z.reshape(-1, z.shape[-1]), y.ravel())
  ]
  return {k: np.array([r[k] for r in rows]).reshape(y.shape) for k in rows[0]}


MODERATE_SHAPE = (3, 4, 10)


def _moderate():
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=MODERATE_SHAPE) * 4).astype(np.float32)
  labels = rng.integers(0, MODERATE_SHAPE[-1], size=MODERATE_SHAPE[:-1])
  return logits, labels


def _extreme():
  """Gaps of 30, 200 and 1e4 nats, true class winning or losing, large offsets."""
  rows, labels = [], []
  for gap in (30.0, 200.0, 1e4):
    for offset in (0.0, -5e4, 3e5):
      base = np.array([gap, 0.0, -1.0, 0.5, -gap / 2]) + offset
      rows += [base, base]
      labels += [0, 1]  # confident and right; confident and wrong
  return np.array(rows, dtype=np.float32), np.array(labels)


@pytest.mark.parametrize("regime", ["moderate", "extreme"])
@pytest.mark.parametrize("name", sorted(scores.SIGNALS))
def test_matches_float64_reference(regime, name):
  logits, labels = _moderate() if regime == "moderate" else _extreme()
  got = np.asarray(scores.SIGNALS[name][0](logits, labels))
  want = _ref_all(logits, labels)[name]
  assert got.dtype == np.float32
  assert got.shape == logits.shape[:-1]
  assert np.all(np.isfinite(got))
  # float32 relative precision, plus a tiny absolute floor for exact zeros;
  # the extreme rows include values like 1e-25 that must not collapse to 0.
  np.testing.assert_allclose(
    got, want, rtol=2e-5, atol=1e-30 if regime == "extreme" else 1e-7
  )


def test_no_saturation_at_103():
  z = np.array(
    [[200.0, 0.0, 0.0], [0.0, 200.0, 0.0], [1e4, 0.0, 0.0]], dtype=np.float32
  )
  got = np.asarray(scores.logit_scaled(z, np.array([0, 0, 0])))
  # The float32-exp route would clip the first two at about +-103.6.
  np.testing.assert_allclose(
    got, [200 - np.log(2), -200.0, 1e4 - np.log(2)], rtol=1e-6
  )
  # Near-certain members keep a positive, accurate loss instead of exactly 0.
  ce = np.asarray(
    scores.cross_entropy(np.array([[30.0, 0.0]], np.float32), np.array([0]))
  )
  np.testing.assert_allclose(ce, [np.log1p(np.exp(-30.0))], rtol=1e-5)


def test_modified_entropy_known_values():
  # Confidently wrong by 1e4: 1e4 from the true class plus about 1e4 - log 2 from the winner.
  z = np.array([[1e4, 0.0, 0.0]], np.float32)
  got = float(scores.modified_entropy(z, np.array([1]))[0])
  np.testing.assert_allclose(got, 2e4 - np.log(2), rtol=1e-6)
  # Uniform over C classes: -(1 - 1/C) log(1/C) - (C-1)/C log(1 - 1/C).
  c = 4
  uni = float(
    scores.modified_entropy(np.zeros((1, c), np.float32), np.array([2]))[0]
  )
  want = -(1 - 1 / c) * np.log(1 / c) - (c - 1) / c * np.log(1 - 1 / c)
  np.testing.assert_allclose(uni, want, rtol=1e-6)


def test_membership_signal_signs_higher_is_member():
  member = np.array([[6.0, 0.0, 0.0, 0.0]], np.float32)  # confident, correct
  non_member = np.array([[1.0, 0.8, 0.5, 0.0]], np.float32)  # unsure
  label = np.array([0])
  for name in scores.SIGNALS:
    hi = float(scores.membership_signal(name, member, label)[0])
    lo = float(scores.membership_signal(name, non_member, label)[0])
    assert hi > lo, name
  np.testing.assert_allclose(
    scores.membership_signal("cross_entropy", member, label),
    -scores.cross_entropy(member, label),
  )
  with pytest.raises(ValueError, match="name"):
    scores.membership_signal("loss", member, label)


def test_labels_broadcast_over_models_and_queries():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 3, 4)).astype(
    np.float32
  )  # models, examples, queries, classes
  labels = rng.integers(0, 4, size=5)
  got = np.asarray(scores.logit_scaled(logits, labels[None, :, None]))
  want = _ref_all(logits, np.broadcast_to(labels[None, :, None], (2, 5, 3)))[
    "logit_scaled"
  ]
  assert got.shape == (2, 5, 3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_top_k_probabilities():
  logits, _ = _moderate()
  got = np.asarray(scores.top_k_probabilities(logits, 3))
  z = logits.astype(np.float64)
  p = np.exp(z - logsumexp(z, axis=-1, keepdims=True))
  want = -np.sort(-p, axis=-1)[..., :3]
  assert got.shape == MODERATE_SHAPE[:-1] + (3,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert np.all(np.diff(got, axis=-1) <= 0)
  with pytest.raises(ValueError, match="k"):
    scores.top_k_probabilities(logits, 11)
  with pytest.raises(TypeError, match="k"):
    scores.top_k_probabilities(logits, 2.0)


def test_half_precision_and_jit():
  logits, labels = _moderate()
  half = scores.logit_scaled(jnp.asarray(logits, jnp.bfloat16), labels)
  assert half.dtype == jnp.float32
  jitted = jax.jit(scores.logit_scaled)(logits, labels)
  np.testing.assert_allclose(
    jitted, scores.logit_scaled(logits, labels), rtol=1e-6
  )


def test_bad_inputs():
  logits, labels = _moderate()
  with pytest.raises(TypeError, match="labels"):
    scores.confidence(logits, labels.astype(np.float32))
  with pytest.raises(ValueError, match="labels"):
    scores.confidence(logits, np.full(labels.shape, 10))
  with pytest.raises(ValueError, match="labels"):
    scores.confidence(logits, -np.ones(labels.shape, int))
  with pytest.raises(ValueError, match="broadcast"):
    scores.confidence(logits, labels[:, :2])
  with pytest.raises(ValueError, match="2 classes"):
    scores.logit_scaled(np.zeros((3, 1), np.float32), np.zeros(3, int))
  with pytest.raises(ValueError, match="classes"):
    scores.entropy(np.float32(1.0))


def test_string_labels_are_named_in_the_error():
  logits = np.zeros((2, 3), np.float32)
  for fn in (scores.cross_entropy, scores.logit_scaled, scores.confidence):
    with pytest.raises(
      TypeError, match="labels must be integers, got dtype <U1"
    ):
      fn(logits, np.array(["a", "b"]))
