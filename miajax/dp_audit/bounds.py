"""The epsilon lower bounds of DP audits, from jax-privacy's auditor: many runs (Clopper-Pearson) and one run (Steinke et al. 2023)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["epsilon_lower_bound_canaries", "one_run_bound"]


def checked_scores(
  in_scores, out_scores, *, delta, confidence, open_delta=False
):
  """``(in, out)`` as ``float64[n]``; ValueError unless both are non-empty and finite, ``confidence`` in (0.5, 1) and ``delta`` in [0, 1] (``open_delta``: (0, 1))."""
  in_scores = np.asarray(in_scores, np.float64).reshape(-1)
  out_scores = np.asarray(out_scores, np.float64).reshape(-1)
  if in_scores.size < 1 or out_scores.size < 1:
    raise ValueError(
      "need at least one in and one out score, got "
      f"{in_scores.size} and {out_scores.size}"
    )
  if not (np.all(np.isfinite(in_scores)) and np.all(np.isfinite(out_scores))):
    raise ValueError("scores must be finite")
  if not 0.5 < confidence < 1:
    raise ValueError(f"confidence must lie in (0.5, 1), got {confidence}")
  if open_delta and not 0 < delta < 1:
    raise ValueError(f"delta must lie in (0, 1), got {delta}")
  if not 0 <= delta <= 1:
    raise ValueError(f"delta must lie in [0, 1], got {delta}")
  return in_scores, out_scores


def epsilon_lower_bound_canaries(
  in_scores,
  out_scores,
  *,
  delta: float,
  confidence: float = 0.95,
  threshold_strategy: str = "bonferroni",
  seed: int = 0,
) -> dict:
  """The epsilon lower bound that canary scores prove, from jax-privacy.

  Each score is one independent trial (one model): ``in_scores`` from models
  that trained on the canary, ``out_scores`` from models that did not; higher
  means "in". The decision rule is ``score >= threshold``.

  Args:
    in_scores: ``float[trials_in]``; out_scores: ``float[trials_out]``.
    delta: the delta of the guarantee being audited, in [0, 1].
    confidence: probability that the bound holds, in (0.5, 1).
    threshold_strategy: ``"bonferroni"`` (all thresholds, jax-privacy's
      Bonferroni correction over them) or ``"split"`` (threshold chosen on a
      random half of each score set, bound on the other half; ``seed``).
    seed: seed of the split.

  Returns:
    dict: ``epsilon`` (float >= 0), ``threshold`` (the rule's threshold;
    ``inf`` when no threshold proves anything), ``tp``/``fp`` (counts of
    ``score >= threshold`` among the in / out trials the bound was computed
    on, all trials for ``"bonferroni"``), ``n_in``/``n_out``,
    ``confidence``, ``delta``, ``threshold_strategy``.
  """
  from jax_privacy import auditing  # imported here: only audits need it

  in_scores, out_scores = checked_scores(
    in_scores, out_scores, delta=delta, confidence=confidence
  )
  significance = 1.0 - confidence
  auditor = auditing.CanaryScoreAuditor(in_scores, out_scores)
  if threshold_strategy == "bonferroni":
    strategy = auditing.Bonferroni()
    eps = auditor.epsilon_clopper_pearson(
      significance, delta, threshold_strategy=strategy
    )
    # The threshold the bound used: the same computation at the corrected
    # significance (jax-privacy 2.0 returns the epsilon only).
    n_thresholds = len(auditor._fn_counts)
    eps_check, threshold = auditor._epsilon_clopper_pearson_all_thresholds(
      significance / n_thresholds, delta, True, None
    )
    assert math.isclose(eps, eps_check, rel_tol=1e-12, abs_tol=1e-12)
    counted_in, counted_out = in_scores, out_scores
  elif threshold_strategy == "split":
    rng = np.random.default_rng(seed)

    def halves(x):
      perm = rng.permutation(x.size)
      cut = x.size // 2
      return x[perm[:cut]], x[perm[cut:]]

    in_a, in_b = halves(in_scores)
    out_a, out_b = halves(out_scores)
    if min(in_a.size, out_a.size) < 1:
      raise ValueError("the split needs at least 2 in and 2 out scores")
    _, threshold = auditing.CanaryScoreAuditor(
      in_a, out_a
    )._epsilon_clopper_pearson_all_thresholds(significance, delta, True, None)
    eps = auditing.CanaryScoreAuditor(in_b, out_b).epsilon_clopper_pearson(
      significance,
      delta,
      threshold_strategy=auditing.Explicit(float(threshold)),
    )
    counted_in, counted_out = in_b, out_b
  else:
    raise ValueError(
      "threshold_strategy must be 'bonferroni' or 'split', got "
      f"{threshold_strategy!r}"
    )
  threshold = float(threshold)
  return {
    "epsilon": float(eps),
    "threshold": threshold,
    "tp": int(np.sum(counted_in >= threshold)),
    "fp": int(np.sum(counted_out >= threshold)),
    "n_in": int(counted_in.size),
    "n_out": int(counted_out.size),
    "confidence": float(confidence),
    "delta": float(delta),
    "threshold_strategy": threshold_strategy,
  }


def one_run_bound(
  canary_scores,
  included,
  *,
  k_pos: int,
  k_neg: int = 0,
  delta: float,
  confidence: float = 0.95,
  method: str = "steinke",
) -> dict:
  """The one-run epsilon lower bound (Steinke, Nasr, Jagielski, NeurIPS 2023).

  m canaries were each included with probability 1/2 (independently) in ONE
  training run; ``canary_scores`` (``float[m]``, higher = "in") come from that
  run and ``included`` (``bool[m]``) are the coins. The attacker guesses "in"
  for the ``k_pos`` highest scores and "out" for the ``k_neg`` lowest (ties by
  index; both fixed before the scores are seen), abstaining on the rest. From
  ``r = k_pos + k_neg`` guesses with ``v`` correct the bound is the largest eps
  whose p-value is at most ``1 - confidence`` (``delta`` in [0, 1]):

  - ``"steinke"``: their Theorem 5.2, exact, by jax-privacy's
    ``auditing._epsilon_one_run``: ``P[Bin(r, e^eps/(1+e^eps)) >= v] + 2 m
    delta alpha``, ``alpha = max_{1<=i<=v} (P[Bin >= v-i] - P[Bin >= v]) / i``.
  - ``"fdp"``: the f-DP refinement of Mahloujifar et al. 2024 (arXiv
    2410.22235; ``auditing._epsilon_one_run_fdp``), auditing the Gaussian
    f-DP curve with the given (eps, delta > 0): tighter for DP-SGD.

  Returns:
    dict: ``epsilon`` (>= 0), ``guesses`` (r), ``correct`` (v),
    ``correct_pos``/``correct_neg``, ``m``, ``k_pos``, ``k_neg``, ``delta``,
    ``confidence``, ``method``.
  """
  from jax_privacy import auditing  # imported here: only audits need it

  scores = np.asarray(canary_scores, np.float64).reshape(-1)
  included = np.asarray(included, bool).reshape(-1)
  m = scores.size
  if included.size != m:
    raise ValueError(f"{m} scores but {included.size} inclusion bits")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores must be finite")
  k_pos, k_neg = int(k_pos), int(k_neg)
  if k_pos < 0 or k_neg < 0 or k_pos + k_neg < 1 or k_pos + k_neg > m:
    raise ValueError(f"bad k_pos={k_pos}, k_neg={k_neg} for m={m} canaries")
  if not 0.5 < confidence < 1:
    raise ValueError(f"confidence must lie in (0.5, 1), got {confidence}")
  if not 0 <= delta <= 1:
    raise ValueError(f"delta must lie in [0, 1], got {delta}")
  if method not in ("steinke", "fdp") or (method == "fdp" and delta <= 0):
    raise ValueError(
      f"need method 'steinke', or 'fdp' with delta > 0: {method}"
    )
  audit_fn = {
    "steinke": auditing._epsilon_one_run,
    "fdp": auditing._epsilon_one_run_fdp,
  }[method]
  order = np.argsort(-scores, kind="stable")
  correct_pos = int(np.sum(included[order[:k_pos]]))
  correct_neg = int(np.sum(~included[order[m - k_neg :]])) if k_neg else 0
  guesses, correct = k_pos + k_neg, correct_pos + correct_neg
  eps = audit_fn(0.0, m, guesses, correct, 1.0 - confidence, float(delta))
  return {
    "epsilon": float(eps),
    "guesses": guesses,
    "correct": correct,
    "correct_pos": correct_pos,
    "correct_neg": correct_neg,
    "m": int(m),
    "k_pos": k_pos,
    "k_neg": k_neg,
    "delta": float(delta),
    "confidence": float(confidence),
    "method": method,
  }
