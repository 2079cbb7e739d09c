"""The compiled functions of one training program, cached by (recipe key, lowering, shapes)."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from miajax.engine import batches
from miajax.engine import devices as devices_lib
from miajax.engine import recipe
from miajax.engine import step as step_lib
from miajax.engine.lowering import Lowering

__all__ = ["Compiled", "compile_program"]


class Compiled(NamedTuple):
  """The jitted functions of one program (recipe key, lowering, shapes)."""

  init: Callable  # (keys, opt_values, defense_values) -> TrainState [models]
  init_abstract: Callable  # the same, for jax.eval_shape only
  init_single: Callable  # one model, leading axis of 1 (loop mode)
  order: Callable  # batches.epoch_order
  multi_step: Callable  # sharded over the models mesh
  single_step: Callable  # one device (loop mode)


def _init_stacked(init_jit, keys, opt_values, defense_values):
  # XLA:CPU compiles the vmapped init about twice as long as one model's
  # (init runs once per chunk): on CPU one compiled init runs per model.
  # Same bits as the vmapped form.
  rows = lambda tree, m: jax.tree_util.tree_map(lambda a: a[m], tree)
  outs = [
    init_jit(k, rows(opt_values, m), rows(defense_values, m))
    for m, k in enumerate(np.asarray(keys))
  ]
  return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)


def _sharded(prog, mesh, carry, keys, order, x, y, step0, num_steps):
  # Each device steps only its own block of models (an unrolled step indexes
  # single models, which on a models-sharded array would make XLA gather
  # across devices).
  by_model, replicated = PartitionSpec("models"), PartitionSpec()
  local = jax.shard_map(
    functools.partial(step_lib.multi_step, prog, num_steps=num_steps),
    mesh=mesh,
    in_specs=(by_model,) * 3 + (replicated,) * 3,
    out_specs=by_model,
  )
  return local(carry, keys, order, x, y, step0)


def _first_row(init_one, key, opt_values, defense_values):
  one = init_one(
    key[0],
    *jax.tree_util.tree_map(lambda a: a[0], (opt_values, defense_values)),
  )
  return jax.tree_util.tree_map(lambda a: a[None], one)


@functools.lru_cache(maxsize=32)
def compile_program(
  config: recipe.TrainConfig,
  low: Lowering,
  num_classes: int,
  steps: int,
  input_shape: tuple,
) -> Compiled:
  """The :class:`Compiled` functions of a program key (:func:`miajax.engine.identity.program_key`)."""
  prog = step_lib.program(config, low, num_classes, steps, input_shape)
  init_one = functools.partial(step_lib.init_one, prog)
  init_jit = jax.jit(init_one)
  multi = functools.partial(step_lib.multi_step, prog)
  return Compiled(
    init=(
      functools.partial(_init_stacked, init_jit)
      if low.backend == "cpu"
      else jax.jit(jax.vmap(init_one))
    ),
    init_abstract=jax.vmap(init_one),
    init_single=jax.jit(functools.partial(_first_row, init_one)),
    order=jax.jit(batches.epoch_order, static_argnums=(3, 4)),
    multi_step=jax.jit(
      functools.partial(_sharded, prog, devices_lib.models_mesh()),
      static_argnums=(6,),
      donate_argnums=(0,),
    ),
    single_step=jax.jit(multi, static_argnums=(6,), donate_argnums=(0,)),
  )
