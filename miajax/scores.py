"""Membership signals computed from logits, stable in float32.

Every signal takes ``logits float[..., classes]`` and integer ``labels``
broadcastable to ``logits.shape[:-1]`` and returns ``float32[...]`` (the
broadcast leading shape). Nothing goes through ``softmax`` then ``log``: all
quantities are built from log-sum-exps of logits, so a gap of 1e4 between
logits gives finite, unsaturated values (the released LiRA code floors
probabilities at 1e-45 and so clips its score at about +-103.6).

The functions return the mathematical quantity: ``cross_entropy``,
``entropy`` and ``modified_entropy`` are *lower* for members. Use
:func:`membership_signal` for the sign-corrected version (higher = member)
that attacks expect.

Inputs in float16/bfloat16 are computed in float32; float64 inputs are
computed in float64 only if JAX's x64 mode is on (it is not by default).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "logit_scaled",
  "cross_entropy",
  "confidence",
  "max_confidence",
  "entropy",
  "modified_entropy",
  "top_k_probabilities",
  "membership_signal",
  "SIGNALS",
]


def _check_logits(logits) -> jax.Array:
  logits = jnp.asarray(logits)
  if logits.ndim < 1:
    raise ValueError(
      "logits must have a trailing classes axis, float[..., classes]; "
      f"got a scalar of shape {logits.shape}"
    )
  if logits.shape[-1] < 2:
    raise ValueError(
      "logits need at least 2 classes on the last axis, got shape "
      f"{logits.shape}"
    )
  if (
    jnp.issubdtype(logits.dtype, jnp.complexfloating)
    or logits.dtype == jnp.bool_
  ):
    raise TypeError(f"logits must be real floats, got dtype {logits.dtype}")
  # Half precision would saturate the log-sum-exps that make these stable.
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def _check_labels(labels, logits: jax.Array) -> jax.Array:
  if not isinstance(labels, jax.Array):
    # jnp.asarray fails inside JAX on strings and objects: name the argument.
    kind = np.asarray(labels).dtype
    if not np.issubdtype(kind, np.integer):
      raise TypeError(f"labels must be integers, got dtype {kind}")
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
  batch = logits.shape[:-1]
  try:
    labels = jnp.broadcast_to(labels, batch)
  except ValueError:
    raise ValueError(
      f"labels of shape {labels.shape} do not broadcast to "
      f"logits.shape[:-1] = {batch}"
    ) from None
  # The range check needs concrete values; under jit it is skipped (jnp's
  # gathers would silently clamp an out-of-range label).
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
    classes = logits.shape[-1]
    if lo < 0 or hi >= classes:
      raise ValueError(
        f"labels must be in [0, {classes}) for {classes} classes, "
        f"got values in [{lo}, {hi}]"
      )
  return labels


def _prepare(logits, labels):
  logits = _check_logits(logits)
  return logits, _check_labels(labels, logits)


def _true_mask(logits, labels):
  return jnp.arange(logits.shape[-1]) == labels[..., None]


def _shift(logits):
  # Softmax quantities are shift invariant; subtracting the max first keeps
  # every intermediate small, so logits around 1e5 lose no more precision
  # than their own float32 rounding.
  return logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))


def _log_odds(logits, mask):
  """``z_c - logsumexp_{c' != c} z`` for the class marked by ``mask``.

  Masking the class out (rather than subtracting its probability from 1)
  keeps full precision when that class dominates.
  """
  z_c = jnp.sum(jnp.where(mask, logits, 0.0), axis=-1)
  rest = jax.nn.logsumexp(jnp.where(mask, -jnp.inf, logits), axis=-1)
  return z_c - rest


@jax.jit
def _logit_scaled(logits, labels):
  return _log_odds(_shift(logits), _true_mask(logits, labels))


def _log_probs(logits):
  """Log-softmax, with the arg-max entry recomputed from its own log-odds.

  ``z - logsumexp(z)`` rounds to exactly 0 for a class that dominates by more
  than ~17 nats in float32; ``-softplus(-log_odds)`` keeps the tiny negative
  value, and ``-softplus(log_odds)`` gives its ``log(1 - p)`` directly.
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  top = jnp.arange(logits.shape[-1]) == jnp.argmax(logits, axis=-1)[..., None]
  top_odds = _log_odds(logits, top)
  log_p = jnp.where(top, -jax.nn.softplus(-top_odds)[..., None], log_p)
  return log_p, top, top_odds


def _log1mexp(x):
  # log(1 - exp(x)) for x <= 0; two branches keep it accurate near 0 and -inf.
  x = jnp.minimum(x, 0.0)
  safe_near = jnp.minimum(x, -1e-30)
  return jnp.where(
    x > -0.6931471805599453,
    jnp.log(-jnp.expm1(safe_near)),
    jnp.log1p(-jnp.exp(x)),
  )


@jax.jit
def _cross_entropy(logits, labels):
  return jax.nn.softplus(-_logit_scaled(logits, labels))


@jax.jit
def _confidence(logits, labels):
  return jax.nn.sigmoid(_logit_scaled(logits, labels))


@jax.jit
def _max_confidence(logits):
  logits = _shift(logits)
  top = jnp.arange(logits.shape[-1]) == jnp.argmax(logits, axis=-1)[..., None]
  return jax.nn.sigmoid(_log_odds(logits, top))


def _xlogx_from_log(log_p):
  p = jnp.exp(log_p)
  # 0 * log 0 = 0; the guard also avoids 0 * -inf for logits ~ -3e38.
  return jnp.where(p > 0, p * log_p, 0.0)


@jax.jit
def _entropy(logits):
  log_p, _, _ = _log_probs(_shift(logits))
  # + 0.0 turns the -0.0 of a one-hot prediction into 0.0.
  return -jnp.sum(_xlogx_from_log(log_p), axis=-1) + 0.0


@jax.jit
def _modified_entropy(logits, labels):
  logits = _shift(logits)
  true = _true_mask(logits, labels)
  odds_y = _log_odds(logits, true)
  # -(1 - p_y) log p_y with 1 - p_y = sigmoid(-odds), -log p_y = softplus(-odds).
  true_term = jax.nn.sigmoid(-odds_y) * jax.nn.softplus(-odds_y)
  log_p, top, top_odds = _log_probs(logits)
  log1m_p = jnp.where(
    top, -jax.nn.softplus(top_odds)[..., None], _log1mexp(log_p)
  )
  # -p log(1 - p) >= 0 for every wrong class; exp(log_p) * log1m_p is finite
  # because only the arg-max class can have log1m_p large and it is exact.
  wrong = jnp.where(true, 0.0, -jnp.exp(log_p) * log1m_p)
  return true_term + jnp.sum(wrong, axis=-1)


def logit_scaled(logits, labels) -> jax.Array:
  """LiRA's score ``log p_y - log sum_{y' != y} p_y' = z_y - logsumexp_{y' != y} z``.

  Args:
    logits: ``float[..., classes]``, classes >= 2.
    labels: ``int[...]`` broadcastable to ``logits.shape[:-1]``.

  Returns:
    ``float32[...]``; higher = member. Exact for any finite logits (never
    saturates at +-103.6).
  """
  return _logit_scaled(*_prepare(logits, labels))


def cross_entropy(logits, labels) -> jax.Array:
  """``-log p_y`` (the loss); lower = member.

  Computed as ``softplus(-logit_scaled)`` so values near 0 keep their relative
  precision. Shapes as :func:`logit_scaled`.
  """
  return _cross_entropy(*_prepare(logits, labels))


def confidence(logits, labels) -> jax.Array:
  """``p_y``, the probability of the true label, as ``sigmoid(logit_scaled)``.

  Shapes as :func:`logit_scaled`; higher = member.
  """
  return _confidence(*_prepare(logits, labels))


def max_confidence(logits, labels=None) -> jax.Array:
  """``max_c p_c`` (ML-Leaks' adversary 3); higher = member.

  Args:
    logits: ``float[..., classes]``.
    labels: ignored (accepted so all signals share one signature); checked
      when given.

  Returns:
    ``float32[...]``.
  """
  logits = _check_logits(logits)
  if labels is not None:
    _check_labels(labels, logits)
  return _max_confidence(logits)


def entropy(logits, labels=None) -> jax.Array:
  """Shannon entropy ``-sum_c p_c log p_c`` of the prediction, in nats; lower = member.

  Args and returns as :func:`max_confidence`.
  """
  logits = _check_logits(logits)
  if labels is not None:
    _check_labels(labels, logits)
  return _entropy(logits)


def modified_entropy(logits, labels) -> jax.Array:
  """Song & Mittal (2021): ``-(1-p_y) log p_y - sum_{y' != y} p_y' log(1 - p_y')``.

  Lower = member. Built from log-probabilities and per-class log-odds, so it
  stays finite and accurate when one class dominates by 1e4 nats (e.g. about
  ``2e4`` for a confidently wrong prediction). Shapes as :func:`logit_scaled`.
  """
  return _modified_entropy(*_prepare(logits, labels))


@functools.partial(jax.jit, static_argnames="k")
def _top_k(logits, k):
  log_p = jax.nn.log_softmax(_shift(logits), axis=-1)
  return jnp.exp(jax.lax.top_k(log_p, k)[0])


def top_k_probabilities(logits, k: int = 3) -> jax.Array:
  """The ``k`` largest softmax probabilities, sorted descending (ML-Leaks features).

  Args:
    logits: ``float[..., classes]``.
    k: 1 <= k <= classes.

  Returns:
    ``float32[..., k]``.
  """
  logits = _check_logits(logits)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise TypeError(f"k must be an int, got {type(k).__name__}")
  if not 1 <= k <= logits.shape[-1]:
    raise ValueError(
      f"k must be in [1, {logits.shape[-1]}] (the number of classes), got {k}"
    )
  return _top_k(logits, int(k))


# name -> (function, sign that makes higher = member)
SIGNALS = {
  "logit_scaled": (logit_scaled, 1.0),
  "cross_entropy": (cross_entropy, -1.0),
  "confidence": (confidence, 1.0),
  "max_confidence": (max_confidence, 1.0),
  "entropy": (entropy, -1.0),
  "modified_entropy": (modified_entropy, -1.0),
}


def membership_signal(name: str, logits, labels) -> jax.Array:
  """A signal with its sign fixed so that higher = member.

  ``logit_scaled``, ``confidence``, ``max_confidence`` are returned as is;
  ``cross_entropy``, ``entropy``, ``modified_entropy`` are negated.

  Args:
    name: one of ``SIGNALS``.
    logits: ``float[..., classes]``.
    labels: ``int[...]`` broadcastable to ``logits.shape[:-1]``.

  Returns:
    ``float32[...]``.
  """
  if name not in SIGNALS:
    raise ValueError(f"name must be one of {sorted(SIGNALS)}, got {name!r}")
  fn, sign = SIGNALS[name]
  value = fn(logits, labels)
  return value if sign > 0 else -value
