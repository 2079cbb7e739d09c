"""One workload: every method on the same data, and the rates the report gives for each."""

from __future__ import annotations

from typing import Callable

import numpy as np

from bench import config as config_lib
from bench import flops, jax_peers, methods, torch_peers, workloads
from miajax import engine
from miajax import models as models_lib

# (a, b): the report's examples/s ratio a/b, where both ran.
RATIOS = (
  ("engine", "torch_loop"),
  ("engine", "jax_loop"),
  ("engine", "torch_vmap"),
  ("torch_vmap", "torch_loop"),
  ("jax_loop", "torch_loop"),
)


def epoch_losses(result: dict) -> np.ndarray:
  """``float[models, epochs]`` mean training loss per epoch (the engine reports it so; loops per step)."""
  loss = result["loss"]
  epochs = result["epochs"]
  if loss.shape[1] == epochs:
    return loss
  return loss.reshape(loss.shape[0], epochs, -1).mean(-1)


def rates(
  result: dict,
  wl: workloads.Workload,
  flops_per_example: float,
  peak_gflops: float,
) -> dict:
  """A method's report row: its throughput, FLOP/s and fraction of peak, and its losses."""
  eps = result["examples"] / result["seconds"]
  gflops = eps * flops_per_example / 1e9
  per_epoch = epoch_losses(result)
  return dict(
    examples_per_s=eps,
    models_per_hour=3600.0 * eps / wl.recipe_examples,
    models_per_hour_timed=3600.0 * result["models"] / result["seconds"],
    gflops=gflops,
    fraction_of_peak=gflops / peak_gflops,
    seconds=result["seconds"],
    all_seconds=result["all_seconds"],
    steps=result["steps"],
    models=result["models"],
    examples=result["examples"],
    mean_first_epoch_loss=float(np.nanmean(per_epoch[:, 0])),
    mean_final_epoch_loss=float(np.nanmean(per_epoch[:, -1])),
  )


def workload_models(wl: workloads.Workload, cfg: config_lib.BenchConfig) -> int:
  """Models the engine trains: ``--num_models`` or the workload's; with ``plan_models`` at most what the
  planner puts in one step."""
  num_models = cfg.num_models or wl.num_models
  if cfg.plan_models:
    num_models = engine.plan_models_per_step(
      wl.config(1, cfg.seed), wl.num_classes, wl.input_shape, num_models
    )
  return num_models


def _setup(wl, cfg, data, num_models, loop_models, xla_flops, analytic):
  """The workload's ``setup`` section, before any method has run."""
  if wl.model != "mlp":
    # XLA counts what the engine's step executes, and Winograd convolutions execute fewer
    # multiplies than a direct convolution; rates compare against the direct-convolution work.
    xla_flops = None
  setup = dict(
    model=wl.model,
    model_kwargs={k: v for k, v in wl.model_kwargs},
    input_shape=list(wl.input_shape),
    num_classes=wl.num_classes,
    batch_size=wl.batch_size,
    num_models=num_models,
    loop_models=loop_models,
    models_source=(
      f"planner: one step's models, at most {cfg.num_models or wl.num_models}"
      if cfg.plan_models
      else "fixed"
    ),
    steps=data["steps"],
    members_per_model=data["members"],
    epochs=data["epochs"],
    data=wl.data,
    recipe=wl.recipe,
    recipe_examples_per_model=wl.recipe_examples,
    flops_per_example=xla_flops or analytic,
    flops_source="xla_cost_analysis" if xla_flops else "analytic",
    flops_per_example_xla=xla_flops,
    flops_per_example_analytic=analytic,
    methods=[],
    notes=[],
  )
  loops = [m for m in workloads.LOOP_METHODS if m in cfg.methods]
  if loop_models < num_models and loops:
    setup["notes"].append(
      f"{wl.name}: {', '.join(loops)} timed on {loop_models} of the "
      f"{num_models} models (one after the other, so per model the same); their examples/s and "
      "models/hour extrapolate per model to all"
    )
  return setup


def _run_method(method, wl, cfg, data, loop_data, step, torch, device, setup):
  """One method's raw result; the engine also fills in what ``setup`` reports about its lowering."""
  if method == "engine":
    r = methods.run_engine(wl, data, cfg.seed, repeats=cfg.repeats)
    setup["models_per_step"] = r["models_per_step"]
    setup["microbatch_size"] = r["microbatch_size"]
    setup["lowering"] = r["lowering"]
    setup["microbatch_timings_s"] = r["microbatch_timings"]
    return r
  if method == "jax_loop":
    return jax_peers.run_jax_loop(
      wl, loop_data, cfg.seed, compiled_step=step, repeats=cfg.repeats
    )
  if method == "torch_loop":
    return torch_peers.run_torch_loop(
      torch, wl, loop_data, cfg.seed, repeats=cfg.repeats, device=device
    )
  r = torch_peers.run_torch_vmap(
    torch, wl, data, cfg.seed, repeats=cfg.repeats, device=device
  )
  if models_lib.uses_batch_norm(wl.model):
    setup["notes"].append(
      "torch_vmap: batch norm without running statistics (torch.func)"
    )
  return r


def run_workload(
  wl: workloads.Workload,
  cfg: config_lib.BenchConfig,
  peak_gflops: float,
  torch=None,
  torch_note=None,
  log: Callable[[str], None] = print,
  torch_device: str = "cpu",
) -> dict:
  """Every method of ``cfg`` on ``wl``: ``{"setup", <method>: rates, "ratios"}``."""
  num_models = workload_models(wl, cfg)
  data = workloads.make_data(wl, num_models, cfg.steps or wl.steps, cfg.seed)
  loop_models = min(num_models, cfg.loop_models or wl.loop_models or num_models)
  loop_data = dict(data, keep=data["keep"][:loop_models])
  init, compiled, xla_flops = jax_peers.compile_jax_step(wl, data)
  analytic = flops.analytic_flops_per_example(wl)
  setup = _setup(wl, cfg, data, num_models, loop_models, xla_flops, analytic)
  out: dict = dict(setup=setup)
  for method in cfg.methods:
    if method in workloads.TORCH_METHODS and torch is None:
      if torch_note not in setup["notes"]:
        setup["notes"].append(torch_note)
      continue
    models = loop_models if method in workloads.LOOP_METHODS else num_models
    log(
      f"[{wl.name}] {method}: {models} models x {data['steps']} steps x batch {wl.batch_size} ..."
    )
    r = _run_method(
      method,
      wl,
      cfg,
      data,
      loop_data,
      (init, compiled),
      torch,
      torch_device,
      setup,
    )
    row = out[method] = rates(r, wl, setup["flops_per_example"], peak_gflops)
    setup["methods"].append(method)
    log(
      f"[{wl.name}] {method}: {row['examples_per_s']:.0f} examples/s, "
      f"{row['models_per_hour_timed']:.0f} models/hour at {data['steps']} steps, "
      f"{row['gflops']:.1f} GFLOP/s ({100 * row['fraction_of_peak']:.1f}% of the start peak), "
      f"{row['seconds']:.1f} s"
    )
  out["ratios"] = {
    f"{a}/{b}": out[a]["examples_per_s"] / out[b]["examples_per_s"]
    for a, b in RATIOS
    if a in out and b in out
  }
  return out
