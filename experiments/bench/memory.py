"""Peak host memory of the engine, measured in a child process (``benchmark.py --memory_child``).

A child of its own, because ``ru_maxrss`` only ever grows: in the benchmark's
process it would report the largest of everything timed before.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import time

import jax
import numpy as np

from bench import workloads
from miajax import engine

GIB = 2**30
# The entry script, whose --memory_child flag runs memory_child in a fresh interpreter.
SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmark.py"


def memory_spec(
  wl: workloads.Workload, models: int, examples: int, seed: int
) -> dict:
  """What the memory child trains: ``models`` MLPs of ``wl`` on ``examples`` candidates, two steps each."""
  return dict(
    workload=dataclasses.asdict(wl),
    models=models,
    examples=examples,
    seed=seed,
    members=min(2 * wl.batch_size, examples),
  )


def _workload(spec_workload: dict) -> workloads.Workload:
  """The Workload back from its JSON form (lists become the tuples it holds)."""
  wl_dict = dict(spec_workload)
  wl_dict["model_kwargs"] = tuple(
    (k, tuple(v) if isinstance(v, list) else v)
    for k, v in wl_dict["model_kwargs"]
  )
  wl_dict["input_shape"] = tuple(wl_dict["input_shape"])
  return workloads.Workload(**wl_dict)


def memory_child(spec: dict) -> dict:
  """Runs in the child process: the engine on ``spec``; returns what the parent cannot see."""
  wl = _workload(spec["workload"])
  rng = np.random.default_rng(spec["seed"])
  n, m = spec["examples"], spec["models"]
  x = rng.standard_normal((n,) + wl.input_shape, dtype=np.float32)
  y = rng.integers(0, wl.num_classes, n).astype(np.int32)
  keep = np.zeros((m, n), bool)
  for i in range(m):
    keep[i, rng.choice(n, spec["members"], replace=False)] = True
  cfg = wl.config(1, spec["seed"])
  k = engine.plan_models_per_step(cfg, wl.num_classes, wl.input_shape, m)
  t = time.perf_counter()
  res = engine.train_models(cfg, x, y, keep, num_classes=wl.num_classes)
  jax.block_until_ready(res.variables)
  return dict(
    models_per_step=k,
    chunks=math.ceil(m / k),
    train_seconds=time.perf_counter() - t,
    self_peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    * 1024
    / GIB,
    finite_loss=bool(np.isfinite(res.loss).all()),
  )


def run_memory(
  wl: workloads.Workload, models: int, examples: int, seed: int
) -> dict:
  """Peak RSS of a child process that trains ``models`` models with the engine (planner picks the chunk)."""
  spec = memory_spec(wl, models, examples, seed)
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), "--memory_child", json.dumps(spec)],
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONUNBUFFERED": "1"},
  )
  if proc.returncode != 0:
    raise RuntimeError(
      f"memory child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )
  child = json.loads(proc.stdout.strip().splitlines()[-1])
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB
  return dict(
    workload=wl.name,
    models=models,
    candidate_examples=examples,
    members_per_model=spec["members"],
    epochs=1,
    peak_rss_gib=peak,
    **child,
    note="peak_rss_gib: getrusage(RUSAGE_CHILDREN).ru_maxrss after the child exits (the largest "
    "child of this process); self_peak_rss_gib: the child's own RUSAGE_SELF",
  )
