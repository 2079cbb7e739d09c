"""How many models train at once: parameters, optimizer state and activations against free memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from miajax import models as models_lib
from miajax.engine import devices
from miajax.engine import recipe
from miajax.engine.cpu import unroll
from miajax.engine.lowering import Lowering, resolve_lowering

__all__ = ["plan_models_per_step"]


def plan_models_per_step(
  config: recipe.TrainConfig,
  num_classes: int,
  input_shape: tuple,
  num_models: int,
  *,
  memory_fraction: float = 0.4,
  bytes_available: int | None = None,
  lowering: Lowering | None = None,
) -> int:
  """Models per step: ``lowering.models_per_step`` if given, else what fits ``memory_fraction`` of free memory."""
  low = lowering or resolve_lowering(config, input_shape, num_classes, steps=0)
  if low.models_per_step is not None:
    return int(min(low.models_per_step, num_models))
  if low.per_model_programs:
    num_models = min(
      num_models, unroll.UNROLL_MAX_MODELS * jax.local_device_count()
    )
  fns = recipe.model_fns(config, num_classes)
  shapes = jax.eval_shape(
    fns.init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32),
  )
  # params, grads, 2 optimizer moments, updates, slack
  per_model = 4 * models_lib.count_params(shapes) * 6
  # a generous activation estimate
  per_model += 4 * config.batch_size * int(np.prod(input_shape)) * 64
  if bytes_available is None:
    bytes_available = devices.bytes_available()
  budget = bytes_available * memory_fraction
  k = int(max(1, min(num_models, budget // per_model)))
  n_dev = jax.local_device_count()
  if k < num_models and k >= n_dev:
    # whole models per device: padding would waste a slot on every chunk
    k -= k % n_dev
  return k
