"""Output defenses: transforms of what a queried model returns, before any attack sees it.

A transform is a small frozen value; :func:`chain_outputs` composes them left
to right, :func:`apply_output` runs them::

    t = chain_outputs(temperature(2.0), top_k(3), rounding(2))
    view = apply_output(t, logits)          # float32[..., classes] log-probabilities
    signal = scores.logit_scaled(view, y)   # attacks treat the view as logits

Released vector and attacker view
---------------------------------
:func:`released_probabilities` is what a defended API would return: a
probability vector that may hold exact zeros (top-k, rounding, label-only)
and need not sum to 1 (ML-Leaks' top-k masking does not renormalise).
:func:`apply_output` returns the attacker's view of that vector: its
logarithm, where every zero becomes ``fill``:

* ``fill="residual"`` (default): the missing mass ``max(1 - sum(released), 0)``
  spread evenly over the zero entries, never above the smallest released
  non-zero probability (nor above ``0.5e-d`` for classes that rounding to
  ``d`` decimals zeroed) and never below ``FLOOR_LOG_PROB`` (unless a released
  probability is lower still). It is a function of the released vector only,
  so it reveals nothing more, and ``softmax(view)`` then equals the released
  probabilities on the kept classes: a top-k masked output keeps ``p_y`` and
  ``1 - p_y`` for every class it shows, as an attacker reading the API would.
  For top-k the missing mass is summed from the masked classes in log space,
  so a confident output keeps the resolution of ``1 - p_y`` that the
  undefended view has. (Taking the log of the masked vector and letting
  attacks softmax it would instead inflate every kept probability by
  ``1 / sum(top-k)``, weakening attacks for no reason.)
* ``fill="floor"``: every zero becomes ``FLOOR_LOG_PROB`` (or the smallest
  kept log-probability, if lower, so the order of classes is kept).

``FLOOR_LOG_PROB = log(1e-30)`` (about -69.08): finite, so log-sum-exps,
``logit_scaled`` and Gaussian fits downstream never see ``-inf``/``nan``; its
exponential is a normal float32 (no denormals); and it lies far below any
probability a float32 output can distinguish from 0 next to the top class.

Which attacks each transform can affect
---------------------------------------
Every transform acts on one output at a time, identically for members and
non-members (the ML-Leaks lesson: a defense applied to one group only leaks
by itself), plus randomness independent of membership; so no attack can
*gain* from it: they only remove information (data processing), although a
particular suboptimal attack's numbers may move either way. "no" below means
the attack's scores are unchanged.

================  ===========  ==============  ==============  ==========================  ============
transform         label-only   max-confidence  ML-Leaks top-3  p_y signals (loss, LiRA's   entropy,
                  (argmax)     threshold       features        logit-scaled, RMIA)         m-entropy
================  ===========  ==============  ==============  ==========================  ============
temperature(t)    no           no for C = 2,   can             C = 2: no (logit-scaled is  can
                               can for C > 2                   divided by t, an affine
                                                               map LiRA is invariant to);
                                                               C > 2: can
top_k(k)          no           no (the top     no if k >= 3,   no for examples whose label can
                               probability is  else loses the  is among the k largest
                               kept exactly)   lower features  (with fill="residual");
                                                               masked labels get the mean
                                                               residual: can
rounding(d)       no (ties     can (quantised  can (quantised) can: quantised, every       can
                  created by   to 10^-d)                       p_y < 0.5e-d looks the same
                  rounding
                  aside)
label_only()      no           reduced to the correctness bit: every signal becomes a label-only attack
hamp_output()     no (class    can: the confidence profile is that of a random input; only the ranking
                  ranking      of the classes (hence also the true label's rank) is unchanged
                  kept)
================  ===========  ==============  ==============  ==========================  ============

Chains apply left to right; place ``temperature`` and ``hamp_output`` before
masking transforms. ``temperature`` rescales the non-zero entries (their
probabilities again sum to 1); ``top_k``, ``label_only`` and ``hamp_output``
rank zeroed classes last (``hamp_output`` releases a full vector again);
``rounding`` rounds the released probabilities. ``hamp_output`` needs the logits of the same model on random
inputs (``random_logits``, e.g. from :func:`random_inputs` passed through the
model): HAMP (Chen & Pattabiraman, NDSS 2024) sorts them and hands them out
in the rank order of the real logits, ``sorted_random[rank(real)]``, then
takes the softmax, so the top-1 label is kept.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
  "OutputTransform",
  "TopK",
  "Rounding",
  "Temperature",
  "LabelOnly",
  "HampOutput",
  "OutputChain",
  "top_k",
  "rounding",
  "temperature",
  "label_only",
  "hamp_output",
  "identity_output",
  "chain_outputs",
  "apply_output",
  "released_probabilities",
  "needs_random_logits",
  "random_inputs",
  "describe_output",
  "output_short_name",
  "FLOOR_LOG_PROB",
]

FLOOR_LOG_PROB = math.log(1e-30)


class OutputTransform:
  """Base class of every output transform value."""

  name = "output_transform"


def _static(cls):
  cls = dataclasses.dataclass(frozen=True)(cls)
  jax.tree_util.register_static(cls)
  return cls


@_static
class TopK(OutputTransform):
  k: int
  name = "top_k"


@_static
class Rounding(OutputTransform):
  decimals: int
  name = "rounding"


@_static
class Temperature(OutputTransform):
  t: float
  name = "temperature"


@_static
class LabelOnly(OutputTransform):
  name = "label_only"


@_static
class HampOutput(OutputTransform):
  name = "hamp_output"


@_static
class OutputChain(OutputTransform):
  parts: tuple
  name = "output_chain"


def _int(name: str, value, low: int, high: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
      f"{name} must be an integer, got {type(value).__name__} {value!r}"
    )
  if not low <= value <= high:
    raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
  return int(value)


def top_k(k: int) -> TopK:
  """Keep the ``k >= 1`` largest probabilities, zero the rest, no renormalisation (ML-Leaks)."""
  return TopK(_int("k", k, 1, 1 << 30))


def rounding(decimals: int) -> Rounding:
  """Round probabilities to ``decimals`` in ``[0, 10]`` decimal places (half to even)."""
  return Rounding(_int("decimals", decimals, 0, 10))


def temperature(t: float) -> Temperature:
  """Release ``softmax(logits / t)``, ``t > 0`` (``t > 1`` flattens, ``t < 1`` sharpens)."""
  if isinstance(t, bool) or not isinstance(t, numbers.Real):
    raise TypeError(f"t must be a real number, got {type(t).__name__} {t!r}")
  if not (math.isfinite(t) and t > 0):
    raise ValueError(f"t must be a finite number > 0, got {t!r}")
  return Temperature(float(t))


def label_only() -> LabelOnly:
  """Release only the predicted label, as a one-hot vector."""
  return LabelOnly()


def hamp_output() -> HampOutput:
  """HAMP's test-time modification; :func:`apply_output` then needs ``random_logits``."""
  return HampOutput()


