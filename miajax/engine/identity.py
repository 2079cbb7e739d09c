"""A recipe's identity: the one fingerprint of runs, store and checkpoints, and a compiled program's key."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from miajax import defenses as defenses_lib
from miajax import hyperparams as hyperparams_lib
from miajax.engine.recipe import PER_MODEL_FIELDS, TrainConfig, model_fns
from miajax.hyperparams import PerModel

__all__ = [
  "fingerprint",
  "model_fingerprint",
  "program_key",
  "per_model_values",
]


def model_fingerprint(
  config: TrainConfig, input_shape: tuple, num_classes: int
) -> dict:
  """JSON identity of a user model for run directories: its name and parameter tree shapes and dtypes."""
  fns = model_fns(config, num_classes)
  shapes = jax.eval_shape(
    fns.init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32),
  )
  leaves = jax.tree_util.tree_leaves_with_path(shapes)
  return {
    "name": config.describe_model(),
    "variables": {
      jax.tree_util.keystr(p): [list(a.shape), str(a.dtype)] for p, a in leaves
    },
  }


def per_model_values(config: TrainConfig) -> dict[str, np.ndarray]:
  """``{name: float32[models]}`` of every per-model value of the recipe.

  Names: ``"learning_rate"``, ``"momentum"``, ``"weight_decay"`` (built-in
  optimizers), a user optimizer's ``hyperparams`` names, and
  ``"defense/<path>"`` for the defense's fields (see
  :func:`miajax.hyperparams.fields`).
  """
  out = {
    name: getattr(config, name).array()
    for name in PER_MODEL_FIELDS + ("epochs",)
    if isinstance(getattr(config, name), PerModel)
  }
  out.update(
    {
      name: v.array()
      for name, v in config.hyperparams
      if isinstance(v, PerModel)
    }
  )
  out.update(
    {
      f"defense/{path}": v
      for path, v in hyperparams_lib.collect(config.defense).items()
    }
  )
  return out


def program_key(config: TrainConfig) -> TrainConfig:
  """``config`` with the values that a compiled program reads at run time made canonical.

  The seed and every hyperparameter value (per model or not) are inputs of
  the compiled step, not constants in it; only whether a built-in
  optimizer's momentum or weight decay is used at all changes the program.
  """
  canon = {}
  for name in PER_MODEL_FIELDS:
    value = getattr(config, name)
    used = any(_values(value)) if name != "learning_rate" else True
    canon[name] = 1.0 if used else 0.0
  if config.per_model_epochs:
    # Each model's length is an input of the program (its stop step and schedule).
    canon["epochs"] = PerModel((1.0,))
  return dataclasses.replace(
    config,
    seed=0,
    hyperparams=tuple((k, 0.0) for k, _ in config.hyperparams),
    defense=_canonical_defense(config.defense),
    **canon,
  )


def _values(value) -> tuple[float, ...]:
  return value.values if isinstance(value, PerModel) else (value,)


def _canonical_defense(defense):
  paths = {path for path, _, _ in hyperparams_lib.fields(defense)}
  if not paths:
    return defense
  # One placeholder for every sweep: the values are inputs of the program.
  return hyperparams_lib.bind(defense, {p: PerModel((1.0,)) for p in paths})


def fingerprint(
  config: TrainConfig,
  *,
  input_shape: tuple | None = None,
  num_classes: int | None = None,
  compute_dtype: str = "float32",
) -> dict:
  """The recipe's identity as JSON: what run directories, the shadow store and checkpoints compare.

  A user model is named, and with ``input_shape`` and ``num_classes``
  identified by its parameter shapes (:func:`model_fingerprint`). Keys that
  older miajax versions did not write are left out at their defaults, so
  existing run directories keep their identity.
  """
  tc = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
  tc["model_kwargs"] = {
    k: list(v) if isinstance(v, tuple) else v for k, v in config.model_kwargs
  }
  for name in PER_MODEL_FIELDS + ("epochs",):
    if isinstance(tc[name], PerModel):
      tc[name] = list(tc[name].values)
  tc["defense"] = _describe_defense(config.defense)
  tc["compute_dtype"] = compute_dtype
  if not config.builtin_model:
    tc["model"] = (
      model_fingerprint(config, input_shape, num_classes)
      if input_shape is not None
      else {"user": config.describe_model()}
    )
  if not config.builtin_optimizer:
    tc["optimizer"] = {"user": config.describe_optimizer()}
  tc["loss"] = (
    None
    if config.loss is None
    else getattr(config.loss, "__qualname__", type(config.loss).__name__)
  )
  tc["hyperparams"] = {
    k: list(v.values) if isinstance(v, PerModel) else v
    for k, v in config.hyperparams
  }
  for key in ("model_name", "loss"):
    if tc[key] is None:
      tc.pop(key)
  if not tc["hyperparams"]:
    tc.pop("hyperparams")
  return tc


def _describe_defense(defense) -> Any:
  """The defense's ``describe()`` (built-in or user-written), checked to be JSON."""
  if defense is None:
    return None
  desc = defenses_lib.describe(defense)
  desc = _jsonable(desc)
  try:
    json.dumps(desc)
  except (TypeError, ValueError) as e:
    raise ValueError(
      f"defense {defense!r}: describe() must return JSON-serialisable values "
      f"(it identifies the run directory), got {desc!r}: {e}"
    ) from None
  return desc


def _jsonable(value):
  if isinstance(value, PerModel):
    return list(value.values)
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value
