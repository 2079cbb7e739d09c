"""The whole benchmark: peaks, workloads, ART, LiRA and memory, as ``BenchConfig`` asks."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from typing import Callable

import jax

from bench import art as art_lib
from bench import config as config_lib
from bench import goals as goals_lib
from bench import memory, peak, report, throughput, torch_peers, workloads
from bench import pipeline as pipeline_lib

# The report's closing notes: how every number in it is made.
METHOD_NOTES = (
  "All methods run one after another in this process after their own warm-up (compile / first steps); "
  "throughput = models x steps x batch / seconds (best of --repeats); models/hour (timed) = models / "
  "seconds x 3600 at the timed steps; models/hour (recipe) = examples/s / the examples one model sees "
  "in the workload's recipe.",
)
TRAILING_NOTES = (
  "Engine seconds are one whole train_models call (init, per-epoch shuffles and steps of every chunk).",
  "Synthetic data except mlp_digits; the machine may be shared with other jobs (see load averages).",
)


def run_lira(shape, numpy_examples: int, seed: int) -> dict:
  """miajax's leave-one-out LiRA against the numpy loop of experiments/lira_numpy.py."""
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  import lira_numpy

  models, examples, queries = shape
  r = lira_numpy.benchmark(models, examples, queries, numpy_examples, seed)
  r["speedup"] = r["numpy_extrapolated_s"] / r["miajax_warm_s"]
  r["speedup_incl_compile"] = r["numpy_extrapolated_s"] / r["miajax_s"]
  r["what"] = (
    "miajax.attacks.leave_one_out lira_online + lira_offline (variant miajax, balanced) "
    "vs lira_numpy.lira_loo_numpy"
  )
  return r


def _peers(cfg: config_lib.BenchConfig):
  """``(torch or None, its note, ART's modules or None, notes)`` for what is installed."""
  notes = []
  # PyTorch, when installed, is imported even without torch rows: its matmul peak can be the higher one.
  torch, torch_note = torch_peers.import_torch()
  if (
    torch is None
    and cfg.workloads
    and any(m in workloads.TORCH_METHODS for m in cfg.methods)
  ):
    notes.append(torch_note)
  art_mods = None
  if cfg.art:
    art_mods, art_note = art_lib.import_art()
    if art_mods is None:
      notes.append(art_note)
    elif torch is None:
      torch = art_mods["torch"]
  if torch is not None:
    torch.set_num_threads(os.cpu_count() or 1)
  return torch, torch_note, art_mods, notes


def _device(torch, tdev) -> dict:
  return dict(
    backend=jax.default_backend(),
    device_kinds=sorted({d.device_kind for d in jax.devices()}),
    device_count=jax.device_count(),
    cpu_count=os.cpu_count(),
    jax_version=jax.__version__,
    torch_version=None if torch is None else torch.__version__,
    torch_threads=None if torch is None else torch.get_num_threads(),
    torch_device=tdev,
    torch_matmul_allow_tf32=(
      None
      if tdev != "cuda"
      else bool(getattr(torch.backends.cuda.matmul, "allow_tf32", False))
    ),
    load_average_start=report.load_average(),
  )


def _matmul(torch, sizes, tdev) -> dict:
  return dict(
    jax=peak.matmul_peak(sizes)["per_size"],
    torch=None
    if torch is None
    else peak.torch_matmul(torch, sizes, device=tdev),
  )


def _final_peak(rep: dict, torch, sizes, tdev) -> tuple[float, str]:
  """Measures the peaks again and keeps the best per size: a busy machine only lowers them."""
  for lib in ("jax", "torch"):
    start = rep["matmul"][lib]
    if start is None:
      continue
    end = (
      peak.matmul_peak(sizes)["per_size"]
      if lib == "jax"
      else peak.torch_matmul(torch, sizes, device=tdev)
    )
    rep["matmul"][f"{lib}_start"], rep["matmul"][f"{lib}_end"] = start, end
    rep["matmul"][lib] = {k: max(v, end[k]) for k, v in start.items()}
  return peak.higher_peak(rep["matmul"])


def _sections(rep, cfg, table, art_mods, log, timing) -> None:
  """The ART, LiRA and memory sections ``cfg`` asks for (None where not)."""
  rep["art"] = None
  if art_mods is not None:
    t = time.perf_counter()
    rep["art"] = art_lib.run_art(
      art_mods,
      workloads.WORKLOADS[workloads.ART_WORKLOAD],
      cfg.art_models,
      cfg.art_epochs,
      cfg.art_repeats,
      cfg.seed,
      log,
      threads=cfg.art_torch_threads,
    )
    timing["art"] = time.perf_counter() - t
  rep["lira"] = None
  if cfg.lira:
    t = time.perf_counter()
    log(
      f"LiRA leave-one-out on {list(cfg.lira_shape)} vs numpy on {cfg.numpy_examples} examples ..."
    )
    rep["lira"] = run_lira(cfg.lira_shape, cfg.numpy_examples, cfg.seed)
    timing["lira"] = time.perf_counter() - t
  rep["memory"] = None
  if cfg.memory_models:
    name = workloads.MEMORY_WORKLOAD
    if name not in table:
      raise ValueError(f"memory needs workload {name!r} in the table")
    t = time.perf_counter()
    log(
      f"peak memory: {cfg.memory_models} {name} models in a child process ..."
    )
    rep["memory"] = memory.run_memory(
      table[name], cfg.memory_models, cfg.memory_examples, cfg.seed
    )
    timing["memory"] = time.perf_counter() - t


