"""The method under test, miajax's engine, and the timing every method shares.

Each method returns ``{"seconds" (best of the repeats), "all_seconds",
"steps", "epochs", "models", "examples", "loss": float[models, steps]}`` (the
engine: ``float[models, epochs]``, its per-epoch means).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

from bench import workloads
from miajax import engine
from miajax.engine.cpu import microbatch as cpu_microbatch


def timed(
  fn: Callable[[], Any], wl: workloads.Workload, data: dict, repeats: int
) -> dict:
  """Best of ``repeats`` timed calls of ``fn``: other jobs on a shared CPU can only slow a run down."""
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t)
  m = data["keep"].shape[0]
  return dict(
    seconds=min(times),
    all_seconds=times,
    steps=data["steps"],
    epochs=data["epochs"],
    models=m,
    examples=m * data["steps"] * wl.batch_size,
    out=out,
  )


def run_engine(
  wl: workloads.Workload,
  data: dict,
  seed: int,
  *,
  learning_rates=None,
  warmup: bool = True,
  repeats: int = 1,
) -> dict:
  """``miajax.engine.train_models`` on all models; one timed call includes init, shuffles and every chunk.

  The lowering is resolved before the warm-up (on CPU that may time the
  micro-batch candidates) and handed to every call, so the report names the
  lowering that ran.
  """
  cfg = wl.config(data["epochs"], seed)
  if learning_rates is not None:  # one per model, in the one program
    cfg = dataclasses.replace(cfg, learning_rate=list(learning_rates))
  low = engine.resolve_lowering(cfg, wl.input_shape, wl.num_classes)

  def once():
    res = engine.train_models(
      cfg,
      data["x"],
      data["y"],
      data["keep"],
      num_classes=wl.num_classes,
      lowering=low,
    )
    jax.block_until_ready(res.variables)
    return res

  if (
    warmup
  ):  # the identical call: compiles every chunk shape the timed call uses
    once()
  r = timed(once, wl, data, repeats)
  res = r.pop("out")
  m = data["keep"].shape[0]
  return dict(
    r,
    loss=np.asarray(res.loss, np.float64),
    variables=res.variables,
    models_per_step=engine.plan_models_per_step(
      cfg, wl.num_classes, wl.input_shape, m, lowering=low
    ),
    microbatch_size=low.microbatch,
    lowering=dataclasses.asdict(low),
    microbatch_timings=microbatch_timings(cfg, wl, low),
  )


def microbatch_timings(
  cfg: engine.TrainConfig, wl: workloads.Workload, low: engine.Lowering
) -> dict | None:
  """``{size: seconds per one-model step}`` the CPU lowering picked its micro-batch from; None where it
  picked none (other backends, vmapped or batch-norm models, an explicit size)."""
  if low.backend != "cpu" or not cpu_microbatch.microbatch_eligible(
    cfg, low.model_axis
  ):
    return None
  # The lowering measures under cpu_microbatch.gradient_only's key; asking with the same key
  # (positionally, as it does) returns its cached timings instead of timing again.
  timings = cpu_microbatch.microbatch_timings(
    cpu_microbatch.gradient_only(cfg),
    tuple(wl.input_shape),
    int(wl.num_classes),
    low.conv_impl,
    compute_dtype=low.compute_dtype,
  )
  return {str(size): float(t) for size, t in sorted(timings.items())}
