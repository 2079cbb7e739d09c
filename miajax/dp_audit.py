"""Auditing DP-SGD with input canaries: many runs, or one run (Steinke et al.).

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
  "one_run_bound",
  "one_run_audit",
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
