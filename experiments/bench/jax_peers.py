"""The one-model JAX loop: the same step as miajax.engine (mean cross-entropy, decayed weights,
trace, cosine) for one model, jitted and called from Python per step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import flops, methods, workloads
from miajax import models as models_lib


def optimizer(weight_decay: float, momentum: float, total_steps: int):
  """miajax's SGD as one optax chain; the learning rate is applied by the step."""
  parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  parts += [
    optax.trace(decay=momentum),
    optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, total_steps)),
  ]
  return optax.chain(*parts)


def jax_single_step(wl: workloads.Workload, total_steps: int):
  """``(init(key) -> (params, state, opt_state), step(params, state, opt_state, order, s, x, y))``.

  ``order: int32[steps, batch]`` member indices of one epoch; ``s`` an int32 step of it.
  """
  cfg = wl.config(1, 0)
  model = models_lib.get_model(
    wl.model, wl.num_classes, **cfg.model_kwargs_dict()
  )
  mutable = models_lib.uses_batch_norm(wl.model)
  tx = optimizer(wl.weight_decay, 0.9, total_steps)
  lr = wl.learning_rate

  def init(key):
    variables = dict(
      model.init(
        {"params": jax.random.fold_in(key, 0)},
        jnp.zeros((1,) + wl.input_shape, jnp.float32),
        train=False,
      )
    )
    params = variables.pop("params")
    return params, variables, tx.init(params)

  def loss_fn(params, state, xb, yb):
    if mutable:
      logits, new_state = model.apply(
        {"params": params, **state}, xb, train=True, mutable=["batch_stats"]
      )
    else:
      logits, new_state = (
        model.apply({"params": params, **state}, xb, train=True),
        state,
      )
    return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), yb
    ).mean(), new_state

  def step(params, state, opt_state, order, s, x, y):
    idx = jax.lax.dynamic_index_in_dim(order, s, keepdims=False)
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, state, x[idx], y[idx]
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(
      params, jax.tree_util.tree_map(lambda u: -lr * u, updates)
    )
    return params, state, opt_state, loss

  return jax.jit(init), step


def compile_jax_step(wl: workloads.Workload, data: dict):
  """``(init, compiled step, flops per training example or None)``; the compile is not timed."""
  init, step = jax_single_step(wl, data["steps"])
  params, state, opt = init(jax.random.PRNGKey(0))
  order = jnp.zeros((data["steps_per_epoch"], wl.batch_size), jnp.int32)
  compiled = (
    jax.jit(step, donate_argnums=(0, 1, 2))
    .lower(
      params,
      state,
      opt,
      order,
      np.int32(0),
      jnp.asarray(data["x"]),
      jnp.asarray(data["y"]),
    )
    .compile()
  )
  count = flops.cost_flops(compiled)
  return init, compiled, None if count is None else count / wl.batch_size


def run_jax_loop(
  wl: workloads.Workload,
  data: dict,
  seed: int,
  *,
  compiled_step=None,
  init_variables=None,
  warmup: bool = True,
  repeats: int = 1,
) -> dict:
  """One model after the other, one jitted step call per batch, data on the device, no vmap.

  ``init_variables``: optional Flax variables stacked ``[models, ...]`` to start
  from (default: the engine's documented key ``fold_in(PRNGKey(seed), m)``).
  """
  init, step = compiled_step or compile_jax_step(wl, data)[:2]
  tx = optimizer(wl.weight_decay, 0.9, data["steps"])
  xd, yd = jax.device_put(data["x"]), jax.device_put(data["y"])
  base = jax.random.PRNGKey(seed)
  keep = data["keep"]
  num_models, spe, epochs = (
    keep.shape[0],
    data["steps_per_epoch"],
    data["epochs"],
  )

  def start(m):
    if init_variables is None:
      return init(jax.random.fold_in(base, m))
    v = dict(jax.tree_util.tree_map(lambda a: a[m], init_variables))
    params = v.pop("params")
    return params, v, tx.init(params)

  if warmup:
    params, state, opt = init(jax.random.fold_in(base, 10**6))
    order = jnp.asarray(
      workloads.epoch_orders(
        keep[0], 1, spe, wl.batch_size, np.random.default_rng(0)
      )[0]
    )
    for s in range(min(2, spe)):
      params, state, opt, loss = step(
        params, state, opt, order, np.int32(s), xd, yd
      )
    jax.block_until_ready(loss)

  def train_all():
    losses = []
    for m in range(num_models):
      params, state, opt = start(m)
      rng = np.random.default_rng([seed, m])
      model_losses = []
      for order in workloads.epoch_orders(
        keep[m], epochs, spe, wl.batch_size, rng
      ):
        order = jnp.asarray(order)
        for s in range(spe):
          params, state, opt, loss = step(
            params, state, opt, order, np.int32(s), xd, yd
          )
          model_losses.append(loss)
      losses.append(jnp.stack(model_losses))
      jax.block_until_ready(params)
    return losses

  r = methods.timed(train_all, wl, data, repeats)
  return dict(r, out=None, loss=np.asarray(jnp.stack(r["out"]), np.float64))
