"""Training-time defenses: values that carry their own behaviour.

A defense is an instance of :class:`Defense` implementing any of a few
optional hooks. The engine calls the hooks and never asks which class it
holds, so a defense written outside miajax trains like a built-in one, the
way any ``optax.GradientTransformation`` plugs into an optax optimizer.
Shapes are those of one model (the engine maps over the ``[models]`` axis):

========================================  =====================================
hook (``None`` when unused)               role
========================================  =====================================
``targets(t) -> t``                       target map on ``float32[examples,
                                          classes]``, applied to the one-hot
                                          labels; the loss becomes the soft
                                          cross-entropy ``-sum_c t_c log q_c``
``loss_terms(logits, targets)``           ``float32[examples]`` added to each
                                          example's loss (``targets`` after
                                          every target map)
``param_penalty(params)``                 float32 scalar added to the batch
                                          loss (data-independent)
``aggregate_grads(per_example, key)``     replaces the batch mean of the
                                          per-example gradients (leaves
                                          ``[examples, ...]``); DP-SGD
``model_kwargs() -> dict``                keyword arguments of registry models
                                          (``dropout_rate``)
``accounting(sample_rate=, steps=,        the DP guarantee of a gradient
delta=, accountant=) -> dict``            processor, for reports
``describe() -> dict``                    JSON for run directories and reports
                                          (default: ``name`` and the dataclass
                                          fields)
========================================  =====================================

:func:`chain` composes defenses as ``optax.chain`` composes transformations;
the result is again a :class:`Defense`:

* target maps compose in chain order (``chain(a, b)`` trains on
  ``b(a(onehot))``);
* loss terms add, each given the final targets; parameter penalties add;
* at most one part may aggregate gradients (two would each expect raw
  per-example gradients), and the chain's ``accounting`` is that part's;
* model keyword arguments merge; two parts setting the same one is an error.

The built-ins:

=====================  ====================================================
builder                effect on training
=====================  ====================================================
``none()``             plain cross-entropy (``optax.softmax_cross_entropy_
                       with_integer_labels``)
``label_smoothing(e)`` target ``(1-e) t + e/C`` (Szegedy et al. 2016; the
                       optax/PyTorch convention: ``e`` spread over all C
                       classes, the true one included)
``hamp(gamma, alpha)`` HAMP (Chen & Pattabiraman, NDSS 2024): target ``p t +
                       (1-p)/(C-1) (1-t)``, ``p`` from
                       :func:`hamp_top1_probability`, and the loss term
                       ``-alpha H(q)`` (``q`` the model's softmax)
``confidence_penalty`` loss term ``-beta H(q)`` (Pereyra et al. 2017)
``dropout(rate)``      model setting ``dropout_rate`` of registry models
                       (Srivastava et al. 2014; ML-Leaks' defense)
``dp_sgd(C, sigma)``   gradient processor: per-example clipping to ``C``,
                       Gaussian noise ``sigma C`` (Abadi et al. 2016; see
                       :mod:`miajax.privacy`)
=====================  ====================================================

L2 regularisation is not a defense here: it is ``TrainConfig.weight_decay``
of the built-in optimizers (see :mod:`miajax.config` for its relation to a
``0.5 w ||theta||^2`` penalty). Output defenses live in
:mod:`miajax.outputs`; DP accounting in :mod:`miajax.privacy`, whose
``dp_epsilon`` and ``dp_noise_multiplier`` (needed to pick ``dp_sgd``'s
noise) are re-exported here.

Every :class:`Defense` subclass is registered as a static pytree (no leaves),
so defense values may be passed to jitted functions or closed over; they
must be hashable (a frozen dataclass is), since compiled training functions
are cached per configuration.

HAMP conventions. The loss is the soft-target cross-entropy, ``KL(t || q) +
H(t)`` with ``H(t)`` constant, so its gradients equal the paper's KL loss.
``alpha`` is per example (the engine averages over the batch, PyTorch's
``kl_div(..., reduction="batchmean")``). The released code
(DependableSystemsLab/MIA_defense_HAMP @a064a1f) uses ``kl_div``'s default
``reduction="mean"``, which divides the summed KL by ``batch * C``, and
subtracts ``alpha_released * mean_batch H(q)``: the same objective with
``alpha = C * alpha_released``, scaled by ``1/C``. For identical SGD updates
also use learning rate ``lr_released / C`` and weight decay ``C *
wd_released`` (Adam is invariant to the scale, so only ``alpha`` changes).
The released CIFAR-10 setting (gamma 0.95, alpha 0.001) is ``hamp(0.95,
0.01)`` here; Purchase100 (gamma 0.8, alpha 0.01, C = 100) is ``hamp(0.8,
1.0)``.
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
from miajax.privacy import dp_epsilon, dp_noise_multiplier

__all__ = [
  "Defense",
  "NoDefense",
  "LabelSmoothing",
  "Hamp",
  "ConfidencePenalty",
  "Dropout",
  "DpSgd",
  "Chain",
  "none",
  "label_smoothing",
  "hamp",
  "confidence_penalty",
  "dropout",
  "dp_sgd",
  "chain",
  "per_example_loss",
  "soft_targets",
  "maps_targets",
  "model_kwargs",
  "dp_summary",
  "describe",
  "short_name",
  "entropy",
  "hamp_top1_probability",
  # from miajax.privacy: the accounting that sets dp_sgd's noise
  "dp_epsilon",
  "dp_noise_multiplier",
]


class Defense:
  """Base of every training-time defense; subclasses implement any hooks.

  A hook left ``None`` means the defense has no such effect (the engine then
  skips the work: without a target map the loss is the integer-label
  cross-entropy, without a gradient processor no per-example gradients are
  formed). The hooks, for one model's batch of ``examples``:

  * ``targets(t: float32[examples, classes]) -> float32[examples, classes]``
  * ``loss_terms(logits, targets) -> float32[examples]`` (both
    ``float32[examples, classes]``)
  * ``param_penalty(params) -> float32[]``
  * ``aggregate_grads(per_example_grads, key) -> grads``: leaves
    ``[examples, ...]`` in, the same leaves without that axis out
  * ``model_kwargs() -> dict``
  * ``accounting(*, sample_rate, steps, delta, accountant) -> dict``

  ``name`` (default: the class name) labels the defense in
  :meth:`describe` and :func:`short_name`.
  """

  name = ""
  targets = None
  loss_terms = None
  param_penalty = None
  aggregate_grads = None
  model_kwargs = None
  accounting = None

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    jax.tree_util.register_static(cls)

  def describe(self) -> dict[str, Any]:
    """JSON-serialisable identity: ``{"name": ..., <dataclass fields>}``."""
    out: dict[str, Any] = {"name": _name(self)}
    if dataclasses.is_dataclass(self):
      out.update(
        {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
      )
    return out


def _name(d) -> str:
  return d.name or type(d).__name__


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
      f"{name} must be a concrete Python scalar (defenses are static), "
      f"got {value!r}"
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


def _check_fields(obj, **ranges) -> None:
  """Validates and converts the float fields of a frozen dataclass."""
  for field, kwargs in ranges.items():
    object.__setattr__(obj, field, _real(field, getattr(obj, field), **kwargs))


def entropy(logits) -> jax.Array:
  """Shannon entropy ``H(softmax(logits))`` in nats, ``float[...]``."""
  log_q = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(log_q) * log_q, axis=-1)


@dataclasses.dataclass(frozen=True)
class NoDefense(Defense):
  """No hooks: plain cross-entropy."""

  name = "none"


@dataclasses.dataclass(frozen=True)
class LabelSmoothing(Defense):
  """Target map ``t -> (1 - eps) t + eps / C`` (Szegedy et al. 2016)."""

  eps: float
  name = "label_smoothing"

  def __post_init__(self):
    _check_fields(self, eps=dict(low=0.0, high=1.0))

  def targets(self, t):
    return (1.0 - self.eps) * t + self.eps / t.shape[-1]


@dataclasses.dataclass(frozen=True)
class Hamp(Defense):
  """HAMP's training half (Chen & Pattabiraman, NDSS 2024).

  High-entropy soft labels ``t -> p t + (1 - p) / (C - 1) (1 - t)`` with
  ``p = hamp_top1_probability(C, gamma)``, and the entropy regulariser
  ``-alpha H(q)`` per example. Its output half is
  :func:`miajax.outputs.hamp_output`.
  """

  gamma: float
  alpha: float
  name = "hamp"

  def __post_init__(self):
    _check_fields(self, gamma=dict(low=0.0, high=1.0), alpha=dict(low=0.0))

  def targets(self, t):
    c = t.shape[-1]
    p = hamp_top1_probability(c, self.gamma)
    return p * t + (1.0 - p) / (c - 1) * (1.0 - t)

  def loss_terms(self, logits, targets):
    del targets
    return -(self.alpha * entropy(logits))


@dataclasses.dataclass(frozen=True)
class ConfidencePenalty(Defense):
  """Loss term ``-beta H(q)`` per example (Pereyra et al. 2017)."""

  beta: float
  name = "confidence_penalty"

  def __post_init__(self):
    _check_fields(self, beta=dict(low=0.0))

  def loss_terms(self, logits, targets):
    del targets
    return -(self.beta * entropy(logits))


@dataclasses.dataclass(frozen=True)
class Dropout(Defense):
  """Registry models built with ``dropout_rate=rate`` (Srivastava et al. 2014).

  ML-Leaks (Salem et al., NDSS 2019) evaluates it as a membership defense.
  User models put dropout in themselves (they get the ``"dropout"`` RNG
  stream when ``train=True``).
  """

  rate: float
  name = "dropout"

  def __post_init__(self):
    _check_fields(self, rate=dict(low=0.0, high=1.0))

  def model_kwargs(self):
    return {"dropout_rate": self.rate}


@dataclasses.dataclass(frozen=True)
class DpSgd(Defense):
  """DP-SGD's gradient processor (Abadi et al., CCS 2016).

  Each example's gradient is clipped to global L2 norm ``l2_norm_clip``, the
  clipped gradients are summed, ``N(0, (noise_multiplier l2_norm_clip)^2)``
  noise is added per coordinate and the sum is divided by the batch size
  (:func:`miajax.privacy.clip_and_noise`).
  """

  l2_norm_clip: float
  noise_multiplier: float
  name = "dp_sgd"

  def __post_init__(self):
    _check_fields(
      self,
      l2_norm_clip=dict(low=0.0, low_open=True),
      noise_multiplier=dict(low=0.0),
    )

  def aggregate_grads(self, per_example_grads, key):
    return _privacy.clip_and_noise(
      per_example_grads,
      key,
      l2_norm_clip=self.l2_norm_clip,
      noise_multiplier=self.noise_multiplier,
    )

  def accounting(self, *, sample_rate, steps, delta, accountant="rdp"):
    eps = _privacy.dp_epsilon(
      noise_multiplier=self.noise_multiplier,
      sample_rate=sample_rate,
      steps=steps,
      delta=delta,
      accountant=accountant,
    )
    return {
      "noise_multiplier": self.noise_multiplier,
      "l2_norm_clip": self.l2_norm_clip,
      "sample_rate": float(sample_rate),
      "steps": int(steps),
      "delta": float(delta),
      "epsilon": eps,
      "accountant": accountant,
    }


def _hooks(parts, hook: str) -> list:
  return [getattr(d, hook) for d in parts if getattr(d, hook) is not None]


@dataclasses.dataclass(frozen=True)
class Chain(Defense):
  """Defenses composed by :func:`chain`; its hooks combine the parts'."""

  parts: tuple
  name = "chain"

  @property
  def targets(self):
    maps = _hooks(self.parts, "targets")
    if len(maps) <= 1:
      return maps[0] if maps else None

    def composed(t):
      for f in maps:
        t = f(t)
      return t

    return composed

  @property
  def loss_terms(self):
    return _summed(_hooks(self.parts, "loss_terms"))

  @property
  def param_penalty(self):
    return _summed(_hooks(self.parts, "param_penalty"))

  @property
  def aggregate_grads(self):
    found = _hooks(self.parts, "aggregate_grads")
    return found[0] if found else None

  @property
  def accounting(self):
    found = [d for d in self.parts if d.aggregate_grads is not None]
    return found[0].accounting if found else None

  @property
  def model_kwargs(self):
    found = _hooks(self.parts, "model_kwargs")
    if not found:
      return None
    return lambda: {k: v for f in found for k, v in f().items()}

  def describe(self) -> dict[str, Any]:
    return {"name": "chain", "parts": [d.describe() for d in self.parts]}


