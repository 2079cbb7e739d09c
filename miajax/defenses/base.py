"""What defenses and output transforms share: identity, composition, names.

Both kinds of defense are values that carry their own behaviour, the way an
``optax.GradientTransformation`` does: a :class:`~miajax.defenses.Defense`
changes how models train (:mod:`miajax.defenses.training`), an
:class:`~miajax.defenses.OutputTransform` what a trained model releases
(:mod:`miajax.defenses.outputs`). Both derive from :class:`Component`, which
gives every value a ``name``, a JSON ``describe()`` and a static pytree
registration, and one vocabulary works on either kind:

* :func:`chain` composes values of one kind into a value of that kind
  (nested chains flatten, ``None`` vanishes); mixing the kinds is an error;
* :func:`describe` gives the JSON identity of a value or chain;
* :func:`short_name` gives a compact label for tables.

``None`` (and an empty :func:`chain`) stands for no defense, ``none()``.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
  "check_logits",
  "Component",
  "Composite",
  "chain",
  "describe",
  "short_name",
]

# The root declared with default=True (Defense): None and an empty chain stand
# for its empty composition, none(), as they did before output transforms
# shared the vocabulary.
_default_root: list[type] = []


class Component:
  """Base of both protocols, ``Defense`` and ``OutputTransform``.

  A direct subclass is a protocol root: it names its ``kind`` (for error
  messages) and implements ``_compose(parts: list) -> value``, the
  composition :func:`chain` hands it, already flattened. ``name``
  (default: the class name) labels a value in :meth:`describe` and
  :func:`short_name`.

  Every subclass below a root is registered as a static pytree (no
  leaves), so values may be passed to jitted functions or closed over; they
  must be hashable (a frozen dataclass is), since compiled functions are
  cached per value.
  """

  name = ""
  kind = ""

  def __init_subclass__(cls, *, default: bool = False, **kwargs):
    super().__init_subclass__(**kwargs)
    if Component in cls.__bases__:
      # a root carries no behaviour of its own to pass through jit
      if default:
        _default_root[:] = [cls]
    else:
      jax.tree_util.register_static(cls)

  def describe(self) -> dict[str, Any]:
    """JSON-serialisable identity: ``{"name": ..., <dataclass fields>}``."""
    out: dict[str, Any] = {"name": _name(self)}
    if dataclasses.is_dataclass(self):
      out.update(
        {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
      )
    return out

  @classmethod
  def _compose(cls, parts: list) -> Component:
    raise NotImplementedError(f"{cls.__name__} is not a protocol root")


class Composite:
  """Mixin of the chain classes: ``parts``, a tuple of values of one kind."""

  parts: tuple


def _name(value) -> str:
  return value.name or type(value).__name__


def _root(value) -> type:
  return next(c for c in type(value).__mro__ if Component in c.__bases__)


def _a(kind: str) -> str:
  return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _default() -> type:
  if not _default_root:
    raise RuntimeError("no protocol root declared default=True yet")
  return _default_root[0]


def chain(*parts) -> Component:
  """Compose defenses, or output transforms, into one value of that kind.

  ``chain(a, b)`` of defenses trains with both (target maps compose in
  order, loss terms add; see :mod:`miajax.defenses.training`); of output
  transforms it applies ``a`` then ``b`` to a model's outputs. Nested chains
  flatten and ``None`` vanishes; one part is returned itself, and no parts
  (or only ``None``) give ``none()``.

  Raises:
    ValueError: the parts mix defenses and output transforms (a defense
      acts on training, an output transform on a trained model's outputs:
      chain each kind on its own), or the kind's own rules refuse the
      combination (e.g. two gradient processors).
    TypeError: a part is neither a defense nor an output transform.
  """
  flat: list[Component] = []
  first = None  # (position, value) of the part that fixes the kind
  for i, part in enumerate(parts):
    if part is None:
      continue
    if not isinstance(part, Component):
      raise TypeError(
        f"chain argument {i} must be a defense or an output transform (a "
        "miajax.defenses.Defense or OutputTransform, built-in or your own "
        f"subclass), got {part!r}"
      )
    if first is None:
      first = (i, part)
    elif _root(part) is not _root(first[1]):
      j, expected = first
      kind, want = _root(part).kind, _root(expected).kind
      raise ValueError(
        f"chain argument {i} is {_a(kind)} ({short_name(part)}), but "
        f"argument {j} ({short_name(expected)}) is {_a(want)}, so {_a(want)} "
        "was expected: a chain composes defenses or output transforms, not "
        "both. Defenses change training, output transforms what a trained "
        "model releases; chain each kind on its own."
      )
    flat.extend(part.parts if isinstance(part, Composite) else (part,))
  root = _default() if first is None else _root(first[1])
  return root._compose(flat)


def _as_component(value) -> Component:
  if value is None:
    return _default()._compose([])
  if isinstance(value, Component):
    return value
  raise TypeError(
    "expected a defense or an output transform (a miajax.defenses.Defense "
    f"or OutputTransform, e.g. none(), chain(...), top_k(3)), got {value!r}"
  )


def describe(value) -> dict[str, Any]:
  """A JSON-serialisable description of a defense or output transform.

  E.g. ``{"name": "hamp", "gamma": 0.95, "alpha": 0.01}`` or ``{"name":
  "top_k", "k": 3}``. Chains give ``{"name": "chain", "parts": [...]}``
  (defenses) or ``{"name": "output_chain", "parts": [...]}`` (output
  transforms; ``identity_output()`` gives ``{"name": "identity"}``);
  ``none()`` and ``None`` give ``{"name": "none"}``.
  """
  return _as_component(value).describe()


def _format(value) -> str:
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    return f"{value:g}"
  return str(value)


def short_name(value) -> str:
  """A compact label for tables, e.g. ``"dropout(0.5)+label_smoothing(0.1)"``.

  Works on both kinds: ``"temperature(2)+top_k(3)"`` for an output chain.
  """
  value = _as_component(value)
  desc = value.describe()
  out = []
  parts = (
    desc["parts"]
    if isinstance(value, Composite) and "parts" in desc
    else [desc]
  )
  for part in parts:
    part = dict(part)
    name = part.pop("name")
    args = ", ".join(_format(v) for v in part.values())
    out.append(f"{name}({args})" if part else name)
  return "+".join(out)


def check_logits(logits):
  """``logits`` as a JAX array ``float[..., classes]`` (>= 2 classes), else a clear error."""
  logits = jnp.asarray(logits)
  if logits.ndim < 1 or logits.shape[-1] < 2:
    raise ValueError(
      "logits must be float[..., classes] with >= 2 classes, got shape "
      f"{logits.shape}"
    )
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
  return logits
