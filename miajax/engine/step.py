"""One model's training step, readable alone; and the one place a model axis becomes a stepper.

Everything here is a pure function of one model: :func:`init_one` builds its
:class:`TrainState`, :func:`loss_and_grads` differentiates its loss on a
batch (whole, in micro-batches, or per example for DP-SGD), and
:func:`step_one` takes one optimizer step. :func:`stepper` maps the
lowering's model axis to a function over stacked models: ``jax.vmap`` (the
GPU/TPU path, and small models on CPU) or one program per model
(:func:`miajax.engine.cpu.unroll.unrolled`). No other module branches on
the model axis to step.

Randomness of model ``m`` (root key ``k``): initialisation
``fold_in(k, 0)``; epoch order ``fold_in(fold_in(k, 1), epoch)``; step
``s`` ``fold_in(fold_in(k, 2), s)``, its augmentation ``fold_in(., 3)``, its
DP noise ``fold_in(., 7)``, example ``i``'s dropout ``fold_in(., i)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from miajax import defenses as defenses_lib
from miajax import hyperparams as hyperparams_lib
from miajax.engine import batches
from miajax.engine import optimizers
from miajax.engine import recipe
from miajax.engine.cpu import microbatch as microbatch_lib
from miajax.engine.cpu import unroll
from miajax.engine.lowering import Lowering

__all__ = [
  "TrainState",
  "Program",
  "program",
  "init_one",
  "loss_and_grads",
  "step_one",
  "stepper",
  "multi_step",
]


class TrainState(NamedTuple):
  """One model's training state (leaves gain a leading ``[models]`` axis when stacked).

  ``params``; ``model_state``: other collections (batch norm statistics);
  ``opt_state`` (its ``inject_hyperparams`` leaves hold the model's learning
  rate, momentum, weight decay); ``defense_values``: the model's per-model
  defense strengths ``{path: float32[]}``; ``alive``: False once the loss
  was not finite (the model then keeps its last finite state);
  ``stop_step``: ``int32[]``, the global step at which the model's own
  epochs end when epochs are per model (it then keeps its state), else None.
  """

  params: Any
  model_state: Any
  opt_state: Any
  defense_values: dict
  alive: jax.Array
  stop_step: Any = None


@dataclasses.dataclass(frozen=True)
class Program:
  """The static pieces of one compiled training program."""

  config: recipe.TrainConfig
  lowering: Lowering
  fns: recipe.ModelFns
  tx: optax.GradientTransformation
  input_shape: tuple
  steps_per_epoch: int
  mutable: tuple

  @property
  def defense(self):
    return self.config._defense()


def program(
  config: recipe.TrainConfig,
  low: Lowering,
  num_classes: int,
  steps_per_epoch: int,
  input_shape: tuple,
) -> Program:
  """The :class:`Program` of a recipe and lowering; refuses combinations the step cannot run."""
  fns = recipe.model_fns(
    config,
    num_classes,
    conv_impl=low.conv_function(),
    compute_dtype=low.compute_dtype,
  )
  mutable = recipe.state_collections(fns, input_shape)
  defense = config._defense()
  if defense.aggregate_grads is not None and mutable:
    raise ValueError(
      f"{defenses_lib.short_name(defense)} needs per-example gradients and "
      f"cannot train {config.describe_model()!r}, which updates "
      f"{list(mutable)} during training (batch norm); pick a model without it"
    )
  if mutable and low.microbatch != config.batch_size:
    raise ValueError(
      f"microbatch must be None or batch_size for {config.describe_model()!r}:"
      f" its {list(mutable)} (batch norm) would be computed per micro-batch"
    )
  tx = optimizers.make_optimizer(config, steps_per_epoch)
  return Program(
    config, low, fns, tx, tuple(input_shape), steps_per_epoch, mutable
  )


def init_one(prog: Program, key, opt_values: dict, defense_values: dict):
  """A fresh :class:`TrainState` of one model with its hyperparameter values (scalars)."""
  x = jnp.zeros((1,) + prog.input_shape, jnp.float32)
  variables = dict(prog.fns.init(jax.random.fold_in(key, 0), x))
  params = variables.pop("params")
  opt_state = optimizers.set_hyperparams(prog.tx.init(params), opt_values)
  stop = None
  if prog.config.per_model_epochs:
    stop = jnp.asarray(opt_values["epochs"], jnp.int32) * prog.steps_per_epoch
  return TrainState(
    params, variables, opt_state, dict(defense_values), jnp.ones((), bool), stop
  )


def active(ts: TrainState, step):
  """Whether a model still trains at global ``step`` (its own epochs not over)."""
  return True if ts.stop_step is None else step < ts.stop_step


def forward(prog: Program, params, model_state, xb, key):
  """Training-mode logits ``float32[batch, classes]`` and the updated model state."""
  dtype = jnp.dtype(prog.lowering.compute_dtype)
  variables = {"params": params, **model_state}
  if dtype != jnp.float32:
    variables = jax.tree_util.tree_map(lambda a: a.astype(dtype), variables)
    xb = xb.astype(dtype)
  rngs = {"dropout": key}
  if prog.mutable:
    logits, new = prog.fns.apply(
      variables, xb, train=True, rngs=rngs, mutable=prog.mutable
    )
    return logits.astype(jnp.float32), {**model_state, **new}
  logits = prog.fns.apply(variables, xb, train=True, rngs=rngs)
  return logits.astype(jnp.float32), model_state


def _plain(prog, defense, params, model_state, xb, yb, key):
  def mean_loss(p):
    logits, new = forward(prog, p, model_state, xb, key)
    return recipe.example_loss(prog.config, logits, yb, defense).mean(), new

  (loss, new_state), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
  return loss, new_state, grads


def _microbatched(prog, defense, params, model_state, xb, yb, key):
  def losses(p, xm, ym, k):
    logits = forward(prog, p, model_state, xm, k)[0]
    return recipe.example_loss(prog.config, logits, ym, defense)

  loss, grads = microbatch_lib.accumulated_value_and_grad(
    losses, params, xb, yb, key, prog.lowering.microbatch
  )
  return loss, model_state, grads


def _per_example(prog, defense, params, model_state, xb, yb, key):
  # Each example its own dropout mask; the gradient processor (DP-SGD)
  # clips and noises the per-example gradients.
  def one(p, xi, yi, i):
    logits, _ = forward(
      prog, p, model_state, xi[None], jax.random.fold_in(key, i)
    )
    return recipe.example_loss(prog.config, logits, yi[None], defense).sum()

  losses, per_grads = jax.vmap(
    jax.value_and_grad(one), in_axes=(None, 0, 0, 0)
  )(params, xb, yb, jnp.arange(xb.shape[0]))
  grads = defense.aggregate_grads(per_grads, jax.random.fold_in(key, 7))
  return losses.mean(), model_state, grads


def loss_and_grads(prog: Program, defense, params, model_state, xb, yb, key):
  """``(mean loss, new model state, gradients)`` of one model on a batch ``xb [batch, ...]``.

  ``defense``: the recipe's defense with this model's values bound. The
  parameter penalty is added after any gradient processing: it is
  data-independent, so it costs no privacy and must not be clipped.
  """
  if defense.aggregate_grads is not None:
    fn = _per_example
  elif prog.lowering.microbatch < xb.shape[0]:
    fn = _microbatched
  else:
    fn = _plain
  loss, new_state, grads = fn(prog, defense, params, model_state, xb, yb, key)
  if defense.param_penalty is None:
    return loss, new_state, grads
  penalty = lambda p: jnp.asarray(defense.param_penalty(p), jnp.float32)
  value, penalty_grads = jax.value_and_grad(penalty)(params)
  return (
    loss + value,
    new_state,
    jax.tree_util.tree_map(jnp.add, grads, penalty_grads),
  )


def step_one(prog: Program, ts: TrainState, key, order, x, y, step):
  """One optimizer step of one model: ``(new TrainState, loss float32[])``.

  ``order: int32[steps, batch]`` the epoch's batches of this model;
  ``x [examples, ...]``, ``y int32[examples]`` the whole candidate pool.
  """
  idx = jax.lax.dynamic_index_in_dim(
    order, step % prog.steps_per_epoch, keepdims=False
  )
  xb, yb = x[idx], y[idx]
  skey = jax.random.fold_in(jax.random.fold_in(key, 2), step)
  if prog.config.augment:
    xb = batches.augment(xb, jax.random.fold_in(skey, 3))
  defense = hyperparams_lib.bind(prog.defense, ts.defense_values)
  loss, new_state, grads = loss_and_grads(
    prog, defense, ts.params, ts.model_state, xb, yb, skey
  )
  updates, new_opt = prog.tx.update(grads, ts.opt_state, ts.params)
  new_params = optax.apply_updates(ts.params, updates)
  ok = ts.alive & jnp.isfinite(loss)
  # A diverged model keeps its last finite state instead of poisoning the
  # chunk; a model past its own epochs keeps its final one.
  run = ok & active(ts, step)
  pick = lambda new, old: jax.tree_util.tree_map(
    lambda a, b: jnp.where(run, a, b), new, old
  )
  new = TrainState(
    pick(new_params, ts.params),
    pick(new_state, ts.model_state),
    pick(new_opt, ts.opt_state),
    ts.defense_values,
    ok if ts.stop_step is None else ts.alive & (ok | ~active(ts, step)),
    ts.stop_step,
  )
  return new, loss


def stepper(prog: Program):
  """``(TrainState [models], keys, orders, x, y, step) -> (TrainState, loss [models])``.

  ``"vmap"``: every model under one ``jax.vmap`` (batched ops). ``"unroll"``
  and ``"loop"``: each model its own program (a vmap over even one model
  would still batch its dots).
  """
  one = functools.partial(step_one, prog)
  if prog.lowering.per_model_programs:
    return unroll.unrolled(one)
  return jax.vmap(one, in_axes=(0, 0, 0, None, None, None))


def multi_step(prog: Program, carry, keys, order, x, y, step0, num_steps: int):
  """``num_steps`` steps of stacked models from global step ``step0`` (a ``lax.scan`` when > 1).

  ``carry``: ``(TrainState [models], loss_sum float32[models])``.
  """
  vstep = stepper(prog)

  def body(c, i):
    ts, loss_sum = c
    counts = active(ts, step0 + i)
    ts, loss = vstep(ts, keys, order, x, y, step0 + i)
    return (ts, loss_sum + jnp.where(ts.alive & counts, loss, 0.0)), None

  if num_steps == 1:
    return body(carry, 0)[0]
  return jax.lax.scan(body, carry, jnp.arange(num_steps))[0]
