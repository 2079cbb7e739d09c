"""The FLOPs a run's phases spend, counted as the job does its work (:mod:`miajax.engine.costs`)."""

from __future__ import annotations

import numpy as np

from miajax.engine import batches, costs
from miajax.engine import query as query_lib

__all__ = ["run_flops"]


def run_flops(spec, ds, keep: np.ndarray, models: int | None = None) -> dict:
  """FLOPs by phase of training and querying ``models`` models of ``spec`` on ``ds``.

  ``train``: every model takes ``epochs x steps_per_epoch`` batches of
  ``batch_size`` (the engine pads a model with fewer members up to the
  largest's steps). ``queries``: each query view of every candidate, plus
  the test set once. ``views``: every label-only view of every candidate,
  the identity view counted (the naive design's count, the yardstick the
  efficiency goal uses). ``None`` where the backend has no cost model.

  Args:
    spec: the :class:`miajax.runs.RunSpec`.
    ds: its dataset (``x_train``, ``x_test``, ``num_classes``).
    keep: ``bool[models, examples]``.
    models: models trained (default all of ``keep``'s).
  """
  cfg = spec.train
  shape = tuple(ds.x_train.shape[1:])
  m = keep.shape[0] if models is None else int(models)
  n, n_test = ds.x_train.shape[0], ds.x_test.shape[0]
  train = costs.train_flops_per_example(cfg, shape, ds.num_classes)
  fwd = costs.forward_flops_per_example(cfg, shape, ds.num_classes)
  steps = cfg.max_epochs * batches.steps_per_epoch(keep, cfg.batch_size)
  num_queries = query_lib.query_views(
    np.zeros((1, *shape), np.float32), spec.queries
  ).shape[0]
  views = spec.label_only.num_views(shape) if spec.label_only else 0
  mul = lambda per, count: None if per is None else per * count
  return {
    "train": mul(train, m * steps * cfg.batch_size),
    "queries": mul(fwd, m * (n * num_queries + n_test)),
    "views": mul(fwd, m * n * views),
  }
