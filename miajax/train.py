"""The shadow-model engine: train many models at once, each on its own members.

``train_models`` trains every row of a keep mask ``bool[models, examples]``:
model ``m`` only ever sees examples with ``keep[m, i]``.  Models are trained
in chunks of ``models_per_step``; inside a chunk one compiled step updates all
of them (``jax.vmap`` over a leading model axis), data stays on the device and
each step gathers its batches there.

Determinism: model ``m`` draws every random number (initialisation, shuffling,
augmentation, dropout, DP noise) from ``fold_in(PRNGKey(seed), m)``, so its
result does not depend on the chunk it was trained in.

Devices: the models of a chunk are sharded over every local device (a 1-D
``jax.sharding.Mesh`` named ``"models"``; each device steps its own block of
models inside ``jax.shard_map``); the data is replicated.  On CPU,
:func:`miajax.cpu.use_all_cores` makes one device per core.  A chunk
whose size does not divide the device count is padded with copies of its last
model, whose results are dropped.  In a multi-process run each process uses
only its own (local) devices and trains its own slice of models.

Per-backend lowering: one epoch of steps runs in one ``lax.scan`` (no per-step
dispatch); ``TrainConfig.steps_per_call`` overrides it.  On CPU, 3x3
convolutions use Winograd's algorithm (:mod:`miajax.winograd`), and a large
model's step sums its gradient over micro-batches that fit the CPU's cache
(:func:`microbatch_size`).  How the models of a step are combined
(``model_axis``: vmap, unroll, loop) is picked per backend and model size, see
:func:`model_axis`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from miajax import cpu as cpu_lib
from miajax import defenses as defenses_lib
from miajax import models as models_lib

__all__ = ["TrainConfig", "TrainResult", "train_models", "predict", "train_chunks", "query_views",
           "plan_models_per_step", "microbatch_size", "models_mesh", "QUERY_SETS"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How every model is trained.  Plain values: usable without flags.

  ``learning_rate`` is the peak rate; a per-model vector can be given to
  ``train_models(..., learning_rates=...)``.
  """

  model: str = "mlp"
  model_kwargs: tuple[tuple[str, Any], ...] = ()
  optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 5e-4
  epochs: int = 20
  batch_size: int = 128
  schedule: str = "cosine"  # "cosine" or "constant"
  warmup_epochs: float = 0.0
  augment: bool = False  # random flip + reflect-pad-4 crop (images only)
  models_per_step: int | None = None  # None: the memory planner picks
  steps_per_call: int | None = None  # None: one epoch per call
  microbatch_size: int | None = None  # gradient accumulation inside a step; None: picked per backend
  compute_dtype: str = "float32"  # or "bfloat16" (float32 master weights)
  model_axis: str | None = None  # "vmap", "unroll" or "loop"; None: picked per backend and model size
  seed: int = 0
  defense: Any = None  # a miajax.defenses value; None means no defense

  def model_kwargs_dict(self) -> dict:
    kwargs = dict(self.model_kwargs)
    rate = defenses_lib.dropout_rate(self._defense())
    if rate:
      kwargs["dropout_rate"] = rate
    if self.compute_dtype != "float32":
      kwargs["dtype"] = jnp.dtype(self.compute_dtype)
    return kwargs

  def _defense(self):
    return defenses_lib.none() if self.defense is None else self.defense

  def validate(self) -> None:
    if self.optimizer not in ("sgd", "adam"):
      raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
    for name in ("epochs", "batch_size"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate!r}")
    if self.weight_decay < 0:
      raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
    if self.models_per_step is not None and self.models_per_step < 1:
      raise ValueError(f"models_per_step must be >= 1 or None, got {self.models_per_step!r}")
    if self.steps_per_call is not None and self.steps_per_call < 1:
      raise ValueError(f"steps_per_call must be >= 1 or None, got {self.steps_per_call!r}")
    if self.microbatch_size is not None:
      m = self.microbatch_size
      if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 or self.batch_size % m:
        raise ValueError(f"microbatch_size must be a positive divisor of batch_size ({self.batch_size}) "
                         f"or None, got {m!r}")
      if m != self.batch_size and models_lib.uses_batch_norm(self.model):
        raise ValueError(f"microbatch_size must be None or batch_size for {self.model!r}: its batch "
                         "norm statistics would be computed per micro-batch")
    if self.model_axis not in (None, "vmap", "unroll", "loop"):
      raise ValueError(f"model_axis must be 'vmap', 'unroll', 'loop' or None, got {self.model_axis!r}")
    if self.compute_dtype not in ("float32", "bfloat16"):
      raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
    if self.model not in models_lib.MODEL_NAMES:
      raise ValueError(f"model must be one of {list(models_lib.MODEL_NAMES)}, got {self.model!r}")


