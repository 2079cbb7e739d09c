"""Loss-level defenses checked against float64 numpy formulas."""

import dataclasses
import importlib
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from miajax.engine import recipe as config_lib
from miajax import data, engine
from miajax import defenses as D
from miajax.defenses import privacy

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


def test_gradient_through_jit_and_defense_as_jit_argument():
  d = D.chain(D.hamp(0.9, 0.01), D.dropout(0.1))
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
  cp = D.confidence_penalty(0.1)
  d = D.chain(inner, D.chain(cp, D.dp_sgd(1.0, 1.1)))
  assert [p.name for p in d.parts] == [
    "dropout",
    "label_smoothing",
    "confidence_penalty",
    "dp_sgd",
  ]
  assert D.model_kwargs(d) == {"dropout_rate": 0.5}
  assert D.model_kwargs(D.none()) == {}
  assert d.aggregate_grads is not None and inner.aggregate_grads is None
  assert d.param_penalty is None and D.none().targets is None
  assert hash(d) == hash(D.chain(inner, cp, D.dp_sgd(1.0, 1.1)))
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
  with pytest.raises(ValueError, match="an output transform.*a defense"):
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
    lambda: D.dropout(1.0),
    lambda: D.dp_sgd(0.0, 1.0),
    lambda: D.dp_sgd(1.0, -0.5),
    lambda: D.confidence_penalty(float("nan")),
    lambda: D.LabelSmoothing(1.5),  # the classes validate too
  ):
    with pytest.raises(ValueError):
      bad()
  with pytest.raises(TypeError):
    D.confidence_penalty("0.1")
  with pytest.raises(ValueError, match="labels must lie"):
    D.per_example_loss(D.none(), LOGITS, LABELS + C)
  with pytest.raises(TypeError, match="labels must be integers"):
    D.per_example_loss(D.none(), LOGITS, LABELS.astype(np.float32))
  with pytest.raises(ValueError, match="labels must have shape"):
    D.per_example_loss(D.none(), LOGITS, LABELS[:3])
  with pytest.raises(TypeError, match="defense must be"):
    D.per_example_loss("hamp", LOGITS, LABELS)


def test_explicit_exports():
  # Every public name of the submodules is re-exported flat, as itself.
  from miajax.defenses import base, hamp_defense, hooks, outputs, training

  assert all(hasattr(D, name) for name in D.__all__)
  for module in (base, training, hooks, outputs, hamp_defense, privacy):
    for name in module.__all__:
      if module is not base or name in ("chain", "describe", "short_name"):
        assert getattr(D, name) is getattr(module, name), name
        assert name in D.__all__, name
  # one vocabulary for both kinds; L2 is TrainConfig.weight_decay
  for name in ("chain_outputs", "describe_output", "output_short_name", "l2"):
    assert not hasattr(D, name), name
  for old in ("miajax.outputs", "miajax.privacy"):
    with pytest.raises(ModuleNotFoundError):
      importlib.import_module(old)


def test_the_package_does_not_import_the_engine():
  # Defenses plug into the engine; the attack layer imports the output
  # transforms through this package without the training stack.
  code = (
    "import sys, miajax.defenses\n"
    "print(' '.join(m for m in sys.modules if m.startswith(('miajax', "
    "'optax', 'flax'))))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True
  )
  loaded = set(out.stdout.split())
  assert "miajax.defenses.training" in loaded
  others = {m for m in loaded if not m.startswith("miajax.defenses")}
  # miajax.hyperparams: the per-model values (numpy only); miajax._lazy:
  # the package's lazy loader.
  assert others == {"miajax", "miajax._lazy", "miajax.hyperparams"}, sorted(
    others
  )


def test_dp_summary_uses_the_accountant():
  d = D.chain(D.dropout(0.1), D.dp_sgd(1.5, 1.1), D.confidence_penalty(0.1))
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
    D.dp_summary(D.dropout(0.1), sample_rate=0.05, steps=300, delta=1e-5)
    is None
  )


# ---------------------------------------------------------------------------
# defenses written outside miajax, used through the protocol only


@dataclasses.dataclass(frozen=True)
class NextClassSmoothing(D.Defense):
  """Target map: move ``eps`` of the mass to the next class (mod C)."""

  eps: float
  name = "next_class_smoothing"

  def targets(self, t):
    return (1.0 - self.eps) * t + self.eps * jnp.roll(t, 1, axis=-1)


@dataclasses.dataclass(frozen=True)
class Focal(D.Defense):
  """Loss term turning the cross-entropy into the focal loss (Lin et al. 2017).

  ``(1 - p_t)^gamma CE - CE`` with ``p_t = sum_c t_c q_c``, so that the
  total is ``(1 - p_t)^gamma CE``.
  """

  gamma: float

  def loss_terms(self, logits, targets):
    log_q = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.sum(targets * log_q, axis=-1)
    p_t = jnp.sum(targets * jnp.exp(log_q), axis=-1)
    return ((1.0 - p_t) ** self.gamma - 1.0) * ce


