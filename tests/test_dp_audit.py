"""miajax.dp_audit: jax-privacy's canary bound, and a many-run DP-SGD audit that catches broken DP-SGD."""

import dataclasses
import math

import numpy as np
import pytest
from scipy.stats import norm

import miajax
from miajax import dp_audit
from miajax import defenses as D
from miajax.defenses.training import DpSgd


def _gaussian_scores(seed, shift, n):
  rng = np.random.default_rng(seed)
  return rng.normal(shift, 1.0, n), rng.normal(0.0, 1.0, n)


def test_gaussian_example_of_issue_30():
  """Shift 1, 2,000 + 2,000 trials, delta 1e-5, 95 %: 0.79 (miajax) vs 1.53 (jax-privacy)."""
  ins, outs = _gaussian_scores(0, 1.0, 2000)
  member = np.r_[np.ones(2000, bool), np.zeros(2000, bool)]
  old = miajax.epsilon_lower_bound(
    np.r_[ins, outs], member, delta=1e-5, confidence=0.95
  )
  new = dp_audit.epsilon_lower_bound_canaries(ins, outs, delta=1e-5)
  print(f"epsilon_lower_bound {old:.3f}, jax-privacy {new['epsilon']:.3f}")
  assert old == pytest.approx(0.79, abs=0.01)
  assert new["epsilon"] == pytest.approx(1.53, abs=0.01)
  # The reported rule reproduces the bound: CP at the Bonferroni level.
  assert new["n_in"] == new["n_out"] == 2000
  assert new["tp"] == int(np.sum(ins >= new["threshold"]))
  assert new["fp"] == int(np.sum(outs >= new["threshold"]))
  assert 0 < new["fp"] < new["tp"]


def _gdp_epsilon(mu, delta):
  """epsilon(delta) of mu-GDP: delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""

  def delta_of(eps):
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(
      -eps / mu - mu / 2
    )

  lo, hi = 0.0, 1.0
  while delta_of(hi) > delta:
    hi *= 2
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
  return hi


def test_gdp_epsilon_formula():
  """The bisection agrees with dp-accounting's PLD of one Gaussian (sigma = 1/mu)."""
  import dp_accounting

  for mu in (1.0, 3.0):
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(1.0 / mu))
    assert _gdp_epsilon(mu, 1e-5) == pytest.approx(
      acc.get_epsilon(1e-5), rel=1e-3
    )


@pytest.mark.parametrize("strategy", ["bonferroni", "split"])
def test_bound_below_true_epsilon_of_gaussian_mechanism(strategy):
  """Scores N(mu, 1) vs N(0, 1) are the mu-GDP mechanism: no draw may exceed its epsilon."""
  delta = 1e-5
  for mu in (1.0, 3.0):
    true_eps = _gdp_epsilon(mu, delta)
    bounds = []
    for seed in range(10):
      ins, outs = _gaussian_scores(100 + seed, mu, 1000)
      res = dp_audit.epsilon_lower_bound_canaries(
        ins, outs, delta=delta, threshold_strategy=strategy, seed=seed
      )
      bounds.append(res["epsilon"])
    print(f"mu {mu}: true {true_eps:.3f}, bounds {np.round(bounds, 3)}")
    assert max(bounds) <= true_eps
    assert min(bounds) > 0  # and the audit proves something


def test_split_counts_and_errors():
  ins, outs = _gaussian_scores(1, 2.0, 400)
  res = dp_audit.epsilon_lower_bound_canaries(
    ins, outs, delta=0.0, threshold_strategy="split", seed=3
  )
  assert res["n_in"] == 200 and res["n_out"] == 200
  assert res["epsilon"] > 0
  with pytest.raises(ValueError):
    dp_audit.epsilon_lower_bound_canaries(ins, outs, delta=0, confidence=1.0)
  with pytest.raises(ValueError):
    dp_audit.epsilon_lower_bound_canaries(
      ins, outs, delta=0, threshold_strategy="best"
    )
  with pytest.raises(ValueError):
    dp_audit.epsilon_lower_bound_canaries([np.nan], outs, delta=0)


def test_canaries():
  x = np.random.default_rng(0).random((50, 8, 8, 1)).astype(np.float32)
  y = np.arange(50) % 10
  cx, cy = dp_audit.mislabeled_canaries(x, y, 5, num_classes=10, seed=1)
  assert cx.shape == (5, 8, 8, 1) and cy.shape == (5,)
  rows = [int(np.flatnonzero((x == c).all(axis=(1, 2, 3)))[0]) for c in cx]
  assert np.all(cy != y[rows])
  nx, ny = dp_audit.noise_canaries((8, 8, 1), 3, label=7, high=2.0)
  assert nx.shape == (3, 8, 8, 1) and np.all(ny == 7)
  assert 0 <= nx.min() and nx.max() < 2.0


