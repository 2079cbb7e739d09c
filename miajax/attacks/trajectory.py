"""Training-dynamics signals: LiRA over a score trajectory, and the LT-IQR vulnerability ranking.

The trajectories are what ``train_models(..., record=Record(epochs=...))``
records: every model's logits after chosen epochs, reduced to one score per
epoch, ``float[models, epochs, examples]`` (``miajax.logit_scaled`` for
LiRA, ``miajax.cross_entropy`` for LT-IQR; the labels broadcast over the
models and epochs axes).

* :func:`trajectory_lira`: LiRA (Carlini et al., "Membership Inference
  Attacks From First Principles", IEEE S&P 2022) with the recorded epochs
  as its observations: per example, Gaussians of the IN and OUT shadow
  trajectories, a target scored by ``log N(s; IN) - log N(s; OUT)`` of its
  whole trajectory. The loss trajectory as a membership signal is Liu,
  Zhao, Backes, Zhang, "Membership Inference Attacks by Exploiting Loss
  Trajectory", ACM CCS 2022 (there through distilled models and a learned
  classifier; here through the shadow models' own recorded epochs and
  LiRA's likelihood ratio). ``covariance="diagonal"`` takes the epochs as
  independent: the sum over epochs of per-epoch LiRA log-likelihood ratios
  (LiRA's online score with the epochs as queries, summed instead of
  averaged). ``"full"`` fits each example's covariance over epochs, shrunk
  towards its diagonal.
* :func:`lt_iqr`: Pollock, Shilov, Dodd, de Montjoye, "Free Record-Level
  Privacy Risk Evaluation Through Artifact-Based Methods" (arXiv
  2411.05743): the interquartile range over training of a training
  example's loss in the model that trained on it; higher = more vulnerable.
  :func:`precision_at_k` compares such a ranking with a reference one (the
  paper's measure: the share of the top k by LT-IQR among the top k most
  vulnerable by LiRA).

Pure ``jax.numpy``; shapes are checked, values are not (an example with
fewer than 2 IN or 2 OUT shadow models scores NaN).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from miajax.attacks._checks import _as_float

__all__ = [
  "COVARIANCES",
  "TrajectoryFit",
  "trajectory_lira_fit",
  "trajectory_lira_score",
  "trajectory_lira",
  "lt_iqr",
  "precision_at_k",
]

COVARIANCES = ("diagonal", "full")
# As LiRA's: a fitted std is at least this times (1 + |mean|).
_STD_FLOOR = 1e-6


class TrajectoryFit(NamedTuple):
  """Per-example Gaussians of IN and OUT shadow trajectories (:func:`trajectory_lira_fit`).

  The IN trajectory of example ``i`` is ``N(center[i] + mean_in[i],
  chol_in[i] @ chol_in[i].T)``, likewise OUT. Means are taken relative to
  ``center`` (model 0's trajectory) so that a large common offset keeps its
  float32 resolution.

  Attributes:
    center: float[examples, epochs].
    mean_in: float[examples, epochs], IN mean minus ``center``.
    chol_in: float[examples, epochs, epochs], lower Cholesky factor of the
      IN covariance (diagonal: the floored ddof=1 stds on the diagonal).
    mean_out: float[examples, epochs].
    chol_out: float[examples, epochs, epochs].
    n_in: int32[examples], IN shadow models per example.
    n_out: int32[examples], OUT shadow models per example.
  """

  center: jax.Array
  mean_in: jax.Array
  chol_in: jax.Array
  mean_out: jax.Array
  chol_out: jax.Array
  n_in: jax.Array
  n_out: jax.Array


def _check_traj(traj, name: str):
  traj = _as_float(traj)
  if traj.ndim != 3 or 0 in traj.shape:
    raise ValueError(
      f"{name} must be non-empty float[models, epochs, examples], got shape "
      f"{traj.shape}"
    )
  return traj


def _gaussian(y_t, mask, center, covariance: str, shrinkage):
  """Mean float[examples, epochs] and Cholesky factor of the masked models' trajectories.

  y_t: float[examples, epochs, models] centred; mask: bool[examples, models].
  """
  w = mask[:, None, :]
  n = jnp.sum(mask, axis=-1).astype(y_t.dtype)
  mean = jnp.sum(jnp.where(w, y_t, 0), -1) / jnp.maximum(n, 1)[:, None]
  dev = jnp.where(w, y_t - mean[..., None], 0)
  cov = (
    jnp.einsum("iem,ifm->ief", dev, dev) / jnp.maximum(n - 1, 1)[:, None, None]
  )
  var = jnp.diagonal(cov, axis1=-2, axis2=-1)
  floor = jnp.square(_STD_FLOOR * (1 + jnp.abs(center + mean)))
  if covariance == "diagonal":
    return mean, jnp.sqrt(jax.vmap(jnp.diag)(jnp.maximum(var, floor)))
  eye = jnp.eye(var.shape[-1], dtype=cov.dtype)
  cov = (1 - shrinkage) * cov + shrinkage * var[..., None] * eye
  cov = cov + jnp.maximum(floor - var, 0)[..., None] * eye
  return mean, jnp.linalg.cholesky(cov)


@functools.partial(jax.jit, static_argnames=("covariance",))
def trajectory_lira_fit(
  shadow_traj, keep, *, covariance: str = "diagonal", shrinkage=0.5
) -> TrajectoryFit:
  """Fits every example's IN and OUT trajectory Gaussians once for all targets.

  Args:
    shadow_traj: float[models, epochs, examples], e.g. ``logit_scaled`` of
      ``TrainResult.recorded``.
    keep: bool[models, examples], True where the shadow model trained on
      the example.
    covariance: ``"diagonal"`` (epochs independent: per-epoch ddof=1
      variances, floored as LiRA's) or ``"full"`` (the ddof=1 covariance
      over epochs, shrunk: ``(1 - shrinkage) * S + shrinkage * diag(S)``,
      then its diagonal floored).
    shrinkage: in [0, 1], ``"full"`` only (may be traced; 1 is
      ``"diagonal"``). Consecutive epochs are strongly correlated and the
      shadow models few: without shrinkage ``S`` is singular once
      ``epochs >= models`` in a group, and a covariance of E epochs from 8
      IN models is noisy (digits, 16 models, 6 epochs: AUC 0.552 at
      shrinkage 0.1, 0.585 at 0.5, 0.600 diagonal; docs/attacks.md).

  Returns:
    A :class:`TrajectoryFit`.
  """
  if covariance not in COVARIANCES:
    raise ValueError(
      f"covariance must be one of {COVARIANCES}, got {covariance!r}"
    )
  shadow = _check_traj(shadow_traj, "shadow_traj")
  keep = jnp.asarray(keep)
  if keep.dtype != jnp.bool_ or keep.shape != (
    shadow.shape[0],
    shadow.shape[2],
  ):
    raise ValueError(
      f"keep must be bool[models, examples] = "
      f"{(shadow.shape[0], shadow.shape[2])}, got {keep.dtype}{list(keep.shape)}"
    )
  center = shadow[0].T  # [examples, epochs]
  y_t = jnp.transpose(shadow - shadow[0], (2, 1, 0))
  fit = lambda mask: _gaussian(y_t, mask, center, covariance, shrinkage)
  mean_in, chol_in = fit(keep.T)
  mean_out, chol_out = fit(~keep.T)
  n_in = jnp.sum(keep, axis=0, dtype=jnp.int32)
  return TrajectoryFit(
    center, mean_in, chol_in, mean_out, chol_out, n_in, keep.shape[0] - n_in
  )


def _log_density(d, chol):
  """``log N(d; 0, chol chol^T)`` up to the constant: float[examples]."""
  z = solve_triangular(chol, d[..., None], lower=True)[..., 0]
  log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
  return -0.5 * jnp.sum(jnp.square(z), -1) - log_det


@jax.jit
def trajectory_lira_score(fit: TrajectoryFit, target_traj):
  """One target's trajectory LiRA score ``log N(s; IN) - log N(s; OUT)``: float[examples].

  Args:
    fit: a :class:`TrajectoryFit`.
    target_traj: float[epochs, examples], one target model's trajectory
      (``jax.vmap`` for several).

  Returns:
    float[examples]; higher = member; NaN where an example has fewer than
    2 IN or 2 OUT shadow models.
  """
  target = _as_float(target_traj)
  if target.shape != fit.center.shape[::-1]:
    raise ValueError(
      f"target_traj must be float{list(fit.center.shape[::-1])} [epochs, "
      f"examples] like the fit, got shape {target.shape}"
    )
  y = target.T - fit.center
  llr = _log_density(y - fit.mean_in, fit.chol_in) - _log_density(
    y - fit.mean_out, fit.chol_out
  )
  ok = (fit.n_in >= 2) & (fit.n_out >= 2)
  return jnp.where(ok, llr, jnp.nan)


@functools.partial(jax.jit, static_argnames=("covariance",))
def trajectory_lira(
  shadow_traj, keep, target_traj, *, covariance: str = "diagonal", shrinkage=0.5
):
  """Trajectory LiRA: every target scored against per-example IN/OUT Gaussians of the shadow trajectories.

  ``score = log N(s; mu_in, Sigma_in) - log N(s; mu_out, Sigma_out)`` of
  the target's trajectory ``s`` over the recorded epochs; with
  ``covariance="diagonal"`` the sum over epochs of LiRA's per-epoch online
  log-likelihood ratios.

  Args:
    shadow_traj: float[models, epochs, examples] shadow scores per epoch
      (logit-scaled confidences: ``miajax.logit_scaled(recorded, y)``).
    keep: bool[models, examples] shadow membership.
    target_traj: float[targets, epochs, examples].
    covariance, shrinkage: as :func:`trajectory_lira_fit`.

  Returns:
    float[targets, examples]; higher = member; NaN where an example has
    fewer than 2 IN or 2 OUT shadow models.
  """
  fit = trajectory_lira_fit(
    shadow_traj, keep, covariance=covariance, shrinkage=shrinkage
  )
  target = _check_traj(target_traj, "target_traj")
  return jax.vmap(trajectory_lira_score, in_axes=(None, 0))(fit, target)


@jax.jit
def lt_iqr(loss_traj, keep=None):
  """LT-IQR: the interquartile range of each example's loss over training; higher = more vulnerable.

  Pollock, Shilov, Dodd, de Montjoye, arXiv 2411.05743: ``Q3 - Q1`` (linear
  interpolation, as ``numpy.quantile``) of a training example's loss trace
  in the model trained on it. The paper traces the per-step training loss
  of one target model over every epoch; here the trace is the recorded
  epochs' ``train=False`` loss (``miajax.cross_entropy(recorded, y)``), so
  record enough epochs (the paper's ablation keeps most of its precision
  with a subsample of the epochs).

  Args:
    loss_traj: float[..., epochs, examples] per-example losses.
    keep: optional bool[models, examples] with ``loss_traj`` float[models,
      epochs, examples]: the mean over the models that trained on each
      example of their IQRs (NaN where none did), pooling the paper's
      one-model score over the models of a run.

  Returns:
    float[..., examples] (per model), or float[examples] with ``keep``.
  """
  loss = _as_float(loss_traj)
  if loss.ndim < 2:
    raise ValueError(
      f"loss_traj must be float[..., epochs, examples], got shape {loss.shape}"
    )
  q1, q3 = jnp.quantile(loss, jnp.asarray([0.25, 0.75]), axis=-2)
  iqr = q3 - q1
  if keep is None:
    return iqr
  keep = jnp.asarray(keep)
  if loss.ndim != 3 or keep.dtype != jnp.bool_ or keep.shape != iqr.shape:
    raise ValueError(
      "with keep, loss_traj must be float[models, epochs, examples] and keep "
      f"bool[models, examples]; got {loss.shape} and {keep.dtype}"
      f"{list(keep.shape)}"
    )
  n = jnp.sum(keep, axis=0)
  total = jnp.sum(jnp.where(keep, iqr, 0), axis=0)
  return jnp.where(n > 0, total / jnp.maximum(n, 1), jnp.nan)


@functools.partial(jax.jit, static_argnames=("k",))
def precision_at_k(ranking_scores, reference_scores, k: int):
  """The share of the top ``k`` by ``ranking_scores`` that are in the top ``k`` by ``reference_scores``.

  Higher score = ranked first; ties go to the lower index, NaN ranks last.
  E.g. ``precision_at_k(lt_iqr(...), lira_scores_of_members, k)``: how many
  of the k examples LT-IQR flags are among the k most exposed by LiRA.

  Args:
    ranking_scores: float[examples].
    reference_scores: float[examples].
    k: 1 <= k <= examples (static).

  Returns:
    float[] in [0, 1].
  """
  a, b = _as_float(ranking_scores), _as_float(reference_scores)
  if a.ndim != 1 or a.shape != b.shape:
    raise ValueError(
      "ranking_scores and reference_scores must be float[examples] of one "
      f"shape, got {a.shape} and {b.shape}"
    )
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= a.size:
    raise ValueError(f"k must be an integer in [1, {a.size}], got {k!r}")
  # NaN after every real score, -inf included: rank on (isnan, -score).
  order_a = jnp.lexsort((-a, jnp.isnan(a)))[:k]
  order_b = jnp.lexsort((-b, jnp.isnan(b)))[:k]
  chosen = jnp.zeros(a.shape, bool).at[order_b].set(True)
  return jnp.mean(chosen[order_a].astype(a.dtype))
