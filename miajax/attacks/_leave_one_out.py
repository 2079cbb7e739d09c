"""Leave-one-out: every model in turn is the target, the others its shadows.

Per-example counts, means and sums of squared deviations are computed once
and the removed models subtracted in O(1) per (target, example), so all M
targets cost about one M-shadow fit plus the scoring. By default the LiRA
leave-one-out is balanced (`leave_one_out_partners`): the target's other
group also loses one model, so that under the null members do not score
lower than non-members (docs/lira.md).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from miajax.attacks._base import BASE_ATTACKS, OFFLINE_SCALE, base_leave_one_out
from miajax.attacks._bavaria import BAVARIA_ATTACKS, bavaria_leave_one_out
from miajax.attacks._checks import (
  _as_keep,
  _as_prob,
  _as_real,
  _check_counts,
  _check_lira_counts,
  _check_rmia_params,
  _check_seed,
  _check_variant,
  _lira_scorable,
  _nan_for_too_few,
  _on_columns,
)
from miajax.attacks._lira import (
  _batch_size,
  _centred,
  _moments,
  _offline_llr,
  _online_llr,
  _scale,
)
from miajax.attacks._reference import _lira_reference_loo, _run_reference
from miajax.attacks._rmia import _TINY, _pr_offline, _rank_against_population
from miajax.attacks._thresholds import global_threshold

ATTACKS = (
  "lira_online",
  "lira_offline",
  "global_threshold",
  "rmia",
  "rmia_offline",
  *BASE_ATTACKS,
  *BAVARIA_ATTACKS,
)


# Scores are first centred per (example, query) on the first model's score, so
# sums never carry a large common offset. A group's fit is kept as count, mean
# and sum of squared deviations (m2). Leaving one model out is the exact
# Welford down-date m2' = m2 - d^2 n / (n - 1), d = its deviation, which
# cancels badly only when that model dominates m2; then (the remaining
# scores sit within a fraction of its deviation) it must be the model with
# the largest |deviation|, so each group also keeps its fit without that model,
# computed directly.


class _Stats(NamedTuple):
  n: jax.Array  # float[examples]
  mean: jax.Array  # float[examples, queries], centred
  m2: jax.Array  # float[examples, queries]
  top: jax.Array  # int[examples, queries]: the model with the largest |deviation|, -1 if tied
  mean_top_out: jax.Array  # mean and m2 without model `top`
  m2_top_out: jax.Array


def _group_stats(y_t, mask_t) -> _Stats:
  """`_moments` plus the fit without the model of largest |deviation|."""
  models = y_t.shape[-1]
  w = mask_t[:, None, :]
  n, mean, m2, dev = _moments(y_t, mask_t)
  # Members' deviations straddle 0, so the masked zeros change neither max nor min.
  dev_max, dev_min = jnp.max(dev, axis=-1), jnp.min(dev, axis=-1)
  dev_top = jnp.where(dev_max >= -dev_min, dev_max, dev_min)
  at_top = w & (dev == dev_top[..., None])
  model = jnp.arange(models)
  top = jnp.min(jnp.where(at_top, model, models), axis=-1)
  # A tied top cannot dominate m2 alone; only a unique one needs the direct fit.
  top = jnp.where(jnp.sum(at_top, axis=-1) == 1, top, -1)
  mean_top_out = mean - dev_top / jnp.maximum(n - 1, 1)[:, None]
  rest = w & (model != top[..., None])
  m2_top_out = jnp.sum(
    jnp.where(rest, jnp.square(y_t - mean_top_out[..., None]), 0), axis=-1
  )
  return _Stats(n, mean, m2, top, mean_top_out, m2_top_out)


def _centred_stats(scores, keep):
  """Centre on model 0's scores; IN and OUT stats of scores float[models, examples, queries]."""
  center, y_t = _centred(scores)
  return center, _group_stats(y_t, keep.T), _group_stats(y_t, ~keep.T)


