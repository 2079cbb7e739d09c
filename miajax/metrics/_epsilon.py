"""The empirical epsilon lower bound of differential privacy that scores prove.

Jagielski, Ullman, Oprea, "Auditing Differentially Private Machine Learning:
How Private is Private SGD?", NeurIPS 2020; Nasr, Song, Thakurta, Papernot,
Carlini, "Adversary Instantiation: Lower Bounds for Differentially Private
Machine Learning", IEEE S&P 2021. The threshold is chosen on one half of the
scores and the Clopper-Pearson bound computed on the other.
"""

from __future__ import annotations

import numpy as np

# The Beta quantile as scipy.special's inverse incomplete beta function
# (``betaincinv(a, b, q)`` is ``stats.beta.ppf(q, a, b)``): scipy.stats
# alone takes ~0.5 s to import, in every script.
from scipy.special import betaincinv

from miajax.metrics._checks import (
  _check_delta,
  _check_level,
  _rng,
  _split,
  _Split,
  _swap,
)


def _cp_lower(k, n, alpha):
  k = np.asarray(k)
  return np.where(k > 0, betaincinv(np.maximum(k, 1), n - k + 1, alpha), 0.0)


def _cp_upper(k, n, alpha):
  k = np.asarray(k)
  return np.where(
    k < n, betaincinv(k + 1, np.maximum(n - k, 1), 1.0 - alpha), 1.0
  )


def _epsilon(tp, n_pos, fp, n_neg, delta, alpha):
  tpr_low = _cp_lower(tp, n_pos, alpha)
  fpr_high = _cp_upper(fp, n_neg, alpha)
  excess = tpr_low - delta
  with np.errstate(divide="ignore"):
    return np.where(
      excess > 0, np.log(np.maximum(excess, 1e-300) / fpr_high), -np.inf
    )


def _candidate_cuts(split: _Split, delta, alpha):
  """Best cut on this half by the bound itself: ``(bound, cut)``, rule ``score > cut``.

  For a given false-positive budget k the best cut is the (k+1)-th largest
  non-member (most members above it), so only budgets need searching;
  all k < 128 and a 2 % geometric grid beyond.
  """
  n = split.neg.size
  grid = np.round(np.geomspace(1, max(n - 1, 1), 600)).astype(np.int64)
  budgets = np.unique(np.concatenate([np.arange(min(n, 128)), grid]))
  budgets = budgets[budgets < n]
  cuts = split.neg[n - 1 - budgets]
  tp = split.pos.size - np.searchsorted(split.pos, cuts, side="right")
  fp = n - np.searchsorted(split.neg, cuts, side="right")
  bound = _epsilon(tp, split.pos.size, fp, n, delta, alpha)
  best = int(np.argmax(bound))
  return float(bound[best]), float(cuts[best])


def epsilon_lower_bound(
  scores,
  is_member,
  *,
  delta: float = 0.0,
  confidence: float = 0.95,
  seed: int = 0,
) -> float:
  """The epsilon that the scores prove with the stated confidence (0.0 if none).

  An (eps, delta)-DP training algorithm bounds every membership test:
  ``TPR <= e^eps FPR + delta`` and, with roles swapped,
  ``TNR <= e^eps FNR + delta`` (Jagielski et al. 2020; Nasr et al. 2021).

  Procedure, so the threshold search does not inflate the bound:
    1. Members and non-members are each split at random (``seed``) into two
       halves, A and B.
    2. On A only, choose the direction (members high, or swapped) and the
       threshold maximising the same bound as in step 3 computed on A
       (a bound rather than the raw ratio, so thresholds with almost no
       false positives are not chosen for their infinite point estimate).
    3. On B, with that single rule: ``TPR_low`` = one-sided Clopper-Pearson
       lower bound and ``FPR_high`` = upper bound, each at level
       ``(1 - confidence) / 2`` (Bonferroni over the two bounds), and
       ``eps = max(0, log((TPR_low - delta) / FPR_high))``.
  Since B is independent of the choice, the result holds with probability
  >= ``confidence`` under independent examples.

  Caveat: a formal DP audit needs membership to be the random event of
  separate training runs (e.g. scores of many target models on
  randomly included canaries); on one model's train/test split the number is
  an empirical indication, not a proof about the algorithm.

  Args:
    scores: ``float[...]``, higher = member; is_member: ``bool[...]``.
    delta: in [0, 1).
    confidence: in (0, 1).
    seed: integer for the split.

  Returns:
    float >= 0.
  """
  delta = _check_delta(delta)
  confidence = _check_level("confidence", confidence)
  rng = _rng(seed)
  return _epsilon_lower_bound(_split(scores, is_member), delta, confidence, rng)


def _epsilon_lower_bound(
  split: _Split, delta: float, confidence: float, rng: np.random.Generator
) -> float:
  if min(split.pos.size, split.neg.size) < 2:
    raise ValueError(
      "epsilon_lower_bound needs at least 2 members and 2 non-members, got "
      f"{split.pos.size} and {split.neg.size}"
    )
  alpha = (1.0 - confidence) / 2.0

  def _halves(x):
    perm = rng.permutation(x.size)
    return np.sort(x[perm[: x.size // 2]]), np.sort(x[perm[x.size // 2 :]])

  pos_a, pos_b = _halves(split.pos)
  neg_a, neg_b = _halves(split.neg)
  half_a, half_b = _Split(pos_a, neg_a), _Split(pos_b, neg_b)
  choices = [(half_a, half_b), (_swap(half_a), _swap(half_b))]
  picked = [(*_candidate_cuts(a, delta, alpha), b) for a, b in choices]
  _, cut, held_out = max(picked, key=lambda item: item[0])
  tp = held_out.pos.size - np.searchsorted(held_out.pos, cut, side="right")
  fp = held_out.neg.size - np.searchsorted(held_out.neg, cut, side="right")
  eps = float(
    _epsilon(tp, held_out.pos.size, fp, held_out.neg.size, delta, alpha)
  )
  return max(0.0, eps)
