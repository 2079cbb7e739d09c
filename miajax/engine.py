"""The shadow-model engine: train many models at once, each on its own members.

``train_models`` trains every row of a keep mask ``bool[models, examples]``:
model ``m`` only ever sees examples with ``keep[m, i]``. Models are trained
in chunks; inside a chunk one compiled step updates all of them (by default
``jax.vmap`` over a leading model axis), an epoch of steps runs in one
``lax.scan``, and data stays on the device, each step gathering its batches
there. How exactly is one :class:`miajax.lowering.Lowering` value; this
module is the same on every backend (the CPU-only forms live in
:mod:`miajax.cpu_engine`).

Determinism: model ``m`` draws every random number (initialisation,
shuffling, augmentation, dropout, DP noise) from ``fold_in(PRNGKey(seed),
m)``, so its result does not depend on the chunk it was trained in.

Devices: the models of a chunk are sharded over every local device (a 1-D
``Mesh`` named ``"models"``; each device steps its own block of models inside
``jax.shard_map``); the data is replicated. A chunk whose size does not divide
the device count is padded with copies of its last model, whose results are
dropped. In a multi-process run each process uses only its local devices.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from miajax import checkpoint as checkpoint_lib
from miajax import config as config_lib
from miajax import cpu_engine
from miajax import defenses as defenses_lib
from miajax import lowering as lowering_lib
from miajax import models as models_lib

__all__ = [
  "TrainResult",
  "train_models",
  "train_chunks",
  "plan_models_per_step",
  "models_mesh",
  "check_inputs",
  "epoch_order",
  "model_keys",
  "steps_per_epoch",
  "dp_sampling",
]

TrainConfig = config_lib.TrainConfig


@dataclasses.dataclass
class TrainResult:
  """Trained models of one chunk (or all of them).

  ``variables``: variables stacked on a leading ``[models]`` axis.
  ``loss``: ``float32[models, epochs]`` mean training loss per epoch.
  ``diverged``: ``bool[models]``; a diverged model stopped updating at the
  first non-finite loss. ``resumed_epoch``: the epoch the chunk resumed from
  a checkpoint at (0: trained from the start); ``train_seconds`` counts the
  time before the checkpoint too.
  """

  model_indices: np.ndarray
  variables: Any
  loss: np.ndarray
  diverged: np.ndarray
  train_seconds: float
  resumed_epoch: int = 0


def check_inputs(x, y, keep, config: TrainConfig, num_classes: int):
  """Validates everything before any compilation; returns ``(float32 x, int32 y)``."""
  config.validate()
  if (
    isinstance(num_classes, bool)
    or not isinstance(num_classes, (int, np.integer))
    or num_classes < 2
  ):
    raise ValueError(
      f"num_classes must be an integer >= 2, got {num_classes!r}"
    )
  if not isinstance(keep, np.ndarray) or keep.dtype != np.bool_:
    raise ValueError(
      f"keep must be a numpy bool array [models, examples], got "
      f"{type(keep).__name__} of dtype {getattr(keep, 'dtype', None)}"
    )
  if keep.ndim != 2:
    raise ValueError(
      f"keep must be 2-D [models, examples], got shape {keep.shape}"
    )
  x, y = np.asarray(x), np.asarray(y)
  if keep.shape[1] != x.shape[0]:
    raise ValueError(
      f"keep has {keep.shape[1]} columns but x has {x.shape[0]} examples; "
      "keep must be [models, examples]"
    )
  if y.shape != (x.shape[0],):
    raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(
      f"y must be in [0, {num_classes}), got range [{y.min()}, {y.max()}]"
    )
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"x must be floating point, got dtype {x.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError("x contains non-finite values (nan or inf)")
  if keep.shape[0] == 0:
    raise ValueError(
      f"keep must hold at least one model row [models, examples], got shape {keep.shape}"
    )
  members = keep.sum(1)
  if members.min() == 0:
    raise ValueError(
      f"keep: model {int(members.argmin())} has no members (an all-False row); "
      "every model needs training examples"
    )
  if members.min() < config.batch_size:
    m = int(members.argmin())
    raise ValueError(
      f"batch_size={config.batch_size} is larger than model {m}'s member count "
      f"{int(members[m])}; lower batch_size or raise pkeep"
    )
  if config.augment and x.ndim != 4:
    raise ValueError(
      f"augment=True needs images [N, H, W, C], got x of shape {x.shape}"
    )
  return x.astype(np.float32), y.astype(np.int32)


def steps_per_epoch(keep: np.ndarray, batch_size: int) -> int:
  """Steps of every model per epoch: enough batches for the model with the most members."""
  return int(math.ceil(int(keep.sum(1).max()) / batch_size))


def dp_sampling(
  keep: np.ndarray, batch_size: int, epochs: int
) -> tuple[float, int]:
  """``(sample_rate, steps)`` for DP accounting of a run of ``keep``.

  ``steps = epochs * steps_per_epoch(keep, batch_size)``, the noisy steps
  every model takes; ``sample_rate = batch_size / fewest members``: the
  smallest training set has the largest rate, hence the largest epsilon.
  The engine draws shuffled fixed-size batches, which the accountant treats
  as Poisson sampling at that rate (see :mod:`miajax.privacy`).
  """
  return (
    batch_size / int(keep.sum(1).min()),
    int(epochs) * steps_per_epoch(keep, batch_size),
  )


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
  crop = lambda img, i, j: jax.lax.dynamic_slice(
    img, (i, j, 0), (h, w, img.shape[-1])
  )
  return jax.vmap(crop)(xp, dy, dx)


def model_keys(seed: int, model_indices):
  """``key[models]``: model ``m``'s root key ``fold_in(PRNGKey(seed), m)``."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(
    jnp.asarray(model_indices, jnp.uint32)
  )


