"""How fast miajax trains shadow models, against how MIA code usually trains them.

  python experiments/benchmark.py --output_dir=runs/benchmark
  python experiments/benchmark.py --preset=accelerator --output_dir=runs/benchmark_gpu

For each workload, trains the same models (same data, architecture, SGD with
momentum 0.9 + weight decay + cosine schedule, batch size and step count) in
several ways, one after another in this one process, each after its own
warm-up:

  engine      miajax.train.train_models: the models of a chunk in one step, run
              as ``miajax.lowering.resolve_lowering`` decides for the backend
              (vmapped on GPU/TPU; on CPU vmapped, unrolled or one model per
              call, with micro-batch sizes picked by timing); the report
              records that lowering
  jax_loop    the same JAX step for one model, jitted, called from Python per
              step, one model after the other (how the LiRA release trains)
  torch_loop  a PyTorch model + torch.optim.SGD per model (how most MIA code trains)
  torch_vmap  torch.func model ensembling: stacked parameters, vmap(grad) and a
              hand-written SGD-momentum update

The torch rows need the optional ``bench`` extra (PyTorch); without it they are
left out with a note.  They run on the GPU when JAX does and PyTorch sees one.
Throughput = models x examples / second; models/hour (timed) = models /
seconds x 3600 at the timed steps; models/hour (recipe) = examples/s / the
examples of the workload's full training recipe; FLOP/s = examples/s x
training FLOPs per example (XLA's cost analysis of the compiled one-model
step); the fraction is of the higher of JAX's and PyTorch's float32 matmul
peaks measured in the same run (``peak_source`` says whose).  Also times LiRA
leave-one-out (online + offline) against the numpy loop of
``experiments/lira_numpy.py`` and the peak host memory of the engine training
256 Purchase-shaped MLPs in a child process.

With ``--art`` (and the ``bench`` extra), it also trains ``--art_models`` (64)
digits shadows end to end with the demo's recipe in miajax (``train_models`` +
``predict``) and in the Adversarial Robustness Toolbox
(``ShadowModels.generate_shadow_dataset`` on a PyTorch classifier), and reports
both times and both sides' member and test accuracies;
``--workloads=none --lira=false --memory_models=0`` runs only that comparison.

``--preset`` picks the defaults; flags given on the command line override them:

  cpu          (default) every workload and method, LiRA, memory and ART, sized
               for a 2-core CPU (7+ minutes)
  accelerator  cnn_small, wrn16-4 and the Purchase MLP on synthetic data; the
               engine trains as many models as the planner puts in one step
               (at most 256) against the one-model JAX and PyTorch loops,
               which time a few of the models and extrapolate per model;
               sized to finish in under 8 minutes on one H100/H200-class GPU.
               No LiRA, memory or ART sections (``--lira`` etc. add them).
               Tiny on a CPU: ``--num_models=2 --steps=2 --loop_models=1
               --matmul_sizes=256``.

Writes ``<output_dir>/report.json`` and ``report.md`` and prints the tables.

How the numbers are made:
- Every model gets exactly ``steps_per_epoch x batch`` members, so every method
  takes the same steps; the cosine schedule spans the timed steps.
- Each method is warmed up first (the engine: one identical ``train_models``
  call; the loops: two steps of a throw-away model), then timed ``--repeats``
  times; the best time counts (other jobs can only slow a run down; every
  repeat's time is in the report).  The engine's time is the whole
  ``train_models`` call (init, shuffles, every chunk).
- FLOPs per example: ``cost_analysis()['flops']`` of the compiled one-model
  step / batch for MLPs (it skips the input gradient of the first layer, so it
  is a little below the analytic 3 x 2 x forward multiply-adds, also
  reported); for convolutional nets the analytic direct-convolution count,
  because on CPU the engine's Winograd convolutions execute ~4x fewer
  multiplies.  The same figure serves every method.
- The matmul peaks (jitted square float32 matmuls in JAX, best of 5; ``a @ b``
  in PyTorch when installed, best of 3) are measured at the start and at the
  end of the run; the higher of each counts, and every fraction divides by the
  higher of the two.  On GPUs JAX's default float32 precision may use TF32
  tensor cores where PyTorch's matmul default does not; the report records
  PyTorch's setting.
- With 2 OpenMP threads on a busy 2-core machine, PyTorch slows down by up to
  ~100x in some repeats (spinning threads wait for descheduled ones); the
  report warns when the load average or the spread of repeats shows that.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
from absl import app, flags

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

from miajax import compilation_cache, cpu
from miajax import cpu_engine
from miajax import models as models_lib
from miajax import report as report_lib
from miajax import train

# ---------------------------------------------------------------------------
# workloads


@dataclasses.dataclass(frozen=True)
class Workload:
  """One model/data shape to time; ``recipe_*`` describe the full training the models/hour refer to."""

  name: str
  model: str
  model_kwargs: tuple[tuple[str, Any], ...]
  input_shape: tuple[int, ...]
  num_classes: int
  batch_size: int
  num_models: (
    int  # default models per method (with the planner on: at most this many)
  )
  steps: int  # default timed steps per model
  recipe_members: int
  recipe_epochs: int
  recipe: str
  data: str = "synthetic"  # or "digits" (the embedded scikit-learn digits)
  learning_rate: float = 0.1
  weight_decay: float = 5e-4
  loop_models: int | None = (
    None  # models the one-model loops time (None: all); their rates are per model
  )

  def config(self, epochs: int, seed: int) -> train.TrainConfig:
    return train.TrainConfig(
      model=self.model,
      model_kwargs=self.model_kwargs,
      optimizer="sgd",
      learning_rate=self.learning_rate,
      momentum=0.9,
      weight_decay=self.weight_decay,
      epochs=epochs,
      batch_size=self.batch_size,
      schedule="cosine",
      seed=seed,
    )

  @property
  def recipe_examples(self) -> int:
    """Examples one model processes in the full recipe (the engine rounds an epoch up to whole batches)."""
    return (
      math.ceil(self.recipe_members / self.batch_size)
      * self.batch_size
      * self.recipe_epochs
    )


WORKLOADS = {
  "mlp_purchase": Workload(
    "mlp_purchase",
    "mlp",
    (("activation", "tanh"), ("widths", (1024, 512, 256, 128))),
    (600,),
    100,
    batch_size=128,
    num_models=16,
    steps=60,
    recipe_members=20_000,
    recipe_epochs=30,
    recipe="Purchase100-shaped (600 features, 100 classes), 20,000 members x 30 epochs, batch 128",
  ),
  "mlp_digits": Workload(
    "mlp_digits",
    "mlp",
    (("activation", "relu"), ("widths", (256, 128))),
    (8, 8, 1),
    10,
    batch_size=64,
    num_models=16,
    steps=200,
    recipe_members=648,
    recipe_epochs=30,
    data="digits",
    recipe="scikit-learn digits, 648 members (half of 1,297) x 30 epochs, batch 64",
  ),
  "cnn_small": Workload(
    "cnn_small",
    "cnn_small",
    (),
    (32, 32, 3),
    10,
    batch_size=128,
    num_models=8,
    steps=5,
    recipe_members=25_000,
    recipe_epochs=100,
    learning_rate=0.05,
    recipe="CIFAR-10-shaped, 25,000 members x 100 epochs, batch 128",
  ),
  "wrn16-4": Workload(
    "wrn16-4",
    "wrn16-4",
    (),
    (32, 32, 3),
    10,
    batch_size=32,
    num_models=2,
    steps=3,
    recipe_members=25_000,
    recipe_epochs=100,
    learning_rate=0.05,
    recipe="CIFAR-10-shaped, 25,000 members x 100 epochs, batch 32",
  ),
}
METHODS = ("engine", "jax_loop", "torch_loop", "torch_vmap")
TORCH_METHODS = ("torch_loop", "torch_vmap")
LOOP_METHODS = (
  "jax_loop",
  "torch_loop",
)  # one model after the other: per-model rates extrapolate

# One H100/H200-class GPU, the engine at 256 models (what the planner allows there): cnn_small
# ~50-100k images/s, i.e. 0.3-0.7 s per step of 256 x 128 images; wrn16-4 ~2.6 GFLOP per image at a
# few tens of TFLOP/s in grouped convolutions, ~0.3-1 s per step of 256 x 32 images; the MLP a few
# ms per step of 256 x 128 rows.  So every timed engine call takes ~2-20 s, three calls per method
# (warm-up + 2 repeats) plus compiling fit the 8 minutes with room for a 2-3x slower GPU.  A
# one-model step is launch-bound (~1-10 ms), so 8-16 models time the loops to within a few seconds.
ACCELERATOR_WORKLOADS = {
  "cnn_small": dataclasses.replace(
    WORKLOADS["cnn_small"], num_models=256, steps=20, loop_models=16
  ),
  "wrn16-4": dataclasses.replace(
    WORKLOADS["wrn16-4"], num_models=256, steps=10, loop_models=8
  ),
  "mlp_purchase": dataclasses.replace(
    WORKLOADS["mlp_purchase"], num_models=256, steps=400, loop_models=16
  ),
}
PRESETS = {
  "cpu": dict(table=WORKLOADS, defaults={}),
  "accelerator": dict(
    table=ACCELERATOR_WORKLOADS,
    defaults=dict(
      workloads=",".join(ACCELERATOR_WORKLOADS),
      methods="engine,jax_loop,torch_loop",
      plan_models=True,
      lira=False,
      memory_models=0,
      art=False,
      repeats=2,
      matmul_sizes="4096,8192",
    ),
  ),
}
MEMORY_WORKLOAD = "mlp_purchase"
ART_WORKLOAD = (
  "mlp_digits"  # the demo's recipe, which the ART comparison trains end to end
)
GIB = 2**30


# ---------------------------------------------------------------------------
# configuration (flags are parsed into this, so the functions run without absl)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  preset: str
  workloads: tuple[str, ...]
  methods: tuple[str, ...]
  num_models: int | None
  steps: int | None
  loop_models: int | None
  plan_models: bool
  lira: bool
  lira_shape: tuple[int, int, int]
  numpy_examples: int
  memory_models: int
  memory_examples: int
  art: bool
  art_models: int
  art_epochs: int
  art_repeats: int
  art_torch_threads: tuple[int, ...]
  matmul_sizes: tuple[int, ...]
  repeats: int
  seed: int
  output_dir: str | None


def _int_list(
  name: str, value, length: int | None = None, minimum: int = 1
) -> tuple[int, ...]:
  items = value.split(",") if isinstance(value, str) else list(value)
  try:
    out = tuple(int(str(v).strip()) for v in items if str(v).strip())
  except ValueError:
    raise ValueError(
      f"{name} must be comma-separated integers, got {value!r}"
    ) from None
  if not out or (length is not None and len(out) != length):
    raise ValueError(
      f"{name} must hold {length or 'at least one'} integers, got {value!r}"
    )
  if min(out) < minimum:
    raise ValueError(f"{name} values must be >= {minimum}, got {value!r}")
  return out


def _name_list(name: str, value, allowed) -> tuple[str, ...]:
  items = value.split(",") if isinstance(value, str) else list(value)
  out = tuple(dict.fromkeys(v.strip() for v in items if v.strip()))
  if out == ("all",):
    return tuple(allowed)
  bad = [v for v in out if v not in allowed]
  if not out or bad:
    raise ValueError(
      f"{name} must be a comma list of {list(allowed)} (or 'all'), got {value!r}"
      + (f"; unknown: {bad}" if bad else "")
    )
  return out


def _optional_positive(name: str, value, minimum: int = 1):
  if value is None:
    return None
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, np.integer))
    or value < minimum
  ):
    raise ValueError(
      f"{name} must be an integer >= {minimum} (or unset for the per-workload default), "
      f"got {value!r}"
    )
  return int(value)


# What parse_config uses for a value neither the preset nor the caller gives (the cpu preset's values).
DEFAULTS = dict(
  workloads="all",
  methods="all",
  num_models=None,
  steps=None,
  loop_models=None,
  plan_models=False,
  lira=True,
  lira_shape="256,50000,2",
  numpy_examples=100,
  memory_models=256,
  memory_examples=40_000,
  art=True,
  art_models=64,
  art_epochs=None,
  art_repeats=1,
  art_torch_threads=None,
  matmul_sizes="2048,4096",
  repeats=3,
  seed=0,
)


def parse_config(
  *, preset: str = "cpu", output_dir=None, table=None, **values
) -> BenchConfig:
  """Validated :class:`BenchConfig`; raises ``ValueError`` naming the bad value.

  ``values`` (keys of :data:`DEFAULTS`, named as the flags) override the
  preset's defaults (:data:`PRESETS`), which override :data:`DEFAULTS`.
  ``workloads="none"`` runs no throughput workload (e.g. only the ART comparison);
  ``num_models``/``steps``/``loop_models=None`` mean the workload's own;
  ``plan_models``: train as many models as the planner puts in one step, at
  most ``num_models``; ``art_epochs=None`` means the digits recipe's epochs;
  ``art_torch_threads=None`` means 1 and all cores.  ``table``: the workloads
  (default: the preset's).
  """
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
  unknown = sorted(set(values) - set(DEFAULTS))
  if unknown:
    raise TypeError(
      f"parse_config: unknown arguments {unknown}; known: {sorted(DEFAULTS)}"
    )
  v = {**DEFAULTS, **PRESETS[preset]["defaults"], **values}
  table = PRESETS[preset]["table"] if table is None else table
  art_epochs = (
    WORKLOADS[ART_WORKLOAD].recipe_epochs
    if v["art_epochs"] is None
    else v["art_epochs"]
  )
  lira_shape = _int_list("lira_shape", v["lira_shape"], 3)
  if v["lira"] and lira_shape[0] < 6:
    raise ValueError(
      f"lira_shape needs >= 6 models for leave-one-out LiRA, got {lira_shape[0]}"
    )
  for name, minimum in (
    ("numpy_examples", 1),
    ("memory_models", 0),
    ("memory_examples", 2),
    ("repeats", 1),
    ("seed", 0),
    ("art_models", 2),
    ("art_repeats", 1),
  ):
    value = v[name]
    if (
      isinstance(value, bool)
      or not isinstance(value, (int, np.integer))
      or value < minimum
    ):
      raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  if (
    isinstance(art_epochs, bool)
    or not isinstance(art_epochs, (int, np.integer))
    or art_epochs < 1
  ):
    raise ValueError(f"art_epochs must be an integer >= 1, got {art_epochs!r}")
  if v["art_models"] % 2:
    # miajax's side uses paired_keep (complementary halves), which needs pairs of models.
    raise ValueError(
      f"art_models must be even (pairs of complementary halves), got {v['art_models']!r}"
    )
  workloads = v["workloads"]
  no_workloads = isinstance(workloads, str) and workloads.strip() == "none"
  return BenchConfig(
    preset=preset,
    workloads=() if no_workloads else _name_list("workloads", workloads, table),
    methods=_name_list("methods", v["methods"], METHODS),
    num_models=_optional_positive("num_models", v["num_models"]),
    steps=_optional_positive("steps", v["steps"]),
    loop_models=_optional_positive("loop_models", v["loop_models"]),
    plan_models=bool(v["plan_models"]),
    lira=bool(v["lira"]),
    lira_shape=lira_shape,
    numpy_examples=int(v["numpy_examples"]),
    memory_models=int(v["memory_models"]),
    memory_examples=int(v["memory_examples"]),
    art=bool(v["art"]),
    art_models=int(v["art_models"]),
    art_epochs=int(art_epochs),
    art_repeats=int(v["art_repeats"]),
    art_torch_threads=tuple(
      dict.fromkeys(
        (1, os.cpu_count() or 1)
        if v["art_torch_threads"] is None
        else _int_list("art_torch_threads", v["art_torch_threads"])
      )
    ),
    matmul_sizes=_int_list("matmul_sizes", v["matmul_sizes"], minimum=16),
    repeats=int(v["repeats"]),
    seed=int(v["seed"]),
    output_dir=output_dir,
  )


# ---------------------------------------------------------------------------
# data: every model gets exactly steps_per_epoch * batch members, so all methods take the same steps


def make_data(wl: Workload, num_models: int, steps: int, seed: int) -> dict:
  """Inputs, labels and a keep mask ``bool[models, examples]`` giving every model the same member count.

  Synthetic data has ``2 * steps * batch`` candidates (one epoch of ``steps``
  steps); the digits have 1,297, so an epoch is shorter and several epochs
  make up ``steps`` (rounded up to whole epochs).
  """
  rng = np.random.default_rng(seed)
  b = wl.batch_size
  if wl.data == "digits":
    from miajax import data as data_lib

    ds = data_lib.load("digits")
    x, y = ds.x_train.astype(np.float32), ds.y_train.astype(np.int32)
    if tuple(x.shape[1:]) != wl.input_shape:
      raise ValueError(
        f"workload {wl.name}: digits are {x.shape[1:]}, not {wl.input_shape}"
      )
    steps_per_epoch = max(1, min(steps, (len(x) // 2) // b))
  elif wl.data == "synthetic":
    steps_per_epoch = steps
    n = 2 * steps * b
    x = rng.standard_normal((n,) + wl.input_shape, dtype=np.float32)
    y = rng.integers(0, wl.num_classes, n).astype(np.int32)
  else:
    raise ValueError(
      f"workload {wl.name}: data must be 'synthetic' or 'digits', got {wl.data!r}"
    )
  members = steps_per_epoch * b
  if members > len(x):
    raise ValueError(
      f"workload {wl.name}: {members} members per model but only {len(x)} examples"
    )
  keep = np.zeros((num_models, len(x)), bool)
  for m in range(num_models):
    keep[m, rng.permutation(len(x))[:members]] = True
  epochs = math.ceil(steps / steps_per_epoch)
  return dict(
    x=x,
    y=y,
    keep=keep,
    steps_per_epoch=steps_per_epoch,
    epochs=epochs,
    steps=epochs * steps_per_epoch,
    members=members,
  )


# ---------------------------------------------------------------------------
# device peak


def matmul_peak(sizes=(2048, 4096), repeats: int = 5) -> dict:
  """Best float32 GFLOP/s of a jitted square matmul per size, and the best over sizes."""
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


def torch_matmul(
  torch, sizes=(2048, 4096), repeats: int = 3, device: str = "cpu"
) -> dict:
  """Best float32 GFLOP/s of PyTorch's ``a @ b`` per size, with its default matmul settings."""
  per_size = {}
  with torch.no_grad():
    for n in sizes:
      a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
      a @ b
      _torch_sync(torch, device)
      best = math.inf
      for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        _torch_sync(torch, device)
        best = min(best, time.perf_counter() - t)
      per_size[str(n)] = 2 * n**3 / best / 1e9
  return per_size


def higher_peak(matmul: dict) -> tuple[float, str]:
  """``(GFLOP/s, "jax" or "torch")``: the higher of the two measured matmul peaks (JAX's on a tie)."""
  jax_peak = max(matmul["jax"].values())
  torch_peak = max(matmul["torch"].values()) if matmul.get("torch") else None
  if torch_peak is not None and torch_peak > jax_peak:
    return torch_peak, "torch"
  return jax_peak, "jax"


# ---------------------------------------------------------------------------
# the one-model JAX step (mirrors miajax.train: mean cross-entropy, decayed weights, trace, cosine)


def _optimizer(weight_decay: float, momentum: float, total_steps: int):
  parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  parts += [
    optax.trace(decay=momentum),
    optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, total_steps)),
  ]
  return optax.chain(*parts)


