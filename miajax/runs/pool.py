"""What a shadow store is keyed by: the candidate pool and the recipe.

The fingerprint is the sha256 of a canonical JSON (sorted keys) of the pool's
identity (name, shape, and sha256 of the bytes of ``x`` and ``y``), the design
and its seed, the number of examples, the recipe (``RunSpec.to_json()``
without ``num_models``, ``queries``, ``label_only`` and ``data_dir``, which do
not change a trained parameter, and without ``dataset``/``num_examples``, which
the pool's identity replaces) and the model (a user model's parameter
shapes).  So asking for more models, or querying other views, reuses what is
there (see :mod:`miajax.runs.store`). The JSON is part of the store format:
changing what enters it orphans every existing store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from miajax.engine import identity as config_lib
from miajax.runs.spec import RunSpec, load_dataset

__all__ = ["Pool", "STORE_VERSION", "fingerprint", "pool_from_spec"]

STORE_VERSION = 1
# RunSpec fields that leave the trained parameters unchanged: a store answers them without training.
# "dataset" and "num_examples" are replaced by the pool's identity (name, content hashes, length), so the same
# data reached through another path or an explicit --num_examples=N is the same store.
_NOT_IN_FINGERPRINT = (
  "num_models",
  "queries",
  "label_only",
  "data_dir",
  "extra_queries",
  "dataset",
  "num_examples",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Pool:
  """The candidate examples shadows are trained on: ``x float32[N, ...]``, ``y int32[N]``.

  ``x_test``/``y_test`` (optional) only give the shadows' test accuracy.
  """

  name: str
  x: np.ndarray
  y: np.ndarray
  num_classes: int
  x_test: np.ndarray | None = None
  y_test: np.ndarray | None = None

  def __post_init__(self):
    x, y = np.asarray(self.x), np.asarray(self.y)
    if x.ndim < 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
      raise ValueError(
        f"pool {self.name!r}: x must be [N, ...] and y [N] with N >= 2, got {x.shape} and {y.shape}"
      )
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(
        f"pool {self.name!r}: y must hold integer labels, got {y.dtype}"
      )
    if y.min() < 0 or y.max() >= self.num_classes:
      raise ValueError(
        f"pool {self.name!r}: labels span [{y.min()}, {y.max()}], outside [0, {self.num_classes})"
      )
    object.__setattr__(self, "x", np.ascontiguousarray(x, np.float32))
    object.__setattr__(self, "y", np.ascontiguousarray(y, np.int32))

  def identity(self) -> dict:
    """Name, shape and content hashes: the same data under the same name is the same pool wherever it lives."""
    return {
      "name": self.name,
      "examples": int(self.x.shape[0]),
      "input_shape": list(self.x.shape[1:]),
      "num_classes": int(self.num_classes),
      "x_sha256": hashlib.sha256(self.x.tobytes()).hexdigest(),
      "y_sha256": hashlib.sha256(self.y.tobytes()).hexdigest(),
    }


def pool_from_spec(spec: RunSpec) -> Pool:
  """The pool a :class:`RunSpec` trains on (its dataset's first ``num_examples``)."""
  ds = load_dataset(spec)
  return Pool(
    spec.dataset, ds.x_train, ds.y_train, ds.num_classes, ds.x_test, ds.y_test
  )


def fingerprint(pool: Pool, spec: RunSpec) -> tuple[str, dict]:
  """``(sha256 hex, the JSON it hashes)`` of the shadows ``spec`` trains on ``pool``."""
  recipe = spec.to_json()
  for key in _NOT_IN_FINGERPRINT:
    recipe.pop(key, None)
  cfg = spec.train
  if cfg.builtin_model:
    model = {"name": cfg.model, "kwargs": recipe["train"]["model_kwargs"]}
  else:
    model = config_lib.model_fingerprint(
      cfg, tuple(pool.x.shape[1:]), pool.num_classes
    )
  identity = {
    "store_version": STORE_VERSION,
    "pool": pool.identity(),
    "design": spec.design,
    "seed": cfg.seed,
    "num_examples": int(pool.x.shape[0]),
    "recipe": recipe,
    "model": model,
  }
  # A round trip through JSON turns tuples into lists, so the stored copy compares equal to a fresh one.
  identity = json.loads(json.dumps(identity, sort_keys=True))
  canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest(), identity
