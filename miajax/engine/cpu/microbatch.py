"""The CPU lowering's decisions: model axis by step FLOPs, gradient micro-batches by measurement.

Why it exists, measured on 2-core x86 CPUs (``experiments/benchmark.py``):
XLA:CPU runs a vmapped dot as a batched dot ~30 % slower than a plain one and
a vmapped ``nn.Conv`` as a grouped convolution, several times slower than
one convolution per model. So once one model's step is large
(:data:`UNROLL_MIN_FLOPS`) the models of a step run as separate programs:
unrolled inside one call (convolutional nets, whose many small ops leave
cores idle that independent models fill) or one model per call and device
(MLPs, whose large dots already keep the cores busy). Their 3x3
convolutions use Winograd's algorithm (:mod:`miajax.engine.cpu.winograd`), and their
gradients are summed over micro-batches run one after another, whose
activations stay in cache; the micro-batch size is picked by timing the
candidates (:func:`measure_microbatch`), because the best size depends on
the CPU (the fixed cache-share rule picked 64 on a 105 MiB-L3 machine where
32 ran 1.25x faster).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from miajax import hyperparams as hyperparams_lib
from miajax import models as models_lib
from miajax.engine import recipe as config_lib
from miajax.engine.cpu import convs

__all__ = [
  "UNROLL_MIN_FLOPS",
  "MIN_MICROBATCH",
  "MICROBATCH_MARGIN",
  "MICROBATCH_MAX_SAVING",
  "model_axis",
  "step_flops",
  "microbatch_eligible",
  "microbatch_candidates",
  "microbatch_timings",
  "whole_batch_timing",
  "measurement_pays",
  "measure_microbatch",
  "gradient_only",
  "accumulated_value_and_grad",
]

UNROLL_MIN_FLOPS = (
  1e8  # one model's step; below it, vmapped (batched) ops win on CPU
)
MIN_MICROBATCH = (
  8  # thinner micro-batches make the per-example matmuls too thin
)
MICROBATCH_MARGIN = (
  0.1  # a micro-batch must beat the whole batch by this fraction
)
# No micro-batch measured here saved more than 43 % of a step (cnn_small, batch 128: 96 ms against 168).
MICROBATCH_MAX_SAVING = 0.5
TIMED_STEPS = 3  # per candidate micro-batch size, after one compiling call; the fastest repeat counts


def _init_shapes(fns: config_lib.ModelFns, input_shape: tuple):
  return jax.eval_shape(
    fns.init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32),
  )


def step_flops(
  config: config_lib.TrainConfig, input_shape: tuple, num_classes: int
) -> float:
  """Rough training FLOPs of one model's step: 3 x the forward pass's x batch (XLA's cost analysis)."""
  fns = config_lib.model_fns(config, num_classes, conv_impl="xla")
  variables = _init_shapes(fns, input_shape)
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  try:
    cost = (
      jax.jit(lambda v, x: fns.apply(v, x, train=False))
      .lower(variables, x)
      .cost_analysis()
    )
    flops = float(
      (cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", 0.0)
    )
  except Exception:  # no cost analysis: 2 FLOPs per parameter and example
    flops = 0.0
  if not flops:
    flops = 2.0 * models_lib.count_params(variables)
  return 3.0 * flops * config.batch_size


def model_axis(
  config: config_lib.TrainConfig, input_shape: tuple, num_classes: int
) -> str:
  """CPU: ``"vmap"`` below :data:`UNROLL_MIN_FLOPS` per step, else ``"loop"`` for MLPs, ``"unroll"`` otherwise."""
  if step_flops(config, input_shape, num_classes) < UNROLL_MIN_FLOPS:
    return "vmap"
  return "loop" if config.model == "mlp" else "unroll"


def microbatch_eligible(config: config_lib.TrainConfig, axis: str) -> bool:
  """Micro-batches only where they give the same step: not vmapped (small) models, not with batch norm
  (per-micro-batch statistics), DP-SGD (already per example) or dropout (masks per micro-batch)."""
  defense = config._defense()
  return (
    axis != "vmap"
    and not config.uses_batch_norm()
    and defense.aggregate_grads is None
    and not config.model_kwargs_dict().get("dropout_rate")
    and config.batch_size >= 2 * MIN_MICROBATCH
  )


def accumulated_value_and_grad(example_losses, params, xb, yb, key, micro: int):
  """``(mean loss, gradient)`` of a batch as a sum over micro-batches run one after another.

  Args:
    example_losses: ``(params, x, y, key) -> float32[micro]``.
    params: the parameters to differentiate.
    xb, yb: ``[batch, ...]`` inputs and labels; ``micro`` must divide the batch.
    key: micro-batch ``j`` gets ``fold_in(key, j)``.
  """
  k = xb.shape[0] // micro
  xs, ys = xb.reshape(k, micro, *xb.shape[1:]), yb.reshape(k, micro)

  def one(xm, ym, j):
    return jax.value_and_grad(
      lambda p: example_losses(p, xm, ym, jax.random.fold_in(key, j)).sum()
    )(params)

  def body(acc, inputs):
    return jax.tree_util.tree_map(jnp.add, acc, one(*inputs)), None

  # The first micro-batch seeds the carry (its types then match under shard_map).
  first = one(xs[0], ys[0], 0)
  (loss, grads), _ = jax.lax.scan(
    body, first, (xs[1:], ys[1:], jnp.arange(1, k))
  )
  scale = 1.0 / xb.shape[0]
  return loss * scale, jax.tree_util.tree_map(lambda g: g * scale, grads)


def gradient_only(config: config_lib.TrainConfig) -> config_lib.TrainConfig:
  """``config`` with the fields that a gradient of the loss does not read set to fixed values.

  The micro-batch timings time that gradient alone (model, loss, defense,
  batch size, dtype): runs that differ only in optimizer, schedule, epochs,
  seed or chunking share one measurement in a process.
  """
  return dataclasses.replace(
    config,
    optimizer="sgd",
    learning_rate=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=0.0,
    epochs=1,
    schedule="constant",
    warmup_epochs=0.0,
    augment=False,
    seed=0,
    hyperparams=(),
    defense=_first_values(config.defense),
  )


def _first_values(defense):
  # One model's values stand for all: the timing is of the program, which
  # per-model values do not change.
  fields = hyperparams_lib.fields(defense)
  return hyperparams_lib.bind(
    defense, {path: getattr(o, name).values[0] for path, o, name in fields}
  )


@functools.lru_cache(maxsize=32)
def _timing_setup(config, input_shape, num_classes, conv_impl, compute_dtype):
  """One model's parameters, random inputs of the real shape and its per-example loss, for timing."""
  b = config.batch_size
  fns = config_lib.model_fns(
    config,
    num_classes,
    conv_impl=convs.conv_function(conv_impl),
    compute_dtype=compute_dtype,
  )
  dtype = jnp.dtype(compute_dtype)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(b,) + tuple(input_shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, num_classes, size=b), jnp.int32)
  # One compiled initialiser: op by op, a Winograd net's initialisation
  # compiles hundreds of small programs.
  variables = jax.jit(fns.init)(jax.random.PRNGKey(0), x[:1])
  params = variables.pop("params")

  def example_losses(p, xm, ym, key):
    v = jax.tree_util.tree_map(
      lambda a: a.astype(dtype), {"params": p, **variables}
    )
    logits = fns.apply(v, xm.astype(dtype), train=True, rngs={"dropout": key})
    return config_lib.example_loss(config, logits.astype(jnp.float32), ym)

  return example_losses, params, x, y


@functools.lru_cache(maxsize=128)
def _time_step(config, input_shape, num_classes, conv_impl, micro, dtype):
  """``(compile seconds, best seconds per step)`` of one model's gradient step in micro-batches of ``micro``."""
  example_losses, params, x, y = _timing_setup(
    config, input_shape, num_classes, conv_impl, dtype
  )
  step = jax.jit(
    functools.partial(accumulated_value_and_grad, example_losses, micro=micro)
  )
  t0 = time.perf_counter()
  jax.block_until_ready(step(params, x, y, jax.random.PRNGKey(1)))  # compile
  compile_s = time.perf_counter() - t0
  best = float("inf")
  for _ in range(TIMED_STEPS):
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, x, y, jax.random.PRNGKey(1)))
    best = min(best, time.perf_counter() - t0)
  return compile_s, best