@dataclasses.dataclass
class TrainResult:
  """Trained models of one chunk (or all of them).

  ``variables``: Flax variables stacked on a leading ``[models]`` axis.
  ``loss``: ``float32[models, epochs]`` mean training loss per epoch.
  ``diverged``: ``bool[models]``; a diverged model stopped updating at the
  first non-finite loss.
  """

  model_indices: np.ndarray
  variables: Any
  loss: np.ndarray
  diverged: np.ndarray
  train_seconds: float


# ---------------------------------------------------------------------------
# validation

def _check_inputs(x, y, keep, config: TrainConfig, num_classes: int):
  config.validate()
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
  if not isinstance(keep, np.ndarray) or keep.dtype != np.bool_:
    raise ValueError(f"keep must be a numpy bool array [models, examples], got "
                     f"{type(keep).__name__} of dtype {getattr(keep, 'dtype', None)}")
  if keep.ndim != 2:
    raise ValueError(f"keep must be 2-D [models, examples], got shape {keep.shape}")
  x = np.asarray(x)
  y = np.asarray(y)
  if keep.shape[1] != x.shape[0]:
    raise ValueError(f"keep has {keep.shape[1]} columns but x has {x.shape[0]} examples; "
                     "keep must be [models, examples]")
  if y.shape != (x.shape[0],):
    raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"y must be in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"x must be floating point, got dtype {x.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError("x contains non-finite values (nan or inf)")
  if keep.shape[0] == 0:
    raise ValueError(f"keep must hold at least one model row [models, examples], got shape {keep.shape}")
  members = keep.sum(1)
  if members.min() == 0:
    raise ValueError(f"keep: model {int(members.argmin())} has no members (an all-False row); "
                     "every model needs training examples")
  if members.min() < config.batch_size:
    m = int(members.argmin())
    raise ValueError(f"batch_size={config.batch_size} is larger than model {m}'s member count "
                     f"{int(members[m])}; lower batch_size or raise pkeep")
  if config.augment and x.ndim != 4:
    raise ValueError(f"augment=True needs images [N, H, W, C], got x of shape {x.shape}")
  return x.astype(np.float32), y.astype(np.int32)


# ---------------------------------------------------------------------------
# building blocks (pure)

def _make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """The optimizer with a *unit* peak learning rate; the step scales by the model's rate."""
  total = config.epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.schedule == "cosine":
    sched = optax.warmup_cosine_decay_schedule(0.0 if warmup else 1.0, 1.0, max(warmup, 0), max(total, 1), 0.0)
  else:
    sched = optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), optax.constant_schedule(1.0)],
                                 [warmup]) if warmup else optax.constant_schedule(1.0)
  if config.optimizer == "sgd":
    parts = [optax.add_decayed_weights(config.weight_decay)] if config.weight_decay else []
    if config.momentum:
      parts.append(optax.trace(decay=config.momentum, nesterov=config.nesterov))
  else:
    parts = [optax.scale_by_adam()]
    if config.weight_decay:
      parts.append(optax.add_decayed_weights(config.weight_decay))
  parts.append(optax.scale_by_schedule(sched))
  return optax.chain(*parts)


def _augment(x, key):
  """Random horizontal flip and reflect-pad-4 random crop of ``x: [batch, H, W, C]``."""
  b, h, w, _ = x.shape
  kf, kx, ky = jax.random.split(key, 3)
  flip = jax.random.bernoulli(kf, 0.5, (b,))
  x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  pad = 4
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  dx = jax.random.randint(kx, (b,), 0, 2 * pad + 1)
  dy = jax.random.randint(ky, (b,), 0, 2 * pad + 1)
  crop = lambda img, i, j: jax.lax.dynamic_slice(img, (i, j, 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(xp, dy, dx)


def _model_keys(seed: int, model_indices: np.ndarray):
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(model_indices, jnp.uint32))


def _epoch_order(keep, keys, epoch, steps: int, batch_size: int):
  """Batch indices ``int32[models, steps, batch]`` for one epoch.

  Each model's members come first in a fresh random order; a model with fewer
  members than ``steps * batch_size`` wraps around, so every model takes the
  same number of steps and sees each of its members at least once per epoch.
  """
  def one(keep_row, key):
    u = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, 1), epoch), keep_row.shape)
    order = jnp.argsort(jnp.where(keep_row, u, 2.0))
    n = keep_row.sum()
    pos = jnp.arange(steps * batch_size) % n
    return order[pos].reshape(steps, batch_size).astype(jnp.int32)
  return jax.vmap(one)(keep, keys)