# Bug-catching controls: broken DP-SGD, available to the tests only.


@dataclasses.dataclass(frozen=True)
class _NoClipping(DpSgd):
  """Forgets to clip: the noise is still noise_multiplier * l2_norm_clip."""

  name = "dp_sgd_no_clipping"

  def aggregate_grads(self, per_example_grads, key):
    big = 1e9  # clip so high it never binds, noise std kept at sigma * C
    return D.clip_and_noise(
      per_example_grads,
      key,
      l2_norm_clip=big,
      noise_multiplier=self.noise_multiplier * self.l2_norm_clip / big,
    )


def _audit(defense, claimed, data, canary):
  (x, y), (cx, cy) = data, canary
  cfg = miajax.TrainConfig(
    model=dp_audit.fixed_init_mlp(0, 10),
    epochs=1,
    batch_size=64,
    learning_rate=1.0,
    momentum=0.0,
    weight_decay=0.0,
    schedule="constant",
    defense=defense,
  )
  return dp_audit.canary_audit(
    cfg,
    x,
    y,
    cx,
    cy,
    num_models=256,
    num_classes=10,
    delta=1e-5,
    claimed_defense=claimed,
  )


@pytest.mark.slow
def test_broken_dp_sgd_is_caught_and_correct_is_not():
  """256 softmax regressions on 127 digits, one step per epoch pair, one loud noise canary.

  Claimed: epsilon 1 (RDP, delta 1e-5). The correct implementation's bound
  stays below it; skipping clipping, or noise 100x smaller than the
  accountant is told, is caught (bound above the claim).
  """
  ds = miajax.load("digits")
  data = (ds.x_train[:127], ds.y_train[:127])
  canary = dp_audit.noise_canaries((8, 8, 1), 1, label=0, high=100.0)
  keep = np.ones((2, 128), bool)
  keep[1, -1] = False
  rate, steps = miajax.engine.dp_sampling(keep, 64, 1)
  sigma = D.dp_noise_multiplier(
    target_epsilon=1.0, sample_rate=rate, steps=steps, delta=1e-5
  )
  claimed = D.dp_sgd(1.0, sigma)
  results = {
    "correct": _audit(claimed, claimed, data, canary),
    "no_clipping": _audit(_NoClipping(1.0, sigma), claimed, data, canary),
    "noise_100x_smaller": _audit(
      D.dp_sgd(1.0, sigma / 100), claimed, data, canary
    ),
  }
  for name, res in results.items():
    print(
      f"{name}: lower bound {res['bound']['epsilon']:.3f} vs claimed "
      f"{res['claimed_epsilon']:.3f} ({res['train_s']:.1f} s)"
    )
    assert res["claimed_epsilon"] == pytest.approx(1.0, abs=1e-3)
    assert res["accounting"]["accountant"] == "rdp"
  assert results["correct"]["bound"]["epsilon"] <= 1.0
  assert results["no_clipping"]["bound"]["epsilon"] > 1.0
  assert results["noise_100x_smaller"]["bound"]["epsilon"] > 1.0