def jax_single_step(wl: Workload, total_steps: int):
  """``(init(key) -> (params, state, opt_state), step(params, state, opt_state, order, s, x, y))``.

  ``order: int32[steps, batch]`` member indices of one epoch; ``s`` an int32 step of it.
  """
  cfg = wl.config(1, 0)
  model = models_lib.get_model(
    wl.model, wl.num_classes, **cfg.model_kwargs_dict()
  )
  mutable = models_lib.uses_batch_norm(wl.model)
  tx = _optimizer(wl.weight_decay, 0.9, total_steps)
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


def _cost_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # backends without a cost model
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def analytic_flops_per_example(wl: Workload) -> float:
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


# ---------------------------------------------------------------------------
# the methods; each returns {"seconds" (best of the repeats), "all_seconds", "steps", "epochs", "models",
# "examples", "loss": float[models, steps] (the engine: float[models, epochs], its per-epoch means)}


def _timed(
  fn: Callable[[], Any], wl: Workload, data: dict, repeats: int
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
  wl: Workload,
  data: dict,
  seed: int,
  *,
  learning_rates=None,
  warmup: bool = True,
  repeats: int = 1,
) -> dict:
  """``miajax.train.train_models`` on all models; one timed call includes init, shuffles and every chunk.

  The lowering is resolved before the warm-up (on CPU that may time the
  micro-batch candidates) and handed to every call, so the report names the
  lowering that ran.
  """
  cfg = wl.config(data["epochs"], seed)
  low = train.resolve_lowering(cfg, wl.input_shape, wl.num_classes)

  def once():
    res = train.train_models(
      data["x"],
      data["y"],
      data["keep"],
      cfg,
      num_classes=wl.num_classes,
      learning_rates=learning_rates,
      lowering=low,
    )
    jax.block_until_ready(res.variables)
    return res

  if (
    warmup
  ):  # the identical call: compiles every chunk shape the timed call uses
    once()
  r = _timed(once, wl, data, repeats)
  res = r.pop("out")
  m = data["keep"].shape[0]
  return dict(
    r,
    loss=np.asarray(res.loss, np.float64),
    variables=res.variables,
    models_per_step=train.plan_models_per_step(
      cfg, wl.num_classes, wl.input_shape, m, lowering=low
    ),
    microbatch_size=low.microbatch,
    lowering=dataclasses.asdict(low),
    microbatch_timings=microbatch_timings(cfg, wl, low),
  )