def identity_output() -> OutputChain:
  """No output defense: the view is ``log_softmax(logits)``."""
  return OutputChain(())


def chain_outputs(*transforms) -> OutputTransform:
  """Compose output transforms, applied left to right (nested chains flatten; ``None`` vanishes)."""
  flat = []
  for i, t in enumerate(transforms):
    if t is None:
      continue
    if isinstance(t, OutputChain):
      flat.extend(t.parts)
    elif isinstance(t, OutputTransform):
      flat.append(t)
    else:
      raise TypeError(
        f"chain_outputs argument {i} must be an output transform (top_k, rounding, "
        f"temperature, label_only, hamp_output), got {t!r}"
      )
  if len(flat) == 1:
    return flat[0]
  return OutputChain(tuple(flat))


def _parts(transform) -> tuple:
  if transform is None:
    return ()
  if isinstance(transform, OutputChain):
    return transform.parts
  if isinstance(transform, OutputTransform):
    return (transform,)
  raise TypeError(
    f"transform must be an output transform built by miajax.outputs, got {transform!r}"
  )


def needs_random_logits(transform) -> bool:
  """Whether :func:`apply_output` needs ``random_logits`` (the chain holds ``hamp_output``)."""
  return any(isinstance(t, HampOutput) for t in _parts(transform))


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


def _masked_min(x, zero):
  return jnp.min(jnp.where(zero, jnp.inf, x), axis=-1, keepdims=True)


