"""What the training engine reads from a defense: loss, targets, settings, DP.

The engine never asks which :class:`~miajax.defenses.Defense` it holds; it
calls these functions, which read the defense's hooks (``None`` means no
defense, ``none()``). Shapes are those of one model's batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from miajax.defenses import base
from miajax.defenses.training import Defense, NoDefense

__all__ = [
  "per_example_loss",
  "soft_targets",
  "maps_targets",
  "model_kwargs",
  "dp_summary",
]


def _as_defense(defense) -> Defense:
  if defense is None:
    return NoDefense()
  if isinstance(defense, Defense):
    return defense
  raise TypeError(
    "defense must be a miajax.defenses.Defense (e.g. none(), chain(...), or "
    f"your own subclass), got {defense!r}"
  )


def _check_logits_labels(logits, labels):
  logits = base.check_logits(logits)
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
      f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, got "
      f"{labels.shape}"
    )
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= logits.shape[-1]:
      raise ValueError(
        f"labels must lie in [0, {logits.shape[-1]}), got range [{lo}, {hi}]"
      )
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), labels


def _mapped_targets(defense, labels, num_classes):
  t = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if defense.targets is None:
    return t
  out = defense.targets(t)
  if jnp.shape(out) != t.shape:
    raise ValueError(
      f"{base.short_name(defense)}: targets(t) must keep the shape {t.shape}, got "
      f"{jnp.shape(out)}"
    )
  return out


def soft_targets(defense, labels, num_classes: int) -> jax.Array:
  """The targets ``float32[..., classes]`` a defense trains integer ``labels`` on.

  One-hot for defenses without a target map.
  """
  return _mapped_targets(_as_defense(defense), labels, num_classes)


def per_example_loss(defense, logits, labels, *, loss=None) -> jax.Array:
  """Training loss of each example under ``defense``.

  Args:
    defense: a :class:`Defense` (``None`` means ``none()``).
    logits: ``float[..., classes]`` (computed in at least float32).
    labels: ``int[...]`` of shape ``logits.shape[:-1]``.
    loss: optional ``loss(logits, labels) -> float[...]`` replacing the
      cross-entropy; refused with a target map (it sees integer labels).

  Returns:
    ``float32[...]``: ``-sum_c t_c log q_c`` with ``t`` from
    :func:`soft_targets` (or ``loss(logits, labels)``) plus the defense's
    ``loss_terms(logits, t)``. Without a target map the cross-entropy is
    ``optax.softmax_cross_entropy_with_integer_labels(logits, labels)``.
  """
  defense = _as_defense(defense)
  logits, labels = _check_logits_labels(logits, labels)
  num_classes = logits.shape[-1]
  t = None
  if defense.targets is not None or defense.loss_terms is not None:
    t = _mapped_targets(defense, labels, num_classes)
  if loss is not None:
    if defense.targets is not None:
      raise ValueError(
        f"a custom loss takes integer labels, so it cannot be combined with "
        f"a defense that changes the targets ({base.short_name(defense)}); fold "
        "the soft targets into your loss instead"
      )
    out = jnp.asarray(loss(logits, labels), jnp.float32)
  elif defense.targets is not None:
    out = -jnp.sum(t * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  else:
    # imported here: the attack layer imports the output transforms through
    # this package and stays free of the training stack (tests/test_imports.py)
    import optax

    out = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if out.shape != labels.shape:
    raise ValueError(
      f"loss must return float[...] of shape {labels.shape}, got {out.shape}"
    )
  if defense.loss_terms is not None:
    extra = defense.loss_terms(logits, t)
    if jnp.shape(extra) != labels.shape:
      raise ValueError(
        f"{base.short_name(defense)}: loss_terms must return one value per "
        f"example, shape {labels.shape}, got {jnp.shape(extra)}"
      )
    out = out + extra
  return out


def maps_targets(defense) -> bool:
  """Whether ``defense`` trains on other targets than the one-hot labels."""
  return _as_defense(defense).targets is not None


def model_kwargs(defense) -> dict[str, Any]:
  """Registry-model keyword arguments the defense sets (``{}`` for none)."""
  defense = _as_defense(defense)
  return {} if defense.model_kwargs is None else dict(defense.model_kwargs())


def dp_summary(
  defense, *, sample_rate, steps, delta, accountant: str = "rdp"
) -> dict[str, Any] | None:
  """The DP numbers a report must give for ``defense``, or ``None`` without any.

  For ``dp_sgd``: ``{"noise_multiplier", "l2_norm_clip", "sample_rate",
  "steps", "delta", "epsilon", "accountant"}`` with ``epsilon`` from
  :func:`miajax.defenses.dp_epsilon`. With members differing between models,
  pass the rate of the smallest training set (the largest rate; see
  :func:`miajax.engine.dp_sampling`): epsilon grows with it.
  """
  defense = _as_defense(defense)
  if defense.accounting is None:
    return None
  return defense.accounting(
    sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
  )
