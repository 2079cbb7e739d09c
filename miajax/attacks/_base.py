"""BASE: the target's log-confidence against the reference models' mean confidence.

M. Lassila, J. Östman, K.-H. Ngo, "Practical Bayes-Optimal Membership
Inference Attacks", NeurIPS 2025 (arXiv:2505.24089). BASE1 (Brännvall,
arXiv:2603.11799, names it so) scores example i of target t as
log p_t(i) - log mean_j p_j(i) over the reference models j, p the softmax
probability of the true label at temperature T (`base_signal`). Offline
only the OUT references are averaged and their log-mean is multiplied by
`scale` (LeakPro's `offline_scale_factor`, default 0.33: aidotse/LeakPro,
leakpro/attacks/mia_attacks/base.py, the implementation in the library of
the paper's group; `scale=1` is BASE1 offline of Brännvall's demo,
rickardbrannvall/exponential-family-mia).

Signals are log-probabilities, so the reference mean is a masked log-sum-exp
and confident members do not tie at p = 1 in float32. `base_fit` and
`base_score` are jit- and vmap-able cores; `base` checks its inputs and
scores many targets.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from miajax import scores
from miajax.attacks._bavaria import _other_group_partner
from miajax.attacks._checks import (
  _align_target,
  _as_float,
  _as_real,
  _check_counts,
  _check_shadow_target,
  _nan_for_too_few,
  _on_columns,
)

BASE_ATTACKS = ("base", "base_offline")
# LeakPro's default offline_scale_factor.
OFFLINE_SCALE = 0.33
# Elements of the per-target [chunk, examples, queries, models] temporaries.
_CHUNK_ELEMENTS = 1 << 22
# Log-confidences may exceed 0 by float32 rounding of a log-sum-exp.
_LOG_CONF_SLACK = 1e-5


def base_signal(logits, labels, *, temperature=1.0) -> jax.Array:
  """BASE's signal: log softmax(logits / temperature)[label], float32.

  Lassila, Östman, Ngo, "Practical Bayes-Optimal Membership Inference
  Attacks", NeurIPS 2025. `-miajax.cross_entropy(logits / T, labels)`: stable
  log-sum-exps, finite however confident the model is. LeakPro's BASE
  defaults to T = 2; T = 1 is `log(miajax.confidence)`, RMIA's signal.

  Args:
    logits: float[..., classes], e.g. `miajax.predict`'s
      [models, examples, queries, classes].
    labels: int broadcastable to logits.shape[:-1], e.g. `y[None, :, None]`.
    temperature: T > 0.

  Returns:
    float32[...] (logits.shape[:-1]), <= 0.
  """
  if isinstance(temperature, bool) or not (
    isinstance(temperature, numbers.Real)
    and math.isfinite(temperature)
    and temperature > 0
  ):
    raise ValueError(
      f"temperature must be a finite number > 0, got {temperature!r}"
    )
  return -scores.cross_entropy(jnp.asarray(logits) / temperature, labels)


class BaseFit(NamedTuple):
  """BASE's per-example threshold (`base_fit`).

  Attributes:
    threshold: float[examples, queries], what `base_score` subtracts: log of
      the mean reference probability (online), or `scale` times the log of
      the OUT references' mean (offline; NaN where an example has none).
    n_ref: int32[examples], the references averaged (all, or the OUT ones).
  """

  threshold: jax.Array
  n_ref: jax.Array


def _log_mean(x_t, mask_t):
  """log mean_j exp(x_j) over the masked models, NaN where there is none.

  x_t float[examples, queries, models], mask_t bool[examples, models] ->
  float[examples, queries].
  """
  w = mask_t[:, None, :]
  top = jnp.max(jnp.where(w, x_t, -jnp.inf), axis=-1)
  top = jnp.where(jnp.isfinite(top), top, 0)
  total = jnp.sum(jnp.where(w, jnp.exp(x_t - top[..., None]), 0), axis=-1)
  n = jnp.sum(mask_t, axis=-1)
  log_mean = jnp.log(total) + top - jnp.log(jnp.maximum(n, 1))[:, None]
  return jnp.where((n > 0)[:, None], log_mean, jnp.nan), n


def _threshold(x_t, all_t, out_t, offline, scale):
  log_all, n_all = _log_mean(x_t, all_t)
  if out_t is None:
    return log_all, n_all.astype(jnp.int32)
  log_out, n_out = _log_mean(x_t, out_t)
  threshold = jnp.where(offline, scale * log_out, log_all)
  return threshold, jnp.where(offline, n_out, n_all).astype(jnp.int32)


def _as_3d(x, name):
  x = _as_float(x)
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3:
    raise ValueError(
      f"{name} must be float[references, examples, queries] (or "
      f"float[references, examples]), got shape {x.shape}"
    )
  return x


@jax.jit
def base_fit(
  ref_log_conf, keep=None, *, offline=False, scale=OFFLINE_SCALE
) -> BaseFit:
  """Fit BASE's threshold once from the reference models.

  Lassila, Östman, Ngo, "Practical Bayes-Optimal Membership Inference
  Attacks", NeurIPS 2025 (BASE1). Online: log mean_j p_j over all
  references; offline: `scale * log mean_j p_j` over the OUT references
  (LeakPro's offline BASE). Pure `jax.numpy`: jit- and vmap-able (`offline`
  and `scale` may be traced); no value checks.

  Args:
    ref_log_conf: float[references, examples, queries] (or float[references,
      examples]), the references' log-probabilities of the true label
      (`base_signal`).
    keep: bool[references, examples], True where the reference trained on
      the example; needed offline (may be None otherwise).
    offline: average only the OUT references, times `scale`.
    scale: the offline factor on the log of the OUT mean; 0.33 is LeakPro's
      default, 1 the plain OUT mean.

  Returns:
    A `BaseFit`.
  """
  x = _as_3d(ref_log_conf, "ref_log_conf")
  x_t = jnp.transpose(x, (1, 2, 0))
  all_t = jnp.ones(x_t.shape[::2], bool)
  if keep is None:
    if not (isinstance(offline, bool) and not offline):
      raise ValueError(
        "base_fit needs keep unless offline is the Python value False "
        "(offline=True, or offline traced by jit)"
      )
    return BaseFit(*_threshold(x_t, all_t, None, offline, scale))
  keep = jnp.asarray(keep)
  if keep.dtype != jnp.bool_ or keep.shape != x.shape[:2]:
    raise ValueError(
      f"keep must be bool[references, examples] = {x.shape[:2]}, got "
      f"{keep.dtype}{list(keep.shape)}"
    )
  return BaseFit(*_threshold(x_t, all_t, ~keep.T, offline, scale))


def _align(fit, target):
  return _align_target(target, fit.threshold.shape, "target_log_conf")


@jax.jit
def base_score(fit: BaseFit, target_log_conf) -> jax.Array:
  """BASE score of one target: log p_target - threshold, averaged over queries.

  Lassila, Östman, Ngo, NeurIPS 2025. Online and with one query it ranks the
  examples exactly as `rmia_score` with gamma = 1 and no population samples
  does on p = exp(log p) (docs/attacks.md). Jit- and vmap-able:
  `jax.vmap(base_score, in_axes=(None, 0))(fit, targets)`.

  Args:
    fit: from `base_fit`.
    target_log_conf: float[examples, queries] (or float[examples] with one
      query), the target's log-probabilities of the true label.

  Returns:
    float[examples], higher = member.
  """
  return jnp.mean(_align(fit, target_log_conf) - fit.threshold, axis=-1)


def _as_log_conf(x, name):
  arr = _as_real(x, name, 3)
  if arr.size and arr.max() > _LOG_CONF_SLACK:
    raise ValueError(
      f"{name} must hold log-probabilities of the true label (<= 0, e.g. "
      f"attacks.base_signal(logits, labels)), got values up to "
      f"{arr.max():.4g}"
    )
  return arr


def _check_scale(scale):
  if isinstance(scale, bool) or not (
    isinstance(scale, numbers.Real) and 0 <= scale <= 1
  ):
    raise ValueError(f"scale must be a number in [0, 1], got {scale!r}")
  return float(scale)


def _batch_size(targets, elements):
  return max(1, min(targets, _CHUNK_ELEMENTS // max(1, elements)))


@functools.partial(jax.jit, static_argnames=("offline",))
def _base_targets(shadow, keep, target, scale, *, offline):
  fit = base_fit(shadow, keep, offline=offline, scale=scale)
  return jax.vmap(base_score, in_axes=(None, 0))(fit, target)


def base(
  shadow_log_conf,
  shadow_keep,
  target_log_conf,
  *,
  offline=False,
  scale=OFFLINE_SCALE,
  too_few_shadows="raise",
):
  """BASE (BASE1): the target's log-confidence minus the references' log mean confidence.

  Lassila, Östman, Ngo, "Practical Bayes-Optimal Membership Inference
  Attacks", NeurIPS 2025 (arXiv:2505.24089). Checks, then `base_fit` and
  `base_score` per target.

  Args:
    shadow_log_conf: float[references, examples, queries], the references'
      log-probabilities of the true label, <= 0 (`base_signal(logits,
      labels, temperature=T)`).
    shadow_keep: bool[references, examples]; used offline (OUT only).
    target_log_conf: float[targets, examples, queries], the attacked models'.
    offline: threshold `scale * log mean_OUT p` over the OUT references only.
    scale: offline factor in [0, 1]; 0.33 is LeakPro's default
      (`offline_scale_factor`), 1 the plain OUT mean.
    too_few_shadows: offline, an example without OUT references: "raise"
      (default) a ValueError, or "nan": score it NaN for every target.

  Returns:
    float[targets, examples], mean over queries of log p_target - threshold;
    higher = member. float32 jax array.

  Raises:
    ValueError: bad shapes/dtypes, non-finite or positive log-probabilities,
      a scale outside [0, 1], or (offline, too_few_shadows="raise") an
      example without OUT references.
  """
  scale = _check_scale(scale)
  nan_mode = _nan_for_too_few(too_few_shadows)
  names = ("shadow_log_conf", "shadow_keep", "target_log_conf")
  shadow, keep, target = _check_shadow_target(
    shadow_log_conf, shadow_keep, target_log_conf, names=names
  )
  shadow = _as_log_conf(shadow, names[0])
  target = _as_log_conf(target, names[2])
  ok = _base_scorable(
    (~keep).sum(0), offline, nan_mode, "base(offline=True)", "shadow_keep"
  )

  def score(columns):
    s, k, t = (
      (shadow, keep, target)
      if columns is None
      else (shadow[:, columns], keep[:, columns], target[:, columns])
    )
    return _base_targets(
      jnp.asarray(s, dtype=float),
      jnp.asarray(k),
      jnp.asarray(t, dtype=float),
      scale,
      offline=bool(offline),
    )

  return _on_columns(ok, score, target.shape[0])


def _base_scorable(n_out, offline, nan_mode, context, keep_name):
  """None (score all), or bool[examples] with OUT references ("nan")."""
  if not offline:
    return None
  if nan_mode:
    return n_out >= 1
  hint = "Train more reference models or use offline=False."
  _check_counts(n_out, 1, "OUT", context, hint, keep_name)
  return None


# ------------------------------------------------------------ leave-one-out


@functools.partial(jax.jit, static_argnames=("offline", "batch_size"))
def _base_loo_core(x, keep, partner, scale, *, offline, batch_size):
  models = x.shape[0]
  x_t = jnp.transpose(x, (1, 2, 0))
  model = jnp.arange(models)

  def one_target(args):
    t, p = args
    use = (model[None, :] != t) & (model[None, :] != p[:, None])
    threshold, _ = _threshold(x_t, use, ~keep.T & use, offline, scale)
    return jnp.mean(x[t] - threshold, axis=-1)

  return jax.lax.map(one_target, (model, partner), batch_size=batch_size)


def base_leave_one_out(x, keep, *, attack, scale, partners, nan_mode):
  """`leave_one_out` for "base" / "base_offline" on checked x float[models,
  examples, queries] and keep bool[models, examples]. Offline with partners
  (balanced; `_other_group_partner`), the target's IN examples also lose one OUT reference, so that
  members and non-members are scored against as many; online every other
  model is a reference."""
  offline = attack == "base_offline"
  scale = _check_scale(scale)
  x = _as_log_conf(x, "scores")
  n_out = (~keep).sum(0)
  loo_out = n_out - (n_out > 0)
  ok = _base_scorable(
    loo_out,
    offline,
    nan_mode,
    f"leave_one_out({attack!r}) after removing the target,",
    "keep",
  )

  def score(columns):
    xs, ks = (x, keep) if columns is None else (x[:, columns], keep[:, columns])
    p = _other_group_partner(ks, partners if offline else None)
    return _base_loo_core(
      jnp.asarray(xs, dtype=float),
      jnp.asarray(ks),
      p,
      scale,
      offline=offline,
      batch_size=_batch_size(xs.shape[0], xs.size),
    )

  return _on_columns(ok, score, x.shape[0])
