"""QMIA's cores: the regressors' losses and the membership score.

M. Bertran, S. Tang, M. Kearns, J. Morgenstern, A. Roth, Z. S. Wu,
"Scalable Membership Inference Attacks via Quantile Regression", NeurIPS
2023 (arXiv:2307.03694). A regressor trained on public data that the target
never saw predicts, for each example x, the distribution of the target's
score s(x) on non-members; x is called a member when s(x) is high for that
distribution. Two parameterisations of the prediction, as in the released
code (amazon-science/quantile-mia):

* Gaussian (its sample script's choice): ``(mean, log_std)``, trained by the
  Gaussian negative log-likelihood (`gaussian_nll`); the score is the
  standardised ``(s - mean) / std``, so that thresholding it at
  ``Phi^-1(alpha)`` is the attack at false-positive rate ``1 - alpha``.
* Quantiles: ``q_alpha(x)`` at several levels ``alphas``, trained by the
  pinball loss (`pinball_loss`); the score is the level at which s falls
  among the (sorted) predicted quantiles (`qmia_score`).

Pure `jax.numpy`: jit- and vmap-able, shapes checked, values not. Training
the regressors is `miajax.qmia` (through the engine); this module, like the
rest of `miajax.attacks`, needs neither Flax nor the engine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miajax.attacks._checks import _as_float

__all__ = ["gaussian_nll", "pinball_loss", "qmia_score"]


def _alphas(alphas, levels: int):
  a = _as_float(alphas)
  if a.ndim != 1 or a.shape[0] != levels:
    raise ValueError(
      f"alphas must be float[{levels}], one level per predicted quantile "
      f"(the last axis of the prediction), got shape {a.shape}"
    )
  return a


def pinball_loss(pred, y, alphas) -> jax.Array:
  """Pinball (quantile) loss, averaged over the quantile levels.

  Koenker & Bassett (1978); QMIA's training loss for quantile regressors:
  ``rho_a(d) = max(a d, (a - 1) d)`` with ``d = y - q_a``, minimised in
  expectation by the ``a``-quantile of ``y``.

  Args:
    pred: float[..., levels], the predicted quantiles ``q_a``.
    y: float[...], the observed scores.
    alphas: float[levels], the quantile level of each column of ``pred``.

  Returns:
    float[...]: ``mean_a rho_a(y - q_a)``.
  """
  pred = _as_float(pred)
  y = _as_float(y)
  if pred.ndim < 1 or pred.shape[:-1] != y.shape:
    raise ValueError(
      f"pred must be float[..., levels] with ... = y's shape {y.shape}, got "
      f"shape {pred.shape}"
    )
  a = _alphas(alphas, pred.shape[-1])
  d = y[..., None] - pred
  return jnp.mean(jnp.maximum(a * d, (a - 1) * d), axis=-1)


def _mean_log_std(pred):
  pred = _as_float(pred)
  if pred.ndim < 1 or pred.shape[-1] != 2:
    raise ValueError(
      "pred must be float[..., 2], the predicted (mean, log_std) of the "
      f"score, got shape {pred.shape}"
    )
  return pred[..., 0], pred[..., 1]


def gaussian_nll(pred, y) -> jax.Array:
  """Negative log-likelihood of ``y`` under ``N(mean, exp(log_std)^2)``, without its constant.

  QMIA's Gaussian regressor loss (the released code's ``gaussian_loss_fn``):
  ``log_std + (y - mean)^2 exp(-2 log_std) / 2`` (the exact NLL minus
  ``log(2 pi) / 2``).

  Args:
    pred: float[..., 2], the predicted ``(mean, log_std)``.
    y: float[...], the observed scores.

  Returns:
    float[...].
  """
  mean, log_std = _mean_log_std(pred)
  y = _as_float(y)
  if mean.shape != y.shape:
    raise ValueError(
      f"pred must be float[..., 2] with ... = y's shape {y.shape}, got shape "
      f"{pred.shape}"
    )
  return log_std + 0.5 * jnp.square(y - mean) * jnp.exp(-2 * log_std)


def _level(s, q, a):
  """Piecewise-linear level of ``s`` among sorted quantiles ``q`` [levels] at ``a`` [levels]; scalar ``s``."""
  if q.shape[0] == 1:
    return a[0] + (s - q[0])
  k = jnp.clip(jnp.searchsorted(q, s, side="right") - 1, 0, q.shape[0] - 2)
  width = q[k + 1] - q[k]
  # A zero-width segment (tied quantiles) only ever holds s at an end, where
  # the line is extended: one level step per score unit keeps it finite.
  frac = (s - q[k]) / jnp.where(width > 0, width, 1)
  return a[k] + (a[k + 1] - a[k]) * frac


def qmia_score(target_scores, predicted, alphas=None) -> jax.Array:
  """QMIA membership score of target scores against predicted non-member distributions.

  Bertran et al., "Scalable Membership Inference Attacks via Quantile
  Regression" (NeurIPS 2023): ``x`` is a member at level ``alpha`` when
  ``s(x) > q_alpha(x)``, the predicted ``alpha``-quantile of the target's
  score on non-members like ``x``. One score per example orders every level
  at once:

  * ``alphas=None`` (Gaussian regressor): ``predicted[..., :] = (mean,
    log_std)`` and the score is ``(s - mean) / exp(log_std)``; ``s >
    q_alpha`` exactly when it exceeds ``Phi^-1(alpha)``.
  * ``alphas`` given (quantile regressor): ``predicted[..., k]`` is the
    quantile at ``alphas[k]``. Both are sorted (the monotone rearrangement of
    Chernozhukov, Fernandez-Val & Galichon 2010, which the released code
    applies to its linearly spaced levels), and the score is the level at
    which ``s`` falls, linear between consecutive quantiles and extended
    beyond the first and last with their segments' slopes, so that scores
    outside the predicted range stay ordered. ``s`` at the predicted
    ``alphas[k]``-quantile scores ``alphas[k]``; with one level the score is
    ``alphas[0] + s - q``.

  Args:
    target_scores: float[...] (e.g. float[targets, examples]), the target
      models' scores ``s`` (e.g. `miajax.logit_scaled`).
    predicted: float[..., outputs], the regressor's predictions for the same
      examples: outputs 2 (``alphas=None``) or ``len(alphas)``.
    alphas: None, or float[levels], the quantile levels of ``predicted``.

  Returns:
    float[...] (target_scores' shape); higher = member.
  """
  s = _as_float(target_scores)
  if alphas is None:
    mean, log_std = _mean_log_std(predicted)
    if mean.shape != s.shape:
      raise ValueError(
        f"predicted must be float[..., 2] with ... = target_scores' shape "
        f"{s.shape}, got shape {jnp.shape(predicted)}"
      )
    return (s - mean) * jnp.exp(-log_std)
  q = _as_float(predicted)
  if q.ndim < 1 or q.shape[:-1] != s.shape:
    raise ValueError(
      f"predicted must be float[..., levels] with ... = target_scores' shape "
      f"{s.shape}, got shape {q.shape}"
    )
  a = jnp.sort(_alphas(alphas, q.shape[-1]))
  q = jnp.sort(q, axis=-1)
  flat = jax.vmap(_level, in_axes=(0, 0, None))(
    s.reshape(-1), q.reshape(-1, q.shape[-1]), a
  )
  return flat.reshape(s.shape)