def microbatch_candidates(batch_size: int) -> list[int]:
  """The divisors of the batch from :data:`MIN_MICROBATCH` up, the batch itself included."""
  return [
    d for d in range(MIN_MICROBATCH, batch_size + 1) if batch_size % d == 0
  ]


def microbatch_timings(
  config: config_lib.TrainConfig,
  input_shape: tuple,
  num_classes: int,
  conv_impl: str,
  *,
  compute_dtype: str = "float32",
) -> dict[int, float]:
  """Seconds of one model's gradient step per candidate micro-batch size (best of :data:`TIMED_STEPS`).

  Candidates: :func:`microbatch_candidates`. Random inputs of the real
  shape, one model, one device; each size is timed once per process and
  configuration (call it with :func:`gradient_only` of a config to share
  the lowering's measurement).
  """
  key = (config, tuple(input_shape), int(num_classes), conv_impl)
  timings = {
    m: _time_step(*key, m, compute_dtype)[1]
    for m in microbatch_candidates(config.batch_size)
  }
  logging.getLogger(__name__).info(
    "micro-batch timings (s per step) for %s: %s",
    config.describe_model(),
    {m: round(t, 4) for m, t in timings.items()},
  )
  return timings


def whole_batch_timing(
  config: config_lib.TrainConfig,
  input_shape: tuple,
  num_classes: int,
  conv_impl: str,
  *,
  compute_dtype: str = "float32",
) -> tuple[float, float]:
  """``(compile seconds, seconds per step)`` of one model's whole-batch gradient step (cached, as above)."""
  return _time_step(
    config,
    tuple(input_shape),
    int(num_classes),
    conv_impl,
    config.batch_size,
    compute_dtype,
  )