@functools.lru_cache(maxsize=32)
def _compiled_fns(config: TrainConfig, num_classes: int, steps_per_epoch: int, input_shape: tuple):
  """Jitted init / epoch-order / step functions for one configuration."""
  model = _engine_model(config, input_shape, num_classes)
  defense = config._defense()
  tx = _make_optimizer(config, steps_per_epoch)
  dp = defenses_lib.dp_params(defense)
  mutable = ["batch_stats"] if models_lib.uses_batch_norm(config.model) else []
  if dp is not None and mutable:
    raise ValueError(f"DP-SGD needs per-example gradients and cannot train {config.model!r}, "
                     "which uses batch norm; pick a model without batch norm")
  compute_dtype = jnp.dtype(config.compute_dtype)

  def init_one(key):
    variables = model.init({"params": jax.random.fold_in(key, 0)},
                           jnp.zeros((1,) + input_shape, jnp.float32), train=False)
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables, tx.init(params)

  def data_loss(params, state, xb, yb, key):
    """Per-example training losses ``float32[batch]`` and the new model state."""
    variables = {"params": params, **state}
    if compute_dtype != jnp.float32:
      variables = jax.tree_util.tree_map(lambda a: a.astype(compute_dtype), variables)
    if mutable:
      logits, new_state = model.apply(variables, xb, train=True, rngs={"dropout": key}, mutable=mutable)
    else:
      logits, new_state = model.apply(variables, xb, train=True, rngs={"dropout": key}), {}
    return defenses_lib.per_example_loss(defense, logits.astype(jnp.float32), yb), new_state

  def loss_fn(params, state, xb, yb, key):
    per_example, new_state = data_loss(params, state, xb, yb, key)
    return per_example.mean() + defenses_lib.param_penalty(defense, params), new_state

  micro = microbatch_size(config, input_shape, num_classes)

  def accumulated_grads(params, state, xb, yb, key):
    # The batch's gradient as a sum over micro-batches run one after another: each micro-batch's
    # activations stay in cache (a whole conv-net batch does not fit, and a CPU's memory
    # bandwidth is a fraction of its cache's).  Same gradient up to float rounding.
    k = xb.shape[0] // micro
    xs, ys = xb.reshape(k, micro, *xb.shape[1:]), yb.reshape(k, micro)
    def loss_and_grads(xm, ym, j):
      total = lambda p: data_loss(p, state, xm, ym, jax.random.fold_in(key, j))[0].sum()
      return jax.value_and_grad(total)(params)
    def body(acc, inputs):
      return jax.tree_util.tree_map(jnp.add, acc, loss_and_grads(*inputs)), None
    # The first micro-batch seeds the carry (its types then match under shard_map).
    first = loss_and_grads(xs[0], ys[0], 0)
    (loss, grads), _ = jax.lax.scan(body, first, (xs[1:], ys[1:], jnp.arange(1, k)))
    scale = 1.0 / xb.shape[0]
    penalty, penalty_grads = jax.value_and_grad(lambda p: defenses_lib.param_penalty(defense, p))(params)
    grads = jax.tree_util.tree_map(lambda g, pg: g * scale + pg, grads, penalty_grads)
    return loss * scale + penalty, state, grads

  def grads_of(params, state, xb, yb, key):
    if dp is None and micro < xb.shape[0]:
      return accumulated_grads(params, state, xb, yb, key)
    if dp is None:
      (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, xb, yb, key)
      return loss, new_state, grads
    clip, noise = dp
    def one_example(p, xi, yi, i):
      # Each example its own dropout mask; the parameter penalty is added after clipping (it is
      # data-independent, so it costs no privacy and must not be clipped with the data term).
      variables = {"params": p, **state}
      logits = model.apply(variables, xi[None], train=True, rngs={"dropout": jax.random.fold_in(key, i)})
      return defenses_lib.per_example_loss(defense, logits.astype(jnp.float32), yi[None]).sum()
    losses, per_grads = jax.vmap(jax.value_and_grad(one_example), in_axes=(None, 0, 0, 0))(
        params, xb, yb, jnp.arange(xb.shape[0]))
    grads = defenses_lib.clip_and_noise(per_grads, jax.random.fold_in(key, 7),
                                        l2_norm_clip=clip, noise_multiplier=noise)
    penalty, penalty_grads = jax.value_and_grad(lambda p: defenses_lib.param_penalty(defense, p))(params)
    grads = jax.tree_util.tree_map(jnp.add, grads, penalty_grads)
    return losses.mean() + penalty, state, grads

  def step_one(params, state, opt_state, alive, lr, key, order, x, y, step):
    """One SGD step of one model; ``order: int32[steps, batch]``."""
    s = step % steps_per_epoch
    idx = jax.lax.dynamic_index_in_dim(order, s, keepdims=False)
    xb, yb = x[idx], y[idx]
    skey = jax.random.fold_in(jax.random.fold_in(key, 2), step)
    if config.augment:
      xb = _augment(xb, jax.random.fold_in(skey, 3))
    loss, new_state, grads = grads_of(params, state, xb, yb, skey)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, jax.tree_util.tree_map(lambda u: -lr * u, updates))
    ok = alive & jnp.isfinite(loss)
    # A diverged model keeps its last finite state instead of poisoning the chunk.
    pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
    return pick(new_params, params), pick(new_state, state), pick(new_opt, opt_state), ok, loss

  if model_axis(config, input_shape, num_classes) == "vmap":
    # (Not for "loop": a vmap over one model still lowers dots to batched dots, ~30 % slower on CPU.)
    vstep = jax.vmap(step_one, in_axes=(0, 0, 0, 0, 0, 0, 0, None, None, None))
  else:
    def vstep(params, state, opt_state, alive, lr, keys, order, x, y, step):
      # Independent per-model programs in one call: plain dots and convolutions, which XLA:CPU
      # runs faster than their batched (vmapped) forms once a model's step is large.
      per_model = (params, state, opt_state, alive, lr, keys, order)
      outs = [step_one(*jax.tree_util.tree_map(lambda a: a[i], per_model), x, y, step)
              for i in range(alive.shape[0])]
      return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)

  def multi_step(carry, lr, keys, order, x, y, step0, num_steps):
    def body(c, i):
      params, state, opt_state, alive, loss_sum = c
      params, state, opt_state, alive, loss = vstep(params, state, opt_state, alive, lr, keys, order, x, y,
                                                    step0 + i)
      return (params, state, opt_state, alive, loss_sum + jnp.where(alive, loss, 0.0)), None
    if num_steps == 1:
      return body(carry, 0)[0]
    return jax.lax.scan(body, carry, jnp.arange(num_steps))[0]

  mesh = models_mesh()
  by_model, replicated = PartitionSpec("models"), PartitionSpec()

  def sharded_multi_step(carry, lr, keys, order, x, y, step0, num_steps):
    # Each device steps only its own block of models: an unrolled step indexes single models,
    # which on a models-sharded array would otherwise make XLA gather across devices.
    local = jax.shard_map(functools.partial(multi_step, num_steps=num_steps), mesh=mesh,
                          in_specs=(by_model,) * 4 + (replicated,) * 3, out_specs=by_model)
    return local(carry, lr, keys, order, x, y, step0)

  def init_single(key):
    # One model with a leading axis of 1, for the per-model (loop) path.
    return jax.tree_util.tree_map(lambda a: a[None], init_one(key[0]))

  return dict(
      model=model,
      init=jax.jit(jax.vmap(init_one)),
      init_single=jax.jit(init_single),
      order=jax.jit(_epoch_order, static_argnums=(3, 4)),
      multi_step=jax.jit(sharded_multi_step, static_argnums=(7,), donate_argnums=(0,)),
      single_step=jax.jit(multi_step, static_argnums=(7,), donate_argnums=(0,)),
  )


