"""Training FLOPs per example: XLA's count of the compiled step, or the analytic direct count."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from bench import workloads
from miajax import models as models_lib


def cost_flops(compiled) -> float | None:
  """``flops`` of a compiled program's cost analysis; None where the backend has no cost model."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # backends without a cost model
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def analytic_flops_per_example(wl: workloads.Workload) -> float:
  """3 x 2 x the forward multiply-adds of every Dense and Conv, counted on a traced forward pass."""
  cfg = wl.config(1, 0)
  model = models_lib.get_model(
    wl.model, wl.num_classes, **cfg.model_kwargs_dict()
  )
  macs = [0]

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name == "__call__" and args:
      x = args[0]
      if isinstance(mod, nn.Dense):
        macs[0] += math.prod(x.shape[:-1]) * x.shape[-1] * mod.features
      elif isinstance(mod, (models_lib.Conv, nn.Conv)):
        kh, kw = mod.kernel_size
        macs[0] += (
          math.prod(out.shape[:-1]) * kh * kw * x.shape[-1] * mod.features
        )
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(
      lambda k: model.init(
        {"params": k}, jnp.zeros((1,) + wl.input_shape), train=False
      ),
      jax.random.PRNGKey(0),
    )
  return 6.0 * macs[0]
