"""Validation of the training inputs, before anything compiles."""

from __future__ import annotations

import jax
import numpy as np

from miajax.engine.recipe import TrainConfig

__all__ = ["check_inputs"]


def check_inputs(x, y, keep, config: TrainConfig, num_classes: int):
  """Validates everything before any compilation; returns ``(float32 x, int32 y, bool keep)``.

  ``keep`` may be a numpy or JAX bool array ``[models, examples]``.
  """
  if not isinstance(config, TrainConfig):
    raise ValueError(
      "config must be a miajax.TrainConfig (the call is train_models(config, "
      f"x, y, keep, num_classes=...)), got {type(config).__name__}"
    )
  config.validate()
  if (
    isinstance(num_classes, bool)
    or not isinstance(num_classes, (int, np.integer))
    or num_classes < 2
  ):
    raise ValueError(
      f"num_classes must be an integer >= 2, got {num_classes!r}"
    )
  if not isinstance(keep, (np.ndarray, jax.Array)) or keep.dtype != np.bool_:
    raise ValueError(
      f"keep must be a bool array [models, examples] (numpy or JAX), got "
      f"{type(keep).__name__} of dtype {getattr(keep, 'dtype', None)}"
    )
  keep = np.asarray(keep)
  if keep.ndim != 2:
    raise ValueError(
      f"keep must be 2-D [models, examples], got shape {keep.shape}"
    )
  x, y = np.asarray(x), np.asarray(y)
  if keep.shape[1] != x.shape[0]:
    raise ValueError(
      f"keep has {keep.shape[1]} columns but x has {x.shape[0]} examples; "
      "keep must be [models, examples]"
    )
  if y.shape != (x.shape[0],):
    raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(
      f"y must be in [0, {num_classes}), got range [{y.min()}, {y.max()}]"
    )
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"x must be floating point, got dtype {x.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError("x contains non-finite values (nan or inf)")
  if keep.shape[0] == 0:
    raise ValueError(
      f"keep must hold at least one model row [models, examples], got shape {keep.shape}"
    )
  members = keep.sum(1)
  if members.min() == 0:
    raise ValueError(
      f"keep: model {int(members.argmin())} has no members (an all-False row); "
      "every model needs training examples"
    )
  if members.min() < config.batch_size:
    m = int(members.argmin())
    raise ValueError(
      f"batch_size={config.batch_size} is larger than model {m}'s member count "
      f"{int(members[m])}; lower batch_size or raise pkeep"
    )
  if config.augment and x.ndim != 4:
    raise ValueError(
      f"augment=True needs images [N, H, W, C], got x of shape {x.shape}"
    )
  num_models = config.num_models()
  if num_models is not None and num_models != keep.shape[0]:
    raise ValueError(
      f"per-model values have {num_models} entries but keep has "
      f"{keep.shape[0]} models; give one value per row of keep"
    )
  return x.astype(np.float32), y.astype(np.int32), keep