UNROLL_MIN_FLOPS = 1e8  # one model's step; below it, vmapped (batched) ops win on CPU
UNROLL_MAX_MODELS = 8  # compile time grows with the models unrolled into one step


def _step_flops(config: TrainConfig, input_shape: tuple, num_classes: int) -> float:
  """Rough training FLOPs of one model's step: 6 x MACs of the forward pass x batch."""
  model = models_lib.get_model(config.model, num_classes, **config.model_kwargs_dict())
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(lambda k: model.init({"params": k}, x, train=False), jax.random.PRNGKey(0))
  try:
    cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", 0.0))
  except Exception:  # backends without cost analysis: 2 FLOPs per parameter and example
    flops = 0.0
  if not flops:
    flops = 2.0 * models_lib.count_params(variables)
  return 3.0 * flops * config.batch_size


def _engine_model(config: TrainConfig, input_shape: tuple, num_classes: int):
  """The Flax module the engine trains; vmapped convolutions on CPU use the patches form."""
  kwargs = config.model_kwargs_dict()
  if (config.model != "mlp" and "conv_impl" not in kwargs and jax.default_backend() == "cpu"
      and model_axis(config, input_shape, num_classes) == "vmap"):
    kwargs["conv_impl"] = "patches"  # a vmapped XLA convolution is a grouped one: slow on CPU
  return models_lib.get_model(config.model, num_classes, **kwargs)


@functools.lru_cache(maxsize=64)
def model_axis(config: TrainConfig, input_shape: tuple, num_classes: int) -> str:
  """How a step runs its models: ``"vmap"`` (batched ops), ``"unroll"`` (one
  program per model in a single call) or ``"loop"`` (one model per device and step).

  GPU/TPU: always vmap.  CPU: vmap while a model's step is small (batching
  helps); above ``UNROLL_MIN_FLOPS`` XLA:CPU runs batched dots and grouped
  convolutions well below plain ones, so MLPs loop and convolutional nets unroll
  (measured in ``experiments/benchmark.py``).
  """
  if config.model_axis is not None:
    return config.model_axis
  if jax.default_backend() != "cpu":
    return "vmap"
  if _step_flops(config, input_shape, num_classes) < UNROLL_MIN_FLOPS:
    return "vmap"
  # Large dense layers already keep both cores busy and unrolling them only adds copies of the
  # stacked parameters: one model per device and step.  Convolutional steps are full of small
  # ops that leave cores idle, which independent models fill.
  return "loop" if config.model == "mlp" else "unroll"


