"""Auditing DP-SGD with input canaries over many independently trained models.

Threat model (:func:`canary_audit`): black box, final model. N models of one
DP-SGD recipe are trained on the same data set; each model independently
includes a canary set with probability 1/2. The auditor sees only each final
model's logits on the canaries and must tell the including models from the
others. If the recipe is (eps, delta)-DP with respect to adding or removing
the canary set, every test satisfies ``TPR <= e^eps FPR + delta`` (Kairouz et
al. 2015; Jagielski et al. 2020; Nasr et al. 2021), so one-sided
Clopper-Pearson bounds on TPR and FPR give a lower bound on eps that holds
with the stated confidence. A lower bound above the accountant's epsilon is a
proof (at that confidence) that the implementation, or its accounting, is
broken.

The statistic is DeepMind's ``jax_privacy.auditing.CanaryScoreAuditor``
(``epsilon_clopper_pearson``): by default every threshold with a Bonferroni
correction over the thresholds of the Pareto frontier (no data spent on
choosing the threshold), or a threshold chosen on one random half of the trials
and the bound computed on the other (``threshold_strategy="split"``).
miajax's own :func:`miajax.epsilon_lower_bound` (always split, pooled
scores) stays for one model's train/test scores; see ``docs/dp_audit.md``.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np

__all__ = [
  "epsilon_lower_bound_canaries",
  "mislabeled_canaries",
  "noise_canaries",
  "canary_audit",
  "fixed_init_mlp",
  "CANARY_KINDS",
]

CANARY_KINDS = ("mislabeled", "noise")


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
  if not 0 <= delta <= 1:
    raise ValueError(f"delta must lie in [0, 1], got {delta}")
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


def mislabeled_canaries(x, y, k: int, *, num_classes: int, seed: int = 0):
  """``k`` examples of ``(x, y)`` (e.g. held-out data) with a wrong label.

  Args:
    x: ``float[examples, ...]``; y: ``int[examples]``; k: canaries.
    num_classes: classes; each canary's label is shifted by a random
      ``1..num_classes-1``.

  Returns:
    ``(x_canary float32[k, ...], y_canary int32[k])``.
  """
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(y), size=k, replace=False)
  shift = rng.integers(1, num_classes, size=k)
  y_c = (np.asarray(y)[idx] + shift) % num_classes
  return np.asarray(x)[idx].astype(np.float32), y_c.astype(np.int32)


def noise_canaries(
  shape, k: int, *, label: int = 0, low=0.0, high=1.0, seed: int = 0
):
  """``k`` out-of-distribution inputs: uniform noise in ``[low, high)``, one label.

  Returns:
    ``(x_canary float32[k, *shape], y_canary int32[k])``.
  """
  rng = np.random.default_rng(seed)
  x_c = rng.uniform(low, high, size=(k, *tuple(shape))).astype(np.float32)
  return x_c, np.full((k,), label, np.int32)


def fixed_init_mlp(hidden: int, num_classes: int, *, seed: int = 0):
  """An ``(init, apply)`` MLP whose initial parameters ignore the model key.

  DP holds for any fixed initialisation; one initialisation for every model
  removes its variance from the canary scores, which tightens the audit
  (Nasr et al. 2023). ``hidden=0`` is softmax regression; else one ReLU
  layer of ``hidden`` units (LeCun-normal weights from ``seed``, zero biases).
  The same ``(hidden, num_classes, seed)`` returns the same functions, so
  compiled programs are reused.
  """
  return _fixed_init_mlp(int(hidden), int(num_classes), int(seed))


@functools.lru_cache(maxsize=None)
def _fixed_init_mlp(hidden: int, num_classes: int, seed: int):
  import jax
  import jax.numpy as jnp

  widths = ([hidden] if hidden else []) + [num_classes]

  def init(key, x):
    del key  # the point: every model starts from the same parameters
    d = int(np.prod(x.shape[1:]))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(widths))
    params = {}
    for i, (k, w) in enumerate(zip(keys, widths)):
      params[f"w{i}"] = jax.random.normal(k, (d, w), jnp.float32) / math.sqrt(d)
      params[f"b{i}"] = jnp.zeros((w,), jnp.float32)
      d = w
    return {"params": params}

  def apply(variables, x, *, train=False, rngs=None):
    del train, rngs
    p = variables["params"]
    h = x.reshape(x.shape[0], -1)
    for i in range(len(widths)):
      h = h @ p[f"w{i}"] + p[f"b{i}"]
      if i < len(widths) - 1:
        h = jax.nn.relu(h)
    return h

  return init, apply


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
