"""The label-only views' predicted labels a run keeps (``label_views.npy``)."""

from __future__ import annotations

import numpy as np

from miajax import engine as train_lib
from miajax.attacks import label_only as label_only_lib

__all__ = ["label_view_predictions"]


def label_view_predictions(
  cfg: train_lib.TrainConfig,
  variables,
  x,
  queries: label_only_lib.LabelOnlyQueries,
  num_classes: int,
  *,
  max_inputs: int = 1 << 16,
  lowering: train_lib.Lowering | None = None,
) -> np.ndarray:
  """Predicted labels ``int16[models, examples, views]`` of ``queries``' views of ``x``.

  The views are made a block of examples at a time (about ``max_inputs``
  inputs per block), so memory stays bounded for large pools.
  """
  n = x.shape[0]
  per = max(1, max_inputs // queries.num_views(x.shape[1:]))
  # Small inputs (digits, tabular rows) leave the default batch dispatch-bound; keep ~4 MiB of inputs per batch.
  batch = int(
    np.clip((1 << 20) // max(1, int(np.prod(x.shape[1:]))), 1024, 16384)
  )
  out = []
  for s in range(0, n, per):
    views = np.asarray(
      queries.views(np.asarray(x[s : s + per], np.float32), start=s)
    )  # [V, b, ...]
    v, b = views.shape[:2]
    logits = train_lib.predict(
      cfg,
      variables,
      views.reshape((v * b,) + views.shape[2:]),
      num_classes=num_classes,
      batch_size=batch,
      lowering=lowering,
    )[:, :, 0]
    out.append(
      logits.argmax(-1).reshape(-1, v, b).transpose(0, 2, 1).astype(np.int16)
    )
  return np.concatenate(out, 1)