MIN_MICROBATCH = 8  # thinner micro-batches make the per-example matmuls too thin
CACHE_FRACTION = 0.25  # of a device's share of the last-level cache, for one micro-batch's residuals


@functools.lru_cache(maxsize=64)
def microbatch_size(config: TrainConfig, input_shape: tuple, num_classes: int) -> int:
  """Examples per gradient micro-batch within a step (``batch_size``: no accumulation).

  ``TrainConfig.microbatch_size`` wins.  Otherwise, on CPU, a model stepped on
  its own (``model_axis`` unroll or loop) accumulates its batch gradient over
  the largest micro-batches whose saved activations take at most
  ``CACHE_FRACTION`` of the device's share of the last-level cache: past the
  cache, this CPU's memory bandwidth is ~1/4 of the cache's (measured 3.5-4 vs
  15-30 GB/s), and a conv-net batch of 128 far exceeds it.  Never with batch
  norm (statistics would be per micro-batch), DP-SGD (already per example) or
  dropout (masks would be drawn per micro-batch); GPU/TPU: never.
  """
  if config.microbatch_size is not None:
    return int(config.microbatch_size)
  b = config.batch_size
  defense = config._defense()
  if (jax.default_backend() != "cpu" or models_lib.uses_batch_norm(config.model)
      or defenses_lib.dp_params(defense) is not None
      or config.model_kwargs_dict().get("dropout_rate")
      or model_axis(config, input_shape, num_classes) == "vmap"):
    return b
  cache = _cache_bytes_per_device()
  if not cache:
    return b
  per_example = _residual_bytes_per_example(config, input_shape, num_classes)
  sizes = [m for m in range(min(b, MIN_MICROBATCH), b + 1) if b % m == 0]
  fitting = [m for m in sizes if m * per_example <= CACHE_FRACTION * cache]
  return max(fitting) if fitting else sizes[0]  # nothing fits: the smallest allowed


def _residual_bytes_per_example(config: TrainConfig, input_shape: tuple, num_classes: int) -> float:
  """Bytes the forward pass saves for the backward pass, per example (traced, not run)."""
  model = _engine_model(config, input_shape, num_classes)
  variables = jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros((1,) + input_shape), train=False),
                             jax.random.PRNGKey(0))

  def saved(batch):
    apply = lambda v, x: model.apply(v, x, train=False)
    x = jax.ShapeDtypeStruct((batch,) + tuple(input_shape), jnp.float32)
    # The VJP function is a pytree whose leaves are the residuals.
    leaves = jax.eval_shape(lambda v, x: jax.tree_util.tree_leaves(jax.vjp(apply, v, x)[1]), variables, x)
    return sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in leaves)

  return (saved(4) - saved(2)) / 2.0


