"""Argument checks shared by the metrics, and the sorted member / non-member split.

Every metric starts from `_split`: it validates `scores` and `is_member`,
flattens them and sorts each class once, so the rest of the package works
on two ascending float64 arrays.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

import numpy as np


class _Split(NamedTuple):
  pos: np.ndarray  # float64[members], ascending
  neg: np.ndarray  # float64[non_members], ascending


def _split(scores, is_member) -> _Split:
  scores = np.asarray(scores)
  is_member = np.asarray(is_member)
  if scores.dtype == object or not (
    np.issubdtype(scores.dtype, np.number) or scores.dtype == np.bool_
  ):
    raise TypeError(f"scores must be real numbers, got dtype {scores.dtype}")
  if np.issubdtype(scores.dtype, np.complexfloating):
    raise TypeError(f"scores must be real numbers, got dtype {scores.dtype}")
  if scores.shape != is_member.shape:
    raise ValueError(
      f"scores and is_member must have the same shape, got "
      f"{scores.shape} and {is_member.shape}"
    )
  if scores.size == 0:
    raise ValueError("scores is empty")
  scores = scores.astype(np.float64, copy=False).ravel()
  if not np.all(np.isfinite(scores)):
    bad = int(np.size(scores) - np.count_nonzero(np.isfinite(scores)))
    raise ValueError(f"scores must be finite; found {bad} nan/inf values")
  if is_member.dtype != np.bool_:
    if is_member.dtype == object or not np.issubdtype(
      is_member.dtype, np.number
    ):
      raise TypeError(
        f"is_member must be boolean (or 0/1), got dtype {is_member.dtype}"
      )
    values = np.unique(is_member)
    if not np.all(np.isin(values, (0, 1))):
      raise ValueError(
        f"is_member must be boolean (or 0/1), got values {values[:5].tolist()}"
      )
    is_member = is_member != 0
  is_member = is_member.ravel()
  pos = np.sort(scores[is_member])
  neg = np.sort(scores[~is_member])
  if pos.size == 0 or neg.size == 0:
    raise ValueError(
      "is_member must contain both members (True) and non-members "
      f"(False); got {pos.size} members and {neg.size} non-members"
    )
  return _Split(pos, neg)


def _swap(split: _Split) -> _Split:
  # Non-members become the positive class, with scores negated so that
  # higher = non-member; (-x)[::-1] keeps the arrays ascending.
  return _Split(-split.neg[::-1], -split.pos[::-1])


def _check_level(name: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a float, got {type(value).__name__}")
  value = float(value)
  if not 0.0 < value < 1.0:
    raise ValueError(f"{name} must be in (0, 1), got {value}")
  return value


def _check_count(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an int, got {type(value).__name__}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


def _check_delta(delta) -> float:
  if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
    raise TypeError(f"delta must be a float, got {type(delta).__name__}")
  if not 0.0 <= delta < 1.0:
    raise ValueError(f"delta must be in [0, 1), got {delta!r}")
  return float(delta)


def _rng(seed) -> np.random.Generator:
  return np.random.default_rng(_check_count("seed", seed, 0))


def _resolvable(num: int, level: float) -> bool:
  # 1/level non-examples are needed for one of them to fall beyond the
  # level; the slack absorbs float rounding (e.g. 1 / 1e-5 = 99999.999...).
  return num * level >= 1.0 - 1e-9


def _unresolvable_warning(what: str, level: float, num: int, role: str) -> None:
  warnings.warn(
    f"{what} at level {level:g} is unresolvable with {num} {role} "
    f"(needs at least {math.ceil(1 / level - 1e-9)}); returning nan",
    RuntimeWarning,
    stacklevel=4,
  )