@dataclasses.dataclass(frozen=True)
class L1(D.Defense):
  weight: float

  def param_penalty(self, params):
    leaves = jax.tree_util.tree_leaves(params)
    return self.weight * sum(jnp.sum(jnp.abs(p)) for p in leaves)


@dataclasses.dataclass(frozen=True)
class HalfSquaredNorm(D.Defense):
  weight: float

  def param_penalty(self, params):
    leaves = jax.tree_util.tree_leaves(params)
    return 0.5 * self.weight * sum(jnp.sum(jnp.square(p)) for p in leaves)


class MeanOfExamples(D.Defense):
  """Gradient processor that only averages: must equal plain training."""

  def aggregate_grads(self, per_example_grads, key):
    del key
    return jax.tree_util.tree_map(lambda g: g.mean(0), per_example_grads)


USER = D.chain(NextClassSmoothing(0.1), Focal(2.0), L1(1e-3))


def np_user_loss(logits, labels, eps=0.1, gamma=2.0):
  """float64 reference of USER's per-example loss (without the penalty)."""
  y = onehot(labels, logits.shape[-1])
  t = (1 - eps) * y + eps * np.roll(y, 1, axis=-1)
  lq = np_log_softmax(logits)
  ce = -(t * lq).sum(-1)
  return (1 - (t * np.exp(lq)).sum(-1)) ** gamma * ce


def test_user_defense_loss_and_targets_match_float64():
  np.testing.assert_allclose(
    loss_jit(USER, LOGITS, LABELS),
    np_user_loss(LOGITS, LABELS),
    rtol=1e-5,
    atol=1e-6,
  )
  y = onehot(LABELS)
  np.testing.assert_allclose(
    D.soft_targets(USER, LABELS, C), 0.9 * y + 0.1 * np.roll(y, 1, -1)
  )
  assert D.maps_targets(USER) and D.model_kwargs(USER) == {}
  # target maps compose in chain order: label smoothing after the user map
  both = D.chain(NextClassSmoothing(0.1), D.label_smoothing(0.2))
  np.testing.assert_allclose(
    D.soft_targets(both, LABELS, C),
    0.8 * (0.9 * y + 0.1 * np.roll(y, 1, -1)) + 0.02,
    rtol=1e-6,
  )
  # loss terms add, each seeing the final targets
  with_cp = D.chain(USER, D.confidence_penalty(0.3))
  np.testing.assert_allclose(
    loss_jit(with_cp, LOGITS, LABELS),
    np_user_loss(LOGITS, LABELS) - 0.3 * np_entropy(LOGITS),
    rtol=1e-5,
    atol=1e-6,
  )
  # penalties add
  params = {"w": jnp.asarray([[1.0, -2.0], [3.0, 0.5]]), "b": jnp.ones(2)}
  total = D.chain(L1(0.1), HalfSquaredNorm(0.2)).param_penalty(params)
  np.testing.assert_allclose(total, 0.1 * 8.5 + 0.5 * 0.2 * 16.25, rtol=1e-6)
  assert D.describe(USER)["parts"][1] == {"name": "Focal", "gamma": 2.0}
  assert D.short_name(USER) == ("next_class_smoothing(0.1)+Focal(2)+L1(0.001)")
  assert D.describe(MeanOfExamples()) == {"name": "MeanOfExamples"}
  with pytest.raises(ValueError, match="at most one gradient processor"):
    D.chain(MeanOfExamples(), D.dp_sgd(1.0, 1.0))
  with pytest.raises(ValueError, match="loss_terms must return"):
    bad = dataclasses.make_dataclass(
      "Bad",
      [],
      bases=(D.Defense,),
      frozen=True,
      namespace={"loss_terms": lambda self, z, t: z},
    )
    D.per_example_loss(bad(), LOGITS, LABELS)
  with pytest.raises(ValueError, match="model_kwargs"):
    engine.TrainConfig(model_kwargs=(("dropout_rate", 0.2),)).validate()


@pytest.fixture(scope="module")
def small_digits():
  ds = data.load("digits")
  x, y = ds.x_train[:192], ds.y_train[:192]
  return x, y, data.paired_keep(2, len(x), seed=3)


def _cfg(**kw):
  base = dict(
    model="mlp",
    model_kwargs=(("widths", (16,)),),
    epochs=2,
    batch_size=32,
    seed=1,
  )
  return engine.TrainConfig(**{**base, **kw})


def _reference_sgd(cfg, x, y, keep_row, key, tx, loss_fn):
  """One model trained by hand: the engine's data order and keys, our loss."""
  fns = config_lib.model_fns(cfg, 10)
  variables = fns.init(jax.random.fold_in(key, 0), jnp.zeros((1, 64)))
  params = variables["params"]
  opt = tx.init(params)
  steps = engine.steps_per_epoch(keep_row[None], cfg.batch_size)
  members = int(keep_row.sum())

  @jax.jit
  def step(params, opt, xb, yb, skey):
    def objective(p):
      logits = fns.apply({"params": p}, xb, train=True, rngs={"dropout": skey})
      return loss_fn(p, logits, yb)

    grads = jax.grad(objective)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  for epoch in range(cfg.epochs):
    u = jax.random.uniform(
      jax.random.fold_in(jax.random.fold_in(key, 1), epoch), keep_row.shape
    )
    order = np.asarray(jnp.argsort(jnp.where(keep_row, u, 2.0)))
    order = order[np.arange(steps * cfg.batch_size) % members]
    for s in range(steps):
      idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
      skey = jax.random.fold_in(jax.random.fold_in(key, 2), epoch * steps + s)
      params, opt = step(params, opt, x[idx], y[idx], skey)
  return params