def _run(parts, logits, random_logits):
  """Runs a chain; returns ``(logq, zero, missing, cap)``.

  The released vector is 0 where ``zero`` and ``exp(logq)`` elsewhere;
  ``logq`` stays finite everywhere (zeroed classes keep a placeholder).
  ``missing float[..., 1]`` is ``log(1 - sum(released))`` (``-inf`` when
  nothing is missing). For top-k masking it is the log-sum-exp of the masked
  log-probabilities: the same number as ``1 - sum(kept)``, without the
  float32 cancellation that would erase it for confident outputs (the
  unmasked view keeps that precision too). ``cap`` is the log of an upper
  bound on a zeroed class's value that the release reveals (rounding to d
  decimals zeroes only values ``<= 0.5e-d``), ``+inf`` where none.
  """
  num_classes = logits.shape[-1]
  logq = jax.nn.log_softmax(logits, axis=-1)
  zero = jnp.zeros(logits.shape, bool)
  missing = jnp.full(logits.shape[:-1] + (1,), -jnp.inf, jnp.float32)
  cap = jnp.full(logits.shape, jnp.inf, jnp.float32)
  for t in parts:
    # Zeroed classes rank below every released one.
    ranked = jnp.where(zero, -jnp.inf, logq)
    if isinstance(t, Temperature):
      scaled = logq / t.t
      lse = jax.nn.logsumexp(
        jnp.where(zero, -jnp.inf, scaled), axis=-1, keepdims=True
      )
      all_zero = jnp.all(zero, axis=-1, keepdims=True)
      logq = jnp.where(zero | all_zero, logq, scaled - lse)
      missing = jnp.where(
        all_zero, missing, -jnp.inf
      )  # released again sums to 1
    elif isinstance(t, TopK):
      if t.k > num_classes:
        raise ValueError(f"top_k(k={t.k}) needs k <= classes = {num_classes}")
      _, idx = jax.lax.top_k(ranked, t.k)
      keep = jnp.any(jax.nn.one_hot(idx, num_classes, dtype=bool), axis=-2)
      dropped = jnp.where(~zero & ~keep, logq, -jnp.inf)
      missing = jnp.logaddexp(
        missing, jax.nn.logsumexp(dropped, axis=-1, keepdims=True)
      )
      zero = zero | ~keep
    elif isinstance(t, Rounding):
      r = jnp.round(jnp.where(zero, 0.0, jnp.exp(logq)), t.decimals)
      cap = jnp.where(~zero & (r <= 0), math.log(0.5 * 10.0**-t.decimals), cap)
      zero = r <= 0
      logq = jnp.where(zero, logq, jnp.log(jnp.where(zero, 1.0, r)))
      # rounded values are multiples of 10^-d, so this difference is exact enough
      left = 1.0 - jnp.sum(r, axis=-1, keepdims=True)
      missing = jnp.where(
        left > 0, jnp.log(jnp.where(left > 0, left, 1.0)), -jnp.inf
      )
    elif isinstance(t, LabelOnly):
      top = jax.nn.one_hot(jnp.argmax(ranked, axis=-1), num_classes, dtype=bool)
      logq = jnp.where(top, 0.0, logq)
      zero = ~top
      missing = jnp.full_like(missing, -jnp.inf)
    elif isinstance(t, HampOutput):
      rank = jnp.argsort(jnp.argsort(ranked, axis=-1), axis=-1)
      sorted_random = jnp.sort(
        jnp.broadcast_to(random_logits, logits.shape), axis=-1
      )
      logq = jax.nn.log_softmax(
        jnp.take_along_axis(sorted_random, rank, axis=-1), axis=-1
      )
      zero = jnp.zeros(logits.shape, bool)
      missing = jnp.full_like(missing, -jnp.inf)
      cap = jnp.full(logits.shape, jnp.inf, jnp.float32)
    else:
      raise TypeError(f"unknown output transform {t!r}")
  return logq, zero, missing, cap