def measurement_pays(
  config: config_lib.TrainConfig,
  input_shape: tuple,
  num_classes: int,
  conv_impl: str,
  steps: int,
  *,
  compute_dtype: str = "float32",
) -> bool:
  """Whether timing the micro-batch candidates can save more than it costs over ``steps`` one-model steps.

  The whole batch is timed first (its compile time stands for each other
  candidate's); the other candidates cost about as much each, and no
  micro-batch can save more than :data:`MICROBATCH_MAX_SAVING` of a step.
  A quick run (Fashion-MNIST's MLP recipe, 8 models x 15 epochs on 1,297
  examples: 360 steps of 6 ms, at most 1 s to save against ~3 s of timing)
  then keeps the whole batch without timing the rest; a shadow-model run of
  CIFAR-sized nets always measures. ``steps == 0``
  (queries only) times nothing.
  """
  if steps <= 0:
    return False
  compile_s, step_s = whole_batch_timing(
    gradient_only(config),
    input_shape,
    num_classes,
    conv_impl,
    compute_dtype=compute_dtype,
  )
  others = len(microbatch_candidates(config.batch_size)) - 1
  cost = others * (compile_s + (TIMED_STEPS + 1) * step_s)
  saving = MICROBATCH_MAX_SAVING * steps * step_s
  if saving <= cost:
    logging.getLogger(__name__).info(
      "micro-batch not timed for %s: at most %.1f s to save over %d steps, ~%.1f s to time %d sizes",
      config.describe_model(),
      saving,
      steps,
      cost,
      others,
    )
  return saving > cost


def measure_microbatch(
  config: config_lib.TrainConfig,
  input_shape: tuple,
  num_classes: int,
  conv_impl: str,
  steps: int | None = None,
  *,
  compute_dtype: str = "float32",
) -> int:
  """The fastest micro-batch size of :func:`microbatch_timings`, or the whole batch unless beaten clearly.

  The whole batch is kept unless a micro-batch is more than
  :data:`MICROBATCH_MARGIN` faster: micro-batches change the gradient's float
  rounding, and a pick that flips between near-equal timings from one run to
  the next would make the same seed give slightly different models.
  Otherwise the fastest size wins (a tie goes to the larger size).
  ``steps``: the one-model gradient steps of the run; when given, the
  candidates are timed only if :func:`measurement_pays`.
  """
  whole = config.batch_size
  if steps is not None and not measurement_pays(
    config,
    input_shape,
    num_classes,
    conv_impl,
    steps,
    compute_dtype=compute_dtype,
  ):
    return whole
  timings = microbatch_timings(
    gradient_only(config),
    tuple(input_shape),
    int(num_classes),
    conv_impl,
    compute_dtype=compute_dtype,
  )
  best = min(timings, key=lambda m: (timings[m], -m))
  if timings[whole] <= (1.0 + MICROBATCH_MARGIN) * timings[best]:
    return whole
  return best
