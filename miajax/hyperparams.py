"""Per-model hyperparameters: one value per model of a run, in one program.

A scalar of the recipe (learning rate, momentum, weight decay, a defense's
strength such as label smoothing's ``eps`` or DP-SGD's ``noise_multiplier``)
may instead be ``per_model([v_0, ..., v_{M-1}])``: model ``m`` trains with
``v_m``. The engine carries the values as leaves of the vmapped training
state (the learning rate, momentum and weight decay in the optimizer state,
as ``optax.inject_hyperparams`` does; a defense's in the defense state) and
binds each model's value where the scalar would be, so a sweep of ``M``
recipes is one compiled program of ``M`` models.

This module is dependency-light on purpose: defenses and the recipe both
import it, and the engine reads it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Iterator

import numpy as np

__all__ = ["PerModel", "per_model", "is_per_model", "check_values", "fields"]


@dataclasses.dataclass(frozen=True)
class PerModel:
  """One float per model (a hashable tuple: recipes are cache keys)."""

  values: tuple[float, ...]

  def __len__(self) -> int:
    return len(self.values)

  def array(self) -> np.ndarray:
    """The values as ``float32[models]``."""
    return np.asarray(self.values, np.float32)


def per_model(values) -> PerModel:
  """``values`` (a list, tuple, numpy or jax array ``[models]``) as a :class:`PerModel`."""
  if isinstance(values, PerModel):
    return values
  arr = np.asarray(values)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(
      f"per-model values must be a non-empty 1-D sequence [models], got shape "
      f"{arr.shape}"
    )
  if (
    not (
      np.issubdtype(arr.dtype, np.floating)
      or np.issubdtype(arr.dtype, np.integer)
    )
    or arr.dtype == np.bool_
  ):
    raise ValueError(f"per-model values must be real numbers, got {arr.dtype}")
  return PerModel(tuple(float(v) for v in arr))


def is_per_model(value) -> bool:
  return isinstance(value, PerModel)


def check_values(name: str, value, check) -> Any:
  """Applies the scalar check ``check(name, v) -> v`` to a scalar or to each per-model value."""
  if isinstance(value, PerModel):
    return PerModel(
      tuple(float(check(f"{name}[{i}]", v)) for i, v in enumerate(value.values))
    )
  return check(name, value)


def fields(obj, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
  """``(path, owner, field)`` of every :class:`PerModel` field in a tree of frozen dataclasses.

  Walks dataclass fields and tuples of dataclasses (a chain of defenses), so
  a user's own defense with a ``per_model`` field is found like a built-in.
  """
  if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
    return
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    path = f"{prefix}{f.name}"
    if isinstance(value, PerModel):
      yield path, obj, f.name
    elif isinstance(value, tuple):
      for i, item in enumerate(value):
        yield from fields(item, f"{path}.{i}.")
    else:
      yield from fields(value, f"{path}.")


def collect(obj) -> dict[str, np.ndarray]:
  """``{path: float32[models]}`` of the per-model fields of ``obj`` (see :func:`fields`)."""
  return {path: getattr(o, name).array() for path, o, name in fields(obj)}


def bind(obj, values: dict):
  """A copy of ``obj`` with each per-model field replaced by ``values[path]`` (e.g. one model's tracer).

  Bypasses the dataclasses' validation, which checked every value already.
  """
  if not values:
    return obj
  return _bind(obj, values, "")


def _bind(obj, values, prefix):
  if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
    return obj
  changes = {}
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    path = f"{prefix}{f.name}"
    if isinstance(value, PerModel):
      changes[f.name] = values[path]
    elif isinstance(value, tuple):
      new = tuple(
        _bind(item, values, f"{path}.{i}.") for i, item in enumerate(value)
      )
      if any(a is not b for a, b in zip(new, value)):
        changes[f.name] = new
    elif dataclasses.is_dataclass(value):
      new = _bind(value, values, f"{path}.")
      if new is not value:
        changes[f.name] = new
  if not changes:
    return obj
  copy = object.__new__(type(obj))
  copy.__dict__.update(obj.__dict__)
  for name, value in changes.items():
    object.__setattr__(copy, name, value)
  return copy


def real_scalar(name: str, value) -> float:
  """A finite real Python scalar, else a ValueError naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be a real number, got {value!r}")
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value!r}")
  return value
