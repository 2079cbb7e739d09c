"""Loss-level defenses checked against float64 numpy formulas."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from miajax import defenses as D
from miajax import outputs, privacy

C = 10
RNG = np.random.default_rng(0)
LOGITS = (RNG.normal(size=(16, C)) * 3).astype(np.float32)
LABELS = RNG.integers(0, C, size=16).astype(np.int32)

loss_jit = jax.jit(D.per_example_loss)


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_entropy(z):
  lq = np_log_softmax(z)
  return -(np.exp(lq) * lq).sum(-1)


def np_hamp_p(c, gamma):
  """Independent reading of the paper's rule: lower p by 0.01 from 1 until H(label) >= gamma ln C."""
  p = 1.0
  while True:
    rest = (1 - p) / (c - 1)
    h = -sum(v * math.log(v) for v in [p] + [rest] * (c - 1) if v > 0)
    if h >= gamma * math.log(c) - 1e-12:
      return p
    p = round(p - 0.01, 10)


def onehot(y, c=C):
  return np.eye(c)[y]


def test_none_equals_optax_integer_cross_entropy():
  want = optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS)
  np.testing.assert_array_equal(loss_jit(D.none(), LOGITS, LABELS), want)
  np.testing.assert_array_equal(D.per_example_loss(None, LOGITS, LABELS), want)
  np.testing.assert_allclose(
    want, -np_log_softmax(LOGITS)[np.arange(16), LABELS], rtol=1e-5
  )


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_matches_formula(eps):
  t = (1 - eps) * onehot(LABELS) + eps / C
  want = -(t * np_log_softmax(LOGITS)).sum(-1)
  np.testing.assert_allclose(
    loss_jit(D.label_smoothing(eps), LOGITS, LABELS), want, rtol=1e-5
  )


def test_confidence_penalty_matches_formula():
  want = -np_log_softmax(LOGITS)[np.arange(16), LABELS] - 0.3 * np_entropy(
    LOGITS
  )
  np.testing.assert_allclose(
    loss_jit(D.confidence_penalty(0.3), LOGITS, LABELS),
    want,
    rtol=1e-5,
    atol=1e-6,
  )


def test_hamp_top1_probability_values():
  # The released HAMP settings: CIFAR-10 gamma 0.95 -> p 0.26; Purchase100 gamma 0.8 -> p 0.33.
  assert D.hamp_top1_probability(10, 0.95) == 0.26
  assert D.hamp_top1_probability(100, 0.8) == 0.33
  assert D.hamp_top1_probability(10, 0.0) == 1.0
  for c in (2, 3, 10, 30, 100):
    for gamma in (0.05, 0.3, 0.6, 0.9):
      p = D.hamp_top1_probability(c, gamma)
      assert p == np_hamp_p(c, gamma), (c, gamma)
      # the step before does not reach the threshold
      rest = (1 - (p + 0.01)) / (c - 1)
      h_prev = (
        -((p + 0.01) * math.log(p + 0.01) + (c - 1) * rest * math.log(rest))
        if p < 0.985
        else 0.0
      )
      assert h_prev < gamma * math.log(c)
  with pytest.raises(ValueError, match="gamma"):
    D.hamp_top1_probability(3, 0.99999)
  with pytest.raises(ValueError, match="num_classes"):
    D.hamp_top1_probability(1, 0.5)