def _summed(fns):
  if len(fns) <= 1:
    return fns[0] if fns else None

  def total(*args):
    out = fns[0](*args)
    for f in fns[1:]:
      out = out + f(*args)
    return out

  return total


def none() -> NoDefense:
  """No defense: plain cross-entropy."""
  return NoDefense()


def label_smoothing(eps: float) -> LabelSmoothing:
  """Label smoothing, ``eps`` in ``[0, 1)``: target ``(1-eps) t + eps/C``."""
  return LabelSmoothing(eps)


def hamp(gamma: float, alpha: float) -> Hamp:
  """HAMP training: high-entropy soft labels plus entropy regularisation.

  Args:
    gamma: entropy threshold as a fraction of ``ln C``, in ``[0, 1)``.
    alpha: weight of ``-H(q)`` per example, ``>= 0``, in the batchmean
      convention (``C`` times the released code's ``alpha``; see the module
      docstring).
  """
  return Hamp(gamma, alpha)


def confidence_penalty(beta: float) -> ConfidencePenalty:
  """Confidence penalty ``loss - beta H(q)`` (Pereyra et al. 2017)."""
  return ConfidencePenalty(beta)


def dropout(rate: float) -> Dropout:
  """Dropout rate in ``[0, 1)`` of every (registry) model."""
  return Dropout(rate)