def _check(transform, logits, random_logits):
  parts = _parts(transform)
  logits = jnp.asarray(logits)
  if logits.ndim < 1 or logits.shape[-1] < 2:
    raise ValueError(
      f"logits must be float[..., classes] with >= 2 classes, got shape {logits.shape}"
    )
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
  logits = logits.astype(jnp.float32)
  if any(isinstance(t, HampOutput) for t in parts):
    if random_logits is None:
      raise ValueError(
        "hamp_output needs random_logits: the same model's logits float[..., classes] "
        "on random inputs (see random_inputs)"
      )
    random_logits = jnp.asarray(random_logits)
    if not jnp.issubdtype(random_logits.dtype, jnp.floating):
      raise TypeError(
        f"random_logits must be floating point, got dtype {random_logits.dtype}"
      )
    try:
      jnp.broadcast_shapes(random_logits.shape, logits.shape)
    except ValueError:
      raise ValueError(
        f"random_logits of shape {random_logits.shape} do not broadcast to logits of "
        f"shape {logits.shape}"
      ) from None
    if jnp.broadcast_shapes(random_logits.shape, logits.shape) != logits.shape:
      raise ValueError(
        f"random_logits of shape {random_logits.shape} must broadcast to logits.shape "
        f"{logits.shape} without enlarging it"
      )
    random_logits = random_logits.astype(jnp.float32)
  return parts, logits, random_logits


def released_probabilities(
  transform, logits, key=None, *, random_logits=None
) -> jax.Array:
  """What the defended model releases: ``float32[..., classes]`` probabilities, zeros allowed.

  Args:
    transform: an output transform (``None``: no defense).
    logits: ``float[..., classes]`` of the model on the real queries.
    key: unused by the current (deterministic) transforms; accepted so
      callers can pass one uniformly.
    random_logits: ``float[..., classes]``, broadcastable to ``logits``:
      the model's logits on random inputs; required by ``hamp_output``.
  """
  del key
  parts, logits, random_logits = _check(transform, logits, random_logits)
  logq, zero, _, _ = _run(parts, logits, random_logits)
  return jnp.where(zero, 0.0, jnp.exp(logq))


def apply_output(
  transform, logits, key=None, *, random_logits=None, fill: str = "residual"
) -> jax.Array:
  """The attacker's view of a defended output: finite log-probabilities ``float32[..., classes]``.

  Arguments as in :func:`released_probabilities`. Zeros of the released
  vector become ``fill`` (``"residual"`` or ``"floor"``, see the module
  docstring). Attacks treat the result as logits. The view's argmax equals
  the logits' argmax (ties aside) for every transform.
  """
  del key
  if fill not in ("residual", "floor"):
    raise ValueError(f"fill must be 'residual' or 'floor', got {fill!r}")
  parts, logits, random_logits = _check(transform, logits, random_logits)
  logq, zero, missing, cap = _run(parts, logits, random_logits)
  if fill == "residual":
    count = jnp.maximum(jnp.sum(zero, axis=-1, keepdims=True), 1)
    # nothing missing (log 0 = -inf) is lifted to the floor by the maximum
    value = jnp.maximum(
      missing - jnp.log(count.astype(jnp.float32)), FLOOR_LOG_PROB
    )
  else:
    value = jnp.full(logq.shape[:-1] + (1,), FLOOR_LOG_PROB, jnp.float32)
  # Filled classes never outrank a released one, nor exceed what the release reveals.
  value = jnp.minimum(jnp.minimum(value, _masked_min(logq, zero)), cap)
  return jnp.where(zero, value, logq).astype(jnp.float32)


def describe_output(transform) -> dict[str, Any]:
  """A JSON-serialisable description, e.g. ``{"name": "top_k", "k": 3}``."""
  parts = _parts(transform)
  one = lambda t: {
    "name": t.name,
    **{f.name: getattr(t, f.name) for f in dataclasses.fields(t)},
  }
  if not parts:
    return {"name": "identity"}
  if len(parts) == 1:
    return one(parts[0])
  return {"name": "output_chain", "parts": [one(t) for t in parts]}


def output_short_name(transform) -> str:
  """A compact label for tables, e.g. ``"temperature(2)+top_k(3)"``."""
  parts = _parts(transform)
  if not parts:
    return "identity"
  return "+".join(
    f"{t.name}({', '.join(f'{getattr(t, f.name):g}' for f in dataclasses.fields(t))})"
    for t in parts
  )
