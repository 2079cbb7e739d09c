"""Membership designs: which model trains on which example.

A design is a boolean matrix ``keep[models, examples]``; ``keep[m, i]`` is True
when example ``i`` is a member (IN) of model ``m``'s training set. All
functions take an integer ``seed`` and never touch numpy's global RNG.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["lira_keep", "paired_keep", "disjoint_split", "SPLIT_NAMES"]

# Order of the blocks when disjoint_split receives a plain sequence of sizes.
SPLIT_NAMES = ("target_in", "target_out", "shadow_in", "shadow_out")


def _check_int(name: str, value, *, minimum: int) -> int:
  # bool is an Integral, but True as a model count is always a mistake.
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
      f"{name} must be an int, got {type(value).__name__} {value!r}"
    )
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


def _check_seed(seed) -> int:
  seed = _check_int("seed", seed, minimum=0)
  if seed >= 2**32:
    raise ValueError(f"seed must be < 2**32, got {seed}")
  return seed


def lira_keep(
  num_models: int, num_examples: int, *, pkeep: float = 0.5, seed: int = 0
) -> np.ndarray:
  """The LiRA reference membership design.

  Bit-identical to the released LiRA code::

      np.random.seed(seed)
      keep = np.random.uniform(0, 1, size=(M, N)).argsort(0) < int(pkeep * M)

  but drawn from a private ``np.random.RandomState(seed)`` (the same Mersenne
  Twister stream as the legacy global seed) so global numpy state is left alone.
  Every example is IN for exactly ``int(pkeep * M)`` models.

  Args:
    num_models: M >= 2.
    num_examples: N >= 1.
    pkeep: fraction of models each example is IN for, in (0, 1);
      ``int(pkeep * M)`` must be between 1 and M - 1.
    seed: integer in [0, 2**32).

  Returns:
    ``bool[models, examples]``.
  """
  m = _check_int("num_models", num_models, minimum=1)
  n = _check_int("num_examples", num_examples, minimum=1)
  seed = _check_seed(seed)
  if isinstance(pkeep, bool) or not isinstance(pkeep, numbers.Real):
    raise TypeError(f"pkeep must be a float, got {type(pkeep).__name__}")
  if not 0.0 < pkeep < 1.0:
    raise ValueError(f"pkeep must be in (0, 1), got {pkeep}")
  num_in = int(pkeep * m)
  if not 0 < num_in < m:
    raise ValueError(
      f"int(pkeep * num_models) = int({pkeep} * {m}) = {num_in}: every example "
      f"would be {'OUT of' if num_in == 0 else 'IN'} every model; the design "
      "needs 1 <= int(pkeep * num_models) <= num_models - 1"
    )
  u = np.random.RandomState(seed).uniform(0, 1, size=(m, n))
  # argsort (not rank) is what the reference does; both are uniformly random
  # permutations per column, but only argsort reproduces its bits.
  return u.argsort(0) < num_in


def paired_keep(
  num_models: int, num_examples: int, *, seed: int = 0
) -> np.ndarray:
  """Pairs of models trained on complementary random halves.

  Models ``2i`` and ``2i+1`` split the examples between them: ``2i`` gets a
  random ``N // 2`` of them, ``2i+1`` the other ``N - N // 2``. Every example
  is therefore IN for exactly ``M / 2`` models, and each model's OUT examples
  are its partner's members. Pairs are drawn independently.

  Args:
    num_models: M, even and >= 2.
    num_examples: N >= 2.
    seed: integer in [0, 2**32).

  Returns:
    ``bool[models, examples]``.
  """
  m = _check_int("num_models", num_models, minimum=2)
  n = _check_int("num_examples", num_examples, minimum=2)
  seed = _check_seed(seed)
  if m % 2:
    raise ValueError(f"num_models must be even for paired_keep, got {m}")
  rng = np.random.default_rng(seed)
  order = np.argsort(rng.random((m // 2, n)), axis=1)
  first = np.zeros((m // 2, n), dtype=bool)
  np.put_along_axis(first, order[:, : n // 2], True, axis=1)
  keep = np.empty((m, n), dtype=bool)
  keep[0::2] = first
  keep[1::2] = ~first
  return keep


def disjoint_split(
  num_examples: int, sizes: Mapping[str, int] | Sequence[int], *, seed: int = 0
) -> dict[str, np.ndarray]:
  """Four disjoint random blocks for the classic (Shokri / ML-Leaks) attacks.

  Args:
    num_examples: N, size of the pool the blocks are drawn from.
    sizes: ``{"target_in": a, "target_out": b, "shadow_in": c, "shadow_out": d}``
      or the four ints in that order. Each size >= 0 (0 leaves a block empty,
      e.g. no shadow data for a shadow-free attack); the sum must be <= N.
    seed: integer in [0, 2**32).

  Returns:
    dict with the four names above, each ``int64[size]`` of sorted example
    indices; no index appears in two blocks.
  """
  n = _check_int("num_examples", num_examples, minimum=1)
  seed = _check_seed(seed)
  if isinstance(sizes, Mapping):
    if set(sizes) != set(SPLIT_NAMES):
      raise ValueError(
        f"sizes must have exactly the keys {list(SPLIT_NAMES)}, "
        f"got {sorted(sizes)}"
      )
    counts = [sizes[k] for k in SPLIT_NAMES]
  elif isinstance(sizes, Sequence) and not isinstance(sizes, str):
    if len(sizes) != 4:
      raise ValueError(
        f"sizes must hold 4 ints {list(SPLIT_NAMES)}, got {len(sizes)}"
      )
    counts = list(sizes)
  else:
    raise TypeError(
      f"sizes must be a dict or a sequence of 4 ints, got {type(sizes).__name__}"
    )
  counts = [
    _check_int(f"sizes[{k!r}]", c, minimum=0)
    for k, c in zip(SPLIT_NAMES, counts)
  ]
  if sum(counts) > n:
    raise ValueError(
      f"sizes {dict(zip(SPLIT_NAMES, counts))} sum to {sum(counts)}, "
      f"more than num_examples={n}"
    )
  perm = np.random.default_rng(seed).permutation(n)
  ends = np.cumsum(counts)
  return {
    name: np.sort(perm[end - c : end]).astype(np.int64)
    for name, c, end in zip(SPLIT_NAMES, counts, ends)
  }