def microbatch_timings(
  cfg: train.TrainConfig, wl: Workload, low: train.Lowering
) -> dict | None:
  """``{size: seconds per one-model step}`` the CPU lowering picked its micro-batch from; None where it
  picked none (other backends, vmapped or batch-norm models, an explicit size)."""
  if (
    low.backend != "cpu"
    or cfg.microbatch_size is not None
    or not cpu_engine.microbatch_eligible(cfg, low.model_axis)
  ):
    return None
  # The lowering measures under cpu_engine.gradient_only's key; asking with the same key
  # (positionally, as it does) returns its cached timings instead of timing again.
  timings = cpu_engine.microbatch_timings(
    cpu_engine.gradient_only(cfg),
    tuple(wl.input_shape),
    int(wl.num_classes),
    low.conv_impl,
  )
  return {str(size): float(t) for size, t in sorted(timings.items())}


def _epoch_orders(
  keep_row: np.ndarray, epochs: int, steps_per_epoch: int, batch: int, rng
) -> list:
  members = np.flatnonzero(keep_row)
  pos = np.arange(steps_per_epoch * batch) % len(members)
  return [
    rng.permutation(members)[pos]
    .reshape(steps_per_epoch, batch)
    .astype(np.int32)
    for _ in range(epochs)
  ]


def compile_jax_step(wl: Workload, data: dict):
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
  flops = _cost_flops(compiled)
  return init, compiled, None if flops is None else flops / wl.batch_size