def dp_sgd(l2_norm_clip: float, noise_multiplier: float) -> DpSgd:
  """DP-SGD: clip to ``l2_norm_clip > 0``, noise ``noise_multiplier * clip``.

  Pick ``noise_multiplier`` for a target epsilon with
  :func:`dp_noise_multiplier`.
  """
  return DpSgd(l2_norm_clip, noise_multiplier)


def chain(*defenses) -> Defense:
  """Compose defenses (nested chains flatten; ``none()`` and ``None`` vanish).

  Returns ``none()`` for no parts, the part itself for one, else a
  :class:`Chain` (composition rules in the module docstring).

  Raises:
    ValueError: two parts aggregate gradients, or two set the same model
      keyword argument.
    TypeError: an argument is not a :class:`Defense` (output transforms are
      composed with :func:`miajax.outputs.chain_outputs`).
  """
  flat: list[Defense] = []
  for i, d in enumerate(defenses):
    if d is None:
      continue
    if isinstance(d, Chain):
      flat.extend(d.parts)
    elif isinstance(d, Defense):
      flat.append(d)
    elif isinstance(d, _outputs.OutputTransform):
      raise TypeError(
        f"chain argument {i} is an output transform ({d!r}); output "
        "transforms act on a trained model's outputs: compose them with "
        "miajax.outputs.chain_outputs(...)"
      )
    else:
      raise TypeError(
        f"chain argument {i} must be a defense (a miajax.defenses.Defense), "
        f"got {d!r}"
      )
  flat = [d for d in flat if not isinstance(d, NoDefense)]
  processors = [d for d in flat if d.aggregate_grads is not None]
  if len(processors) > 1:
    raise ValueError(
      "a chain may hold at most one gradient processor (aggregate_grads), "
      f"got {' and '.join(short_name(d) for d in processors)}"
    )
  owner: dict[str, Defense] = {}
  for d in flat:
    for key in d.model_kwargs() if d.model_kwargs is not None else {}:
      if key in owner:
        raise ValueError(
          f"{short_name(owner[key])} and {short_name(d)} both set the model "
          f"setting {key!r}; a chain may set it once"
        )
      owner[key] = d
  if not flat:
    return NoDefense()
  if len(flat) == 1:
    return flat[0]
  return Chain(tuple(flat))


