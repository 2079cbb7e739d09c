"""Training and querying shadow models: the public entry points of the engine.

The engine is split by what it holds: :mod:`miajax.config` (``TrainConfig``,
your own model / optimizer / loss as plain functions), :mod:`miajax.lowering`
(how a configuration runs on a backend, decided in one place),
:mod:`miajax.engine` (the backend-independent training loop, planner and
chunks), :mod:`miajax.cpu_engine` (CPU-only forms) and :mod:`miajax.query`.
This module re-exports what users call.
"""

from __future__ import annotations

from miajax import cpu_engine
from miajax import lowering as lowering_lib
from miajax.config import ModelFns, TrainConfig, model_fns
from miajax.engine import (
  TrainResult,
  check_inputs,
  models_mesh,
  plan_models_per_step,
  train_chunks,
  train_models,
)
from miajax.lowering import Lowering, resolve_lowering
from miajax.query import QUERY_SETS, predict, query_views

__all__ = [
  "TrainConfig",
  "TrainResult",
  "ModelFns",
  "Lowering",
  "train_models",
  "train_chunks",
  "predict",
  "query_views",
  "resolve_lowering",
  "plan_models_per_step",
  "microbatch_size",
  "model_axis",
  "models_mesh",
  "model_fns",
  "QUERY_SETS",
  "UNROLL_MAX_MODELS",
]

UNROLL_MAX_MODELS = cpu_engine.UNROLL_MAX_MODELS
_check_inputs = check_inputs


def model_axis(
  config: TrainConfig, input_shape: tuple, num_classes: int
) -> str:
  """The lowering's model axis for this backend (see :func:`miajax.lowering.resolve_lowering`)."""
  return lowering_lib.resolve_lowering(
    config, input_shape, num_classes, steps=0
  ).model_axis


def microbatch_size(
  config: TrainConfig, input_shape: tuple, num_classes: int
) -> int:
  """The lowering's examples per gradient micro-batch for this backend (``batch_size``: whole batches)."""
  return lowering_lib.resolve_lowering(
    config, input_shape, num_classes
  ).microbatch