def _cache_bytes_per_device() -> int | None:
  """This process's share of the last-level CPU cache per local device (Linux sysfs), or None."""
  best = None
  for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
    try:
      with open(os.path.join(index, "level")) as f:
        level = int(f.read())
      with open(os.path.join(index, "size")) as f:
        size = _parse_size(f.read())
      with open(os.path.join(index, "shared_cpu_list")) as f:
        sharing = _count_cpus(f.read())
      with open(os.path.join(index, "type")) as f:
        kind = f.read().strip()
    except (OSError, ValueError):
      continue
    if kind != "Instruction" and size and (best is None or level > best[0]):
      best = (level, size, sharing)
  if best is None:
    return None
  _, size, sharing = best
  cpus_per_device = max(1, cpu_lib.usable_cores() // jax.local_device_count())
  return int(size * min(1.0, cpus_per_device / max(1, sharing)))


def _parse_size(text: str) -> int:
  """``"32768K"`` / ``"1M"`` / ``"512"`` -> bytes."""
  text = text.strip().upper()
  units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
  if text and text[-1] in units:
    return int(text[:-1]) * units[text[-1]]
  return int(text)


def _count_cpus(text: str) -> int:
  """Counts a sysfs CPU list like ``"0-3,8-11"``."""
  count = 0
  for part in text.strip().split(","):
    if "-" in part:
      lo, hi = part.split("-")
      count += int(hi) - int(lo) + 1
    elif part:
      count += 1
  return count


def _bytes_available() -> int:
  """Free memory for models: host RAM on CPU, the sum over local devices elsewhere."""
  devices = jax.local_devices()
  if devices[0].platform != "cpu":
    total = 0
    for device in devices:
      try:
        stats = device.memory_stats()
      except Exception:  # backends without memory stats
        stats = None
      if not stats or "bytes_limit" not in stats:
        total = 0
        break
      total += int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    if total:
      return total
  try:
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return 4 << 30


def models_mesh() -> Mesh:
  """A 1-D mesh ``("models",)`` over this process's devices."""
  return Mesh(np.asarray(jax.local_devices()), ("models",))


def _pad_to_devices(idx: np.ndarray, num_devices: int) -> np.ndarray:
  """``idx`` padded with copies of its last entry to a multiple of ``num_devices``."""
  pad = -len(idx) % num_devices
  return np.concatenate([idx, np.repeat(idx[-1:], pad)]) if pad else idx


def plan_models_per_step(config: TrainConfig, num_classes: int, input_shape: tuple, num_models: int,
                         *, memory_fraction: float = 0.4, bytes_available: int | None = None) -> int:
  """How many models fit one step: the compiled one-model step's footprint vs free memory.

  Reads the device's free memory (host RAM on CPU) and XLA's memory analysis of
  the one-model training step; falls back to a parameter-count estimate.
  """
  if config.models_per_step is not None:
    return int(min(config.models_per_step, num_models))
  axis = model_axis(dataclasses.replace(config, seed=0, learning_rate=1.0), tuple(input_shape), num_classes)
  if axis in ("unroll", "loop"):
    num_models = min(num_models, UNROLL_MAX_MODELS * jax.local_device_count())
  model = models_lib.get_model(config.model, num_classes, **config.model_kwargs_dict())
  shapes = jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros((1,) + input_shape), train=False),
                          jax.random.PRNGKey(0))
  n_params = models_lib.count_params(shapes)
  per_model = 4 * n_params * 6  # params, grads, 2 optimizer moments, updates, slack
  act = 4 * config.batch_size * int(np.prod(input_shape)) * 64  # generous activation estimate
  per_model += act
  budget = (bytes_available if bytes_available is not None else _bytes_available()) * memory_fraction
  k = int(max(1, min(num_models, budget // per_model)))
  n_dev = jax.local_device_count()
  if k < num_models and k >= n_dev:
    k -= k % n_dev  # whole models per device: padding would waste a slot on every chunk
  return k


def _default_steps_per_call(config: TrainConfig, steps_per_epoch: int) -> int:
  if config.steps_per_call is not None:
    return config.steps_per_call
  # One epoch per call on every backend: no per-step dispatch (+34 % for 16 digits MLPs on CPU).
  # XLA:CPU's own convolutions ran ~3x slower inside lax.scan, but with the Winograd convolutions
  # cnn_small gains 1.46x from the scan and wrn16-4 is unchanged (measured in benchmark.py).
  return steps_per_epoch


# ---------------------------------------------------------------------------
# public entry points

def train_chunks(x, y, keep, config: TrainConfig, *, num_classes: int, learning_rates=None,
                 chunks: Sequence[Sequence[int]] | None = None,
                 progress: Callable[[dict], None] | None = None) -> Iterator[TrainResult]:
  """Yields one :class:`TrainResult` per chunk of models, as each finishes.

  Args:
    x: ``float[examples, ...]`` training inputs (all candidates; keep selects).
    y: ``int[examples]`` labels.
    keep: ``bool[models, examples]``; model m trains only on ``x[keep[m]]``.
    config: a :class:`TrainConfig`.
    num_classes: number of classes.
    learning_rates: optional ``float[models]`` per-model peak learning rates.
    chunks: optional list of model-index lists to train (e.g. the unfinished
      ones when resuming); default: consecutive chunks of the planned size.
    progress: called after every epoch with a dict (models done, examples/s).
  """
  x, y = _check_inputs(x, y, keep, config, num_classes)
  num_models = keep.shape[0]
  if learning_rates is None:
    learning_rates = np.full(num_models, config.learning_rate, np.float32)
  learning_rates = np.asarray(learning_rates, np.float32)
  if learning_rates.shape != (num_models,):
    raise ValueError(f"learning_rates must have shape ({num_models},), got {learning_rates.shape}")
  members = keep.sum(1)
  steps_per_epoch = int(math.ceil(members.max() / config.batch_size))
  k = plan_models_per_step(config, num_classes, x.shape[1:], num_models)
  if chunks is None:
    chunks = [list(range(s, min(s + k, num_models))) for s in range(0, num_models, k)]
  # Chunk size and seed are runtime values: share the compiled functions across them.
  fns = _compiled_fns(dataclasses.replace(config, models_per_step=None, seed=0, learning_rate=1.0),
                      num_classes, steps_per_epoch, tuple(x.shape[1:]))
  spc = _default_steps_per_call(config, steps_per_epoch)
  if steps_per_epoch % spc:
    spc = math.gcd(steps_per_epoch, spc)
  looped = model_axis(dataclasses.replace(config, models_per_step=None, seed=0, learning_rate=1.0),
                      tuple(x.shape[1:]), num_classes) == "loop"
  mesh = models_mesh()
  by_model = NamedSharding(mesh, PartitionSpec("models"))
  replicated = NamedSharding(mesh, PartitionSpec())
  devices = list(mesh.devices.flat)
  if looped:  # per-device copies: each model's step runs on its own device with plain arrays
    xs = [jax.device_put(x, d) for d in devices]
    ys = [jax.device_put(y, d) for d in devices]
  else:
    xd, yd = jax.device_put(x, replicated), jax.device_put(y, replicated)
  done = 0
  for chunk in chunks:
    idx = np.asarray(chunk, np.int64)
    if idx.size == 0:
      continue
    t0 = time.perf_counter()
    padded = _pad_to_devices(idx, mesh.size)
    keys_host = np.asarray(_model_keys(config.seed, padded))
    losses = []

    def report_epoch(epoch, loss_sums):
      if progress is not None:  # the only host sync of an epoch, and only when someone listens
        jax.block_until_ready(loss_sums)
        elapsed = time.perf_counter() - t0
        progress(dict(models_done=done, chunk_models=len(idx), epoch=epoch + 1, epochs=config.epochs,
                      examples_per_s=len(idx) * (epoch + 1) * steps_per_epoch * config.batch_size / elapsed))

    if looped:
      # One model per call, each with its own arrays on device m % devices: no batched dots, no
      # stacking or slicing of the chunk's state between epochs.
      on = [devices[m % len(devices)] for m in range(len(padded))]
      keys = [jax.device_put(keys_host[m:m + 1], d) for m, d in enumerate(on)]
      carries = [fns["init_single"](k) + (jax.device_put(np.ones(1, bool), d),) for k, d in zip(keys, on)]
      lrs = [jax.device_put(learning_rates[padded[m]:padded[m] + 1], d) for m, d in enumerate(on)]
      keeps = [jax.device_put(keep[padded[m]:padded[m] + 1], d) for m, d in enumerate(on)]
      for epoch in range(config.epochs):
        zero = [jax.device_put(np.zeros(1, np.float32), d) for d in on]
        carries = [c + (z,) for c, z in zip(carries, zero)]
        orders = [fns["order"](kp, k, epoch, steps_per_epoch, config.batch_size) for kp, k in zip(keeps, keys)]
        for s in range(0, steps_per_epoch, spc):
          for m in range(len(on)):
            j = m % len(devices)
            carries[m] = fns["single_step"](carries[m], lrs[m], keys[m], orders[m], xs[j], ys[j],
                                             epoch * steps_per_epoch + s, spc)
        losses.append([c[4] for c in carries])
        carries = [c[:4] for c in carries]
        report_epoch(epoch, losses[-1])
      gather = lambda *a: jax.device_put(np.concatenate([np.asarray(b) for b in a]), by_model)
      params, state = (jax.tree_util.tree_map(gather, *[c[i] for c in carries]) for i in (0, 1))
      alive = np.concatenate([np.asarray(c[3]) for c in carries])
      losses = [np.concatenate([np.asarray(l) for l in epoch_sums]) / steps_per_epoch for epoch_sums in losses]
    else:
      keys = jax.device_put(keys_host, by_model)
      params, state, opt_state = jax.device_put(fns["init"](keys), by_model)
      alive = jax.device_put(np.ones(len(padded), bool), by_model)
      lr = jax.device_put(learning_rates[padded], by_model)
      keep_d = jax.device_put(keep[padded], by_model)
      for epoch in range(config.epochs):
        order = fns["order"](keep_d, keys, epoch, steps_per_epoch, config.batch_size)
        carry = (params, state, opt_state, alive, jax.device_put(np.zeros(len(padded), np.float32), by_model))
        for s in range(0, steps_per_epoch, spc):
          carry = fns["multi_step"](carry, lr, keys, order, xd, yd, epoch * steps_per_epoch + s, spc)
        params, state, opt_state, alive, loss_sum = carry
        losses.append(loss_sum / steps_per_epoch)
        report_epoch(epoch, loss_sum)
    n = len(idx)
    alive_np = np.asarray(alive)[:n]
    loss = np.stack([np.asarray(l)[:n] for l in losses], 1)
    loss[~alive_np] = np.nan
    variables = {"params": params, **state}
    if len(padded) != n:
      variables = jax.tree_util.tree_map(lambda a: a[:n], variables)
    jax.block_until_ready(variables)
    done += len(idx)
    yield TrainResult(idx, variables, loss, ~alive_np, time.perf_counter() - t0)


def train_models(x, y, keep, config: TrainConfig | None = None, *, num_classes: int, learning_rates=None,
                 progress=None) -> TrainResult:
  """Trains one model per row of ``keep`` and returns them stacked.

  Args:
    x: ``float[examples, ...]`` inputs; y: ``int[examples]`` labels.
    keep: ``bool[models, examples]`` membership: model m trains on ``keep[m]``.
    config: :class:`TrainConfig` (default: ``TrainConfig()``).
    num_classes: number of classes.
    learning_rates: optional ``float[models]`` per-model peak learning rates.

  Returns:
    A :class:`TrainResult` whose ``variables`` have a leading ``[models]`` axis.
  """
  config = config or TrainConfig()
  parts = list(train_chunks(x, y, keep, config, num_classes=num_classes, learning_rates=learning_rates,
                            progress=progress))
  cat = lambda *leaves: jnp.concatenate(leaves, 0)
  return TrainResult(
      model_indices=np.concatenate([p.model_indices for p in parts]),
      variables=jax.tree_util.tree_map(cat, *[p.variables for p in parts]),
      loss=np.concatenate([p.loss for p in parts]),
      diverged=np.concatenate([p.diverged for p in parts]),
      train_seconds=sum(p.train_seconds for p in parts),
  )


QUERY_SETS = ("identity", "mirror", "shifts", "shifts18")


def query_views(x, queries: str):
  """Augmented copies ``[queries, examples, ...]`` of ``x: [examples, H, W, C]``.

  ``identity``: 1 query; ``mirror``: original + horizontal flip (the LiRA
  release); ``shifts``/``shifts18``: {original, flip} x reflect-padded shifts
  by {-4, 0, 4}^2 pixels (18 queries, the LiRA paper).  Query 0 is always the
  un-augmented input.
  """
  if queries not in QUERY_SETS:
    raise ValueError(f"queries must be one of {list(QUERY_SETS)}, got {queries!r}")
  if queries == "identity":
    return x[None]
  if x.ndim != 4:
    raise ValueError(f"queries={queries!r} needs images [N, H, W, C], got shape {x.shape}")
  flips = [x, x[:, :, ::-1]]
  if queries == "mirror":
    return jnp.stack(flips)
  pad = 4
  h, w = x.shape[1:3]
  views = []
  for img in flips:
    padded = jnp.pad(img, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    for dy in (0, -4, 4):
      for dx in (0, -4, 4):
        views.append(padded[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w])
  return jnp.stack(views)


@functools.lru_cache(maxsize=16)
def _predict_fn(model):
  def apply_one(variables, xb):
    return model.apply(variables, xb, train=False)
  return jax.jit(jax.vmap(apply_one, in_axes=(0, None)))


@functools.lru_cache(maxsize=16)
def _predict_one_fn(model):
  return jax.jit(lambda variables, xb: model.apply(variables, xb, train=False))


def predict(config: TrainConfig, variables, x, *, num_classes: int, queries: str = "identity",
            batch_size: int = 1024) -> np.ndarray:
  """Logits ``float32[models, examples, queries, classes]`` of stacked models.

  Args:
    config: the :class:`TrainConfig` the models were trained with.
    variables: Flax variables with a leading ``[models]`` axis.
    x: ``float[examples, ...]`` inputs.
    queries: one of ``QUERY_SETS``; query 0 is the un-augmented input.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  x = np.asarray(x, np.float32)
  if x.shape[0] == 0:
    raise ValueError("x must contain at least one example")
  query_views(x[:1], queries)  # validates queries against the input's shape
  base = dataclasses.replace(config, seed=0, learning_rate=1.0, models_per_step=None)
  model = _engine_model(base, tuple(x.shape[1:]), num_classes)
  fn = _predict_fn(model)
  mesh = models_mesh()
  leaves = jax.tree_util.tree_leaves(variables)
  if not leaves or any(np.ndim(a) == 0 for a in leaves):
    raise ValueError("variables must be Flax variables stacked on a leading [models] axis "
                     "(e.g. TrainResult.variables), got "
                     f"{type(variables).__name__} with {len(leaves)} array leaves")
  num_models = leaves[0].shape[0]
  padded = _pad_to_devices(np.arange(num_models), mesh.size)
  if len(padded) != num_models:
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[padded], variables)
  variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec("models")))
  replicated = NamedSharding(mesh, PartitionSpec())
  per_model = fn_one = None
  if model_axis(base, tuple(x.shape[1:]), num_classes) in ("unroll", "loop"):
    # Same reason as in training: one plain program per model beats the vmapped (grouped) form.
    fn_one = _predict_one_fn(model)
    per_model = [jax.tree_util.tree_map(lambda a: a[m], variables) for m in range(num_models)]
  n = x.shape[0]
  bs = min(batch_size, n)
  out = []
  for s in range(0, n, bs):
    xb = x[s:s + bs]
    pad = bs - xb.shape[0]
    if pad:  # one compiled shape for every batch
      xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
    views = query_views(jax.device_put(xb, replicated), queries)
    if per_model is None:
      logits = jnp.stack([fn(variables, v) for v in views], 2)  # [models, batch, queries, classes]
    else:
      logits = jnp.stack([jnp.stack([fn_one(vm, v) for vm in per_model]) for v in views], 2)
    out.append(np.asarray(logits[:num_models, :bs - pad]))
  return np.concatenate(out, 1)
