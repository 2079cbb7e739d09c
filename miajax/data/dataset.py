"""The :class:`Dataset` container and what every loader does to its arrays."""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

__all__ = ["Dataset", "subset"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A train/test split held in host memory.

  Attributes:
    x_train: ``float32[train, ...]`` (images NHWC, tabular ``[train, features]``).
    y_train: ``int32[train]`` in ``[0, num_classes)``.
    x_test: ``float32[test, ...]``.
    y_test: ``int32[test]``.
    num_classes: number of classes.
    name: dataset name.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str

  def __post_init__(self):
    for split in ("train", "test"):
      x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
      if x.dtype != np.float32 or y.dtype != np.int32:
        raise TypeError(
          f"{self.name}: x_{split} must be float32 and y_{split} int32, "
          f"got {x.dtype} and {y.dtype}"
        )
      if y.ndim != 1 or len(x) != len(y):
        raise ValueError(
          f"{self.name}: x_{split} {x.shape} and y_{split} {y.shape} "
          "do not describe the same examples"
        )
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise ValueError(
        f"{self.name}: train inputs {self.x_train.shape[1:]} and test "
        f"inputs {self.x_test.shape[1:]} differ in shape"
      )

  def __repr__(self):
    return (
      f"Dataset(name={self.name!r}, num_classes={self.num_classes}, "
      f"x_train={self.x_train.shape}, x_test={self.x_test.shape})"
    )


def subset(
  ds: Dataset, num_examples: int, *, seed: int | None = None
) -> Dataset:
  """Keep ``num_examples`` training examples; the test set is unchanged.

  Args:
    ds: the dataset.
    num_examples: 1 <= num_examples <= ``len(ds.x_train)``.
    seed: None takes the first ``num_examples``; an int draws them uniformly
      without replacement (indices kept in ascending order).

  Returns:
    A Dataset whose ``x_train`` is ``[num_examples, ...]``.
  """
  n = len(ds.x_train)
  if isinstance(num_examples, bool) or not isinstance(
    num_examples, numbers.Integral
  ):
    raise TypeError(
      f"num_examples must be an int, got {type(num_examples).__name__}"
    )
  if not 1 <= num_examples <= n:
    raise ValueError(
      f"num_examples must be in [1, {n}] for {ds.name}, got {num_examples}"
    )
  if seed is None:
    idx = np.arange(num_examples)
  else:
    idx = np.sort(
      np.random.default_rng(seed).choice(n, num_examples, replace=False)
    )
  return dataclasses.replace(
    ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx]
  )


def _stratified_split(
  y: np.ndarray, num_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Exactly ``num_test`` test indices, each class getting its share +-1."""
  order = np.random.RandomState(seed).permutation(len(y))
  order = order[np.argsort(y[order], kind="stable")]
  # Evenly spaced positions along the class-sorted list cut every class
  # block proportionally, and the total is exact.
  pos = np.arange(len(y))
  is_test = (pos + 1) * num_test // len(y) > pos * num_test // len(y)
  return np.sort(order[~is_test]), np.sort(order[is_test])


def _scale_images(u8: np.ndarray) -> np.ndarray:
  return u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
