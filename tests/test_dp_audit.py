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
  assert rep["accounting"]["accountant"] == "rdp"
  assert rep["claimed_epsilon"] == pytest.approx(4.0, abs=1e-3)
  assert rep["lower_bound"]["n_in"] + rep["lower_bound"]["n_out"] == 8
  assert rep["lower_bound"]["epsilon"] <= rep["claimed_epsilon"]