def epoch_order(keep, keys, epoch, steps: int, batch_size: int):
  """Batch indices ``int32[models, steps, batch]`` for one epoch.

  Each model's members come first in a fresh random order (from
  ``fold_in(fold_in(key, 1), epoch)``); a model with fewer members than
  ``steps * batch_size`` wraps around, so every model takes the same number
  of steps and sees each of its members at least once per epoch.
  """

  def one(keep_row, key):
    u = jax.random.uniform(
      jax.random.fold_in(jax.random.fold_in(key, 1), epoch), keep_row.shape
    )
    order = jnp.argsort(jnp.where(keep_row, u, 2.0))
    pos = jnp.arange(steps * batch_size) % keep_row.sum()
    return order[pos].reshape(steps, batch_size).astype(jnp.int32)

  return jax.vmap(one)(keep, keys)


@functools.lru_cache(maxsize=32)
def _compiled_fns(
  config: TrainConfig,
  low: lowering_lib.Lowering,
  num_classes: int,
  steps: int,
  input_shape: tuple,
):
  """Jitted init / epoch-order / step functions for one configuration and lowering."""
  fns = config_lib.model_fns(config, num_classes, conv_impl=low.conv_impl)
  defense = config._defense()
  tx, scaled = config_lib.make_optimizer(config, steps)
  # The defense's hooks, each None when unused (see miajax.defenses.Defense).
  aggregate, penalty_fn = defense.aggregate_grads, defense.param_penalty
  mutable = config_lib.state_collections(fns, input_shape)
  if aggregate is not None and mutable:
    raise ValueError(
      f"{defenses_lib.short_name(defense)} needs per-example gradients and "
      f"cannot train {config.describe_model()!r}, which updates "
      f"{list(mutable)} during training (batch norm); pick a model without it"
    )
  if mutable and low.microbatch != config.batch_size:
    raise ValueError(
      f"microbatch_size must be None or batch_size for {config.describe_model()!r}: its "
      f"{list(mutable)} would be computed per micro-batch"
    )
  dtype = jnp.dtype(low.compute_dtype)

  def init_one(key):
    variables = dict(
      fns.init(
        jax.random.fold_in(key, 0), jnp.zeros((1,) + input_shape, jnp.float32)
      )
    )
    params = variables.pop("params")
    return params, variables, tx.init(params)

  def forward(params, state, xb, key):
    variables = {"params": params, **state}
    if dtype != jnp.float32:
      variables = jax.tree_util.tree_map(lambda a: a.astype(dtype), variables)
      xb = xb.astype(dtype)
    if mutable:
      logits, new_state = fns.apply(
        variables, xb, train=True, rngs={"dropout": key}, mutable=mutable
      )
      return logits.astype(jnp.float32), {**state, **new_state}
    return fns.apply(variables, xb, train=True, rngs={"dropout": key}).astype(
      jnp.float32
    ), state

  def penalty_value_and_grad(params):
    penalty = lambda p: jnp.asarray(penalty_fn(p), jnp.float32)
    return jax.value_and_grad(penalty)(params)

  def grads_of(params, state, xb, yb, key):
    if aggregate is not None:

      def one_example(p, xi, yi, i):
        # Each example its own dropout mask; the parameter penalty is added after aggregation (it
        # is data-independent, so it costs no privacy and must not be clipped with the data term).
        logits, _ = forward(p, state, xi[None], jax.random.fold_in(key, i))
        return config_lib.example_loss(config, logits, yi[None]).sum()

      losses, per_grads = jax.vmap(
        jax.value_and_grad(one_example), in_axes=(None, 0, 0, 0)
      )(params, xb, yb, jnp.arange(xb.shape[0]))
      grads = aggregate(per_grads, jax.random.fold_in(key, 7))
      loss, new_state = losses.mean(), state
    elif low.microbatch < xb.shape[0]:
      losses_of = lambda p, xm, ym, k: config_lib.example_loss(
        config, forward(p, state, xm, k)[0], ym
      )
      loss, grads = cpu_engine.accumulated_value_and_grad(
        losses_of, params, xb, yb, key, low.microbatch
      )
      new_state = state
    else:

      def mean_loss(p):
        logits, new = forward(p, state, xb, key)
        return config_lib.example_loss(config, logits, yb).mean(), new

      (loss, new_state), grads = jax.value_and_grad(mean_loss, has_aux=True)(
        params
      )
    if penalty_fn is None:
      return loss, new_state, grads
    penalty, penalty_grads = penalty_value_and_grad(params)
    return (
      loss + penalty,
      new_state,
      jax.tree_util.tree_map(jnp.add, grads, penalty_grads),
    )

  def step_one(params, state, opt_state, alive, lr, key, order, x, y, step):
    """One optimizer step of one model; ``order: int32[steps, batch]``."""
    idx = jax.lax.dynamic_index_in_dim(order, step % steps, keepdims=False)
    xb, yb = x[idx], y[idx]
    skey = jax.random.fold_in(jax.random.fold_in(key, 2), step)
    if config.augment:
      xb = _augment(xb, jax.random.fold_in(skey, 3))
    loss, new_state, grads = grads_of(params, state, xb, yb, skey)
    updates, new_opt = tx.update(grads, opt_state, params)
    if scaled:
      updates = jax.tree_util.tree_map(lambda u: -lr * u, updates)
    new_params = optax.apply_updates(params, updates)
    ok = alive & jnp.isfinite(loss)
    # A diverged model keeps its last finite state instead of poisoning the chunk.
    pick = lambda new, old: jax.tree_util.tree_map(
      lambda a, b: jnp.where(ok, a, b), new, old
    )
    return (
      pick(new_params, params),
      pick(new_state, state),
      pick(new_opt, opt_state),
      ok,
      loss,
    )

  if low.model_axis == "vmap":
    vstep = jax.vmap(step_one, in_axes=(0,) * 7 + (None,) * 3)
  else:  # also "loop" (one model per call): a vmap over one model would still batch its dots
    vstep = cpu_engine.unrolled(step_one)

  def multi_step(carry, lr, keys, order, x, y, step0, num_steps):
    def body(c, i):
      params, state, opt_state, alive, loss_sum = c
      params, state, opt_state, alive, loss = vstep(
        params, state, opt_state, alive, lr, keys, order, x, y, step0 + i
      )
      return (
        params,
        state,
        opt_state,
        alive,
        loss_sum + jnp.where(alive, loss, 0.0),
      ), None

    if num_steps == 1:
      return body(carry, 0)[0]
    return jax.lax.scan(body, carry, jnp.arange(num_steps))[0]

  mesh = models_mesh()
  by_model, replicated = PartitionSpec("models"), PartitionSpec()

  def sharded_multi_step(carry, lr, keys, order, x, y, step0, num_steps):
    # Each device steps only its own block of models (an unrolled step indexes single models, which
    # on a models-sharded array would otherwise make XLA gather across devices).
    local = jax.shard_map(
      functools.partial(multi_step, num_steps=num_steps),
      mesh=mesh,
      in_specs=(by_model,) * 4 + (replicated,) * 3,
      out_specs=by_model,
    )
    return local(carry, lr, keys, order, x, y, step0)

  init_jit = jax.jit(init_one)

  def init_looped(keys):
    # XLA:CPU compiles the vmapped init about twice as long as one model's
    # (JAX's threefry bits dominate both, and init runs once per chunk): on
    # CPU one compiled init runs per model. Same bits as the vmapped form.
    outs = [init_jit(k) for k in np.asarray(keys)]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)

  return dict(
    init=init_looped if low.backend == "cpu" else jax.jit(jax.vmap(init_one)),
    init_abstract=jax.vmap(init_one),  # for jax.eval_shape: never compiled
    init_single=jax.jit(
      lambda key: jax.tree_util.tree_map(lambda a: a[None], init_one(key[0]))
    ),
    order=jax.jit(epoch_order, static_argnums=(3, 4)),
    multi_step=jax.jit(
      sharded_multi_step, static_argnums=(7,), donate_argnums=(0,)
    ),
    single_step=jax.jit(multi_step, static_argnums=(7,), donate_argnums=(0,)),
  )


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