def _notes(rep, cfg, notes, torch, peak_gflops, source) -> list:
  out = (
    notes
    + report.interference_notes(rep)
    + list(METHOD_NOTES)
    + [
      f"% of peak: of the higher of the measured float32 matmul peaks of JAX and PyTorch, here {source}'s "
      f"({peak_gflops:.1f} GFLOP/s)"
      + ("; PyTorch not installed, so JAX's only" if torch is None else "")
      + "."
    ]
    + list(TRAILING_NOTES)
  )
  if cfg.plan_models:
    out.append(
      "Models per workload: as many as miajax.engine.plan_models_per_step puts in one step, "
      "at most the workload's count (--num_models), so the engine's time is one chunk."
    )
  return out


def _pipelines(cfg, pipelines, log, timing) -> dict:
  """Each whole job ``cfg.pipelines`` names, in a child process (fractions of the peak come at the end)."""
  out = {}
  for name in cfg.pipelines:
    t = time.perf_counter()
    log(
      f"{name}: the whole job in a child process ({pipelines[name].what}) ..."
    )
    out[name] = pipeline_lib.run_pipeline(
      pipelines[name], num_models=cfg.num_models, log=log
    )
    timing[name] = time.perf_counter() - t
  return out


def run(
  cfg: config_lib.BenchConfig,
  *,
  table=None,
  pipelines=None,
  log: Callable[[str], None] = print,
) -> dict:
  """Runs everything ``cfg`` asks for; returns the report and writes it when ``cfg.output_dir`` is set.

  ``table``: the workloads (default: ``cfg.preset``'s); ``pipelines``: the
  whole jobs (default :data:`bench.pipeline.PIPELINES`).
  """
  table = config_lib.PRESETS[cfg.preset]["table"] if table is None else table
  pipelines = pipeline_lib.PIPELINES if pipelines is None else pipelines
  for name in cfg.workloads:
    if name not in table:
      raise ValueError(f"workloads: unknown {name!r}; known: {list(table)}")
  for name in cfg.pipelines:
    if name not in pipelines:
      raise ValueError(
        f"workloads: unknown pipeline {name!r}; known: {list(pipelines)}"
      )
  torch, torch_note, art_mods, notes = _peers(cfg)
  tdev = None if torch is None else torch_peers.torch_device(torch)
  rep: dict = dict(preset=cfg.preset, device=_device(torch, tdev))
  timing = {}
  t = time.perf_counter()
  log(
    f"float32 matmul peaks (jax{'' if torch is None else ', torch'}), sizes {cfg.matmul_sizes} ..."
  )
  rep["matmul"] = _matmul(torch, cfg.matmul_sizes, tdev)
  start_peak, start_source = peak.higher_peak(rep["matmul"])
  timing["matmul"] = time.perf_counter() - t
  log(f"matmul peak {start_peak:.1f} GFLOP/s ({start_source})")
  rep["workloads"] = {}
  for name in cfg.workloads:
    t = time.perf_counter()
    rep["workloads"][name] = throughput.run_workload(
      table[name],
      cfg,
      start_peak,
      torch,
      torch_note,
      log,
      torch_device=tdev or "cpu",
    )
    timing[name] = time.perf_counter() - t
  rep["pipelines"] = _pipelines(cfg, pipelines, log, timing)
  _sections(rep, cfg, table, art_mods, log, timing)
  t = time.perf_counter()
  best, source = _final_peak(rep, torch, cfg.matmul_sizes, tdev)
  timing["matmul"] += time.perf_counter() - t
  rep["matmul_peak_gflops"], rep["peak_source"] = best, source
  rep["matmul_peak_gflops_by_source"] = {
    lib: None
    if rep["matmul"][lib] is None
    else max(rep["matmul"][lib].values())
    for lib in ("jax", "torch")
  }
  for w in rep["workloads"].values():
    for method in w["setup"]["methods"]:
      w[method]["fraction_of_peak"] = w[method]["gflops"] / best
  for row in rep["pipelines"].values():
    pipeline_lib.apply_peak(row, best)
  rep["device"]["load_average_end"] = report.load_average()
  rep["goals"] = goals_lib.goals(rep)
  rep["notes"] = _notes(rep, cfg, notes, torch, best, source)
  rep["config"] = dataclasses.asdict(cfg)
  rep["timing_s"] = timing
  if cfg.output_dir:
    report.write(rep, cfg.output_dir)
  return rep
