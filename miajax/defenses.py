"""Training-time defenses as small frozen values, composed with :func:`chain`.

A defense is a hashable, immutable value built by a function (as optax builds
gradient transformations); the training engine reads it through four pure
functions, so the same value works from user JAX code and from the scripts::

    d = chain(dropout(0.5), label_smoothing(0.1), l2(1e-4))
    per_example_loss(d, logits, labels)   # float[batch], inside jit
    param_penalty(d, params)              # scalar
    dropout_rate(d), dp_params(d)         # read once, outside jit
    dp_summary(d, sample_rate=q, steps=T, delta=1e-5)  # DP numbers for a report
    describe(d)                           # JSON-able dict for reports

Defense values are registered as static pytrees (no leaves), so they may be
passed to jitted functions as ordinary arguments or closed over.

=====================  ====================================================
builder                effect on training
=====================  ====================================================
``none()``             plain cross-entropy (``optax.softmax_cross_entropy_
                       with_integer_labels``)
``label_smoothing(e)`` target ``(1-e) onehot + e/C`` (Szegedy et al. 2016;
                       the optax/PyTorch convention: ``e`` spread over all C
                       classes, the true one included)
``hamp(gamma, alpha)`` HAMP (Chen & Pattabiraman, NDSS 2024): target ``p`` on
                       the true class and ``(1-p)/(C-1)`` elsewhere, ``p``
                       from :func:`hamp_top1_probability`, and ``-alpha H(q)``
                       per example (``q`` the model's softmax)
``confidence_penalty`` ``-beta H(q)`` per example (Pereyra et al. 2017)
``l2(w)``              ``0.5 w ||params||^2`` over every parameter leaf
``dropout(rate)``      model level: the engine builds models with this rate
``dp_sgd(C, sigma)``   engine level: per-example clipping to ``C`` and noise
                       ``sigma C`` (see :mod:`miajax.privacy`)
=====================  ====================================================

Composition. Target transforms act in chain order on the one-hot target,
each as a linear map of distributions (label smoothing ``t -> (1-e) t + e/C``,
HAMP ``t -> p t + (1-p)/(C-1) (1-t)``); entropy penalties add their weights;
L2 weights add. A chain holds at most one ``dropout`` and one ``dp_sgd``.

Conventions worth knowing:

* The loss is the soft-target cross-entropy ``-sum_c t_c log q_c``. For HAMP
  this is ``KL(t || q) + H(t)`` with ``H(t)`` constant, so gradients equal
  those of the KL loss the paper uses.
* HAMP's ``alpha`` is per example (the engine averages the per-example loss
  over the batch, i.e. PyTorch's ``kl_div(..., reduction="batchmean")``). The
  released code (DependableSystemsLab/MIA_defense_HAMP @a064a1f) uses
  ``kl_div`` with its default ``reduction="mean"``, which divides the summed
  KL by ``batch * C``, and subtracts ``alpha_released * mean_batch H(q)``.
  Its loss is therefore ``(1/C) [KL_batchmean - C alpha_released H]``: the
  same objective as ours with ``alpha = C * alpha_released``, scaled by
  ``1/C``. For identical SGD updates also use learning rate
  ``lr_released / C`` and weight decay ``C * wd_released`` (Adam is
  invariant to the scale, so only ``alpha`` changes). Released CIFAR-10 settings
  (gamma 0.95, alpha 0.001) are ``hamp(0.95, 0.01)`` here; Purchase100
  (gamma 0.8, alpha 0.01, C = 100) is ``hamp(0.8, 1.0)``.
* ``l2(w)`` penalises ``0.5 w ||theta||^2``, whose gradient ``w theta`` is
  PyTorch's ``weight_decay=w`` and optax's ``add_decayed_weights(w)`` for SGD
  (for Adam it is L2 regularisation, not AdamW's decoupled decay). Keras'
  ``l2(w)`` and Lasagne's ``w * l2`` penalise ``w ||theta||^2``: that is
  ``l2(2 w)`` here. Every leaf is penalised, biases included, as PyTorch's
  ``weight_decay`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from miajax import outputs as _outputs
from miajax import privacy as _privacy
from miajax.outputs import *  # noqa: F401,F403  re-exported: miajax.defenses is the one entry point
from miajax.privacy import *  # noqa: F401,F403

__all__ = (
  [
    "Defense",
    "NoDefense",
    "LabelSmoothing",
    "Hamp",
    "ConfidencePenalty",
    "L2",
    "Dropout",
    "DpSgd",
    "Chain",
    "none",
    "label_smoothing",
    "hamp",
    "confidence_penalty",
    "l2",
    "dropout",
    "dp_sgd",
    "chain",
    "per_example_loss",
    "param_penalty",
    "dropout_rate",
    "dp_params",
    "dp_summary",
    "describe",
    "short_name",
    "hamp_top1_probability",
    "soft_targets",
    "maps_targets",
  ]
  + list(_outputs.__all__)
  + list(_privacy.__all__)
)


class Defense:
  """Base class of every training-time defense value."""

  name = "defense"


def _static(cls):
  cls = dataclasses.dataclass(frozen=True)(cls)
  jax.tree_util.register_static(cls)
  return cls


@_static
class NoDefense(Defense):
  name = "none"


@_static
class LabelSmoothing(Defense):
  eps: float
  name = "label_smoothing"


@_static
class Hamp(Defense):
  gamma: float
  alpha: float
  name = "hamp"


@_static
class ConfidencePenalty(Defense):
  beta: float
  name = "confidence_penalty"


@_static
class L2(Defense):
  weight: float
  name = "l2"


@_static
class Dropout(Defense):
  rate: float
  name = "dropout"


@_static
class DpSgd(Defense):
  l2_norm_clip: float
  noise_multiplier: float
  name = "dp_sgd"


@_static
class Chain(Defense):
  parts: tuple
  name = "chain"


def _real(
  name: str,
  value,
  *,
  low: float,
  high: float = math.inf,
  low_open=False,
  high_open=True,
) -> float:
  if isinstance(value, bool) or not isinstance(
    value, (numbers.Real, np.ndarray, jax.Array)
  ):
    raise TypeError(
      f"{name} must be a real number, got {type(value).__name__} {value!r}"
    )
  if isinstance(value, jax.core.Tracer) or np.ndim(value) != 0:
    raise TypeError(
      f"{name} must be a concrete Python scalar (defenses are static), got {value!r}"
    )
  value = float(value)
  lo_ok = value > low if low_open else value >= low
  hi_ok = value < high if high_open else value <= high
  if math.isnan(value) or not (lo_ok and hi_ok):
    interval = (
      f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    )
    raise ValueError(f"{name} must lie in {interval}, got {value!r}")
  return value


def none() -> NoDefense:
  """No defense: plain cross-entropy."""
  return NoDefense()


def label_smoothing(eps: float) -> LabelSmoothing:
  """Label smoothing with ``eps`` in ``[0, 1)``: target ``(1-eps) onehot + eps/C``."""
  return LabelSmoothing(_real("eps", eps, low=0.0, high=1.0))


def hamp(gamma: float, alpha: float) -> Hamp:
  """HAMP training: high-entropy soft labels plus entropy regularisation.

  Args:
    gamma: entropy threshold as a fraction of ``ln C``, in ``[0, 1)``.
    alpha: weight of ``-H(q)`` per example, ``>= 0``, in the batchmean
      convention (``C`` times the released code's ``alpha``; see the module
      docstring).
  """
  return Hamp(
    _real("gamma", gamma, low=0.0, high=1.0), _real("alpha", alpha, low=0.0)
  )


def confidence_penalty(beta: float) -> ConfidencePenalty:
  """Confidence penalty ``loss - beta H(q)`` (Pereyra et al. 2017), ``beta >= 0``."""
  return ConfidencePenalty(_real("beta", beta, low=0.0))


def l2(weight: float) -> L2:
  """Parameter penalty ``0.5 * weight * ||params||^2``, ``weight >= 0``."""
  return L2(_real("weight", weight, low=0.0))


def dropout(rate: float) -> Dropout:
  """Dropout rate in ``[0, 1)`` for every model (the engine builds the model with it)."""
  return Dropout(_real("rate", rate, low=0.0, high=1.0))


def dp_sgd(l2_norm_clip: float, noise_multiplier: float) -> DpSgd:
  """DP-SGD: clip per-example gradients to ``l2_norm_clip > 0``, noise std ``noise_multiplier * clip``.

  Pick ``noise_multiplier`` for a target epsilon with :func:`dp_noise_multiplier`.
  """
  return DpSgd(
    _real("l2_norm_clip", l2_norm_clip, low=0.0, low_open=True),
    _real("noise_multiplier", noise_multiplier, low=0.0),
  )


def chain(*defenses) -> Defense:
  """Compose defenses (nested chains flatten; ``none()`` and ``None`` vanish).

  Returns ``none()`` for no parts, the part itself for one, else a :class:`Chain`.
  Raises ``ValueError`` for two ``dp_sgd`` or two ``dropout`` parts and
  ``TypeError`` for output transforms (compose those with ``chain_outputs``).
  """
  flat: list[Defense] = []
  for i, d in enumerate(defenses):
    if d is None or isinstance(d, NoDefense):
      continue
    if isinstance(d, Chain):
      flat.extend(d.parts)
    elif isinstance(d, Defense):
      flat.append(d)
    elif isinstance(d, _outputs.OutputTransform):
      raise TypeError(
        f"chain argument {i} is an output transform ({d!r}); output transforms act on "
        "a trained model's outputs: compose them with chain_outputs(...)"
      )
    else:
      raise TypeError(
        f"chain argument {i} must be a defense built by miajax.defenses, got {d!r}"
      )
  for kind in (DpSgd, Dropout):
    if sum(isinstance(d, kind) for d in flat) > 1:
      raise ValueError(
        f"a chain may hold at most one {kind.name}() defense, got "
        f"{[d for d in flat if isinstance(d, kind)]}"
      )
  if not flat:
    return NoDefense()
  if len(flat) == 1:
    return flat[0]
  return Chain(tuple(flat))


def _parts(defense) -> tuple:
  if defense is None:
    return ()
  if isinstance(defense, Chain):
    return defense.parts
  if isinstance(defense, NoDefense):
    return ()
  if isinstance(defense, Defense):
    return (defense,)
  raise TypeError(
    f"defense must be a value built by miajax.defenses (e.g. none(), chain(...)), got {defense!r}"
  )


@functools.lru_cache(maxsize=None)
def hamp_top1_probability(num_classes: int, gamma: float) -> float:
  """HAMP's true-class probability ``p`` for ``C`` classes and threshold ``gamma``.

  ``p = 1 - 0.01 k`` for the smallest integer ``k >= 0`` whose label
  (``p`` on the true class, ``(1-p)/(C-1)`` on each other) has entropy
  ``>= gamma ln C`` (float64). E.g. ``C=10, gamma=0.95 -> 0.26``.
  The released code decrements before its first check, so for
  ``gamma = 0`` it gives 0.99 where this gives 1.0; for ``gamma > 0`` they
  agree.

  Raises:
    ValueError: when no ``p`` on the 0.01 grid above ``1/C`` reaches the
      threshold (``gamma`` too close to 1 for this ``C``).
  """
  if (
    isinstance(num_classes, bool)
    or not isinstance(num_classes, numbers.Integral)
    or num_classes < 2
  ):
    raise ValueError(
      f"num_classes must be an integer >= 2, got {num_classes!r}"
    )
  gamma = _real("gamma", gamma, low=0.0, high=1.0)
  c = int(num_classes)
  threshold = gamma * math.log(c)
  for k in range(101):
    p = round(1.0 - 0.01 * k, 2)
    if p <= 1.0 / c:
      break
    rest = (1.0 - p) / (c - 1)
    h = -(p * math.log(p) if p > 0 else 0.0) - (
      (c - 1) * rest * math.log(rest) if rest > 0 else 0.0
    )
    if h >= threshold:
      return p
  raise ValueError(
    f"hamp: gamma={gamma} is unreachable for {c} classes with p on a 0.01 grid above 1/C; "
    "use a smaller gamma"
  )


def _check_logits_labels(logits, labels):
  logits = jnp.asarray(logits)
  if logits.ndim < 1 or logits.shape[-1] < 2:
    raise ValueError(
      f"logits must be float[..., classes] with >= 2 classes, got shape {logits.shape}"
    )
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
      f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, got {labels.shape}"
    )
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= logits.shape[-1]:
      raise ValueError(
        f"labels must lie in [0, {logits.shape[-1]}), got range [{lo}, {hi}]"
      )
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), labels


def soft_targets(defense, labels, num_classes: int) -> jax.Array:
  """The training targets ``float32[..., classes]`` a defense gives integer ``labels``.

  One-hot for defenses without a target transform.
  """
  return _targets(_parts(defense), labels, num_classes)


def _targets(parts, labels, num_classes):
  t = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  for d in parts:
    if isinstance(d, LabelSmoothing):
      t = (1.0 - d.eps) * t + d.eps / num_classes
    elif isinstance(d, Hamp):
      p = hamp_top1_probability(num_classes, d.gamma)
      t = p * t + (1.0 - p) / (num_classes - 1) * (1.0 - t)
  return t


def per_example_loss(defense, logits, labels) -> jax.Array:
  """Training loss of each example under ``defense``.

  Args:
    defense: a value built by this module (``None`` means ``none()``).
    logits: ``float[..., classes]`` (computed in at least float32).
    labels: ``int[...]`` of shape ``logits.shape[:-1]``.

  Returns:
    ``float32[...]``: ``-sum_c t_c log q_c - beta_total H(q)``, with ``t``
    from :func:`soft_targets` and ``beta_total`` the summed confidence
    penalty and HAMP ``alpha`` weights. With ``none()`` it is
    ``optax.softmax_cross_entropy_with_integer_labels(logits, labels)``.
  """
  parts = _parts(defense)
  logits, labels = _check_logits_labels(logits, labels)
  num_classes = logits.shape[-1]
  if any(isinstance(d, (LabelSmoothing, Hamp)) for d in parts):
    log_q = jax.nn.log_softmax(logits, axis=-1)
    loss = -jnp.sum(_targets(parts, labels, num_classes) * log_q, axis=-1)
  else:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  beta = sum(d.beta for d in parts if isinstance(d, ConfidencePenalty))
  beta += sum(d.alpha for d in parts if isinstance(d, Hamp))
  if beta:
    log_q = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.exp(log_q) * log_q, axis=-1)
    loss = loss - beta * entropy
  return loss


def maps_targets(defense) -> bool:
  """Whether ``defense`` trains on other targets than the one-hot labels (label smoothing, HAMP)."""
  return any(isinstance(d, (LabelSmoothing, Hamp)) for d in _parts(defense))


def param_penalty(defense, params) -> jax.Array:
  """Data-independent penalty ``0.5 * sum(l2 weights) * ||params||^2``, a float32 scalar.

  ``params`` is any pytree of arrays (all leaves are penalised).
  """
  weight = sum(d.weight for d in _parts(defense) if isinstance(d, L2))
  if not weight:
    return jnp.zeros((), jnp.float32)
  sq = sum(
    jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    for leaf in jax.tree_util.tree_leaves(params)
  )
  return 0.5 * weight * jnp.asarray(sq, jnp.float32)


def dropout_rate(defense) -> float:
  """The dropout rate the engine should build models with (0.0 without ``dropout``)."""
  rates = [d.rate for d in _parts(defense) if isinstance(d, Dropout)]
  return rates[0] if rates else 0.0


def dp_params(defense) -> tuple[float, float] | None:
  """``(l2_norm_clip, noise_multiplier)`` of the ``dp_sgd`` part, or ``None``."""
  for d in _parts(defense):
    if isinstance(d, DpSgd):
      return (d.l2_norm_clip, d.noise_multiplier)
  return None


def dp_summary(
  defense, *, sample_rate, steps, delta, accountant: str = "rdp"
) -> dict[str, Any] | None:
  """The DP numbers a report must give for ``defense``, or ``None`` without ``dp_sgd``.

  Returns ``{"noise_multiplier", "l2_norm_clip", "sample_rate", "steps",
  "delta", "epsilon", "accountant"}`` with ``epsilon`` from
  :func:`dp_epsilon`. With members differing between models, pass the rate
  of the smallest training set (the largest rate): epsilon grows with it.
  """
  dp = dp_params(defense)
  if dp is None:
    return None
  clip, noise = dp
  eps = _privacy.dp_epsilon(
    noise_multiplier=noise,
    sample_rate=sample_rate,
    steps=steps,
    delta=delta,
    accountant=accountant,
  )
  return {
    "noise_multiplier": noise,
    "l2_norm_clip": clip,
    "sample_rate": float(sample_rate),
    "steps": int(steps),
    "delta": float(delta),
    "epsilon": eps,
    "accountant": accountant,
  }


def _describe_one(d) -> dict[str, Any]:
  out: dict[str, Any] = {"name": d.name}
  out.update({f.name: getattr(d, f.name) for f in dataclasses.fields(d)})
  return out


def describe(defense) -> dict[str, Any]:
  """A JSON-serialisable description, e.g. ``{"name": "hamp", "gamma": 0.95, "alpha": 0.01}``.

  Chains give ``{"name": "chain", "parts": [...]}``; ``none()`` gives
  ``{"name": "none"}``. Output transforms are described as well (via
  :func:`describe_output`).
  """
  if isinstance(defense, _outputs.OutputTransform):
    return _outputs.describe_output(defense)
  parts = _parts(defense)
  if not parts:
    return {"name": "none"}
  if len(parts) == 1:
    return _describe_one(parts[0])
  return {"name": "chain", "parts": [_describe_one(d) for d in parts]}


def short_name(defense) -> str:
  """A compact label for tables, e.g. ``"dropout(0.5)+label_smoothing(0.1)"``."""
  if isinstance(defense, _outputs.OutputTransform):
    return _outputs.output_short_name(defense)
  parts = _parts(defense)
  if not parts:
    return "none"
  return "+".join(
    f"{d.name}({', '.join(f'{getattr(d, f.name):g}' for f in dataclasses.fields(d))})"
    for d in parts
  )
