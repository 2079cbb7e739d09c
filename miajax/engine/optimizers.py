"""Optimizers whose hyperparameters are per-model state, as ``optax.inject_hyperparams`` keeps them.

The built-in ``"sgd"`` and ``"adam"`` are ``optax.inject_hyperparams`` of a
chain ending in ``optax.scale(-learning_rate)``: the learning rate, momentum
and weight decay are leaves of the optimizer state, so under the engine's
``vmap`` each model has its own values (:func:`set_hyperparams` writes
them after ``init``). A user transformation built with
``optax.inject_hyperparams`` gets its values (``TrainConfig.hyperparams``)
the same way.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from miajax.engine.recipe import PER_MODEL_FIELDS, TrainConfig
from miajax.hyperparams import PerModel

__all__ = ["make_optimizer", "hyperparam_values", "set_hyperparams"]


def _schedule(config: TrainConfig, steps_per_epoch: int):
  """The unit-peak learning-rate schedule of the built-in optimizers."""
  total = config.max_epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.schedule == "cosine":
    if warmup:
      return optax.warmup_cosine_decay_schedule(
        0.0, 1.0, warmup, max(total, warmup + 1), 0.0
      )
    # optax warns about a zero-step warm-up; a plain cosine is the same schedule
    return optax.cosine_decay_schedule(1.0, max(total, 1), 0.0)
  if warmup:
    return optax.join_schedules(
      [optax.linear_schedule(0.0, 1.0, warmup), optax.constant_schedule(1.0)],
      [warmup],
    )
  return optax.constant_schedule(1.0)


def _scaled_schedule(config: TrainConfig, steps_per_epoch: int, epochs):
  """:func:`_schedule` with a traced per-model length ``epochs`` (float32[]).

  The same arithmetic as optax's schedules that :func:`_schedule` builds, so
  a model of a per-model-epochs program follows the very schedule of a run
  of its own epochs.
  """
  total = epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))

  def cosine(count, steps):
    count = jnp.minimum(count, steps)
    # XLA turns a division by a constant into a product with its reciprocal:
    # so does this, for the bits of the constant-length schedule.
    return 0.5 * (1 + jnp.cos(jnp.pi * count * (1.0 / steps)))

  def ramp(count):
    frac = 1 - jnp.clip(count, 0, warmup) / warmup
    return (0.0 - 1.0) * frac + 1.0

  def schedule(count):
    if config.schedule == "cosine":
      if warmup:
        late = cosine(count - warmup, jnp.maximum(total, warmup + 1) - warmup)
        return jnp.where(count < warmup, ramp(count), late)
      return cosine(count, jnp.maximum(total, 1))
    if warmup:
      return jnp.where(count < warmup, ramp(count), 1.0)
    return jnp.ones_like(count, jnp.float32)

  return schedule


def _uses(value) -> bool:
  return any(value.values) if isinstance(value, PerModel) else bool(value)


def _builtin(config: TrainConfig, steps_per_epoch: int):
  sched = _schedule(config, steps_per_epoch)
  # A term no model uses stays out of the program (and its state).
  decay, use_momentum = _uses(config.weight_decay), _uses(config.momentum)

  def factory(learning_rate, momentum, weight_decay, epochs=None):
    if epochs is not None:
      # Each model's own length: its schedule ends where its training does.
      sched_ = _scaled_schedule(config, steps_per_epoch, epochs)
    else:
      sched_ = sched
    if config.optimizer == "sgd":
      parts = [optax.add_decayed_weights(weight_decay)] if decay else []
      if use_momentum:
        parts.append(optax.trace(decay=momentum, nesterov=config.nesterov))
    else:
      parts = [optax.scale_by_adam()]
      if decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_schedule(sched_))
    parts.append(optax.scale(-learning_rate))
    return optax.chain(*parts)

  # Placeholders: set_hyperparams writes every model's own values.
  lengths = dict(epochs=1.0) if config.per_model_epochs else {}
  return optax.inject_hyperparams(factory)(
    learning_rate=1.0, momentum=0.0, weight_decay=0.0, **lengths
  )


@functools.lru_cache(maxsize=64)
def make_optimizer(
  config: TrainConfig, steps_per_epoch: int
) -> optax.GradientTransformation:
  """The recipe's optax transformation (built-in, user-given or user-built per epoch length)."""
  if config.builtin_optimizer:
    return _builtin(config, steps_per_epoch)
  if isinstance(config.optimizer, optax.GradientTransformation):
    return config.optimizer
  tx = config.optimizer(steps_per_epoch)
  if not isinstance(tx, optax.GradientTransformation):
    raise ValueError(
      f"optimizer({steps_per_epoch}) must return an optax.GradientTransformation,"
      f" got {type(tx).__name__}"
    )
  return tx


def hyperparam_values(
  config: TrainConfig, num_models: int
) -> dict[str, np.ndarray]:
  """``{state name: float32[models]}``: each model's optimizer hyperparameters."""
  if config.builtin_optimizer:
    items = [(name, getattr(config, name)) for name in PER_MODEL_FIELDS]
    if config.per_model_epochs:
      items.append(("epochs", config.epochs))
  else:
    items = list(config.hyperparams)
  out = {}
  for name, value in items:
    arr = (
      value.array()
      if isinstance(value, PerModel)
      else np.full(num_models, value, np.float32)
    )
    out[name] = arr
  return out


def set_hyperparams(opt_state, values: dict[str, Any]):
  """``opt_state`` with the ``inject_hyperparams`` values named in ``values`` replaced.

  Searches the whole state (an injected transformation may sit inside a
  chain). A name no injected state holds is a ValueError.
  """
  if not values:
    return opt_state
  found: set[str] = set()
  out = _set(opt_state, values, found)
  missing = sorted(set(values) - found)
  if missing:
    raise ValueError(
      f"hyperparams {missing} are not hyperparameters of the optimizer: give "
      "per-model values to an optimizer built with optax.inject_hyperparams "
      "(its keyword arguments name them)"
    )
  return out


# Both state types of optax.inject_hyperparams (the stateful one since 0.2.3).
_INJECTED = tuple(
  t
  for t in (
    getattr(optax, "InjectStatefulHyperparamsState", None),
    getattr(optax, "InjectHyperparamsState", None),
  )
  if t is not None
)


def _set(node, values, found):
  if isinstance(node, _INJECTED):
    hp = dict(node.hyperparams)
    for name in set(hp) & set(values):
      hp[name] = jnp.asarray(values[name], hp[name].dtype)
      found.add(name)
    return node._replace(
      hyperparams=hp, inner_state=_set(node.inner_state, values, found)
    )
  if isinstance(node, tuple) and hasattr(node, "_fields"):
    return type(node)(*(_set(c, values, found) for c in node))
  if isinstance(node, (tuple, list)):
    return type(node)(_set(c, values, found) for c in node)
  return node
