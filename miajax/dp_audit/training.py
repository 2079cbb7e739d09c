"""Audits that train: N DP-SGD models with a canary set each (:func:`canary_audit`), or one run with many canaries (:func:`one_run_audit`)."""

from __future__ import annotations

import math
import time

import numpy as np

from miajax.dp_audit.bounds import epsilon_lower_bound_canaries, one_run_bound

__all__ = ["canary_audit", "one_run_audit"]


def _group_guarantee(eps: float, delta: float, k: int) -> tuple[float, float]:
  """(eps, delta)-DP for one example gives ``(k eps, k e^((k-1) eps) delta)`` for k."""
  if k == 1:
    return eps, delta
  return k * eps, min(1.0, k * math.exp((k - 1) * eps) * delta)


def canary_audit(
  config,
  x,
  y,
  canary_x,
  canary_y,
  *,
  num_models: int,
  num_classes: int,
  delta: float,
  confidence: float = 0.95,
  threshold_strategy: str = "bonferroni",
  accountant: str = "rdp",
  seed: int = 0,
  lowering=None,
  claimed_defense=None,
) -> dict:
  """Many-run black-box audit of a DP-SGD recipe with an input canary set.

  Every model trains on all of ``(x, y)``; model m also trains on the whole
  canary set iff ``include[m]`` (independent fair coins, ``seed``). All
  ``num_models`` models train in one :func:`miajax.train_models` call. A
  model's score is the mean over the canaries of the logit-scaled confidence
  of the canary label (:func:`miajax.logit_scaled`).

  Args:
    config: a :class:`miajax.TrainConfig` whose ``defense`` is a DP-SGD
      gradient processor (``miajax.defenses.dp_sgd`` or a subclass).
    x: ``float[examples, ...]``; y: ``int[examples]``.
    canary_x: ``float[k, ...]``; canary_y: ``int[k]``.
    num_models: trials (models), >= 4.
    delta: the recipe's delta (accountant and bound).
    threshold_strategy, confidence: as in :func:`epsilon_lower_bound_canaries`.
    accountant: ``"rdp"`` or ``"pld"``, for the claimed epsilon.
    claimed_defense: the defense whose ``accounting`` states the claim
      (default ``config.defense``); lets a test claim one noise level and
      train with another.

  Returns:
    dict: ``bound`` (:func:`epsilon_lower_bound_canaries`' dict),
    ``accounting`` (the defense's, at ``sample_rate = batch_size / fewest
    members`` and the steps every model takes), ``claimed_epsilon`` and
    ``claimed_delta`` (for a group of k canaries the group guarantee
    ``(k eps, k e^((k-1) eps) delta)``; the bound is computed at
    ``claimed_delta``), ``scores float64[models]``, ``include bool[models]``,
    ``train_s``, ``total_s``.
  """
  import miajax
  from miajax.engine import batches

  t0 = time.perf_counter()
  if num_models < 4:
    raise ValueError(f"num_models must be >= 4, got {num_models}")
  defense = config.defense if claimed_defense is None else claimed_defense
  if defense is None or getattr(defense, "accounting", None) is None:
    raise ValueError("config.defense must be a DP-SGD defense with accounting")
  x, canary_x = np.asarray(x, np.float32), np.asarray(canary_x, np.float32)
  y, canary_y = np.asarray(y, np.int32), np.asarray(canary_y, np.int32)
  n, k = len(y), len(canary_y)
  rng = np.random.default_rng(seed)
  include = rng.random(num_models) < 0.5
  if include.all() or not include.any():
    include[0] = not include[0]
  keep = np.ones((num_models, n + k), bool)
  keep[:, n:] = include[:, None]
  x_all = np.concatenate([x, canary_x])
  y_all = np.concatenate([y, canary_y])
  epochs = config.epochs
  rate, steps = batches.dp_sampling(keep, config.batch_size, epochs)
  accounting = defense.accounting(
    sample_rate=rate, steps=steps, delta=delta, accountant=accountant
  )
  claimed_eps, claimed_delta = _group_guarantee(
    float(accounting["epsilon"]), delta, k
  )
  t1 = time.perf_counter()
  res = miajax.train_models(
    config, x_all, y_all, keep, num_classes=num_classes, lowering=lowering
  )
  logits = miajax.predict(
    config,
    res.variables,
    canary_x,
    num_classes=num_classes,
    lowering=lowering,
  )[:, :, 0]  # [models, k, classes]
  t2 = time.perf_counter()
  scores = np.asarray(miajax.logit_scaled(logits, canary_y), np.float64)
  scores = scores.mean(axis=1)
  if not np.all(np.isfinite(scores)):
    raise FloatingPointError("non-finite canary scores (training diverged?)")
  bound = epsilon_lower_bound_canaries(
    scores[include],
    scores[~include],
    delta=claimed_delta,
    confidence=confidence,
    threshold_strategy=threshold_strategy,
    seed=seed,
  )
  return {
    "bound": bound,
    "accounting": accounting,
    "claimed_epsilon": claimed_eps,
    "claimed_delta": claimed_delta,
    "num_canaries": k,
    "num_models": num_models,
    "scores": scores,
    "include": include,
    "train_s": t2 - t1,
    "total_s": time.perf_counter() - t0,
  }


