"""What a job costs: FLOPs from XLA's own cost analysis, the machine's measured matmul peak, and the job's efficiency.

A job's efficiency is its FLOPs over ``wall time x peak``: the fraction of
the machine a run used, whatever phase (training, queries, label-only
views, attacks) the time went to. FLOPs are XLA's count of the compiled
program of one model (forward: ``apply`` on a batch; a training example:
the loss and its gradient through the engine's own
:func:`miajax.engine.step.loss_and_grads`, defenses included, the
optimizer's per-step update left out), divided by the batch. The
convolutions are counted in XLA's form whatever CPU form the run used, so
every lowering of one recipe has one count.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp

from miajax import hyperparams as hyperparams_lib
from miajax.engine import recipe
from miajax.engine.lowering import Lowering

__all__ = [
  "forward_flops_per_example",
  "train_flops_per_example",
  "matmul_peak_gflops",
  "efficiency",
]


def _cost_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # a backend without a cost model
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


@functools.lru_cache(maxsize=32)
def forward_flops_per_example(
  config, input_shape: tuple, num_classes: int, batch: int = 256
) -> float | None:
  """XLA's FLOPs of one model's inference forward pass, per example (None: no cost model)."""
  fns = recipe.model_fns(config, num_classes)
  x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
  variables = jax.eval_shape(
    fns.init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1, *input_shape), jnp.float32),
  )
  apply = lambda v, xb: fns.apply(v, xb, train=False)
  flops = _cost_flops(jax.jit(apply).lower(variables, x).compile())
  return None if flops is None else flops / batch


@functools.lru_cache(maxsize=32)
def train_flops_per_example(
  config, input_shape: tuple, num_classes: int
) -> float | None:
  """XLA's FLOPs of one model's loss and gradient on a batch, per example (None: no cost model)."""
  from miajax.engine import step as step_lib

  batch = int(config.batch_size)
  low = Lowering(
    model_axis="vmap", microbatch=batch, conv_impl="xla", backend="cpu"
  )
  prog = step_lib.program(config, low, num_classes, 1, tuple(input_shape))
  defense = prog.defense
  first = {
    path: values[0] for path, values in hyperparams_lib.collect(defense).items()
  }
  defense = hyperparams_lib.bind(defense, first)
  x1 = jnp.zeros((1, *input_shape), jnp.float32)
  variables = jax.eval_shape(
    lambda: dict(prog.fns.init(jax.random.PRNGKey(0), x1))
  )
  params = variables.pop("params")

  def loss_grads(params, model_state, xb, yb, key):
    return step_lib.loss_and_grads(
      prog, defense, params, model_state, xb, yb, key
    )

  lowered = jax.jit(loss_grads).lower(
    params,
    variables,
    jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32),
    jax.ShapeDtypeStruct((batch,), jnp.int32),
    jax.random.PRNGKey(0),
  )
  flops = _cost_flops(lowered.compile())
  return None if flops is None else flops / batch


def matmul_peak_gflops(sizes=(2048,), repeats: int = 3) -> dict:
  """Best float32 GFLOP/s of a jitted square matmul on the default device, per size and overall."""
  f = jax.jit(jnp.matmul)
  per_size = {}
  for n in sizes:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
      t = time.perf_counter()
      f(a, b).block_until_ready()
      best = min(best, time.perf_counter() - t)
    per_size[str(n)] = 2 * n**3 / best / 1e9
  return {"gflops": max(per_size.values()), "per_size": per_size}


def efficiency(flops: dict, seconds: float, peak_gflops: float) -> dict:
  """``{"flops": {...}, "total_flops", "seconds", "peak_gflops", "achieved_gflops", "fraction_of_peak", "seconds_at_peak"}``.

  ``flops``: the job's FLOPs by phase (``None`` values are left out of the
  total and reported as such).
  """
  total = float(sum(v for v in flops.values() if v is not None))
  seconds = float(seconds)
  at_peak = total / (peak_gflops * 1e9) if peak_gflops > 0 else math.nan
  return {
    "flops": {k: (None if v is None else float(v)) for k, v in flops.items()},
    "total_flops": total,
    "seconds": seconds,
    "peak_gflops": float(peak_gflops),
    "achieved_gflops": total / seconds / 1e9 if seconds > 0 else math.nan,
    "fraction_of_peak": at_peak / seconds if seconds > 0 else math.nan,
    "seconds_at_peak": at_peak,
  }