@pytest.mark.slow
def test_script_writes_report(tmp_path):
  import json
  import pathlib
  import subprocess
  import sys

  root = pathlib.Path(__file__).resolve().parents[1]
  out = tmp_path / "run"
  proc = subprocess.run(
    [
      sys.executable,
      str(root / "experiments" / "dp_audit.py"),
      "--num_models=8",
      "--canary=mislabeled",
      "--epochs=1",
      f"--output_dir={out}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "accountant eps" in proc.stdout
  rep = json.loads((out / "report.json").read_text())
  assert rep["accounting"]["accountant"] == "pld"
  assert rep["claimed_epsilon"] == pytest.approx(4.0, abs=1e-3)
  assert rep["lower_bound"]["n_in"] + rep["lower_bound"]["n_out"] == 8
  assert rep["lower_bound"]["epsilon"] <= rep["claimed_epsilon"]


# One-run audit (Steinke, Nasr, Jagielski 2023).


def _one_run_eps_reference(guesses, correct, confidence):
  """Theorem's delta = 0 bound, independently: largest eps with P[Bin(r, q(eps)) >= v] <= 1 - confidence."""
  from scipy.stats import binom

  alpha = 1.0 - confidence

  def p_value(eps):
    return binom.sf(correct - 1, guesses, 1.0 / (1.0 + math.exp(-eps)))

  if p_value(0.0) > alpha:
    return 0.0
  lo, hi = 0.0, 1.0
  while p_value(hi) <= alpha:
    lo, hi = hi, 2 * hi
  for _ in range(100):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if p_value(mid) <= alpha else (lo, mid)
  return lo


def _randomized_response(seed, eps, m):
  """Each canary's score is its inclusion bit, flipped w.p. 1 / (1 + e^eps): eps-DP per canary."""
  rng = np.random.default_rng(seed)
  included = rng.random(m) < 0.5
  truthful = rng.random(m) < 1.0 / (1.0 + math.exp(-eps))
  bits = np.where(truthful, included, ~included)
  # A tiny continuous jitter orders the canaries without changing the bit.
  return bits + 0.01 * rng.random(m), included


def test_one_run_matches_binomial_reference_at_delta_0():
  for seed, (k_pos, k_neg) in enumerate([(50, 50), (100, 0), (30, 70)]):
    scores, included = _randomized_response(seed, 2.0, 400)
    res = dp_audit.one_run_bound(
      scores, included, k_pos=k_pos, k_neg=k_neg, delta=0.0
    )
    order = np.argsort(-scores)
    correct = (
      included[order[:k_pos]].sum() + (~included[order[400 - k_neg :]]).sum()
    )
    assert res["guesses"] == k_pos + k_neg and res["correct"] == correct
    ref = _one_run_eps_reference(res["guesses"], res["correct"], 0.95)
    print(
      f"k=({k_pos}, {k_neg}): {res['correct']}/{res['guesses']} correct, "
      f"eps {res['epsilon']:.6f} vs reference {ref:.6f}"
    )
    assert ref > 0.5
    assert res["epsilon"] == pytest.approx(ref, abs=1e-5)
  # delta > 0 only adds 2 m delta alpha to the p-value: a smaller bound.
  pos = dp_audit.one_run_bound(scores, included, k_pos=30, k_neg=70, delta=1e-3)
  assert 0 < pos["epsilon"] < res["epsilon"]


def test_one_run_equals_jax_privacy_public_api_one_sided():
  """k_neg = 0 at a score threshold is CanaryScoreAuditor.epsilon_one_run(_fdp) with Explicit."""
  from jax_privacy import auditing

  rng = np.random.default_rng(0)
  included = rng.random(1000) < 0.5
  scores = rng.normal(2.0 * included, 1.0)
  auditor = auditing.CanaryScoreAuditor(scores[included], scores[~included])
  explicit = auditing.Explicit(float(np.sort(scores)[-100]))
  for method, public in [
    ("steinke", auditor.epsilon_one_run),
    ("fdp", auditor.epsilon_one_run_fdp),
  ]:
    ours = dp_audit.one_run_bound(
      scores, included, k_pos=100, delta=1e-5, method=method
    )
    theirs = public(0.05, 1e-5, threshold_strategy=explicit)
    assert ours["epsilon"] == pytest.approx(theirs, abs=1e-6)


def test_one_run_sound_on_randomized_response():
  """eps-DP randomized response, all m canaries guessed: bound <= eps in >= ~95 % of draws."""
  eps, m, draws = 1.0, 1000, 200
  bounds = np.array(
    [
      dp_audit.one_run_bound(
        *_randomized_response(1000 + s, eps, m),
        k_pos=m // 2,
        k_neg=m // 2,
        delta=0.0,
      )["epsilon"]
      for s in range(draws)
    ]
  )
  print(
    f"RR eps {eps}: bound mean {bounds.mean():.3f}, max {bounds.max():.3f}, "
    f"above eps {np.mean(bounds > eps):.3f}"
  )
  assert (
    np.mean(bounds > eps) <= 0.09
  )  # 5 % expected; P[Bin(200, .05) > 18] < 1e-3
  assert bounds.mean() > 0.6  # and the audit is informative


@pytest.mark.parametrize("method", ["steinke", "fdp"])
def test_one_run_sound_on_gaussian_mechanism(method):
  """Scores N(mu S_i, 1) are mu-GDP in each bit S_i: no draw may exceed eps(delta)."""
  mu, delta, m = 1.0, 1e-5, 1000
  true_eps = _gdp_epsilon(mu, delta)
  bounds = []
  for seed in range(20):
    rng = np.random.default_rng(2000 + seed)
    included = rng.random(m) < 0.5
    scores = rng.normal(mu * included, 1.0)
    res = dp_audit.one_run_bound(
      scores, included, k_pos=50, k_neg=50, delta=delta, method=method
    )
    bounds.append(res["epsilon"])
  print(f"{method}: true {true_eps:.3f}, bounds {np.round(bounds, 3)}")
  assert max(bounds) <= true_eps
  assert min(bounds) > (1.5 if method == "fdp" else 1.0)


def test_one_run_errors():
  s, inc = np.arange(10.0), np.arange(10) % 2 == 0
  for kw in [
    dict(k_pos=0, k_neg=0),
    dict(k_pos=6, k_neg=5),
    dict(k_pos=1, confidence=1.0),
    dict(k_pos=1, method="fdp", delta=0.0),
    dict(k_pos=1, method="best"),
  ]:
    kw.setdefault("delta", 1e-5)
    with pytest.raises(ValueError):
      dp_audit.one_run_bound(s, inc, **kw)
  with pytest.raises(ValueError):
    dp_audit.one_run_bound(s, inc[:5], k_pos=1, delta=0)


# Clipping: miajax's DP-SGD against jax_privacy.clipping on one model.


def test_dp_sgd_clipping_matches_jax_privacy():
  import jax
  import jax.numpy as jnp
  from jax_privacy import clipping

  init, apply = dp_audit.fixed_init_mlp(16, 10)
  ds = miajax.load("digits")
  x = jnp.asarray(ds.x_train[:32], jnp.float32)
  y = jnp.asarray(ds.y_train[:32], jnp.int32)
  params = init(None, x)["params"]

  def loss(p, xb, yb):
    logits = apply({"params": p}, xb)
    return -jnp.mean(
      jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], 1)
    )

  per_example = jax.vmap(
    lambda xi, yi: jax.grad(loss)(params, xi[None], yi[None])
  )(x, y)
  norms = np.sqrt(
    sum(
      np.sum(np.square(g).reshape(32, -1), 1)
      for g in jax.tree.leaves(per_example)
    )
  )
  clip = float(np.median(norms))  # half the examples are clipped
  assert np.sum(norms > clip) >= 10
  # miajax: DpSgd with zero noise returns the clipped sum / batch size.
  ours = DpSgd(clip, 0.0).aggregate_grads(per_example, jax.random.PRNGKey(0))
  ours = jax.tree.map(lambda g: g * 32, ours)
  # jax-privacy: clip_pytree per example, summed; and clipped_grad on the loss.
  theirs = jax.tree.map(
    lambda g: g.sum(0),
    jax.vmap(lambda g: clipping.clip_pytree(g, clip)[0])(per_example),
  )
  grad_fn = clipping.clipped_grad(loss, l2_clip_norm=clip, batch_argnums=(1, 2))
  theirs_fn = grad_fn(params, x, y)
  for a, b, c in zip(
    jax.tree.leaves(ours), jax.tree.leaves(theirs), jax.tree.leaves(theirs_fn)
  ):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    np.testing.assert_allclose(a, c, atol=1e-6, rtol=0)