def one_run_audit(
  config,
  x,
  y,
  canary_x,
  canary_y,
  *,
  num_classes: int,
  k_pos: int,
  k_neg: int = 0,
  delta: float,
  confidence: float = 0.95,
  method: str = "steinke",
  accountant: str = "rdp",
  seed: int = 0,
  lowering=None,
) -> dict:
  """One-run black-box audit of a DP-SGD recipe (Steinke et al. 2023).

  ONE model trains on all of ``(x, y)`` plus canary i iff ``include[i]``
  (fair coins, ``seed``); canary i's score is the model's logit-scaled
  confidence of ``canary_y[i]``; :func:`one_run_bound` (``k_pos``, ``k_neg``,
  ``delta``, ``confidence``, ``method``) gives the bound. Each canary is one
  example: the claim audited is the recipe's per-example (eps, delta) from
  ``accountant`` at ``sample_rate = batch_size / training-set size``.

  Returns:
    dict: ``bound`` (:func:`one_run_bound`'s), ``accounting``,
    ``claimed_epsilon``, ``scores float64[m]``, ``include bool[m]``,
    ``train_s``, ``total_s``.
  """
  import miajax
  from miajax.engine import batches

  t0 = time.perf_counter()
  defense = config.defense
  if defense is None or getattr(defense, "accounting", None) is None:
    raise ValueError("config.defense must be a DP-SGD defense with accounting")
  x, canary_x = np.asarray(x, np.float32), np.asarray(canary_x, np.float32)
  y, canary_y = np.asarray(y, np.int32), np.asarray(canary_y, np.int32)
  n, m = len(y), len(canary_y)
  include = np.random.default_rng(seed).random(m) < 0.5
  keep = np.ones((1, n + m), bool)
  keep[0, n:] = include
  rate, steps = batches.dp_sampling(keep, config.batch_size, config.epochs)
  accounting = defense.accounting(
    sample_rate=rate, steps=steps, delta=delta, accountant=accountant
  )
  t1 = time.perf_counter()
  res = miajax.train_models(
    config,
    np.concatenate([x, canary_x]),
    np.concatenate([y, canary_y]),
    keep,
    num_classes=num_classes,
    lowering=lowering,
  )
  logits = miajax.predict(
    config, res.variables, canary_x, num_classes=num_classes, lowering=lowering
  )[0, :, 0]  # [m, classes]
  t2 = time.perf_counter()
  scores = np.asarray(miajax.logit_scaled(logits, canary_y), np.float64)
  if not np.all(np.isfinite(scores)):
    raise FloatingPointError("non-finite canary scores (training diverged?)")
  bound = one_run_bound(
    scores,
    include,
    k_pos=k_pos,
    k_neg=k_neg,
    delta=delta,
    confidence=confidence,
    method=method,
  )
  return {
    "bound": bound,
    "accounting": accounting,
    "claimed_epsilon": float(accounting["epsilon"]),
    "scores": scores,
    "include": include,
    "train_s": t2 - t1,
    "total_s": time.perf_counter() - t0,
  }