def run_jax_loop(
  wl: Workload,
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
  tx = _optimizer(wl.weight_decay, 0.9, data["steps"])
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
      _epoch_orders(keep[0], 1, spe, wl.batch_size, np.random.default_rng(0))[0]
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
      for order in _epoch_orders(keep[m], epochs, spe, wl.batch_size, rng):
        order = jnp.asarray(order)
        for s in range(spe):
          params, state, opt, loss = step(
            params, state, opt, order, np.int32(s), xd, yd
          )
          model_losses.append(loss)
      losses.append(jnp.stack(model_losses))
      jax.block_until_ready(params)
    return losses

  r = _timed(train_all, wl, data, repeats)
  return dict(r, out=None, loss=np.asarray(jnp.stack(r["out"]), np.float64))


# --- PyTorch (optional) ---


def torch_device(torch) -> str:
  """Where the torch rows run: the GPU when JAX runs on one and PyTorch sees one, else the CPU."""
  return (
    "cuda"
    if jax.default_backend() == "gpu" and torch.cuda.is_available()
    else "cpu"
  )


def _torch_sync(torch, device: str) -> None:
  if (
    device != "cpu"
  ):  # CUDA kernels run asynchronously; a timing must wait for them
    torch.cuda.synchronize()


def import_torch():
  """``(torch, None)`` or ``(None, reason)`` when PyTorch is not installed."""
  try:
    import torch
    import torch.func  # noqa: F401
  except ImportError as e:
    return (
      None,
      f"PyTorch not installed ({e}); torch rows skipped (pip install -e '.[bench]')",
    )
  return torch, None


def torch_model(torch, wl: Workload):
  """The workload's architecture in PyTorch (NCHW).

  Initialised at Flax's scale: weights normal with std 1/sqrt(fan_in), zero biases.
  """
  tnn = torch.nn
  kw = dict(wl.model_kwargs)
  acts = {
    "relu": tnn.ReLU,
    "tanh": tnn.Tanh,
    "leaky_relu": lambda: tnn.LeakyReLU(0.01),
    "gelu": tnn.GELU,
  }

  class GlobalMean(tnn.Module):
    def forward(self, x):
      return x.mean(dim=(2, 3))

  class WideBlock(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1, self.bn2 = (
        tnn.BatchNorm2d(cin, momentum=0.1),
        tnn.BatchNorm2d(cout, momentum=0.1),
      )
      self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.short = (
        tnn.Conv2d(cin, cout, 1, stride, bias=False)
        if (cin != cout or stride != 1)
        else None
      )

    def forward(self, x):
      y = torch.relu(self.bn1(x))
      shortcut = x if self.short is None else self.short(y)
      y = self.conv2(torch.relu(self.bn2(self.conv1(y))))
      return shortcut + y

  if wl.model == "mlp":
    act = acts[kw.get("activation", "tanh")]
    layers, width = [tnn.Flatten()], math.prod(wl.input_shape)
    for w in kw.get("widths", (1024, 512, 256, 128)):
      layers += [tnn.Linear(width, w), act()]
      width = w
    net = tnn.Sequential(*layers, tnn.Linear(width, wl.num_classes))
  elif wl.model == "cnn_small":
    h, cin, width = (
      min(wl.input_shape[:2]),
      wl.input_shape[2],
      kw.get("width", 32),
    )
    layers = []
    for block in range(3):
      cout = width * 2**block
      layers += [tnn.Conv2d(cin, cout, 3, padding=1), tnn.LeakyReLU(0.01)]
      if h >= 2:
        layers.append(tnn.AvgPool2d(2))
        h //= 2
      cin = cout
    net = tnn.Sequential(*layers, GlobalMean(), tnn.Linear(cin, wl.num_classes))
  elif wl.model.startswith("wrn"):
    depth, width = {"wrn16-4": (16, 4), "wrn28-2": (28, 2)}.get(
      wl.model, (kw.get("depth", 16), kw.get("width", 4))
    )
    layers, cin = (
      [tnn.Conv2d(wl.input_shape[2], 16, 3, padding=1, bias=False)],
      16,
    )
    for stage, cout in enumerate((16 * width, 32 * width, 64 * width)):
      for i in range((depth - 4) // 6):
        layers.append(WideBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
        cin = cout
    net = tnn.Sequential(
      *layers,
      tnn.BatchNorm2d(cin, momentum=0.1),
      tnn.ReLU(),
      GlobalMean(),
      tnn.Linear(cin, wl.num_classes),
    )
  else:
    raise ValueError(f"no PyTorch version of model {wl.model!r}")
  flax_scale_init_(torch, net)
  return net


def flax_scale_init_(torch, net) -> None:
  """Re-draws every Linear/Conv2d of ``net`` in place: weights normal, std 1/sqrt(fan_in), zero biases."""
  with torch.no_grad():
    for mod in net.modules():
      if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
        mod.weight.normal_(0.0, 1.0 / math.sqrt(mod.weight[0].numel()))
        if mod.bias is not None:
          mod.bias.zero_()


def _torch_data(torch, wl: Workload, data: dict, device: str = "cpu"):
  x = data["x"]
  if x.ndim == 4 and wl.model != "mlp":
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
  # On the device before timing, like the JAX loop's data.
  return torch.from_numpy(x).to(device), torch.from_numpy(
    data["y"].astype(np.int64)
  ).to(device)


def _cosine(t: int, total: int) -> float:
  return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


def run_torch_loop(
  torch,
  wl: Workload,
  data: dict,
  seed: int,
  *,
  warmup: bool = True,
  repeats: int = 1,
  device: str = "cpu",
) -> dict:
  """One model after the other: nn.Module + torch.optim.SGD(momentum=0.9, weight_decay) + cosine LambdaLR."""
  F = torch.nn.functional
  x, y = _torch_data(torch, wl, data, device)
  keep = data["keep"]
  num_models, spe, epochs, total = (
    keep.shape[0],
    data["steps_per_epoch"],
    data["epochs"],
    data["steps"],
  )

  def train_one(model_index: int, max_steps: int | None = None):
    torch.manual_seed(seed * 100_003 + model_index)
    net = torch_model(torch, wl).to(device)
    net.train()
    opt = torch.optim.SGD(
      net.parameters(),
      lr=wl.learning_rate,
      momentum=0.9,
      weight_decay=wl.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: _cosine(t, total))
    losses = []
    rng = np.random.default_rng([seed, model_index])
    for order in _epoch_orders(
      keep[model_index % num_models], epochs, spe, wl.batch_size, rng
    ):
      order = torch.from_numpy(order.astype(np.int64)).to(device)
      for s in range(spe):
        idx = order[s]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if max_steps is not None and len(losses) >= max_steps:
          return torch.stack(losses)
    return torch.stack(losses)

  def train_all():
    losses = [train_one(m) for m in range(num_models)]
    _torch_sync(torch, device)
    return losses

  if warmup:
    train_one(10**6, max_steps=2)
    _torch_sync(torch, device)
  r = _timed(train_all, wl, data, repeats)
  return dict(r, out=None, loss=torch.stack(r["out"]).double().cpu().numpy())


def run_torch_vmap(
  torch,
  wl: Workload,
  data: dict,
  seed: int,
  *,
  warmup: bool = True,
  repeats: int = 1,
  device: str = "cpu",
) -> dict:
  """torch.func ensembling: stack_module_state + functional_call + vmap(grad), SGD momentum by hand.

  Batch-norm layers are made stateless (``replace_all_batch_norm_modules_``: batch
  statistics in training, no running averages), as torch.func needs.
  """
  from torch import func as tfunc

  F = torch.nn.functional
  x, y = _torch_data(torch, wl, data, device)
  keep = data["keep"]
  num_models, spe, epochs, total = (
    keep.shape[0],
    data["steps_per_epoch"],
    data["epochs"],
    data["steps"],
  )
  lr, wd, mom = wl.learning_rate, wl.weight_decay, 0.9

  def build(k: int, first_index: int):
    nets = []
    for m in range(k):
      torch.manual_seed(seed * 100_003 + first_index + m)
      net = torch_model(torch, wl)
      tfunc.replace_all_batch_norm_modules_(net)
      nets.append(net.train())
    params, buffers = tfunc.stack_module_state(nets)
    params = {n: p.detach().to(device) for n, p in params.items()}
    buffers = {n: b.to(device) for n, b in buffers.items()}
    base = copy.deepcopy(nets[0]).to("meta")

    def loss_fn(p, b, xb, yb):
      return F.cross_entropy(tfunc.functional_call(base, (p, b), (xb,)), yb)

    return params, buffers, tfunc.vmap(tfunc.grad_and_value(loss_fn))

  def train_all(k: int, first_index: int, max_steps: int | None = None):
    params, buffers, grad_fn = build(k, first_index)
    velocity = {n: torch.zeros_like(p) for n, p in params.items()}
    rngs = [
      np.random.default_rng([seed, (first_index + m) % max(num_models, 1)])
      for m in range(k)
    ]
    orders = [
      _epoch_orders(
        keep[(first_index + m) % num_models],
        epochs,
        spe,
        wl.batch_size,
        rngs[m],
      )
      for m in range(k)
    ]
    losses, t = [], 0
    for epoch in range(epochs):
      order = torch.from_numpy(
        np.stack([o[epoch] for o in orders]).astype(np.int64)
      ).to(device)  # [m, steps, b]
      for s in range(spe):
        idx = order[:, s]
        grads, loss = grad_fn(params, buffers, x[idx], y[idx])
        rate = lr * _cosine(t, total)
        with torch.no_grad():
          for n, p in params.items():
            g = grads[n].add_(p, alpha=wd)
            velocity[n].mul_(mom).add_(g)
            p.sub_(velocity[n], alpha=rate)
        losses.append(loss.detach())
        t += 1
        if max_steps is not None and t >= max_steps:
          return torch.stack(losses, 1)
    return torch.stack(losses, 1)

  def timed():
    losses = train_all(num_models, 0)
    _torch_sync(torch, device)
    return losses

  if warmup:
    train_all(num_models, 10**6, max_steps=2)
    _torch_sync(torch, device)
  r = _timed(timed, wl, data, repeats)
  return dict(r, out=None, loss=r["out"].double().cpu().numpy())


# ---------------------------------------------------------------------------
# one workload


def epoch_losses(result: dict) -> np.ndarray:
  """``float[models, epochs]`` mean training loss per epoch (the engine reports it so; loops per step)."""
  loss = result["loss"]
  epochs = result["epochs"]
  if loss.shape[1] == epochs:
    return loss
  return loss.reshape(loss.shape[0], epochs, -1).mean(-1)


def _rates(
  result: dict, wl: Workload, flops_per_example: float, peak_gflops: float
) -> dict:
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


def workload_models(wl: Workload, cfg: BenchConfig) -> int:
  """Models the engine trains: ``--num_models`` or the workload's; with ``plan_models`` at most what the
  planner puts in one step."""
  num_models = cfg.num_models or wl.num_models
  if cfg.plan_models:
    num_models = train.plan_models_per_step(
      wl.config(1, cfg.seed), wl.num_classes, wl.input_shape, num_models
    )
  return num_models


def run_workload(
  wl: Workload,
  cfg: BenchConfig,
  peak_gflops: float,
  torch=None,
  torch_note=None,
  log: Callable[[str], None] = print,
  torch_device: str = "cpu",
) -> dict:
  num_models = workload_models(wl, cfg)
  data = make_data(wl, num_models, cfg.steps or wl.steps, cfg.seed)
  loop_models = min(num_models, cfg.loop_models or wl.loop_models or num_models)
  loop_data = dict(data, keep=data["keep"][:loop_models])
  init, compiled, xla_flops = compile_jax_step(wl, data)
  analytic = analytic_flops_per_example(wl)
  if wl.model != "mlp":
    # XLA counts what the engine's step executes, and Winograd convolutions execute fewer
    # multiplies than a direct convolution; rates compare against the direct-convolution work.
    xla_flops = None
  flops = xla_flops or analytic
  out: dict = dict(
    setup=dict(
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
      flops_per_example=flops,
      flops_source="xla_cost_analysis" if xla_flops else "analytic",
      flops_per_example_xla=xla_flops,
      flops_per_example_analytic=analytic,
      methods=[],
      notes=[],
    )
  )
  if loop_models < num_models and any(m in LOOP_METHODS for m in cfg.methods):
    out["setup"]["notes"].append(
      f"{wl.name}: {', '.join(m for m in LOOP_METHODS if m in cfg.methods)} timed on {loop_models} of the "
      f"{num_models} models (one after the other, so per model the same); their examples/s and "
      "models/hour extrapolate per model to all"
    )
  for method in cfg.methods:
    if method in TORCH_METHODS and torch is None:
      if torch_note not in out["setup"]["notes"]:
        out["setup"]["notes"].append(torch_note)
      continue
    models = loop_models if method in LOOP_METHODS else num_models
    log(
      f"[{wl.name}] {method}: {models} models x {data['steps']} steps x batch {wl.batch_size} ..."
    )
    if method == "engine":
      r = run_engine(wl, data, cfg.seed, repeats=cfg.repeats)
      out["setup"]["models_per_step"] = r["models_per_step"]
      out["setup"]["microbatch_size"] = r["microbatch_size"]
      out["setup"]["lowering"] = r["lowering"]
      out["setup"]["microbatch_timings_s"] = r["microbatch_timings"]
    elif method == "jax_loop":
      r = run_jax_loop(
        wl,
        loop_data,
        cfg.seed,
        compiled_step=(init, compiled),
        repeats=cfg.repeats,
      )
    elif method == "torch_loop":
      r = run_torch_loop(
        torch, wl, loop_data, cfg.seed, repeats=cfg.repeats, device=torch_device
      )
    else:
      r = run_torch_vmap(
        torch, wl, data, cfg.seed, repeats=cfg.repeats, device=torch_device
      )
      if models_lib.uses_batch_norm(wl.model):
        out["setup"]["notes"].append(
          "torch_vmap: batch norm without running statistics (torch.func)"
        )
    out[method] = _rates(r, wl, flops, peak_gflops)
    out["setup"]["methods"].append(method)
    log(
      f"[{wl.name}] {method}: {out[method]['examples_per_s']:.0f} examples/s, "
      f"{out[method]['models_per_hour_timed']:.0f} models/hour at {data['steps']} steps, "
      f"{out[method]['gflops']:.1f} GFLOP/s ({100 * out[method]['fraction_of_peak']:.1f}% of the start peak), "
      f"{out[method]['seconds']:.1f} s"
    )
  ratios = {}
  for a, b in (
    ("engine", "torch_loop"),
    ("engine", "jax_loop"),
    ("engine", "torch_vmap"),
    ("torch_vmap", "torch_loop"),
    ("jax_loop", "torch_loop"),
  ):
    if a in out and b in out:
      ratios[f"{a}/{b}"] = out[a]["examples_per_s"] / out[b]["examples_per_s"]
  out["ratios"] = ratios
  return out


# ---------------------------------------------------------------------------
# LiRA and memory


def run_lira(shape, numpy_examples: int, seed: int) -> dict:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
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


def memory_spec(wl: Workload, models: int, examples: int, seed: int) -> dict:
  """What the memory child trains: ``models`` MLPs of ``wl`` on ``examples`` candidates, two steps each."""
  return dict(
    workload=dataclasses.asdict(wl),
    models=models,
    examples=examples,
    seed=seed,
    members=min(2 * wl.batch_size, examples),
  )


def memory_child(spec: dict) -> dict:
  """Runs in the child process: the engine on ``spec``; returns what the parent cannot see."""
  wl_dict = dict(spec["workload"])
  wl_dict["model_kwargs"] = tuple(
    (k, tuple(v) if isinstance(v, list) else v)
    for k, v in wl_dict["model_kwargs"]
  )
  wl_dict["input_shape"] = tuple(wl_dict["input_shape"])
  wl = Workload(**wl_dict)
  rng = np.random.default_rng(spec["seed"])
  n, m = spec["examples"], spec["models"]
  x = rng.standard_normal((n,) + wl.input_shape, dtype=np.float32)
  y = rng.integers(0, wl.num_classes, n).astype(np.int32)
  keep = np.zeros((m, n), bool)
  for i in range(m):
    keep[i, rng.choice(n, spec["members"], replace=False)] = True
  cfg = wl.config(1, spec["seed"])
  k = train.plan_models_per_step(cfg, wl.num_classes, wl.input_shape, m)
  t = time.perf_counter()
  res = train.train_models(x, y, keep, cfg, num_classes=wl.num_classes)
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


def run_memory(wl: Workload, models: int, examples: int, seed: int) -> dict:
  """Peak RSS of a child process that trains ``models`` models with the engine (planner picks the chunk)."""
  spec = memory_spec(wl, models, examples, seed)
  script = str(pathlib.Path(__file__).resolve())
  proc = subprocess.run(
    [sys.executable, script, "--memory_child", json.dumps(spec)],
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


# ---------------------------------------------------------------------------
# end to end against the Adversarial Robustness Toolbox (optional)


def import_art():
  """``(modules, None)`` or ``(None, reason)`` when ART or PyTorch is not installed."""
  try:
    import torch
    import art
    from art.attacks.inference.membership_inference import ShadowModels
    from art.estimators.classification import PyTorchClassifier
  except ImportError as e:
    return None, (
      f"ART or PyTorch not installed ({e}); ART comparison skipped "
      "(pip install -e '.[bench]')"
    )
  return dict(
    torch=torch,
    version=art.__version__,
    ShadowModels=ShadowModels,
    PyTorchClassifier=PyTorchClassifier,
  ), None


def art_template(mods: dict, wl: Workload, epochs: int):
  """An untrained ART ``PyTorchClassifier`` that trains with ``wl``'s recipe when ``ShadowModels`` fits it.

  ``ShadowModels`` calls ``fit(x, y)`` with no arguments (so ART's defaults,
  batch 128 and 10 epochs without a schedule, would apply) and clones the
  template as ``type(self)(model, loss, ...)`` followed by ``reset()``
  (PyTorch's default initialisation).  A subclass is the only way to reach
  either: its ``fit`` hands ART's own ``fit`` the batch size, the epochs and
  an epoch-wise cosine scheduler; its ``reset`` draws weights at Flax's scale
  like :func:`torch_model`.  ART's training loop itself is untouched.
  """
  torch = mods["torch"]

  class RecipeClassifier(mods["PyTorchClassifier"]):
    def fit(self, x, y, **kwargs):
      # ART steps the scheduler once per epoch; the closest it gets to the engine's per-step
      # cosine is each epoch at the cosine of its midpoint.
      sched = torch.optim.lr_scheduler.LambdaLR(
        self._optimizer, lambda e: _cosine(e + 0.5, epochs)
      )
      super().fit(
        x,
        y,
        **{
          **dict(batch_size=wl.batch_size, nb_epochs=epochs, scheduler=sched),
          **kwargs,
        },
      )

    def reset(self):
      flax_scale_init_(torch, self.model)

  net = torch_model(torch, wl)
  opt = torch.optim.SGD(
    net.parameters(),
    lr=wl.learning_rate,
    momentum=0.9,
    weight_decay=wl.weight_decay,
  )
  return RecipeClassifier(
    model=net,
    loss=torch.nn.CrossEntropyLoss(),
    optimizer=opt,
    input_shape=wl.input_shape,
    nb_classes=wl.num_classes,
  )


def art_miajax_child(models: int, epochs: int, seed: int) -> None:
  """In a fresh process: one timed miajax call of the ART comparison, as JSON on stdout.

  The process starts as a user's script does (one device per core, the
  persistent compilation cache of ``$MIAJAX_COMPILATION_CACHE``); the timing
  covers ``train_models`` + ``predict``, as in :func:`run_art`.
  """
  cpu.use_all_cores()
  cache = compilation_cache.use_compilation_cache()
  from miajax import data as data_lib

  wl = WORKLOADS[ART_WORKLOAD]
  ds = data_lib.load("digits")
  x, y = ds.x_train.astype(np.float32), ds.y_train.astype(np.int64)
  cfg = wl.config(epochs, seed)
  keep = data_lib.paired_keep(models, len(x), seed=seed)
  t = time.perf_counter()
  res = train.train_models(x, y, keep, cfg, num_classes=wl.num_classes)
  logits = train.predict(cfg, res.variables, x, num_classes=wl.num_classes)
  seconds = time.perf_counter() - t
  acc = float((np.asarray(logits)[:, :, 0].argmax(-1) == y).mean())
  print(json.dumps(dict(seconds=seconds, pool_accuracy=acc, cache=cache)))


def _fresh_process_seconds(
  models: int, epochs: int, seed: int, cache_dir: str
) -> dict:
  code = (
    f"import sys; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r}); "
    f"import benchmark; benchmark.art_miajax_child({models}, {epochs}, {seed})"
  )
  env = dict(os.environ, MIAJAX_COMPILATION_CACHE=cache_dir)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    env=env,
    check=False,
  )
  if out.returncode:
    raise RuntimeError(
      f"the fresh-process miajax run failed:\n{out.stderr[-3000:]}"
    )
  return json.loads(out.stdout.strip().splitlines()[-1])


def run_art(
  mods: dict,
  wl: Workload,
  models: int,
  epochs: int,
  repeats: int,
  seed: int,
  log: Callable[[str], None] = print,
  threads: tuple[int, ...] | None = None,
) -> dict:
  """Trains and queries ``models`` digits shadows with miajax and with ART's ``ShadowModels``; times both.

  miajax: ``train_models`` + ``predict`` (logits on the whole pool), halves from
  ``paired_keep``; its first call includes compilation, then ``repeats`` warm
  calls.  ART: ``repeats`` calls of ``generate_shadow_dataset(x, y, 0.5)``
  (trains the shadows one after the other and predicts their members and
  non-members) per torch thread count in ``threads`` (default: 1 and all
  cores), each with fresh clones; ART's best counts.  Accuracies are measured
  outside the timings, from the last call of each side.
  """
  from miajax import data as data_lib

  torch = mods["torch"]
  ds = data_lib.load("digits")
  x, y = ds.x_train.astype(np.float32), ds.y_train.astype(np.int64)
  x_test, y_test = ds.x_test.astype(np.float32), np.asarray(ds.y_test)
  if tuple(x.shape[1:]) != wl.input_shape:
    raise ValueError(
      f"ART comparison: digits are {x.shape[1:]}, not {wl.input_shape}"
    )
  cfg = wl.config(epochs, seed)
  keep = data_lib.paired_keep(models, len(x), seed=seed)

  def miajax_once():
    res = train.train_models(x, y, keep, cfg, num_classes=wl.num_classes)
    return res, train.predict(cfg, res.variables, x, num_classes=wl.num_classes)

  # Fresh processes first, as a user's script starts: with an empty
  # compilation cache (everything compiles), then with the cache that run
  # filled (a later run of the same recipe).
  with tempfile.TemporaryDirectory(prefix="miajax-art-xla-") as cache_dir:
    log(
      f"[art] miajax: {models} digits shadows, fresh process, empty cache ..."
    )
    empty = _fresh_process_seconds(models, epochs, seed, cache_dir)
    log(f"[art] miajax: {empty['seconds']:.1f} s; again, cache filled ...")
    cached = _fresh_process_seconds(models, epochs, seed, cache_dir)
    log(f"[art] miajax: {cached['seconds']:.1f} s")
  log(
    f"[art] miajax: {models} digits shadows x {epochs} epochs, first call (compiles) ..."
  )
  t = time.perf_counter()
  miajax_once()
  first = time.perf_counter() - t
  mj_times = []
  for _ in range(repeats):
    t = time.perf_counter()
    res, logits = miajax_once()
    mj_times.append(time.perf_counter() - t)
  log(f"[art] miajax: first call {first:.1f} s, warm {min(mj_times):.1f} s")
  correct = logits[:, :, 0].argmax(-1) == y
  mj_member_acc = (correct & keep).sum(1) / keep.sum(1)
  test_logits = train.predict(
    cfg, res.variables, x_test, num_classes=wl.num_classes
  )
  mj_test_acc = (test_logits[:, :, 0].argmax(-1) == y_test).mean(1)

  # One thread is ART's safe setting here: torch's OpenMP threads on a shared 2-core machine stall
  # waiting for each other (8 digits shadows: 0.6 s on 1 thread, 0.7-9 s on 2 in one session).
  threads = tuple(threads or dict.fromkeys((1, os.cpu_count() or 1)))
  art_times, art_threads = [], []
  saved_threads = torch.get_num_threads()
  try:
    for n_threads in threads:
      torch.set_num_threads(n_threads)
      for r in range(repeats):
        log(
          f"[art] ART ShadowModels.generate_shadow_dataset: {models} shadows x {epochs} epochs, "
          f"{n_threads} torch threads ..."
        )
        torch.manual_seed(seed * 100_003 + r)
        shadow = mods["ShadowModels"](
          art_template(mods, wl, epochs),
          num_shadow_models=models,
          disjoint_datasets=False,
          random_state=seed + r,
        )
        t = time.perf_counter()
        (_, member_y, member_pred), (nonmember_x, _, _) = (
          shadow.generate_shadow_dataset(x, y, member_ratio=0.5)
        )
        art_times.append(time.perf_counter() - t)
        art_threads.append(n_threads)
        log(f"[art] ART: {art_times[-1]:.1f} s")
  finally:
    torch.set_num_threads(saved_threads)
  members = (
    len(member_y) // models
  )  # ART gives every shadow int(0.5 * pool) members, concatenated in order
  art_member_acc = (
    (member_pred.argmax(-1) == member_y).reshape(models, members).mean(1)
  )
  art_test_acc = np.array(
    [
      (m.predict(x_test).argmax(-1) == y_test).mean()
      for m in shadow.get_shadow_models()
    ]
  )

  b = wl.batch_size
  mj_steps = math.ceil(int(keep.sum(1).max()) / b)
  side = lambda times, member_acc, test_acc: dict(
    seconds=min(times),
    all_seconds=times,
    mean_member_accuracy=float(np.mean(member_acc)),
    mean_test_accuracy=float(np.mean(test_acc)),
    min_test_accuracy=float(np.min(test_acc)),
    max_test_accuracy=float(np.max(test_acc)),
  )
  return dict(
    workload=wl.name,
    dataset="digits",
    shadows=models,
    epochs=epochs,
    batch_size=b,
    learning_rate=wl.learning_rate,
    weight_decay=wl.weight_decay,
    pool_examples=len(x),
    test_examples=len(x_test),
    art_version=mods["version"],
    torch_version=torch.__version__,
    miajax=dict(
      side(mj_times, mj_member_acc, mj_test_acc),
      first_call_seconds=first,
      fresh_process_seconds=empty["seconds"],
      fresh_process_cached_seconds=cached["seconds"],
      fresh_process_pool_accuracy=[
        empty["pool_accuracy"],
        cached["pool_accuracy"],
      ],
      members_per_shadow=[int(keep.sum(1).min()), int(keep.sum(1).max())],
      steps_per_epoch=mj_steps,
      examples_per_epoch=mj_steps * b,
      queried_per_shadow=len(x),
      schedule="cosine per step",
      init="Flax default (lecun_normal: truncated normal, variance 1/fan_in)",
      timed="train_models + predict (logits on the pool), one call",
    ),
    art=dict(
      side(art_times, art_member_acc, art_test_acc),
      torch_threads=art_threads,
      best_torch_threads=art_threads[int(np.argmin(art_times))],
      members_per_shadow=[members, members],
      steps_per_epoch=math.ceil(members / b),
      examples_per_epoch=members,
      queried_per_shadow=members + len(nonmember_x) // models,
      schedule="cosine per epoch (LambdaLR at each epoch's midpoint)",
      init="normal, std 1/sqrt(fan_in), zero bias (reset() overridden)",
      timed="ShadowModels.generate_shadow_dataset(x, y, member_ratio=0.5)",
    ),
    # The headline counts miajax's compilation: a fresh process pays it, ART has none to pay.
    # The goal's number: a fresh process, as a user's second run of a recipe
    # starts (compiled programs from the persistent cache). The first run on
    # a machine compiles everything: speedup_empty_cache.
    speedup=min(art_times) / cached["seconds"],
    speedup_empty_cache=min(art_times) / empty["seconds"],
    speedup_first_call=min(art_times) / first,
    speedup_warm=min(art_times) / min(mj_times),
    notes=[
      "ART trains with its own PyTorchClassifier.fit (DataLoader, shuffle=True, drop_last=False); "
      "ShadowModels passes fit no arguments, so a thin subclass supplies batch size, epochs and a "
      "scheduler, and re-initialises at Flax's scale instead of PyTorch's default reset()",
      "schedule: ART's fit steps a scheduler once per epoch, so the torch side's cosine is "
      "piecewise constant per epoch (each epoch at its midpoint) where the engine decays every step",
      f"batches: ART's last batch of an epoch holds {members % b or b} examples "
      f"({members} members); the engine wraps around to full batches "
      f"({mj_steps} x {b} = {mj_steps * b} examples per epoch), so it does "
      f"{mj_steps * b / members - 1:.1%} more training work",
      "membership: ART draws each shadow's members independently with rng.choice(len(x) - 1, ...), "
      "so the last example of its shuffled pool is never a member nor queried; miajax uses "
      "paired_keep (complementary halves)",
      "ART's time is generate_shadow_dataset only (cloning the template happens in ShadowModels' "
      "constructor, untimed); miajax's includes initialising the models",
    ],
  )


# ---------------------------------------------------------------------------
# goals and report


def _goal(name, value, goal, detail, kind=">=", judged=True):
  met = (
    None
    if value is None or not judged
    else (value >= goal if kind == ">=" else value < goal)
  )
  ratio = None if value is None else (value / goal)
  return dict(
    name=name,
    value=value,
    goal=goal,
    kind=kind,
    ratio_to_goal=ratio,
    met=met,
    detail=detail,
  )


def goals(rep: dict) -> list:
  """The goals, each judged (``met``) where its value was measured.

  The throughput goals were set for the CPU engine; on another backend their
  values are reported but not judged.
  """
  w = rep["workloads"]
  ratio = lambda name, key: w.get(name, {}).get("ratios", {}).get(key)
  backend = rep["device"]["backend"]
  on_cpu = backend == "cpu"
  cpu_note = "" if on_cpu else f"; a CPU goal, not judged on {backend}"
  out = []

  def ceiling(name):
    # The most any method could gain over the PyTorch loop at equal FLOPs: running at 100 % of the peak.
    frac = w.get(name, {}).get("torch_loop", {}).get("fraction_of_peak")
    return (
      f"examples/s ratio; ceiling at 100 % of the measured peak: {1 / frac:.2f}x"
      if frac
      else "examples/s ratio"
    )

  for name, goal in (("mlp_purchase", 1.3), ("mlp_digits", 3.0)):
    out.append(
      _goal(
        f"{name}: engine / torch_loop",
        ratio(name, "engine/torch_loop"),
        goal,
        ceiling(name) + cpu_note,
        judged=on_cpu,
      )
    )
    out.append(
      _goal(
        f"{name}: engine / jax_loop",
        ratio(name, "engine/jax_loop"),
        1.0,
        "examples/s ratio" + cpu_note,
        judged=on_cpu,
      )
    )
  frac = w.get("mlp_purchase", {}).get("engine", {}).get("fraction_of_peak")
  out.append(
    _goal(
      "mlp_purchase: engine fraction of matmul peak",
      frac,
      0.6,
      "achieved FLOP/s / the higher of the measured float32 matmul peaks of JAX and PyTorch "
      f"(here: {rep.get('peak_source', 'jax')})" + cpu_note,
      judged=on_cpu,
    )
  )
  micro = w.get("cnn_small", {}).get("setup", {}).get("microbatch_size")
  out.append(
    _goal(
      "cnn_small: engine / torch_loop",
      ratio("cnn_small", "engine/torch_loop"),
      1.2,
      ceiling("cnn_small")
      + " (direct-convolution FLOPs; Winograd does fewer); micro-batch "
      f"picked automatically ({micro if micro is not None else 'n/a'})"
      + cpu_note,
      judged=on_cpu,
    )
  )
  lira = rep.get("lira") or {}
  out.append(
    _goal(
      "LiRA leave-one-out: miajax / numpy",
      lira.get("speedup"),
      50.0,
      "numpy loop (extrapolated) seconds / miajax warm seconds",
    )
  )
  art = rep.get("art") or {}
  out.append(
    _goal(
      f"miajax / ART end to end ({art.get('shadows', '?')} digits shadows, CPU)",
      art.get("speedup"),
      3.0,
      "ART generate_shadow_dataset seconds / miajax train_models + predict "
      "seconds in a fresh process whose persistent compilation cache holds the "
      "recipe's programs; the report also gives it with an empty cache",
    )
  )
  mem = rep.get("memory") or {}
  out.append(
    _goal(
      f"engine peak host memory, {mem.get('models', '?')} {MEMORY_WORKLOAD} models (GiB)",
      mem.get("peak_rss_gib"),
      8.0,
      "child process max RSS",
      kind="<",
    )
  )
  return out


def _f(x, digits=1):
  if x is None:
    return "n/a"
  if isinstance(x, float):
    if abs(x) >= 1e5:
      return f"{x:,.0f}"
    return f"{x:.{digits}f}"
  return str(x)


def markdown(rep: dict) -> str:
  d = rep["device"]
  by_source = rep.get("matmul_peak_gflops_by_source") or {}
  lines = [
    "# miajax benchmark",
    "",
    f"Preset: {rep.get('preset', 'cpu')}.",
    f"Device: {d['backend']} ({', '.join(d['device_kinds'])}) x {d['device_count']}, "
    f"{d['cpu_count']} CPUs, torch threads {d['torch_threads']}, "
    f"load average at start {d['load_average_start']}, "
    f"at end {d.get('load_average_end')}.",
    f"Measured float32 matmul peak, the higher of JAX's and PyTorch's (best of start and end of the run), "
    f"which every % of peak divides by: **{rep['matmul_peak_gflops']:.1f} GFLOP/s "
    f"(peak_source: {rep.get('peak_source', 'jax')})**; jax {_f(by_source.get('jax'))} (per size: "
    + ", ".join(f"{k}: {v:.1f}" for k, v in rep["matmul"]["jax"].items())
    + ")"
    + (
      f"; torch {_f(by_source.get('torch'))} on {d.get('torch_device')} (per size: "
      + ", ".join(f"{k}: {v:.1f}" for k, v in rep["matmul"]["torch"].items())
      + ")"
      if rep["matmul"].get("torch")
      else "; torch not measured"
    )
    + (
      f"; torch.backends.cuda.matmul.allow_tf32={d['torch_matmul_allow_tf32']}"
      if d.get("torch_matmul_allow_tf32") is not None
      else ""
    )
    + ".",
    "",
  ]
  if rep["workloads"]:
    lines += [
      "## Training throughput",
      "",
      "| workload | method | models | steps/model | batch | examples/s | models/hour (timed) "
      "| models/hour (recipe) | GFLOP/s | % of peak | seconds (best) | all repeats s "
      "| epoch loss first -> last |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, w in rep["workloads"].items():
      s = w["setup"]
      for method in s["methods"]:
        r = w[method]
        lines.append(
          f"| {name} | {method} | {r['models']} | {r['steps']} | {s['batch_size']} | "
          f"{_f(r['examples_per_s'], 0)} | {_f(r['models_per_hour_timed'], 1)} | "
          f"{_f(r['models_per_hour'], 2)} | {_f(r['gflops'])} | "
          f"{_f(100 * r['fraction_of_peak'])} | {_f(r['seconds'], 2)} | "
          f"{', '.join(f'{t:.2f}' for t in r['all_seconds'])} | "
          f"{r['mean_first_epoch_loss']:.3f} -> {r['mean_final_epoch_loss']:.3f} |"
        )
    lines += [
      "",
      "| workload | ratios (examples/s) | models (source) | engine models/step "
      "| engine lowering (model axis, convolutions) | engine micro-batch (timings s/step) "
      "| FLOPs/example (source) | recipe |",
      "|---|---|---|---:|---|---|---|---|",
    ]
    for name, w in rep["workloads"].items():
      s = w["setup"]
      ratios = (
        ", ".join(f"{k} {v:.2f}x" for k, v in w["ratios"].items()) or "n/a"
      )
      low = s.get("lowering")
      timings = s.get("microbatch_timings_s")
      micro = str(s.get("microbatch_size", "n/a")) + (
        " (" + ", ".join(f"{k}: {v:.3f}" for k, v in timings.items()) + ")"
        if timings
        else ""
      )
      lines.append(
        f"| {name} | {ratios} | {s['num_models']} ({s['models_source']}; loops time "
        f"{s['loop_models']}) | {s.get('models_per_step', 'n/a')} | "
        f"{'n/a' if not low else low['model_axis'] + ', ' + low['conv_impl']} | {micro} | "
        f"{s['flops_per_example'] / 1e6:.2f} M ({s['flops_source']}; analytic "
        f"{s['flops_per_example_analytic'] / 1e6:.2f} M) | {s['recipe']} |"
      )
    notes = sorted(
      {n for w in rep["workloads"].values() for n in w["setup"]["notes"]}
    )
    if notes:
      lines += [""] + [f"- {n}" for n in notes]
  if rep.get("art"):
    a = rep["art"]
    lines += [
      "",
      "## End to end against ART (Adversarial Robustness Toolbox)",
      "",
      f"{a['shadows']} shadow MLPs on the digits pool ({a['pool_examples']} examples), {a['epochs']} "
      f"epochs, batch {a['batch_size']}, SGD lr {a['learning_rate']:g} momentum 0.9 weight decay "
      f"{a['weight_decay']:g}; ART {a['art_version']}, torch {a['torch_version']}, ART timed with "
      f"torch threads {', '.join(map(str, a['art']['torch_threads']))} (best: "
      f"{a['art']['best_torch_threads']}). Accuracies: mean over shadows.",
      "",
      "| side | timed | seconds (best) | all repeats s | first call s (incl. compile) "
      "| members/shadow | steps/epoch | schedule | member acc | test acc (min-max) |",
      "|---|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for side in ("miajax", "art"):
      r = a[side]
      lines.append(
        f"| {'ART' if side == 'art' else side} | {r['timed']} | {r['seconds']:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in r['all_seconds'])} | {_f(r.get('first_call_seconds'), 2)} | "
        f"{'-'.join(str(v) for v in sorted(set(r['members_per_shadow'])))} | {r['steps_per_epoch']} | "
        f"{r['schedule']} | {r['mean_member_accuracy']:.3f} | {r['mean_test_accuracy']:.3f} "
        f"({r['min_test_accuracy']:.3f}-{r['max_test_accuracy']:.3f}) |"
      )
    lines += [
      "",
      f"Speed-up miajax / ART: **{a['speedup']:.2f}x** in a fresh process with the "
      f"recipe's programs in the persistent compilation cache "
      f"({a['miajax']['fresh_process_cached_seconds']:.2f} s), "
      f"{a['speedup_empty_cache']:.2f}x in a fresh process compiling everything "
      f"({a['miajax']['fresh_process_seconds']:.2f} s), "
      f"{a['speedup_first_call']:.2f}x for the benchmark process's first call, "
      f"{a['speedup_warm']:.2f}x warm.",
      "",
    ] + [f"- {n}" for n in a["notes"]]
  if rep.get("lira"):
    r = rep["lira"]
    lines += [
      "",
      "## LiRA leave-one-out (online + offline)",
      "",
      "| shape | miajax warm s | miajax incl. compile s | numpy s (extrapolated from N examples) "
      "| speedup | max abs diff |",
      "|---|---:|---:|---:|---:|---:|",
      f"| {r['shape']} | {r['miajax_warm_s']:.2f} | {r['miajax_s']:.2f} | "
      f"{r['numpy_extrapolated_s']:.0f} ({r['numpy_subset_examples']}) | {r['speedup']:.0f}x | "
      f"{r['max_abs_diff_on_subset']:.1e} |",
    ]
  if rep.get("memory"):
    m = rep["memory"]
    lines += [
      "",
      "## Engine peak host memory",
      "",
      "| models | candidates | models/step (planner) | chunks | peak RSS GiB (children) "
      "| child self GiB | train s |",
      "|---:|---:|---:|---:|---:|---:|---:|",
      f"| {m['models']} | {m['candidate_examples']} | {m['models_per_step']} | {m['chunks']} | "
      f"{m['peak_rss_gib']:.2f} | {m['self_peak_rss_gib']:.2f} | {m['train_seconds']:.1f} |",
    ]
  lines += [
    "",
    "## Goals",
    "",
    "| goal | value | goal | value/goal | status | note |",
    "|---|---:|---:|---:|---|---|",
  ]
  for g in rep["goals"]:
    status = "n/a" if g["met"] is None else ("pass" if g["met"] else "MISSED")
    lines.append(
      f"| {g['name']} | {_f(g['value'], 2)} | {g['kind']} {g['goal']:g} | "
      f"{_f(g['ratio_to_goal'], 2)} | {status} | {g['detail']} |"
    )
  if rep["notes"]:
    lines += ["", "Notes:"] + [f"- {n}" for n in rep["notes"]]
  return "\n".join(lines) + "\n"


def _load_average():
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def _interference_notes(rep: dict) -> list:
  """Warnings when other jobs probably slowed this run (torch's OpenMP threads suffer most on a busy CPU)."""
  notes = []
  cpus = rep["device"]["cpu_count"] or 1
  loads = [
    l[0]
    for l in (
      rep["device"]["load_average_start"],
      rep["device"].get("load_average_end"),
    )
    if l
  ]
  if loads and max(loads) > 0.5 * cpus:
    notes.append(
      f"CPU busy: 1-minute load average up to {max(loads):.1f} on {cpus} CPUs; "
      "throughputs (especially the torch rows) may be understated"
    )
  art = rep.get("art")
  if art:
    times = art["art"]["all_seconds"]
    if max(times) > 1.5 * min(times):
      notes.append(
        f"ART: runs took {', '.join(f'{t:.1f}' for t in times)} s with torch threads "
        f"{', '.join(map(str, art['art']['torch_threads']))} (interference; the best counts)"
      )
  for name, w in rep["workloads"].items():
    for method in w["setup"]["methods"]:
      times = w[method]["all_seconds"]
      if len(times) > 1 and max(times) > 1.5 * min(times):
        notes.append(
          f"{name}/{method}: repeats took {', '.join(f'{t:.1f}' for t in times)} s "
          "(interference; the best counts)"
        )
  return notes


def run(
  cfg: BenchConfig, *, table=None, log: Callable[[str], None] = print
) -> dict:
  """Runs everything ``cfg`` asks for; returns the report and writes it when ``cfg.output_dir`` is set.

  ``table``: the workloads (default: ``cfg.preset``'s).
  """
  table = PRESETS[cfg.preset]["table"] if table is None else table
  for name in cfg.workloads:
    if name not in table:
      raise ValueError(f"workloads: unknown {name!r}; known: {list(table)}")
  notes = []
  # PyTorch, when installed, is imported even without torch rows: its matmul peak can be the higher one.
  torch, torch_note = import_torch()
  if (
    torch is None
    and cfg.workloads
    and any(m in TORCH_METHODS for m in cfg.methods)
  ):
    notes.append(torch_note)
  art_mods = None
  if cfg.art:
    art_mods, art_note = import_art()
    if art_mods is None:
      notes.append(art_note)
    elif torch is None:
      torch = art_mods["torch"]
  if torch is not None:
    torch.set_num_threads(os.cpu_count() or 1)
  tdev = None if torch is None else torch_device(torch)
  rep: dict = dict(
    preset=cfg.preset,
    device=dict(
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
      load_average_start=_load_average(),
    ),
  )
  timing = {}
  t = time.perf_counter()
  log(
    f"float32 matmul peaks (jax{'' if torch is None else ', torch'}), sizes {cfg.matmul_sizes} ..."
  )
  rep["matmul"] = dict(
    jax=matmul_peak(cfg.matmul_sizes)["per_size"],
    torch=None
    if torch is None
    else torch_matmul(torch, cfg.matmul_sizes, device=tdev),
  )
  start_peak, start_source = higher_peak(rep["matmul"])
  timing["matmul"] = time.perf_counter() - t
  log(f"matmul peak {start_peak:.1f} GFLOP/s ({start_source})")
  rep["workloads"] = {}
  for name in cfg.workloads:
    t = time.perf_counter()
    rep["workloads"][name] = run_workload(
      table[name],
      cfg,
      start_peak,
      torch,
      torch_note,
      log,
      torch_device=tdev or "cpu",
    )
    timing[name] = time.perf_counter() - t
  rep["art"] = None
  if art_mods is not None:
    t = time.perf_counter()
    rep["art"] = run_art(
      art_mods,
      WORKLOADS[ART_WORKLOAD],
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
    if MEMORY_WORKLOAD not in table:
      raise ValueError(
        f"memory needs workload {MEMORY_WORKLOAD!r} in the table"
      )
    t = time.perf_counter()
    log(
      f"peak memory: {cfg.memory_models} {MEMORY_WORKLOAD} models in a child process ..."
    )
    rep["memory"] = run_memory(
      table[MEMORY_WORKLOAD], cfg.memory_models, cfg.memory_examples, cfg.seed
    )
    timing["memory"] = time.perf_counter() - t
  # The peaks are measured again at the end and the best counts: a busy machine only lowers them.
  t = time.perf_counter()
  for lib in ("jax", "torch"):
    start = rep["matmul"][lib]
    if start is None:
      continue
    end = (
      matmul_peak(cfg.matmul_sizes)["per_size"]
      if lib == "jax"
      else torch_matmul(torch, cfg.matmul_sizes, device=tdev)
    )
    rep["matmul"][f"{lib}_start"], rep["matmul"][f"{lib}_end"] = start, end
    rep["matmul"][lib] = {k: max(v, end[k]) for k, v in start.items()}
  timing["matmul"] += time.perf_counter() - t
  peak, source = higher_peak(rep["matmul"])
  rep["matmul_peak_gflops"], rep["peak_source"] = peak, source
  rep["matmul_peak_gflops_by_source"] = {
    lib: None
    if rep["matmul"][lib] is None
    else max(rep["matmul"][lib].values())
    for lib in ("jax", "torch")
  }
  for w in rep["workloads"].values():
    for method in w["setup"]["methods"]:
      w[method]["fraction_of_peak"] = w[method]["gflops"] / peak
  rep["device"]["load_average_end"] = _load_average()
  rep["goals"] = goals(rep)
  rep["notes"] = (
    notes
    + _interference_notes(rep)
    + [
      "All methods run one after another in this process after their own warm-up (compile / first steps); "
      "throughput = models x steps x batch / seconds (best of --repeats); models/hour (timed) = models / "
      "seconds x 3600 at the timed steps; models/hour (recipe) = examples/s / the examples one model sees "
      "in the workload's recipe.",
      f"% of peak: of the higher of the measured float32 matmul peaks of JAX and PyTorch, here {source}'s "
      f"({peak:.1f} GFLOP/s)"
      + ("; PyTorch not installed, so JAX's only" if torch is None else "")
      + ".",
      "Engine seconds are one whole train_models call (init, per-epoch shuffles and steps of every chunk).",
      "Synthetic data except mlp_digits; the machine may be shared with other jobs (see load averages).",
    ]
  )
  if cfg.plan_models:
    rep["notes"].append(
      "Models per workload: as many as miajax.train.plan_models_per_step puts in one step, "
      "at most the workload's count (--num_models), so the engine's time is one chunk."
    )
  rep["config"] = dataclasses.asdict(cfg)
  rep["timing_s"] = timing
  if cfg.output_dir:
    out = pathlib.Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_lib.write_json_atomic(out / "report.json", rep)
    text = markdown(rep)
    tmp = out / ".report.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "report.md")
  return rep


# ---------------------------------------------------------------------------
# command line

FLAGS = flags.FLAGS
_D = DEFAULTS
flags.DEFINE_enum(
  "preset",
  "cpu",
  list(PRESETS),
  "Defaults to start from; flags given override them. cpu: "
  "everything, sized for a 2-core CPU. accelerator: cnn_small, wrn16-4, mlp_purchase; the engine "
  "at the planner's models per step (<= 256) vs the JAX and PyTorch loops, sized for one "
  "H100/H200-class GPU (< 8 min); no LiRA, memory or ART.",
)
flags.DEFINE_string(
  "workloads",
  _D["workloads"],
  f"Comma list of {list(WORKLOADS)}, 'all' or 'none' "
  "(accelerator: cnn_small,wrn16-4,mlp_purchase).",
)
flags.DEFINE_string(
  "methods",
  _D["methods"],
  f"Comma list of {list(METHODS)} or 'all' "
  "(accelerator: engine,jax_loop,torch_loop).",
)
flags.DEFINE_integer(
  "num_models",
  _D["num_models"],
  "Models per method for every workload (default: per "
  "workload; with --plan_models the most the planner may put in one step).",
)
flags.DEFINE_integer(
  "steps",
  _D["steps"],
  "Timed training steps per model (default: per workload).",
)
flags.DEFINE_integer(
  "loop_models",
  _D["loop_models"],
  "Models the one-model loops (jax_loop, torch_loop) time; "
  "their per-model rates extrapolate (default: per workload; cpu preset: all).",
)
flags.DEFINE_bool(
  "plan_models",
  _D["plan_models"],
  "Train as many models as the planner puts in one step, at "
  "most --num_models (accelerator: on).",
)
flags.DEFINE_bool(
  "lira",
  _D["lira"],
  "Also time LiRA leave-one-out against the numpy loop (accelerator: off).",
)
flags.DEFINE_string(
  "lira_shape", _D["lira_shape"], "models,examples,queries of the LiRA timing."
)
flags.DEFINE_integer(
  "numpy_examples",
  _D["numpy_examples"],
  "Examples the numpy LiRA loop runs before extrapolating.",
)
flags.DEFINE_integer(
  "memory_models",
  _D["memory_models"],
  f"{MEMORY_WORKLOAD} models of the peak-memory run (0: skip; accelerator: 0).",
)
flags.DEFINE_integer(
  "memory_examples",
  _D["memory_examples"],
  "Candidate examples of the peak-memory run.",
)
flags.DEFINE_bool(
  "art",
  _D["art"],
  "Also time shadow training end to end against ART's ShadowModels (needs "
  "the `bench` extra; accelerator: off).",
)
flags.DEFINE_integer(
  "art_models", _D["art_models"], "Shadow models of the ART comparison (even)."
)
flags.DEFINE_integer(
  "art_epochs",
  _D["art_epochs"],
  "Epochs of the ART comparison (default: the digits recipe's 30).",
)
flags.DEFINE_integer(
  "art_repeats",
  _D["art_repeats"],
  "Timed runs per side (ART: per thread count) of the ART "
  "comparison; the best counts.",
)
flags.DEFINE_string(
  "art_torch_threads",
  _D["art_torch_threads"],
  "Comma list of torch thread counts ART is "
  "timed with; the best counts (default: 1 and all cores).",
)
flags.DEFINE_string(
  "matmul_sizes",
  _D["matmul_sizes"],
  "Square float32 matmul sizes for the peak (accelerator: 4096,8192).",
)
flags.DEFINE_integer(
  "repeats",
  _D["repeats"],
  "Timed runs per method after the warm-up; the best counts (accelerator: 2).",
)
flags.DEFINE_integer(
  "seed", _D["seed"], "Seed of data, membership and initialisation."
)
flags.DEFINE_string("output_dir", None, "Where report.json and report.md go.")
flags.DEFINE_string(
  "memory_child",
  None,
  "Internal: run the peak-memory child with this JSON spec.",
)


def config_from_flags(flag_values=FLAGS) -> BenchConfig:
  """The preset's defaults, overridden by the flags given on the command line (not by flag defaults)."""
  given = {
    name: flag_values[name].value
    for name in DEFAULTS
    if flag_values[name].present
  }
  return parse_config(
    preset=flag_values.preset, output_dir=flag_values.output_dir, **given
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cpu.use_all_cores()  # before any JAX computation: one CPU device per core for the engine
  # Later runs of the same recipe load its compiled programs instead of compiling.
  compilation_cache.use_compilation_cache()
  if FLAGS.memory_child:
    print(json.dumps(memory_child(json.loads(FLAGS.memory_child))), flush=True)
    return
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")
  try:
    cfg = config_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  t = time.perf_counter()
  rep = run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
  print(markdown(rep))
  print(
    f"total {time.perf_counter() - t:.0f} s; wrote {cfg.output_dir}/report.json and report.md"
  )


if __name__ == "__main__":
  app.run(main)