def _leave_out(stats: _Stats, y, r, drop):
  """(n, mean, m2) of a group once model r[i] with centred scores y float[examples, queries]
  leaves it at every example i where drop bool[examples] is set."""
  n_new = stats.n - drop.astype(stats.n.dtype)
  n1 = jnp.maximum(n_new, 1)[:, None]
  d = y - stats.mean
  is_top = stats.top == r[:, None]
  mean = jnp.where(is_top, stats.mean_top_out, stats.mean - d / n1)
  m2 = jnp.where(
    is_top, stats.m2_top_out, stats.m2 - jnp.square(d) * (stats.n[:, None] / n1)
  )
  dq = drop[:, None]
  return (
    n_new,
    jnp.where(dq, mean, stats.mean),
    jnp.where(dq, jnp.maximum(m2, 0), stats.m2),
  )


@jax.jit
def _partners(keep, key):
  models, examples = keep.shape
  model = jnp.arange(models, dtype=jnp.int32)
  # One integer sort per example lists IN models first, then OUT models, each
  # in model order (XLA's CPU sort is fast on a single integer operand).
  members = (
    jax.lax.sort(jnp.where(keep.T, model, models + model), dimension=1) % models
  )
  n_in = jnp.sum(keep, axis=0)
  n_other = jnp.where(keep, models - n_in, n_in)
  u = jax.random.uniform(key, keep.shape)
  rank = jnp.minimum(
    (u * n_other).astype(jnp.int32), jnp.maximum(n_other - 1, 0)
  )
  slot = jnp.where(keep, n_in + rank, rank)
  return jnp.take_along_axis(members, slot.T, axis=1).T


def leave_one_out_partners(keep, *, seed: int = 0):
  """The model each target's balanced leave-one-out also leaves out, per example.

  Args:
    keep: bool[models, examples].
    seed: non-negative int; the draw is a deterministic function of it.

  Returns:
    int32[models, examples]: for target t and example i, a model of the group t
    is not in at i (OUT if t trained on i, else IN), drawn uniformly from
    `jax.random.key(seed)`. Uniform so that structure in the design (e.g.
    `paired_keep`'s complementary pairs) cannot bias the null. Entries for an
    example whose other group is empty are meaningless.
  """
  if np.ndim(keep) != 2:
    raise ValueError(
      f"keep must be a bool array [models, examples], got shape {np.shape(keep)}"
    )
  key = jax.random.key(_check_seed(seed))
  return _partners(jnp.asarray(_as_keep(keep, "keep", np.shape(keep))), key)


@functools.partial(
  jax.jit, static_argnames=("offline", "fix_variance", "balanced", "batch_size")
)
def _lira_miajax_loo(
  scores, keep, key, *, offline, fix_variance, balanced, batch_size
):
  center, stats_in, stats_out = _centred_stats(scores, keep)
  examples = jnp.arange(scores.shape[1])

  def one_target(args):
    x, k, t, r_in, r_out = args
    y = x - center
    if balanced:
      # Both groups lose one model: the target its own, its partner the other.
      drop_in = drop_out = jnp.ones_like(k)
      y_in = scores[r_in, examples] - center
      y_out = scores[r_out, examples] - center
    else:
      drop_in, drop_out, y_in, y_out = k, ~k, y, y
    fit_out = _leave_out(stats_out, y_out, r_out, drop_out)
    s_out = _scale(*fit_out, center, fix_variance)
    if offline:
      return _offline_llr(y, fit_out[1], s_out)
    fit_in = _leave_out(stats_in, y_in, r_in, drop_in)
    s_in = _scale(*fit_in, center, fix_variance)
    return _online_llr(y, fit_in[1], s_in, fit_out[1], s_out)

  targets = jnp.arange(scores.shape[0])
  if balanced:
    partner = _partners(keep, key)
    own = targets[:, None]
    r_in, r_out = jnp.where(keep, own, partner), jnp.where(keep, partner, own)
  else:
    r_in = r_out = jnp.broadcast_to(targets[:, None], keep.shape)
  return jax.lax.map(
    one_target, (scores, keep, targets, r_in, r_out), batch_size=batch_size
  )