def test_one_run_audit_dp_sgd_on_digits():
  """One DP-SGD softmax regression (accountant eps 4), 200 zero-mean noise canaries, random labels."""
  ds = miajax.load("digits")
  x, y, m = ds.x_train[:256], ds.y_train[:256], 200
  cx, _ = dp_audit.noise_canaries((8, 8, 1), m, low=-10.0, high=10.0, seed=1)
  cy = np.random.default_rng(2).integers(0, 10, m).astype(np.int32)
  keep = np.ones((1, 256 + m), bool)
  keep[0, 256:] = False  # accountant's sample rate at the smallest data set
  rate, steps = miajax.engine.dp_sampling(keep, 64, 4)
  sigma = D.dp_noise_multiplier(
    target_epsilon=4.0, sample_rate=rate, steps=steps, delta=1e-5
  )
  cfg = miajax.TrainConfig(
    model=dp_audit.fixed_init_mlp(0, 10),
    epochs=4,
    batch_size=64,
    learning_rate=1.0,
    momentum=0.0,
    weight_decay=0.0,
    schedule="constant",
    defense=D.dp_sgd(1.0, sigma),
  )
  res = dp_audit.one_run_audit(
    cfg, x, y, cx, cy, num_classes=10, k_pos=20, k_neg=20, delta=1e-5
  )
  b = res["bound"]
  print(
    f"one run: {b['correct']}/{b['guesses']} correct, bound {b['epsilon']:.3f} "
    f"vs accountant {res['claimed_epsilon']:.3f} ({res['train_s']:.1f} s)"
  )
  assert res["scores"].shape == (m,) and res["include"].shape == (m,)
  assert 0 < res["include"].sum() < m
  assert b["guesses"] == 40 and b["m"] == m
  assert res["claimed_epsilon"] <= 4.0 + 1e-3
  assert 0 <= b["epsilon"] <= res["claimed_epsilon"]
  with pytest.raises(ValueError):
    dp_audit.one_run_audit(
      dataclasses.replace(cfg, defense=None),
      x,
      y,
      cx,
      cy,
      num_classes=10,
      k_pos=1,
      delta=1e-5,
    )
