"""The label-only views' predicted labels a run keeps (``label_views.npy``)."""

from __future__ import annotations

import numpy as np

from miajax import engine as train_lib
from miajax.attacks import label_only as label_only_lib
from miajax.engine import labels as labels_lib

__all__ = ["label_view_predictions"]


def label_view_predictions(
  cfg: train_lib.TrainConfig,
  variables,
  x,
  queries: label_only_lib.LabelOnlyQueries,
  num_classes: int,
  *,
  block: int | None = None,
  identity_labels=None,
  lowering: train_lib.Lowering | None = None,
) -> np.ndarray:
  """Predicted labels ``int16[models, examples, views]`` of ``queries``' views of ``x``.

  Views, forward passes and argmax run on the device a block of examples at
  a time (:func:`miajax.engine.labels.predict_view_labels`); only the labels
  come back. ``identity_labels`` (``int[models, examples]``, the labels of
  ``x`` itself, which the run computed already) spare recomputing the first
  augmentation view, which is ``x``.
  """
  shape = tuple(np.shape(x)[1:])
  num_views = queries.num_views(shape)
  if block is None:
    # ~4k input rows per compiled call. Measured on a 2-core AMD EPYC (32 MiB
    # L3), 16 Fashion-MNIST MLPs x 42 views: 2.7-4k rows ran at 180-230
    # GFLOP/s, 16k rows at 130-170 (the activations no longer fit the caches).
    block = max(1, 4096 // num_views)
  augmented = queries.num_augmentation_views(shape) > 0
  if not augmented:
    identity_labels = None  # view 0 is a noise view, not x
  views, shared = queries.views, None
  if queries.noise_group > 1 and queries.sigmas:
    # Shared draws: a model with an affine first layer maps each draw once.
    views = queries.augmentation_only if augmented else None
    shared = labels_lib.SharedNoise(
      queries.group_draws, queries.view_sigmas(), queries.noise_group
    )
  return labels_lib.predict_view_labels(
    cfg,
    variables,
    x,
    views=views,
    num_views=num_views,
    num_classes=num_classes,
    block=block,
    identity_labels=identity_labels,
    shared_noise=shared,
    lowering=lowering,
  )
