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

:func:`~miajax.defenses.chain` composes defenses as ``optax.chain`` composes
transformations; the result is again a :class:`Defense`:

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
                       ``-alpha H(q)`` (``q`` the model's softmax); in
                       :mod:`miajax.defenses.hamp_defense`, with its output
                       half
``confidence_penalty`` loss term ``-beta H(q)`` (Pereyra et al. 2017)
``dropout(rate)``      model setting ``dropout_rate`` of registry models
                       (Srivastava et al. 2014; ML-Leaks' defense)
``dp_sgd(C, sigma)``   gradient processor: per-example clipping to ``C``,
                       Gaussian noise ``sigma C`` (Abadi et al. 2016; see
                       :mod:`miajax.defenses.privacy`)
=====================  ====================================================

L2 regularisation is not a defense here: it is ``TrainConfig.weight_decay``
of the built-in optimizers (see ``TrainConfig`` for its relation to a ``0.5
w ||theta||^2`` penalty). Output defenses live in
:mod:`miajax.defenses.outputs`; DP accounting (``dp_epsilon`` and
``dp_noise_multiplier``, to pick ``dp_sgd``'s noise) in
:mod:`miajax.defenses.privacy`; what the engine reads from a defense
(:func:`~miajax.defenses.per_example_loss` and its kin) in
:mod:`miajax.defenses.hooks`. All are importable from :mod:`miajax.defenses`.

Every :class:`Defense` subclass is registered as a static pytree (no leaves),
so defense values may be passed to jitted functions or closed over; they
must be hashable (a frozen dataclass is), since compiled training functions
are cached per configuration (:class:`miajax.defenses.base.Component`).

"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from miajax import hyperparams as hyperparams_lib
from miajax.defenses import base
from miajax.defenses import privacy as _privacy

__all__ = [
  "Defense",
  "NoDefense",
  "LabelSmoothing",
  "ConfidencePenalty",
  "Dropout",
  "DpSgd",
  "Chain",
  "none",
  "label_smoothing",
  "confidence_penalty",
  "dropout",
  "dp_sgd",
  "entropy",
]


class Defense(base.Component, default=True):
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
  :meth:`describe` and :func:`~miajax.defenses.short_name`.
  """

  kind = "defense"
  targets = None
  loss_terms = None
  param_penalty = None
  aggregate_grads = None
  model_kwargs = None
  accounting = None
  # Scalar fields that may hold one value per model (miajax.per_model).
  per_model_fields: tuple[str, ...] = ()

  @classmethod
  def _compose(cls, parts: list) -> Defense:
    return _chain_defenses(parts)


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
  """Validates and converts the float fields of a frozen dataclass.

  A field named in the class's ``per_model_fields`` may hold one value per
  model (:func:`miajax.per_model`): each value is checked.
  """
  for field, kwargs in ranges.items():
    value = getattr(obj, field)
    if isinstance(value, hyperparams_lib.PerModel):
      if field not in type(obj).per_model_fields:
        raise ValueError(
          f"{field} of {type(obj).__name__} must be one scalar for every "
          f"model (per-model values: {list(type(obj).per_model_fields)})"
        )
    check = lambda name, v: _real(name, v, **kwargs)
    object.__setattr__(
      obj, field, hyperparams_lib.check_values(field, value, check)
    )


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
  per_model_fields = ("eps",)

  def __post_init__(self):
    _check_fields(self, eps=dict(low=0.0, high=1.0))

  def targets(self, t):
    return (1.0 - self.eps) * t + self.eps / t.shape[-1]


@dataclasses.dataclass(frozen=True)
class ConfidencePenalty(Defense):
  """Loss term ``-beta H(q)`` per example (Pereyra et al. 2017)."""

  beta: float
  name = "confidence_penalty"
  per_model_fields = ("beta",)

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
  (:func:`miajax.defenses.clip_and_noise`).
  """

  l2_norm_clip: float
  noise_multiplier: float
  name = "dp_sgd"
  per_model_fields = ("l2_norm_clip", "noise_multiplier")

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
    """The DP guarantee of the recipe; per-model noise gives one epsilon per model."""
    sigma = self.noise_multiplier
    eps_of = lambda s: _privacy.dp_epsilon(
      noise_multiplier=s,
      sample_rate=sample_rate,
      steps=steps,
      delta=delta,
      accountant=accountant,
    )
    per_model = isinstance(sigma, hyperparams_lib.PerModel)
    eps = [eps_of(s) for s in sigma.values] if per_model else eps_of(sigma)
    as_json = lambda v: (
      list(v.values) if isinstance(v, hyperparams_lib.PerModel) else v
    )
    return {
      "noise_multiplier": as_json(sigma),
      "l2_norm_clip": as_json(self.l2_norm_clip),
      "sample_rate": float(sample_rate),
      "steps": int(steps),
      "delta": float(delta),
      "epsilon": eps,
      "accountant": accountant,
    }


def _hooks(parts, hook: str) -> list:
  return [getattr(d, hook) for d in parts if getattr(d, hook) is not None]


@dataclasses.dataclass(frozen=True)
class Chain(base.Composite, Defense):
  """Defenses composed by :func:`~miajax.defenses.chain`; its hooks combine the parts'."""

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


def confidence_penalty(beta: float) -> ConfidencePenalty:
  """Confidence penalty ``loss - beta H(q)`` (Pereyra et al. 2017)."""
  return ConfidencePenalty(beta)


def dropout(rate: float) -> Dropout:
  """Dropout rate in ``[0, 1)`` of every (registry) model."""
  return Dropout(rate)


def dp_sgd(l2_norm_clip: float, noise_multiplier: float) -> DpSgd:
  """DP-SGD: clip to ``l2_norm_clip > 0``, noise ``noise_multiplier * clip``.

  Pick ``noise_multiplier`` for a target epsilon with
  :func:`~miajax.defenses.dp_noise_multiplier`.
  """
  return DpSgd(l2_norm_clip, noise_multiplier)


def _chain_defenses(flat: list[Defense]) -> Defense:
  """The chain of flattened defenses (rules in the module docstring).

  Returns ``none()`` for no parts, the part itself for one, else a
  :class:`Chain`.

  Raises:
    ValueError: two parts aggregate gradients, or two set the same model
      keyword argument.
  """
  flat = [d for d in flat if not isinstance(d, NoDefense)]
  processors = [d for d in flat if d.aggregate_grads is not None]
  if len(processors) > 1:
    raise ValueError(
      "a chain may hold at most one gradient processor (aggregate_grads), "
      f"got {' and '.join(base.short_name(d) for d in processors)}"
    )
  owner: dict[str, Defense] = {}
  for d in flat:
    for key in d.model_kwargs() if d.model_kwargs is not None else {}:
      if key in owner:
        raise ValueError(
          f"{base.short_name(owner[key])} and {base.short_name(d)} both set the model "
          f"setting {key!r}; a chain may set it once"
        )
      owner[key] = d
  if not flat:
    return NoDefense()
  if len(flat) == 1:
    return flat[0]
  return Chain(tuple(flat))