@functools.partial(jax.jit, static_argnames=("offline",))
def _rmia_loo_core(p, keep, pz, a, gamma, *, offline):
  models = p.shape[0]
  if offline:
    out = (~keep).astype(p.dtype)
    sum_out = jnp.sum(p * out, axis=0)
    n_out = jnp.sum(out, axis=0)
    pr_x = _pr_offline((sum_out - p * out) / jnp.maximum(n_out - out, 1), a)
  else:
    pr_x = (jnp.sum(p, axis=0) - p) / (models - 1)
  ratio_x = p / jnp.maximum(pr_x, _TINY)
  if pz is None:
    ratio_z = ratio_x
  else:
    pr_z = (jnp.sum(pz, axis=0) - pz) / (models - 1)
    if offline:
      pr_z = _pr_offline(pr_z, a)
    ratio_z = pz / jnp.maximum(pr_z, _TINY)
  return _rank_against_population(ratio_x, ratio_z, gamma)


def leave_one_out(
  scores,
  keep,
  *,
  attack="lira_online",
  fix_variance=False,
  variant="miajax",
  balanced=True,
  seed=0,
  a=0.3,
  gamma=2.0,
  population=None,
  too_few_shadows="raise",
  scale=OFFLINE_SCALE,
  alpha0=None,
):
  """Every model in turn is the target, all the other models its shadows.

  Args:
    scores: float[models, examples, queries]: LiRA scores (e.g. `logit_scaled`) for the
      LiRA and BaVarIA attacks and global_threshold, true-label probabilities for the
      RMIA ones, true-label log-probabilities (`base_signal`) for the BASE ones.
    keep: bool[models, examples]; also the membership labels of the pooled ROC.
    attack: one of `ATTACKS`: "lira_online", "lira_offline", "global_threshold",
      "rmia", "rmia_offline", "base", "base_offline", "bavaria_t", "bavaria_n",
      "bavaria_t_offline", "bavaria_n_offline".
    fix_variance: LiRA only (see `lira_online`).
    variant: "miajax" or "reference" (LiRA; global_threshold is the same in both;
      RMIA has only "miajax").
    balanced: LiRA with variant="miajax", base_offline and the BaVarIA attacks.
      True (default): for target t each example's other group (OUT if t
      trained on it, else IN) also leaves out one model
      (`leave_one_out_partners`), so the IN and OUT fits lose one model each
      and a design with equal IN counts stays balanced. False: all other
      models are shadows, and the fit of the target's own group always has one
      model fewer, which biases the test against members under the null
      (docs/lira.md).
    seed: non-negative int drawing the balanced partners
      (`leave_one_out_partners(keep, seed=seed)`); used only when balanced.
    a, gamma: RMIA parameters (see `rmia`).
    population: RMIA only: None (the examples stand in for the population) or
      float[models, population, queries], every model's probabilities on samples
      that no model trained on.
    too_few_shadows: an example left with too few IN/OUT shadow scores once
      a target is removed (LiRA: 2, or 1 with fix_variance, so an example
      needs 3 IN models if any model trained on it; rmia_offline: 1 OUT):
      "raise" (default) a ValueError, or "nan": score it NaN for every
      target (never for some targets only, which would drop members or
      non-members of one example selectively) and the others exactly as
      this attack on only the scorable examples. Typical after unusable
      models were dropped (`miajax.model_usability`). BaVarIA scores every
      example (its priors carry 0 or 1 shadow scores).
    scale: base_offline's factor (see `base`).
    alpha0: the BaVarIA prior's shape (see `bavaria`; None: 2 for "t", 1 for "n").

  Returns:
    float[models, examples], row t = the attack on model t with the others as
    shadows; higher = member. Pool it with `keep` for one ROC.

  Raises:
    ValueError: bad arguments, fewer than 2 models, or (too_few_shadows=
      "raise") an example left with too few shadow scores.
  """
  if attack not in ATTACKS:
    raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
  _check_variant(variant)
  seed = _check_seed(seed)
  nan_mode = _nan_for_too_few(too_few_shadows)
  x = _as_real(scores, "scores", 3)
  if x.shape[0] < 2:
    raise ValueError(
      f"leave_one_out needs at least 2 models, got scores of shape {x.shape}"
    )
  k = _as_keep(keep, "keep", x.shape[:2])
  is_lira = attack.startswith("lira")
  if fix_variance and not is_lira:
    raise ValueError(
      f"fix_variance applies to the LiRA attacks only, not {attack!r}"
    )
  if population is not None and not attack.startswith("rmia"):
    raise ValueError(
      f"population applies to the RMIA attacks only, not {attack!r}"
    )

  if attack == "global_threshold":
    return global_threshold(x)
  if attack in BASE_ATTACKS + BAVARIA_ATTACKS:
    if variant != "miajax":
      raise ValueError(f"{attack} has only variant='miajax', got {variant!r}")
    key = jax.random.key(seed)
    partners = (
      (lambda ks: _partners(jnp.asarray(ks), key)) if balanced else None
    )
    if attack in BASE_ATTACKS:
      return base_leave_one_out(
        x, k, attack=attack, scale=scale, partners=partners, nan_mode=nan_mode
      )
    return bavaria_leave_one_out(
      x, k, attack=attack, alpha0=alpha0, partners=partners
    )

  n_in, n_out = k.sum(0), (~k).sum(0)
  # The fewest IN (OUT) shadows any target leaves an example with.
  loo_in, loo_out = n_in - (n_in > 0), n_out - (n_out > 0)
  if is_lira:
    offline = attack == "lira_offline"
    ok = None
    if nan_mode:
      ok = _lira_scorable(
        loo_in, loo_out, offline=offline, fix_variance=bool(fix_variance)
      )
    else:
      _check_lira_counts(
        loo_in,
        loo_out,
        offline=offline,
        fix_variance=fix_variance,
        context=f"leave_one_out({attack!r}, variant={variant!r}, fix_variance={fix_variance}) "
        "after removing the target,",
        keep_name="keep",
      )

    def score(columns):
      xs, ks = (x, k) if columns is None else (x[:, columns], k[:, columns])
      if variant == "reference":
        return _run_reference(
          _lira_reference_loo,
          xs,
          ks,
          offline=offline,
          fix_variance=bool(fix_variance),
        )
      return _lira_miajax_loo(
        jnp.asarray(xs, dtype=float),
        jnp.asarray(ks),
        jax.random.key(seed),
        offline=offline,
        fix_variance=bool(fix_variance),
        balanced=bool(balanced),
        batch_size=_batch_size(*xs.shape),
      )

    return _on_columns(ok, score, x.shape[0], variant == "reference")

  if variant != "miajax":
    raise ValueError(f"{attack} has only variant='miajax', got {variant!r}")
  _check_rmia_params(a, gamma)
  x = _as_prob(x, "scores")
  offline = attack == "rmia_offline"
  ok = loo_out >= 1 if offline and nan_mode else None
  if offline and not nan_mode:
    _check_counts(
      loo_out,
      1,
      "OUT",
      f"leave_one_out({attack!r}) after removing the target,",
      "Train more models.",
      keep_name="keep",
    )
  pz = None
  if population is not None:
    z = _as_prob(population, "population")
    if z.shape[0] != x.shape[0] or z.shape[2] != x.shape[2] or z.shape[1] < 1:
      raise ValueError(
        f"population must have shape [{x.shape[0]}, population, "
        f"{x.shape[2]}], got {z.shape}"
      )
    pz = jnp.mean(jnp.asarray(z, dtype=float), axis=-1)

  def score(columns):
    xs, ks = (x, k) if columns is None else (x[:, columns], k[:, columns])
    return _rmia_loo_core(
      jnp.mean(jnp.asarray(xs, dtype=float), axis=-1),
      jnp.asarray(ks),
      pz,
      float(a),
      float(gamma),
      offline=offline,
    )

  return _on_columns(ok, score, x.shape[0])