def plan_models_per_step(
  config: TrainConfig,
  num_classes: int,
  input_shape: tuple,
  num_models: int,
  *,
  memory_fraction: float = 0.4,
  bytes_available: int | None = None,
  lowering: lowering_lib.Lowering | None = None,
) -> int:
  """How many models fit one step: parameters, optimizer state and activations vs free memory."""
  if config.models_per_step is not None:
    return int(min(config.models_per_step, num_models))
  low = lowering or lowering_lib.resolve_lowering(
    config, input_shape, num_classes, steps=0
  )
  if low.model_axis in ("unroll", "loop"):
    num_models = min(
      num_models, cpu_engine.UNROLL_MAX_MODELS * jax.local_device_count()
    )
  fns = config_lib.model_fns(config, num_classes)
  shapes = jax.eval_shape(
    fns.init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32),
  )
  per_model = (
    4 * models_lib.count_params(shapes) * 6
  )  # params, grads, 2 optimizer moments, updates, slack
  per_model += (
    4 * config.batch_size * int(np.prod(input_shape)) * 64
  )  # generous activation estimate
  budget = (
    bytes_available if bytes_available is not None else _bytes_available()
  ) * memory_fraction
  k = int(max(1, min(num_models, budget // per_model)))
  n_dev = jax.local_device_count()
  if k < num_models and k >= n_dev:
    k -= (
      k % n_dev
    )  # whole models per device: padding would waste a slot on every chunk
  return k


def _model_shards(params) -> tuple[tuple[int, int], ...]:
  """``(device id, models held)`` per shard of the chunk's parameters (shapes only, no transfer)."""
  if isinstance(params, list):  # one model per array (loop mode)
    return tuple(
      (next(iter(jax.tree_util.tree_leaves(p)[0].devices())).id, 1)
      for p in params
    )
  leaf = jax.tree_util.tree_leaves(params)[0]
  return tuple(
    (s.device.id, int(s.data.shape[0])) for s in leaf.addressable_shards
  )


def _pad_rows(tree, rows: int):
  """``tree``'s leaves ``[models, ...]`` padded to ``rows`` by the last model."""

  def pad(a):
    a = np.asarray(a)
    extra = rows - a.shape[0]
    return np.concatenate([a, np.repeat(a[-1:], extra, 0)]) if extra else a

  return jax.tree_util.tree_map(pad, tree)


def _host_state(model, alive, loss_sums, rows: int) -> dict:
  """A chunk's training state as host arrays ``[models, ...]``, padding dropped.

  ``model``: ``(params, state, opt_state)``; ``alive``: ``bool[models]``;
  ``loss_sums``: per epoch so far ``float32[models]`` sums of step losses.
  """
  take = lambda a: np.asarray(a)[:rows]
  return dict(
    model=jax.tree_util.tree_map(take, model),
    alive=take(alive),
    loss_sum=np.stack([take(v) for v in loss_sums], 1),
  )


def _state_like(fns, keys_host, epoch: int) -> dict:
  """Shapes and dtypes of :func:`_host_state` after ``epoch`` epochs."""
  n = len(keys_host)
  return dict(
    model=jax.eval_shape(fns["init_abstract"], keys_host),
    alive=jax.ShapeDtypeStruct((n,), np.bool_),
    loss_sum=jax.ShapeDtypeStruct((n, epoch), np.float32),
  )


def train_chunks(
  x,
  y,
  keep,
  config: TrainConfig,
  *,
  num_classes: int,
  learning_rates=None,
  chunks: Sequence[Sequence[int]] | None = None,
  progress: Callable[[dict], None] | None = None,
  lowering: lowering_lib.Lowering | None = None,
  checkpoints: checkpoint_lib.Checkpointer | None = None,
) -> Iterator[TrainResult]:
  """Yields one :class:`TrainResult` per chunk of models, as each finishes.

  Args:
    x: ``float[examples, ...]`` training inputs (all candidates; keep selects).
    y: ``int[examples]`` labels.
    keep: ``bool[models, examples]``; model m trains only on ``x[keep[m]]``.
    config: a :class:`miajax.TrainConfig`.
    num_classes: number of classes.
    learning_rates: optional ``float[models]`` peak learning rates (built-in optimizers only).
    chunks: optional list of model-index lists to train (e.g. the unfinished
      ones when resuming); default: consecutive chunks of the planned size.
    progress: called after every epoch with a dict: ``models_done``,
      ``chunk_models``, ``epoch`` (1-based) of ``epochs``, ``start_epoch``
      (where the chunk resumed, 0 if fresh), ``epoch_seconds`` (wall time of
      this epoch; the chunk's first epoch includes any compilation),
      ``epoch_examples`` (training examples of the epoch, all models),
      ``examples_per_s`` (since the chunk started) and ``model_shards`` (how
      many models of the chunk each device holds).
    lowering: default :func:`miajax.lowering.resolve_lowering` for this backend.
    checkpoints: optional :class:`miajax.checkpoint.Checkpointer`. A chunk
      with a matching checkpoint resumes from it; the chunk's state is saved
      at the epoch boundaries the checkpointer asks for; the checkpoint is
      deleted when the next chunk is asked for (the caller has then written
      this one's outputs).
  """
  x, y = check_inputs(x, y, keep, config, num_classes)
  num_models = keep.shape[0]
  if learning_rates is not None and not config.builtin_optimizer:
    raise ValueError(
      "learning_rates: per-model learning rates need a built-in optimizer ('sgd', 'adam'); "
      "a user optax transformation owns its learning rate"
    )
  if learning_rates is None:
    learning_rates = np.full(num_models, config.learning_rate, np.float32)
  learning_rates = np.asarray(learning_rates, np.float32)
  if learning_rates.shape != (num_models,):
    raise ValueError(
      f"learning_rates must have shape ({num_models},), got {learning_rates.shape}"
    )
  shape = tuple(x.shape[1:])
  steps = steps_per_epoch(keep, config.batch_size)
  # Every model of keep, not only this call's chunks: the processes and resumes of one run decide alike.
  low = lowering or lowering_lib.resolve_lowering(
    config, shape, num_classes, steps=num_models * config.epochs * steps
  )
  k = plan_models_per_step(config, num_classes, shape, num_models, lowering=low)
  if chunks is None:
    chunks = [
      list(range(s, min(s + k, num_models))) for s in range(0, num_models, k)
    ]
  # Chunk size, seed and learning rate are runtime values: share the compiled functions across them.
  fns = _compiled_fns(
    dataclasses.replace(
      config, models_per_step=None, seed=0, learning_rate=1.0
    ),
    low,
    num_classes,
    steps,
    shape,
  )
  spc = low.steps_per_call or steps
  if steps % spc:
    spc = math.gcd(steps, spc)
  mesh = models_mesh()
  by_model = NamedSharding(mesh, PartitionSpec("models"))
  replicated = NamedSharding(mesh, PartitionSpec())
  devices = list(mesh.devices.flat)
  if (
    low.model_axis == "loop"
  ):  # per-device copies: each model's step runs on its own device
    xs, ys = (
      [jax.device_put(x, d) for d in devices],
      [jax.device_put(y, d) for d in devices],
    )
  else:
    xd, yd = jax.device_put(x, replicated), jax.device_put(y, replicated)
  done = 0
  for chunk in chunks:
    idx = np.asarray(chunk, np.int64)
    if idx.size == 0:
      continue
    n = len(idx)
    t0 = time.perf_counter()
    padded = _pad_to_devices(idx, mesh.size)
    keys_host = np.asarray(model_keys(config.seed, padded))
    restored, start, spent = None, 0, 0.0
    if checkpoints is not None:
      # What the chunk's randomness and data depend on besides the tree's
      # shapes. Not the padding (a device-count matter): padded models are
      # copies of the last one.
      identity = dict(
        seed=int(config.seed),
        steps_per_epoch=steps,
        batch_size=int(config.batch_size),
        members=checkpoint_lib.digest(keep[idx]),
        learning_rates=checkpoint_lib.digest(learning_rates[idx]),
      )
      saved = checkpoints.restore(
        idx,
        config.epochs,
        identity,
        lambda epoch: _state_like(fns, keys_host[:n], epoch),
      )
      if saved is not None:
        restored = _pad_rows(saved.tree, len(padded))
        start, spent = saved.epoch, saved.train_seconds
      checkpoints.start()
    # Without a listener the host runs ahead of the device, but a time-based
    # checkpoint needs to know when an epoch really ended.
    sync = progress is not None or (
      checkpoints is not None and checkpoints.every_s > 0
    )
    clock = [t0]  # when the previous epoch ended

    def end_epoch(epoch, loss_sums, params, snapshot):
      """After the chunk's 0-based ``epoch``: save if due, then report."""
      if sync:
        jax.block_until_ready(loss_sums)
      if checkpoints is not None and checkpoints.due(epoch + 1):
        checkpoints.save(
          idx,
          epoch + 1,
          config.epochs,
          snapshot(),
          identity,
          spent + time.perf_counter() - t0,
        )
      if progress is not None:
        now = time.perf_counter()
        progress(
          dict(
            models_done=done,
            chunk_models=n,
            epoch=epoch + 1,
            epochs=config.epochs,
            start_epoch=start,
            model_shards=_model_shards(params),
            epoch_seconds=now - clock[0],
            epoch_examples=n * steps * config.batch_size,
            examples_per_s=n
            * (epoch + 1 - start)
            * steps
            * config.batch_size
            / (now - t0),
          )
        )
        clock[0] = now

    if low.model_axis == "loop":
      params, state, alive, losses = cpu_engine.run_loop_chunk(
        fns,
        padded=padded,
        keys_host=keys_host,
        learning_rates=learning_rates,
        keep=keep,
        xs=xs,
        ys=ys,
        devices=devices,
        epochs=config.epochs,
        steps_per_epoch=steps,
        steps_per_call=spc,
        batch_size=config.batch_size,
        by_model=by_model,
        report_epoch=lambda epoch, sums, params, snap: end_epoch(
          epoch, sums, params, lambda: _host_state(*snap(), n)
        ),
        start_epoch=start,
        restored=restored,
      )
    else:
      keys = jax.device_put(keys_host, by_model)
      if restored is None:
        params, state, opt_state = jax.device_put(fns["init"](keys), by_model)
        alive = jax.device_put(np.ones(len(padded), bool), by_model)
        loss_sums = []
      else:
        params, state, opt_state = jax.device_put(restored["model"], by_model)
        alive = jax.device_put(restored["alive"], by_model)
        loss_sums = list(restored["loss_sum"].T)
      lr = jax.device_put(learning_rates[padded], by_model)
      keep_d = jax.device_put(keep[padded], by_model)
      for epoch in range(start, config.epochs):
        order = fns["order"](keep_d, keys, epoch, steps, config.batch_size)
        carry = (
          params,
          state,
          opt_state,
          alive,
          jax.device_put(np.zeros(len(padded), np.float32), by_model),
        )
        for s in range(0, steps, spc):
          carry = fns["multi_step"](
            carry, lr, keys, order, xd, yd, epoch * steps + s, spc
          )
        params, state, opt_state, alive, loss_sum = carry
        loss_sums.append(loss_sum)
        end_epoch(
          epoch,
          loss_sum,
          params,
          lambda: _host_state((params, state, opt_state), alive, loss_sums, n),
        )
      # Means on the host, as the loop path takes them: a resumed chunk
      # divides the very same sums.
      losses = [np.asarray(v) / steps for v in loss_sums]
    alive_np = np.asarray(alive)[:n]
    loss = np.stack([np.asarray(v)[:n] for v in losses], 1)
    loss[~alive_np] = np.nan
    variables = {"params": params, **state}
    if len(padded) != n:
      variables = jax.tree_util.tree_map(lambda a: a[:n], variables)
    jax.block_until_ready(variables)
    done += n
    yield TrainResult(
      idx,
      variables,
      loss,
      ~alive_np,
      spent + time.perf_counter() - t0,
      resumed_epoch=start,
    )
    if checkpoints is not None:
      checkpoints.discard(idx)


def train_models(
  x,
  y,
  keep,
  config: TrainConfig | None = None,
  *,
  num_classes: int,
  learning_rates=None,
  progress=None,
  lowering: lowering_lib.Lowering | None = None,
) -> TrainResult:
  """Trains one model per row of ``keep`` and returns them stacked.

  Args:
    x: ``float[examples, ...]`` inputs; y: ``int[examples]`` labels.
    keep: ``bool[models, examples]`` membership: model m trains on ``keep[m]``.
    config: :class:`miajax.TrainConfig` (default: ``TrainConfig()``): a
      registry model or your own Flax module / ``(init, apply)`` pair, a
      built-in optimizer or your own optax transformation, an optional loss.
    num_classes: number of classes.
    learning_rates: optional ``float[models]`` per-model peak learning rates.
    lowering: how to run it (default: resolved for this backend).

  Returns:
    A :class:`TrainResult` whose ``variables`` have a leading ``[models]`` axis.
  """
  config = config or TrainConfig()
  parts = list(
    train_chunks(
      x,
      y,
      keep,
      config,
      num_classes=num_classes,
      learning_rates=learning_rates,
      progress=progress,
      lowering=lowering,
    )
  )
  cat = lambda *leaves: jnp.concatenate(leaves, 0)
  return TrainResult(
    model_indices=np.concatenate([p.model_indices for p in parts]),
    variables=jax.tree_util.tree_map(cat, *[p.variables for p in parts]),
    loss=np.concatenate([p.loss for p in parts]),
    diverged=np.concatenate([p.diverged for p in parts]),
    train_seconds=sum(p.train_seconds for p in parts),
  )