def _assert_params_close(got, want, **tol):
  for a, b in zip(
    jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tol)


@dataclasses.dataclass(frozen=True)
class MixUniform(D.OutputTransform):
  """A user output transform: release ``(1 - lam) p + lam / C``."""

  lam: float

  def probabilities(self, p):
    return (1.0 - self.lam) * p + self.lam / p.shape[-1]


@pytest.mark.slow
def test_user_defense_trains_like_a_hand_written_loop(small_digits):
  x, y, keep = small_digits
  tx = optax.sgd(0.1, momentum=0.9)
  cfg = _cfg(optimizer=tx, defense=USER)
  res = engine.train_models(cfg, x, y, keep, num_classes=10)
  assert not res.diverged.any()

  def hand_loss(p, logits, yb):
    t = jax.nn.one_hot(yb, 10)
    t = 0.9 * t + 0.1 * jnp.roll(t, 1, axis=-1)
    log_q = jax.nn.log_softmax(logits)
    ce = -jnp.sum(t * log_q, -1)
    focal = (1 - jnp.sum(t * jnp.exp(log_q), -1)) ** 2 * ce
    l1 = sum(jnp.abs(v).sum() for v in jax.tree_util.tree_leaves(p))
    return focal.mean() + 1e-3 * l1

  keys = engine.model_keys(cfg.seed, np.arange(2))
  for m in range(2):
    want = _reference_sgd(cfg, x, y, keep[m], keys[m], tx, hand_loss)
    got = jax.tree_util.tree_map(lambda a: a[m], res.variables["params"])
    _assert_params_close(got, want, rtol=2e-4, atol=2e-5)

  # ... and is queried through a user output transform
  logits = engine.predict(cfg, res.variables, x, num_classes=10)
  view = engine.predict(
    cfg, res.variables, x, num_classes=10, output=MixUniform(0.1)
  )
  p = np.exp(np_log_softmax(logits))
  np.testing.assert_allclose(view, np.log(0.9 * p + 0.01), rtol=1e-5, atol=1e-5)
  # transforms that read the models' logits on random inputs get them too
  hamp = D.chain(D.hamp_output(), MixUniform(0.1))
  with pytest.raises(ValueError, match="random_x"):
    engine.predict(cfg, res.variables, x, num_classes=10, output=hamp)
  noise = np.random.default_rng(0).uniform(size=x.shape).astype(np.float32)
  view = engine.predict(
    cfg, res.variables, x, num_classes=10, output=hamp, random_x=noise
  )
  rand = engine.predict(cfg, res.variables, noise, num_classes=10)
  np.testing.assert_allclose(
    view, D.apply_output(hamp, logits, random_logits=rand), rtol=1e-6
  )
  assert np.all(view.argmax(-1) == logits.argmax(-1))


def test_weight_decay_is_the_half_squared_norm_penalty_with_sgd(small_digits):
  # The documented relation: the built-in SGD's weight_decay w equals the loss
  # penalty 0.5 w ||params||^2, here a user param_penalty hook. The penalty
  # enters the reported loss, the weight decay does not. The penalised run
  # also has a user gradient processor that only averages the per-example
  # gradients (the batch gradient), so the penalty's gradient must be added
  # after it.
  x, y, keep = small_digits
  decayed = engine.train_models(
    _cfg(weight_decay=0.05), x, y, keep, num_classes=10
  )
  penalised = engine.train_models(
    _cfg(
      weight_decay=0.0,
      defense=D.chain(MeanOfExamples(), HalfSquaredNorm(0.05)),
    ),
    x,
    y,
    keep,
    num_classes=10,
  )
  _assert_params_close(
    penalised.variables, decayed.variables, rtol=2e-4, atol=2e-6
  )
  norm = sum(
    float(np.sum(np.square(np.asarray(a[0]), dtype=np.float64)))
    for a in jax.tree_util.tree_leaves(decayed.variables)
  )
  assert np.all(penalised.loss > decayed.loss + 0.01 * 0.5 * 0.05 * norm)


def test_dp_sampling_is_the_engine_step_count():
  keep = data.paired_keep(8, 1297, seed=0)
  members = keep.sum(1)
  rate, steps = engine.dp_sampling(keep, 64, 3)
  assert rate == 64 / members.min()
  assert steps == 3 * math.ceil(members.max() / 64) == 3 * 11
  assert steps == 3 * engine.steps_per_epoch(keep, 64)
