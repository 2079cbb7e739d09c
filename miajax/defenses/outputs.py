"""Output defenses: transforms of what a queried model returns, before any attack sees it.

An output transform is an instance of :class:`OutputTransform` that carries
its own behaviour; :func:`~miajax.defenses.chain` composes transforms left to
right and :func:`apply_output` runs them::

    t = chain(temperature(2.0), top_k(3), rounding(2))
    view = apply_output(t, logits)          # float32[..., classes] log-probabilities
    signal = scores.logit_scaled(view, y)   # attacks treat the view as logits

The protocol. A transform implements one of two hooks:

* ``probabilities(p) -> p``: a map of the released probability vector
  ``float32[..., classes]`` (zeros allowed, need not sum to 1). Enough for
  most user transforms; the missing mass is recomputed as ``1 - sum(p)``.
* ``apply(release, *, key, random_logits) -> Release``: full control over the
  log-space state :class:`Release` (what the built-ins use, to keep the
  precision of confident outputs).

``needs_random_logits = True`` asks callers for the model's logits on random
inputs (HAMP); ``key`` (a ``jax.random`` key or ``None``) is split per chain
part for randomised transforms; ``describe()`` gives the JSON identity
(default: ``name`` and the dataclass fields), read by
:func:`~miajax.defenses.describe` and :func:`~miajax.defenses.short_name`.

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
``rounding`` rounds the released probabilities. ``hamp_output`` needs the
logits of the same model on random inputs (``random_logits``, e.g. from
:func:`~miajax.defenses.random_inputs` passed through the model; both in
:mod:`miajax.defenses.hamp_defense`): HAMP (Chen & Pattabiraman, NDSS 2024)
sorts them and hands them out in the rank order of the real logits,
``sorted_random[rank(real)]``, then takes the softmax, so the top-1 label is
kept.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from miajax.defenses import base

__all__ = [
  "Release",
  "OutputTransform",
  "TopK",
  "Rounding",
  "Temperature",
  "LabelOnly",
  "OutputChain",
  "top_k",
  "rounding",
  "temperature",
  "label_only",
  "identity_output",
  "apply_output",
  "released_probabilities",
  "needs_random_logits",
  "FLOOR_LOG_PROB",
]

FLOOR_LOG_PROB = math.log(1e-30)


class Release(NamedTuple):
  """What a chain has released so far, in log space (all ``[..., classes]``).

  The released vector is 0 where ``zero`` and ``exp(log_probs)`` elsewhere;
  ``log_probs`` stays finite everywhere (zeroed classes keep a placeholder).
  ``missing: float32[..., 1]`` is ``log(1 - sum(released))`` (``-inf`` when
  nothing is missing); for top-k masking it is the log-sum-exp of the masked
  log-probabilities, the same number without the float32 cancellation that
  would erase it for confident outputs. ``cap`` is the log of an upper bound
  on a zeroed class's value that the release reveals (rounding to d
  decimals zeroes only values ``<= 0.5e-d``), ``+inf`` where none.
  """

  log_probs: jax.Array
  zero: jax.Array
  missing: jax.Array
  cap: jax.Array

  @classmethod
  def from_logits(cls, logits) -> Release:
    """The undefended release: ``softmax(logits)``, nothing zeroed or missing."""
    return cls(
      jax.nn.log_softmax(logits, axis=-1),
      jnp.zeros(logits.shape, bool),
      jnp.full(logits.shape[:-1] + (1,), -jnp.inf, jnp.float32),
      jnp.full(logits.shape, jnp.inf, jnp.float32),
    )

  def probabilities(self) -> jax.Array:
    """The released vector ``float32[..., classes]`` (zeros allowed)."""
    return jnp.where(self.zero, 0.0, jnp.exp(self.log_probs))

  def ranked(self) -> jax.Array:
    """``log_probs`` with zeroed classes ranked below every released one."""
    return jnp.where(self.zero, -jnp.inf, self.log_probs)


class OutputTransform(base.Component):
  """Base of every output transform; subclasses implement one hook.

  ``probabilities(p: float32[..., classes]) -> float32[..., classes]``: a map
  of the released probabilities, or ``apply(release, *, key, random_logits)
  -> Release`` (see :class:`Release`). ``needs_random_logits``: whether
  ``apply`` reads ``random_logits``. ``name`` (default: the class name)
  labels the transform in :meth:`describe` and
  :func:`~miajax.defenses.short_name`. Subclasses are registered as static
  pytrees (no leaves).
  """

  kind = "output transform"
  needs_random_logits = False
  probabilities = None

  @classmethod
  def _compose(cls, parts: list) -> OutputTransform:
    return parts[0] if len(parts) == 1 else OutputChain(tuple(parts))

  def apply(self, release: Release, *, key=None, random_logits=None):
    """The release after this transform; by default through ``probabilities``."""
    del key, random_logits
    if self.probabilities is None:
      raise NotImplementedError(
        f"{type(self).__name__} must implement probabilities(p) or "
        "apply(release, *, key, random_logits)"
      )
    p = self.probabilities(release.probabilities())
    if jnp.shape(p) != release.zero.shape:
      raise ValueError(
        f"{base._name(self)}: probabilities(p) must keep the shape "
        f"{release.zero.shape}, got {jnp.shape(p)}"
      )
    p = jnp.asarray(p, jnp.float32)
    zero = p <= 0
    left = 1.0 - jnp.sum(jnp.where(zero, 0.0, p), axis=-1, keepdims=True)
    return Release(
      jnp.where(zero, release.log_probs, jnp.log(jnp.where(zero, 1.0, p))),
      zero,
      jnp.where(left > 0, jnp.log(jnp.where(left > 0, left, 1.0)), -jnp.inf),
      # an arbitrary map reveals no bound on what it zeroed
      jnp.full(p.shape, jnp.inf, jnp.float32),
    )


@dataclasses.dataclass(frozen=True)
class TopK(OutputTransform):
  """Keep the ``k`` largest probabilities, zero the rest (ML-Leaks)."""

  k: int
  name = "top_k"

  def apply(self, release, *, key=None, random_logits=None):
    del key, random_logits
    num_classes = release.zero.shape[-1]
    if self.k > num_classes:
      raise ValueError(f"top_k(k={self.k}) needs k <= classes = {num_classes}")
    _, idx = jax.lax.top_k(release.ranked(), self.k)
    keep = jnp.any(jax.nn.one_hot(idx, num_classes, dtype=bool), axis=-2)
    dropped = jnp.where(~release.zero & ~keep, release.log_probs, -jnp.inf)
    missing = jnp.logaddexp(
      release.missing, jax.nn.logsumexp(dropped, axis=-1, keepdims=True)
    )
    return release._replace(zero=release.zero | ~keep, missing=missing)


@dataclasses.dataclass(frozen=True)
class Rounding(OutputTransform):
  """Round the released probabilities to ``decimals`` places (half to even)."""

  decimals: int
  name = "rounding"

  def apply(self, release, *, key=None, random_logits=None):
    del key, random_logits
    logq, zero = release.log_probs, release.zero
    r = jnp.round(release.probabilities(), self.decimals)
    cap = jnp.where(
      ~zero & (r <= 0), math.log(0.5 * 10.0**-self.decimals), release.cap
    )
    zero = r <= 0
    logq = jnp.where(zero, logq, jnp.log(jnp.where(zero, 1.0, r)))
    # rounded values are multiples of 10^-d, so this difference is exact enough
    left = 1.0 - jnp.sum(r, axis=-1, keepdims=True)
    missing = jnp.where(
      left > 0, jnp.log(jnp.where(left > 0, left, 1.0)), -jnp.inf
    )
    return Release(logq, zero, missing, cap)


@dataclasses.dataclass(frozen=True)
class Temperature(OutputTransform):
  """Release ``softmax(logits / t)`` (rescales the non-zero entries)."""

  t: float
  name = "temperature"

  def apply(self, release, *, key=None, random_logits=None):
    del key, random_logits
    logq, zero = release.log_probs, release.zero
    scaled = logq / self.t
    lse = jax.nn.logsumexp(
      jnp.where(zero, -jnp.inf, scaled), axis=-1, keepdims=True
    )
    all_zero = jnp.all(zero, axis=-1, keepdims=True)
    return release._replace(
      log_probs=jnp.where(zero | all_zero, logq, scaled - lse),
      # the released entries again sum to 1
      missing=jnp.where(all_zero, release.missing, -jnp.inf),
    )


@dataclasses.dataclass(frozen=True)
class LabelOnly(OutputTransform):
  """Release only the predicted label, as a one-hot vector."""

  name = "label_only"

  def apply(self, release, *, key=None, random_logits=None):
    del key, random_logits
    num_classes = release.zero.shape[-1]
    top = jax.nn.one_hot(
      jnp.argmax(release.ranked(), axis=-1), num_classes, dtype=bool
    )
    return release._replace(
      log_probs=jnp.where(top, 0.0, release.log_probs),
      zero=~top,
      missing=jnp.full_like(release.missing, -jnp.inf),
    )


@dataclasses.dataclass(frozen=True)
class OutputChain(base.Composite, OutputTransform):
  """Transforms applied left to right (:func:`~miajax.defenses.chain`)."""

  parts: tuple
  name = "output_chain"

  @property
  def needs_random_logits(self):
    return any(t.needs_random_logits for t in self.parts)

  def apply(self, release, *, key=None, random_logits=None):
    for i, t in enumerate(self.parts):
      release = t.apply(
        release,
        key=None if key is None else jax.random.fold_in(key, i),
        random_logits=random_logits,
      )
    return release

  def describe(self) -> dict[str, Any]:
    if not self.parts:
      return {"name": "identity"}
    return {"name": "output_chain", "parts": [t.describe() for t in self.parts]}


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


def identity_output() -> OutputChain:
  """No output defense: the view is ``log_softmax(logits)``."""
  return OutputChain(())


def _as_transform(transform) -> OutputTransform:
  if transform is None:
    return OutputChain(())
  if isinstance(transform, OutputTransform):
    return transform
  raise TypeError(
    f"transform must be a miajax.defenses.OutputTransform, got {transform!r}"
  )


def needs_random_logits(transform) -> bool:
  """Whether :func:`apply_output` needs ``random_logits`` (e.g. ``hamp_output``)."""
  return bool(_as_transform(transform).needs_random_logits)


def _masked_min(x, zero):
  return jnp.min(jnp.where(zero, jnp.inf, x), axis=-1, keepdims=True)


def _run(transform, logits, key, random_logits) -> Release:
  transform = _as_transform(transform)
  logits = base.check_logits(logits).astype(jnp.float32)
  if transform.needs_random_logits:
    if random_logits is None:
      raise ValueError(
        f"{base.short_name(transform)} needs random_logits: the same "
        "model's logits float[..., classes] on random inputs (see "
        "random_inputs)"
      )
    random_logits = jnp.asarray(random_logits)
    if not jnp.issubdtype(random_logits.dtype, jnp.floating):
      raise TypeError(
        f"random_logits must be floating point, got dtype {random_logits.dtype}"
      )
    try:
      shape = jnp.broadcast_shapes(random_logits.shape, logits.shape)
    except ValueError:
      raise ValueError(
        f"random_logits of shape {random_logits.shape} do not broadcast to "
        f"logits of shape {logits.shape}"
      ) from None
    if shape != logits.shape:
      raise ValueError(
        f"random_logits of shape {random_logits.shape} must broadcast to "
        f"logits.shape {logits.shape} without enlarging it"
      )
    random_logits = random_logits.astype(jnp.float32)
  return transform.apply(
    Release.from_logits(logits), key=key, random_logits=random_logits
  )


def released_probabilities(
  transform, logits, key=None, *, random_logits=None
) -> jax.Array:
  """What the defended model releases: ``float32[..., classes]`` probabilities, zeros allowed.

  Args:
    transform: an :class:`OutputTransform` (``None``: no defense).
    logits: ``float[..., classes]`` of the model on the real queries.
    key: a ``jax.random`` key for randomised transforms (part ``i`` of a
      chain gets ``fold_in(key, i)``); the built-ins are deterministic.
    random_logits: ``float[..., classes]``, broadcastable to ``logits``:
      the model's logits on random inputs; required by ``hamp_output``.
  """
  return _run(transform, logits, key, random_logits).probabilities()


def apply_output(
  transform, logits, key=None, *, random_logits=None, fill: str = "residual"
) -> jax.Array:
  """The attacker's view of a defended output: finite log-probabilities ``float32[..., classes]``.

  Arguments as in :func:`released_probabilities`. Zeros of the released
  vector become ``fill`` (``"residual"`` or ``"floor"``, see the module
  docstring). Attacks treat the result as logits. The view's argmax equals
  the logits' argmax (ties aside) for every built-in transform.
  """
  if fill not in ("residual", "floor"):
    raise ValueError(f"fill must be 'residual' or 'floor', got {fill!r}")
  logq, zero, missing, cap = _run(transform, logits, key, random_logits)
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