def _as_defense(defense) -> Defense:
  if defense is None:
    return NoDefense()
  if isinstance(defense, Defense):
    return defense
  raise TypeError(
    "defense must be a miajax.defenses.Defense (e.g. none(), chain(...), or "
    f"your own subclass), got {defense!r}"
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
    f"hamp: gamma={gamma} is unreachable for {c} classes with p on a 0.01 "
    "grid above 1/C; use a smaller gamma"
  )


def _check_logits_labels(logits, labels):
  logits = jnp.asarray(logits)
  if logits.ndim < 1 or logits.shape[-1] < 2:
    raise ValueError(
      "logits must be float[..., classes] with >= 2 classes, got shape "
      f"{logits.shape}"
    )
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
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
      f"{short_name(defense)}: targets(t) must keep the shape {t.shape}, got "
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
        f"a defense that changes the targets ({short_name(defense)}); fold "
        "the soft targets into your loss instead"
      )
    out = jnp.asarray(loss(logits, labels), jnp.float32)
  elif defense.targets is not None:
    out = -jnp.sum(t * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  else:
    out = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if out.shape != labels.shape:
    raise ValueError(
      f"loss must return float[...] of shape {labels.shape}, got {out.shape}"
    )
  if defense.loss_terms is not None:
    extra = defense.loss_terms(logits, t)
    if jnp.shape(extra) != labels.shape:
      raise ValueError(
        f"{short_name(defense)}: loss_terms must return one value per "
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
  :func:`miajax.privacy.dp_epsilon`. With members differing between models,
  pass the rate of the smallest training set (the largest rate; see
  :func:`miajax.engine.dp_sampling`): epsilon grows with it.
  """
  defense = _as_defense(defense)
  if defense.accounting is None:
    return None
  return defense.accounting(
    sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
  )


def describe(defense) -> dict[str, Any]:
  """A JSON-serialisable description, e.g. ``{"name": "hamp", "gamma": 0.95, "alpha": 0.01}``.

  Chains give ``{"name": "chain", "parts": [...]}``; ``none()`` gives
  ``{"name": "none"}``.
  """
  return _as_defense(defense).describe()


def _format(value) -> str:
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    return f"{value:g}"
  return str(value)


def short_name(defense) -> str:
  """A compact label for tables, e.g. ``"dropout(0.5)+label_smoothing(0.1)"``."""
  desc = describe(defense)
  out = []
  for part in desc["parts"] if desc["name"] == "chain" else [desc]:
    part = dict(part)
    name = part.pop("name")
    args = ", ".join(_format(v) for v in part.values())
    out.append(f"{name}({args})" if part else name)
  return "+".join(out)