def test_hamp_loss_matches_formula_and_released_alpha_convention():
  gamma, alpha = 0.95, 0.01
  p = 0.26
  t = np.where(onehot(LABELS) > 0, p, (1 - p) / (C - 1))
  lq = np_log_softmax(LOGITS)
  h = np_entropy(LOGITS)
  want = -(t * lq).sum(-1) - alpha * h
  got = np.asarray(loss_jit(D.hamp(gamma, alpha), LOGITS, LABELS), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Released code: kl_div with reduction "mean" (over batch*C elements) minus alpha_r * mean entropy.
  alpha_released = alpha / C
  released = (t * (np.log(t) - lq)).mean() - alpha_released * h.mean()
  h_t = -(t[0] * np.log(t[0])).sum()  # constant label entropy: CE = KL + H(t)
  np.testing.assert_allclose(got.mean() - h_t, C * released, rtol=1e-5)


def test_chain_composes_targets_in_order_and_adds_penalties():
  d = D.chain(
    D.label_smoothing(0.2), D.hamp(0.5, 0.1), D.confidence_penalty(0.05)
  )
  p = D.hamp_top1_probability(C, 0.5)
  t = 0.8 * onehot(LABELS) + 0.2 / C
  t = p * t + (1 - p) / (C - 1) * (1 - t)
  np.testing.assert_allclose(t.sum(-1), 1.0)
  want = -(t * np_log_softmax(LOGITS)).sum(-1) - 0.15 * np_entropy(LOGITS)
  np.testing.assert_allclose(
    loss_jit(d, LOGITS, LABELS), want, rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(D.soft_targets(d, LABELS, C), t, rtol=1e-6)


def test_param_penalty():
  params = {
    "w": jnp.asarray(RNG.normal(size=(3, 4)), jnp.float32),
    "b": jnp.arange(4.0),
  }
  sq = sum(
    float((np.asarray(v, np.float64) ** 2).sum()) for v in params.values()
  )
  assert float(D.param_penalty(D.none(), params)) == 0.0
  np.testing.assert_allclose(
    D.param_penalty(D.l2(1e-3), params), 0.5 * 1e-3 * sq, rtol=1e-6
  )
  np.testing.assert_allclose(
    D.param_penalty(D.chain(D.l2(1e-3), D.dropout(0.2), D.l2(2e-3)), params),
    0.5 * 3e-3 * sq,
    rtol=1e-6,
  )
  # gradient is weight * params: PyTorch weight_decay / optax add_decayed_weights
  g = jax.grad(lambda p: D.param_penalty(D.l2(0.1), p))(params)
  np.testing.assert_allclose(g["w"], 0.1 * params["w"], rtol=1e-6)


def test_gradient_through_jit_and_defense_as_jit_argument():
  d = D.chain(D.hamp(0.9, 0.01), D.l2(1e-4))
  g = jax.jit(jax.grad(lambda z, dd: D.per_example_loss(dd, z, LABELS).mean()))(
    LOGITS, d
  )
  # gradient of soft CE - alpha H wrt logits, float64
  q = np.exp(np_log_softmax(LOGITS))
  p = D.hamp_top1_probability(C, 0.9)
  t = np.where(onehot(LABELS) > 0, p, (1 - p) / (C - 1))
  lq = np.log(q)
  h = -(q * lq).sum(-1, keepdims=True)
  dh = -q * (lq + h)  # dH/dz
  want = ((q - t) - 0.01 * dh) / len(LABELS)
  np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)


def test_chain_structure_and_accessors():
  assert D.chain() == D.none()
  assert D.chain(None, D.none(), D.dropout(0.3)) == D.dropout(0.3)
  inner = D.chain(D.dropout(0.5), D.label_smoothing(0.1))
  d = D.chain(inner, D.chain(D.l2(1e-4), D.dp_sgd(1.0, 1.1)))
  assert [p.name for p in d.parts] == [
    "dropout",
    "label_smoothing",
    "l2",
    "dp_sgd",
  ]
  assert D.dropout_rate(d) == 0.5 and D.dropout_rate(D.none()) == 0.0
  assert D.dp_params(d) == (1.0, 1.1) and D.dp_params(inner) is None
  assert hash(d) == hash(D.chain(inner, D.l2(1e-4), D.dp_sgd(1.0, 1.1)))
  desc = D.describe(d)
  assert json.loads(json.dumps(desc)) == desc
  assert desc["parts"][3] == {
    "name": "dp_sgd",
    "l2_norm_clip": 1.0,
    "noise_multiplier": 1.1,
  }
  assert D.describe(D.none()) == {"name": "none"}
  assert D.describe(D.hamp(0.95, 0.01)) == {
    "name": "hamp",
    "gamma": 0.95,
    "alpha": 0.01,
  }
  assert D.short_name(inner) == "dropout(0.5)+label_smoothing(0.1)"
  with pytest.raises(ValueError, match="dp_sgd"):
    D.chain(D.dp_sgd(1.0, 1.0), inner, D.dp_sgd(1.0, 2.0))
  with pytest.raises(ValueError, match="dropout"):
    D.chain(inner, D.dropout(0.1))
  with pytest.raises(TypeError, match="chain_outputs"):
    D.chain(D.label_smoothing(0.1), D.top_k(3))
  with pytest.raises(TypeError):
    D.chain("l2")


def test_validation_errors():
  for bad in (
    lambda: D.label_smoothing(1.0),
    lambda: D.label_smoothing(-0.1),
    lambda: D.hamp(1.0, 0.1),
    lambda: D.hamp(0.5, -1.0),
    lambda: D.confidence_penalty(-0.1),
    lambda: D.l2(-1.0),
    lambda: D.dropout(1.0),
    lambda: D.dp_sgd(0.0, 1.0),
    lambda: D.dp_sgd(1.0, -0.5),
    lambda: D.l2(float("nan")),
  ):
    with pytest.raises(ValueError):
      bad()
  with pytest.raises(TypeError):
    D.l2("0.1")
  with pytest.raises(ValueError, match="labels must lie"):
    D.per_example_loss(D.none(), LOGITS, LABELS + C)
  with pytest.raises(TypeError, match="labels must be integers"):
    D.per_example_loss(D.none(), LOGITS, LABELS.astype(np.float32))
  with pytest.raises(ValueError, match="labels must have shape"):
    D.per_example_loss(D.none(), LOGITS, LABELS[:3])
  with pytest.raises(TypeError, match="defense must be"):
    D.per_example_loss("hamp", LOGITS, LABELS)


def test_reexports():
  assert (
    D.dp_epsilon is privacy.dp_epsilon
    and D.dp_noise_multiplier is privacy.dp_noise_multiplier
  )
  assert D.clip_and_noise is privacy.clip_and_noise
  assert D.top_k is outputs.top_k and D.apply_output is outputs.apply_output
  for name in outputs.__all__ + privacy.__all__:
    assert name in D.__all__ and hasattr(D, name)


def test_dp_summary_uses_the_accountant():
  d = D.chain(D.dropout(0.1), D.dp_sgd(1.5, 1.1))
  summary = D.dp_summary(d, sample_rate=0.05, steps=300, delta=1e-5)
  assert summary["epsilon"] == privacy.dp_epsilon(
    noise_multiplier=1.1, sample_rate=0.05, steps=300, delta=1e-5
  )
  assert (
    summary["noise_multiplier"] == 1.1
    and summary["l2_norm_clip"] == 1.5
    and summary["accountant"] == "rdp"
  )
  assert json.loads(json.dumps(summary)) == summary
  assert (
    D.dp_summary(D.l2(1e-4), sample_rate=0.05, steps=300, delta=1e-5) is None
  )
