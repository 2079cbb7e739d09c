"""HAMP (Chen & Pattabiraman, NDSS 2024), both halves.

Training, :func:`hamp`: high-entropy soft labels ``t -> p t + (1 - p) /
(C - 1) (1 - t)`` with ``p`` from :func:`hamp_top1_probability`, plus the
entropy regulariser ``-alpha H(q)`` per example (``q`` the model's softmax).
Querying, :func:`hamp_output`: the sorted logits of the same model on a
random input (:func:`random_inputs`) handed out in the rank order of the
real logits, so only the ranking of the classes is released.

Conventions. The loss is the soft-target cross-entropy, ``KL(t || q) +
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

import jax
import jax.numpy as jnp

from miajax.defenses.outputs import OutputTransform, Release
from miajax.defenses.training import Defense, _check_fields, _real, entropy

__all__ = [
  "Hamp",
  "HampOutput",
  "hamp",
  "hamp_output",
  "hamp_top1_probability",
  "random_inputs",
]


@dataclasses.dataclass(frozen=True)
class Hamp(Defense):
  """HAMP's training half (Chen & Pattabiraman, NDSS 2024).

  High-entropy soft labels ``t -> p t + (1 - p) / (C - 1) (1 - t)`` with
  ``p = hamp_top1_probability(C, gamma)``, and the entropy regulariser
  ``-alpha H(q)`` per example. Its output half is :func:`hamp_output`.
  """

  gamma: float
  alpha: float
  name = "hamp"
  # gamma sets the soft labels through a host-side search: one per recipe.
  per_model_fields = ("alpha",)

  def __post_init__(self):
    _check_fields(self, gamma=dict(low=0.0, high=1.0), alpha=dict(low=0.0))

  def targets(self, t):
    c = t.shape[-1]
    p = hamp_top1_probability(c, self.gamma)
    return p * t + (1.0 - p) / (c - 1) * (1.0 - t)

  def loss_terms(self, logits, targets):
    del targets
    return -(self.alpha * entropy(logits))


def hamp(gamma: float, alpha: float) -> Hamp:
  """HAMP training: high-entropy soft labels plus entropy regularisation.

  Args:
    gamma: entropy threshold as a fraction of ``ln C``, in ``[0, 1)``.
    alpha: weight of ``-H(q)`` per example, ``>= 0``, in the batchmean
      convention (``C`` times the released code's ``alpha``; see the module
      docstring).
  """
  return Hamp(gamma, alpha)


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


@dataclasses.dataclass(frozen=True)
class HampOutput(OutputTransform):
  """HAMP's output modification (Chen & Pattabiraman, NDSS 2024).

  The sorted logits of the model on a random input are handed out in the
  rank order of the real output, ``softmax(sorted_random[rank(real)])``.
  """

  name = "hamp_output"
  needs_random_logits = True

  def apply(self, release, *, key=None, random_logits=None):
    del key
    shape = release.zero.shape
    rank = jnp.argsort(jnp.argsort(release.ranked(), axis=-1), axis=-1)
    sorted_random = jnp.sort(jnp.broadcast_to(random_logits, shape), axis=-1)
    return Release(
      jax.nn.log_softmax(
        jnp.take_along_axis(sorted_random, rank, axis=-1), axis=-1
      ),
      jnp.zeros(shape, bool),
      jnp.full_like(release.missing, -jnp.inf),
      jnp.full(shape, jnp.inf, jnp.float32),
    )


def hamp_output() -> HampOutput:
  """HAMP's test-time modification; :func:`~miajax.defenses.apply_output` then needs ``random_logits``."""
  return HampOutput()


def random_inputs(
  key,
  shape,
  *,
  distribution: str = "uniform",
  low: float = 0.0,
  high: float = 1.0,
) -> jax.Array:
  """Random inputs ``float32[shape]`` for HAMP's output modification.

  HAMP draws uniform pixels for images and Bernoulli(0.5) features for
  binary tabular data. ``low``/``high`` should match the range of the data
  (``[0, 1]`` for ``digits``, ``[-1, 1]`` for the other image sets). Draw a
  fresh input per query, as the paper does: ``shape`` is
  ``(examples,) + input_shape``.
  """
  if distribution == "uniform":
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
      raise ValueError(f"need finite low < high, got low={low}, high={high}")
    return jax.random.uniform(key, tuple(shape), jnp.float32, low, high)
  if distribution == "bernoulli":
    return jax.random.bernoulli(key, 0.5, tuple(shape)).astype(jnp.float32)
  raise ValueError(
    f"distribution must be 'uniform' or 'bernoulli', got {distribution!r}"
  )
