"""How fast miajax trains shadow models, against how MIA code usually trains them.

  python experiments/benchmark.py --output_dir=runs/benchmark

For each workload, trains the same models (same data, architecture, SGD with
momentum 0.9 + weight decay + cosine schedule, batch size and step count) in
several ways, one after another in this one process, each after its own
warm-up:

  engine      miajax.train.train_models: all models of a chunk in one vmapped step
  jax_loop    the same JAX step for one model, jitted, called from Python per
              step, one model after the other (how the LiRA release trains)
  torch_loop  a PyTorch model + torch.optim.SGD per model (how most MIA code trains)
  torch_vmap  torch.func model ensembling: stacked parameters, vmap(grad) and a
              hand-written SGD-momentum update

The torch rows need the optional ``bench`` extra (PyTorch); without it they are
left out with a note.  Throughput = models x examples / second; FLOP/s =
examples/s x training FLOPs per example (XLA's cost analysis of the compiled
one-model step); the fraction is of the float32 matmul peak measured in the
same run.  Also times LiRA leave-one-out (online + offline) against the numpy
loop of ``experiments/lira_numpy.py`` and the peak host memory of the engine
training 256 Purchase-shaped MLPs in a child process.

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
- The matmul peak (jitted square float32 matmuls, best of 5) is measured at the
  start and at the end of the run; the higher counts.
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
import time
from typing import Any, Callable

import numpy as np
from absl import app, flags

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

from miajax import cpu
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
  num_models: int  # default models per method on a 2-core CPU
  steps: int  # default timed steps per model
  recipe_members: int
  recipe_epochs: int
  recipe: str
  data: str = "synthetic"  # or "digits" (the embedded scikit-learn digits)
  learning_rate: float = 0.1
  weight_decay: float = 5e-4

  def config(self, epochs: int, seed: int) -> train.TrainConfig:
    return train.TrainConfig(model=self.model, model_kwargs=self.model_kwargs, optimizer="sgd",
                             learning_rate=self.learning_rate, momentum=0.9,
                             weight_decay=self.weight_decay, epochs=epochs, batch_size=self.batch_size,
                             schedule="cosine", seed=seed)

  @property
  def recipe_examples(self) -> int:
    """Examples one model processes in the full recipe (the engine rounds an epoch up to whole batches)."""
    return math.ceil(self.recipe_members / self.batch_size) * self.batch_size * self.recipe_epochs


WORKLOADS = {
    "mlp_purchase": Workload(
        "mlp_purchase", "mlp", (("activation", "tanh"), ("widths", (1024, 512, 256, 128))), (600,), 100,
        batch_size=128, num_models=16, steps=60, recipe_members=20_000, recipe_epochs=30,
        recipe="Purchase100-shaped (600 features, 100 classes), 20,000 members x 30 epochs, batch 128"),
    "mlp_digits": Workload(
        "mlp_digits", "mlp", (("activation", "relu"), ("widths", (256, 128))), (8, 8, 1), 10,
        batch_size=64, num_models=16, steps=200, recipe_members=648, recipe_epochs=30, data="digits",
        recipe="scikit-learn digits, 648 members (half of 1,297) x 30 epochs, batch 64"),
    "cnn_small": Workload(
        "cnn_small", "cnn_small", (), (32, 32, 3), 10, batch_size=128, num_models=8, steps=5,
        recipe_members=25_000, recipe_epochs=100, learning_rate=0.05,
        recipe="CIFAR-10-shaped, 25,000 members x 100 epochs, batch 128"),
    "wrn16-4": Workload(
        "wrn16-4", "wrn16-4", (), (32, 32, 3), 10, batch_size=32, num_models=2, steps=3,
        recipe_members=25_000, recipe_epochs=100, learning_rate=0.05,
        recipe="CIFAR-10-shaped, 25,000 members x 100 epochs, batch 32"),
}
METHODS = ("engine", "jax_loop", "torch_loop", "torch_vmap")
TORCH_METHODS = ("torch_loop", "torch_vmap")
MEMORY_WORKLOAD = "mlp_purchase"
GIB = 2**30


# ---------------------------------------------------------------------------
# configuration (flags are parsed into this, so the functions run without absl)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  workloads: tuple[str, ...]
  methods: tuple[str, ...]
  num_models: int | None
  steps: int | None
  lira: bool
  lira_shape: tuple[int, int, int]
  numpy_examples: int
  memory_models: int
  memory_examples: int
  matmul_sizes: tuple[int, ...]
  repeats: int
  seed: int
  output_dir: str | None


def _int_list(name: str, value, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
  items = value.split(",") if isinstance(value, str) else list(value)
  try:
    out = tuple(int(str(v).strip()) for v in items if str(v).strip())
  except ValueError:
    raise ValueError(f"{name} must be comma-separated integers, got {value!r}") from None
  if not out or (length is not None and len(out) != length):
    raise ValueError(f"{name} must hold {length or 'at least one'} integers, got {value!r}")
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
    raise ValueError(f"{name} must be a comma list of {list(allowed)} (or 'all'), got {value!r}"
                     + (f"; unknown: {bad}" if bad else ""))
  return out


def _optional_positive(name: str, value, minimum: int = 1):
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum} (or unset for the per-workload default), "
                     f"got {value!r}")
  return int(value)


def parse_config(*, workloads="all", methods="all", num_models=None, steps=None, lira=True,
                 lira_shape="256,50000,2", numpy_examples=100, memory_models=256, memory_examples=40_000,
                 matmul_sizes="2048,4096", repeats=3, seed=0, output_dir=None, table=None) -> BenchConfig:
  """Validated :class:`BenchConfig`; raises ``ValueError`` naming the bad value."""
  table = WORKLOADS if table is None else table
  lira_shape = _int_list("lira_shape", lira_shape, 3)
  if lira and lira_shape[0] < 6:
    raise ValueError(f"lira_shape needs >= 6 models for leave-one-out LiRA, got {lira_shape[0]}")
  for name, value, minimum in (("numpy_examples", numpy_examples, 1), ("memory_models", memory_models, 0),
                               ("memory_examples", memory_examples, 2), ("repeats", repeats, 1),
                               ("seed", seed, 0)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
      raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return BenchConfig(
      workloads=_name_list("workloads", workloads, table), methods=_name_list("methods", methods, METHODS),
      num_models=_optional_positive("num_models", num_models), steps=_optional_positive("steps", steps),
      lira=bool(lira), lira_shape=lira_shape, numpy_examples=int(numpy_examples),
      memory_models=int(memory_models), memory_examples=int(memory_examples),
      matmul_sizes=_int_list("matmul_sizes", matmul_sizes, minimum=16), repeats=int(repeats), seed=int(seed),
      output_dir=output_dir)


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
      raise ValueError(f"workload {wl.name}: digits are {x.shape[1:]}, not {wl.input_shape}")
    steps_per_epoch = max(1, min(steps, (len(x) // 2) // b))
  elif wl.data == "synthetic":
    steps_per_epoch = steps
    n = 2 * steps * b
    x = rng.standard_normal((n,) + wl.input_shape, dtype=np.float32)
    y = rng.integers(0, wl.num_classes, n).astype(np.int32)
  else:
    raise ValueError(f"workload {wl.name}: data must be 'synthetic' or 'digits', got {wl.data!r}")
  members = steps_per_epoch * b
  if members > len(x):
    raise ValueError(f"workload {wl.name}: {members} members per model but only {len(x)} examples")
  keep = np.zeros((num_models, len(x)), bool)
  for m in range(num_models):
    keep[m, rng.permutation(len(x))[:members]] = True
  epochs = math.ceil(steps / steps_per_epoch)
  return dict(x=x, y=y, keep=keep, steps_per_epoch=steps_per_epoch, epochs=epochs,
              steps=epochs * steps_per_epoch, members=members)


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


def torch_matmul(torch, sizes=(2048, 4096), repeats: int = 3) -> dict:
  per_size = {}
  with torch.no_grad():
    for n in sizes:
      a, b = torch.randn(n, n), torch.randn(n, n)
      a @ b
      best = math.inf
      for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
      per_size[str(n)] = 2 * n**3 / best / 1e9
  return per_size


# ---------------------------------------------------------------------------
# the one-model JAX step (mirrors miajax.train: mean cross-entropy, decayed weights, trace, cosine)


def _optimizer(weight_decay: float, momentum: float, total_steps: int):
  parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  parts += [optax.trace(decay=momentum),
            optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, total_steps))]
  return optax.chain(*parts)


def jax_single_step(wl: Workload, total_steps: int):
  """``(init(key) -> (params, state, opt_state), step(params, state, opt_state, order, s, x, y))``.

  ``order: int32[steps, batch]`` member indices of one epoch; ``s`` an int32 step of it.
  """
  cfg = wl.config(1, 0)
  model = models_lib.get_model(wl.model, wl.num_classes, **cfg.model_kwargs_dict())
  mutable = models_lib.uses_batch_norm(wl.model)
  tx = _optimizer(wl.weight_decay, 0.9, total_steps)
  lr = wl.learning_rate

  def init(key):
    variables = dict(model.init({"params": jax.random.fold_in(key, 0)},
                                jnp.zeros((1,) + wl.input_shape, jnp.float32), train=False))
    params = variables.pop("params")
    return params, variables, tx.init(params)

  def loss_fn(params, state, xb, yb):
    if mutable:
      logits, new_state = model.apply({"params": params, **state}, xb, train=True, mutable=["batch_stats"])
    else:
      logits, new_state = model.apply({"params": params, **state}, xb, train=True), state
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), yb).mean(), new_state

  def step(params, state, opt_state, order, s, x, y):
    idx = jax.lax.dynamic_index_in_dim(order, s, keepdims=False)
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x[idx], y[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, jax.tree_util.tree_map(lambda u: -lr * u, updates))
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
  model = models_lib.get_model(wl.model, wl.num_classes, **cfg.model_kwargs_dict())
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
        macs[0] += math.prod(out.shape[:-1]) * kh * kw * x.shape[-1] * mod.features
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros((1,) + wl.input_shape), train=False),
                   jax.random.PRNGKey(0))
  return 6.0 * macs[0]


# ---------------------------------------------------------------------------
# the methods; each returns {"seconds" (best of the repeats), "all_seconds", "steps", "epochs", "models",
# "examples", "loss": float[models, steps] (the engine: float[models, epochs], its per-epoch means)}


def _timed(fn: Callable[[], Any], wl: Workload, data: dict, repeats: int) -> dict:
  """Best of ``repeats`` timed calls of ``fn``: other jobs on a shared CPU can only slow a run down."""
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t)
  m = data["keep"].shape[0]
  return dict(seconds=min(times), all_seconds=times, steps=data["steps"], epochs=data["epochs"], models=m,
              examples=m * data["steps"] * wl.batch_size, out=out)


def run_engine(wl: Workload, data: dict, seed: int, *, learning_rates=None, warmup: bool = True,
               repeats: int = 1) -> dict:
  """``miajax.train.train_models`` on all models; one timed call includes init, shuffles and every chunk."""
  cfg = wl.config(data["epochs"], seed)

  def once():
    res = train.train_models(data["x"], data["y"], data["keep"], cfg, num_classes=wl.num_classes,
                             learning_rates=learning_rates)
    jax.block_until_ready(res.variables)
    return res

  if warmup:  # the identical call: compiles every chunk shape the timed call uses
    once()
  r = _timed(once, wl, data, repeats)
  res = r.pop("out")
  m = data["keep"].shape[0]
  return dict(r, loss=np.asarray(res.loss, np.float64), variables=res.variables,
              models_per_step=train.plan_models_per_step(cfg, wl.num_classes, wl.input_shape, m),
              microbatch_size=train.microbatch_size(cfg, wl.input_shape, wl.num_classes))


def _epoch_orders(keep_row: np.ndarray, epochs: int, steps_per_epoch: int, batch: int, rng) -> list:
  members = np.flatnonzero(keep_row)
  pos = np.arange(steps_per_epoch * batch) % len(members)
  return [rng.permutation(members)[pos].reshape(steps_per_epoch, batch).astype(np.int32)
          for _ in range(epochs)]


def compile_jax_step(wl: Workload, data: dict):
  """``(init, compiled step, flops per training example or None)``; the compile is not timed."""
  init, step = jax_single_step(wl, data["steps"])
  params, state, opt = init(jax.random.PRNGKey(0))
  order = jnp.zeros((data["steps_per_epoch"], wl.batch_size), jnp.int32)
  compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(
      params, state, opt, order, np.int32(0), jnp.asarray(data["x"]), jnp.asarray(data["y"])).compile()
  flops = _cost_flops(compiled)
  return init, compiled, None if flops is None else flops / wl.batch_size


def run_jax_loop(wl: Workload, data: dict, seed: int, *, compiled_step=None, init_variables=None,
                 warmup: bool = True, repeats: int = 1) -> dict:
  """One model after the other, one jitted step call per batch, data on the device, no vmap.

  ``init_variables``: optional Flax variables stacked ``[models, ...]`` to start
  from (default: the engine's documented key ``fold_in(PRNGKey(seed), m)``).
  """
  init, step = compiled_step or compile_jax_step(wl, data)[:2]
  tx = _optimizer(wl.weight_decay, 0.9, data["steps"])
  xd, yd = jax.device_put(data["x"]), jax.device_put(data["y"])
  base = jax.random.PRNGKey(seed)
  keep = data["keep"]
  num_models, spe, epochs = keep.shape[0], data["steps_per_epoch"], data["epochs"]

  def start(m):
    if init_variables is None:
      return init(jax.random.fold_in(base, m))
    v = dict(jax.tree_util.tree_map(lambda a: a[m], init_variables))
    params = v.pop("params")
    return params, v, tx.init(params)

  if warmup:
    params, state, opt = init(jax.random.fold_in(base, 10**6))
    order = jnp.asarray(_epoch_orders(keep[0], 1, spe, wl.batch_size, np.random.default_rng(0))[0])
    for s in range(min(2, spe)):
      params, state, opt, loss = step(params, state, opt, order, np.int32(s), xd, yd)
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
          params, state, opt, loss = step(params, state, opt, order, np.int32(s), xd, yd)
          model_losses.append(loss)
      losses.append(jnp.stack(model_losses))
      jax.block_until_ready(params)
    return losses

  r = _timed(train_all, wl, data, repeats)
  return dict(r, out=None, loss=np.asarray(jnp.stack(r["out"]), np.float64))


# --- PyTorch (optional) ---


def import_torch():
  """``(torch, None)`` or ``(None, reason)`` when PyTorch is not installed."""
  try:
    import torch
    import torch.func  # noqa: F401
  except ImportError as e:
    return None, f"PyTorch not installed ({e}); torch rows skipped (pip install -e '.[bench]')"
  return torch, None


def torch_model(torch, wl: Workload):
  """The workload's architecture in PyTorch (NCHW).

  Initialised at Flax's scale: weights normal with std 1/sqrt(fan_in), zero biases.
  """
  tnn = torch.nn
  kw = dict(wl.model_kwargs)
  acts = {"relu": tnn.ReLU, "tanh": tnn.Tanh, "leaky_relu": lambda: tnn.LeakyReLU(0.01), "gelu": tnn.GELU}

  class GlobalMean(tnn.Module):
    def forward(self, x):
      return x.mean(dim=(2, 3))

  class WideBlock(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1, self.bn2 = tnn.BatchNorm2d(cin, momentum=0.1), tnn.BatchNorm2d(cout, momentum=0.1)
      self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.short = tnn.Conv2d(cin, cout, 1, stride, bias=False) if (cin != cout or stride != 1) else None

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
    h, cin, width = min(wl.input_shape[:2]), wl.input_shape[2], kw.get("width", 32)
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
        wl.model, (kw.get("depth", 16), kw.get("width", 4)))
    layers, cin = [tnn.Conv2d(wl.input_shape[2], 16, 3, padding=1, bias=False)], 16
    for stage, cout in enumerate((16 * width, 32 * width, 64 * width)):
      for i in range((depth - 4) // 6):
        layers.append(WideBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
        cin = cout
    net = tnn.Sequential(*layers, tnn.BatchNorm2d(cin, momentum=0.1), tnn.ReLU(), GlobalMean(),
                         tnn.Linear(cin, wl.num_classes))
  else:
    raise ValueError(f"no PyTorch version of model {wl.model!r}")
  with torch.no_grad():
    for mod in net.modules():
      if isinstance(mod, (tnn.Linear, tnn.Conv2d)):
        mod.weight.normal_(0.0, 1.0 / math.sqrt(mod.weight[0].numel()))
        if mod.bias is not None:
          mod.bias.zero_()
  return net


def _torch_data(torch, wl: Workload, data: dict):
  x = data["x"]
  if x.ndim == 4 and wl.model != "mlp":
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
  return torch.from_numpy(x), torch.from_numpy(data["y"].astype(np.int64))


def _cosine(t: int, total: int) -> float:
  return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


def run_torch_loop(torch, wl: Workload, data: dict, seed: int, *, warmup: bool = True,
                   repeats: int = 1) -> dict:
  """One model after the other: nn.Module + torch.optim.SGD(momentum=0.9, weight_decay) + cosine LambdaLR."""
  F = torch.nn.functional
  x, y = _torch_data(torch, wl, data)
  keep = data["keep"]
  num_models, spe, epochs, total = keep.shape[0], data["steps_per_epoch"], data["epochs"], data["steps"]

  def train_one(model_index: int, max_steps: int | None = None):
    torch.manual_seed(seed * 100_003 + model_index)
    net = torch_model(torch, wl)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=wl.learning_rate, momentum=0.9, weight_decay=wl.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: _cosine(t, total))
    losses = []
    rng = np.random.default_rng([seed, model_index])
    for order in _epoch_orders(keep[model_index % num_models], epochs, spe, wl.batch_size, rng):
      order = torch.from_numpy(order.astype(np.int64))
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

  if warmup:
    train_one(10**6, max_steps=2)
  r = _timed(lambda: [train_one(m) for m in range(num_models)], wl, data, repeats)
  return dict(r, out=None, loss=torch.stack(r["out"]).double().numpy())


def run_torch_vmap(torch, wl: Workload, data: dict, seed: int, *, warmup: bool = True,
                   repeats: int = 1) -> dict:
  """torch.func ensembling: stack_module_state + functional_call + vmap(grad), SGD momentum by hand.

  Batch-norm layers are made stateless (``replace_all_batch_norm_modules_``: batch
  statistics in training, no running averages), as torch.func needs.
  """
  from torch import func as tfunc
  F = torch.nn.functional
  x, y = _torch_data(torch, wl, data)
  keep = data["keep"]
  num_models, spe, epochs, total = keep.shape[0], data["steps_per_epoch"], data["epochs"], data["steps"]
  lr, wd, mom = wl.learning_rate, wl.weight_decay, 0.9

  def build(k: int, first_index: int):
    nets = []
    for m in range(k):
      torch.manual_seed(seed * 100_003 + first_index + m)
      net = torch_model(torch, wl)
      tfunc.replace_all_batch_norm_modules_(net)
      nets.append(net.train())
    params, buffers = tfunc.stack_module_state(nets)
    params = {n: p.detach() for n, p in params.items()}
    base = copy.deepcopy(nets[0]).to("meta")

    def loss_fn(p, b, xb, yb):
      return F.cross_entropy(tfunc.functional_call(base, (p, b), (xb,)), yb)

    return params, buffers, tfunc.vmap(tfunc.grad_and_value(loss_fn))

  def train_all(k: int, first_index: int, max_steps: int | None = None):
    params, buffers, grad_fn = build(k, first_index)
    velocity = {n: torch.zeros_like(p) for n, p in params.items()}
    rngs = [np.random.default_rng([seed, (first_index + m) % max(num_models, 1)]) for m in range(k)]
    orders = [_epoch_orders(keep[(first_index + m) % num_models], epochs, spe, wl.batch_size, rngs[m])
              for m in range(k)]
    losses, t = [], 0
    for epoch in range(epochs):
      order = torch.from_numpy(np.stack([o[epoch] for o in orders]).astype(np.int64))  # [models, steps, b]
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

  if warmup:
    train_all(num_models, 10**6, max_steps=2)
  r = _timed(lambda: train_all(num_models, 0), wl, data, repeats)
  return dict(r, out=None, loss=r["out"].double().numpy())


# ---------------------------------------------------------------------------
# one workload


def epoch_losses(result: dict) -> np.ndarray:
  """``float[models, epochs]`` mean training loss per epoch (the engine reports it so; loops per step)."""
  loss = result["loss"]
  epochs = result["epochs"]
  if loss.shape[1] == epochs:
    return loss
  return loss.reshape(loss.shape[0], epochs, -1).mean(-1)


def _rates(result: dict, wl: Workload, flops_per_example: float, peak_gflops: float) -> dict:
  eps = result["examples"] / result["seconds"]
  gflops = eps * flops_per_example / 1e9
  per_epoch = epoch_losses(result)
  return dict(examples_per_s=eps, models_per_hour=3600.0 * eps / wl.recipe_examples, gflops=gflops,
              fraction_of_peak=gflops / peak_gflops, seconds=result["seconds"],
              all_seconds=result["all_seconds"], steps=result["steps"],
              models=result["models"], examples=result["examples"],
              mean_first_epoch_loss=float(np.nanmean(per_epoch[:, 0])),
              mean_final_epoch_loss=float(np.nanmean(per_epoch[:, -1])))


def run_workload(wl: Workload, cfg: BenchConfig, peak_gflops: float, torch=None, torch_note=None,
                 log: Callable[[str], None] = print) -> dict:
  num_models = cfg.num_models or wl.num_models
  data = make_data(wl, num_models, cfg.steps or wl.steps, cfg.seed)
  init, compiled, xla_flops = compile_jax_step(wl, data)
  analytic = analytic_flops_per_example(wl)
  if wl.model != "mlp":
    # XLA counts what the engine's step executes, and Winograd convolutions execute fewer
    # multiplies than a direct convolution; rates compare against the direct-convolution work.
    xla_flops = None
  flops = xla_flops or analytic
  out: dict = dict(setup=dict(
      model=wl.model, model_kwargs={k: v for k, v in wl.model_kwargs}, input_shape=list(wl.input_shape),
      num_classes=wl.num_classes, batch_size=wl.batch_size, num_models=num_models, steps=data["steps"],
      members_per_model=data["members"], epochs=data["epochs"], data=wl.data, recipe=wl.recipe,
      recipe_examples_per_model=wl.recipe_examples,
      flops_per_example=flops, flops_source="xla_cost_analysis" if xla_flops else "analytic",
      flops_per_example_xla=xla_flops, flops_per_example_analytic=analytic, methods=[], notes=[]))
  for method in cfg.methods:
    if method in TORCH_METHODS and torch is None:
      if torch_note not in out["setup"]["notes"]:
        out["setup"]["notes"].append(torch_note)
      continue
    log(f"[{wl.name}] {method}: {num_models} models x {data['steps']} steps x batch {wl.batch_size} ...")
    if method == "engine":
      r = run_engine(wl, data, cfg.seed, repeats=cfg.repeats)
      out["setup"]["models_per_step"] = r["models_per_step"]
      out["setup"]["microbatch_size"] = r["microbatch_size"]
    elif method == "jax_loop":
      r = run_jax_loop(wl, data, cfg.seed, compiled_step=(init, compiled), repeats=cfg.repeats)
    elif method == "torch_loop":
      r = run_torch_loop(torch, wl, data, cfg.seed, repeats=cfg.repeats)
    else:
      r = run_torch_vmap(torch, wl, data, cfg.seed, repeats=cfg.repeats)
      if models_lib.uses_batch_norm(wl.model):
        out["setup"]["notes"].append("torch_vmap: batch norm without running statistics (torch.func)")
    out[method] = _rates(r, wl, flops, peak_gflops)
    out["setup"]["methods"].append(method)
    log(f"[{wl.name}] {method}: {out[method]['examples_per_s']:.0f} examples/s, "
        f"{out[method]['gflops']:.1f} GFLOP/s ({100 * out[method]['fraction_of_peak']:.1f}% of peak), "
        f"{out[method]['seconds']:.1f} s")
  ratios = {}
  for a, b in (("engine", "torch_loop"), ("engine", "jax_loop"), ("engine", "torch_vmap"),
               ("torch_vmap", "torch_loop"), ("jax_loop", "torch_loop")):
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
  r["what"] = ("miajax.attacks.leave_one_out lira_online + lira_offline (variant miajax, balanced) "
               "vs lira_numpy.lira_loo_numpy")
  return r


def memory_spec(wl: Workload, models: int, examples: int, seed: int) -> dict:
  """What the memory child trains: ``models`` MLPs of ``wl`` on ``examples`` candidates, two steps each."""
  return dict(workload=dataclasses.asdict(wl), models=models, examples=examples, seed=seed,
              members=min(2 * wl.batch_size, examples))


def memory_child(spec: dict) -> dict:
  """Runs in the child process: the engine on ``spec``; returns what the parent cannot see."""
  wl_dict = dict(spec["workload"])
  wl_dict["model_kwargs"] = tuple((k, tuple(v) if isinstance(v, list) else v)
                                  for k, v in wl_dict["model_kwargs"])
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
  return dict(models_per_step=k, chunks=math.ceil(m / k), train_seconds=time.perf_counter() - t,
              self_peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
              finite_loss=bool(np.isfinite(res.loss).all()))


def run_memory(wl: Workload, models: int, examples: int, seed: int) -> dict:
  """Peak RSS of a child process that trains ``models`` models with the engine (planner picks the chunk)."""
  spec = memory_spec(wl, models, examples, seed)
  script = str(pathlib.Path(__file__).resolve())
  proc = subprocess.run([sys.executable, script, "--memory_child", json.dumps(spec)], capture_output=True,
                        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
  if proc.returncode != 0:
    raise RuntimeError(f"memory child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  child = json.loads(proc.stdout.strip().splitlines()[-1])
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB
  return dict(workload=wl.name, models=models, candidate_examples=examples, members_per_model=spec["members"],
              epochs=1, peak_rss_gib=peak, **child,
              note="peak_rss_gib: getrusage(RUSAGE_CHILDREN).ru_maxrss after the child exits (the largest "
                   "child of this process); self_peak_rss_gib: the child's own RUSAGE_SELF")


# ---------------------------------------------------------------------------
# goals and report


def _goal(name, value, goal, detail, kind=">="):
  met = None if value is None else (value >= goal if kind == ">=" else value < goal)
  ratio = None if value is None else (value / goal)
  return dict(name=name, value=value, goal=goal, kind=kind, ratio_to_goal=ratio, met=met, detail=detail)


def goals(rep: dict) -> list:
  w = rep["workloads"]
  ratio = lambda name, key: w.get(name, {}).get("ratios", {}).get(key)
  out = []
  def ceiling(name):
    # The most any method could gain over the PyTorch loop at equal FLOPs: running at 100 % of the peak.
    frac = w.get(name, {}).get("torch_loop", {}).get("fraction_of_peak")
    return f"examples/s ratio; ceiling at 100 % of the measured peak: {1 / frac:.2f}x" if frac else "examples/s ratio"

  for name in ("mlp_purchase", "mlp_digits"):
    out.append(_goal(f"{name}: engine / torch_loop", ratio(name, "engine/torch_loop"), 3.0, ceiling(name)))
    out.append(_goal(f"{name}: engine / jax_loop", ratio(name, "engine/jax_loop"), 1.0, "examples/s ratio"))
  frac = w.get("mlp_purchase", {}).get("engine", {}).get("fraction_of_peak")
  out.append(_goal("mlp_purchase: engine fraction of matmul peak", frac, 0.5,
                   "achieved FLOP/s / measured float32 matmul peak"))
  out.append(_goal("cnn_small: engine / torch_loop", ratio("cnn_small", "engine/torch_loop"), 1.5,
                   ceiling("cnn_small") + " (direct-convolution FLOPs; Winograd does fewer)"))
  lira = rep.get("lira") or {}
  out.append(_goal("LiRA leave-one-out: miajax / numpy", lira.get("speedup"), 50.0,
                   "numpy loop (extrapolated) seconds / miajax warm seconds"))
  mem = rep.get("memory") or {}
  out.append(_goal(f"engine peak host memory, {mem.get('models', '?')} {MEMORY_WORKLOAD} models (GiB)",
                   mem.get("peak_rss_gib"), 8.0, "child process max RSS", kind="<"))
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
  lines = ["# miajax benchmark", "",
           f"Device: {d['backend']} ({', '.join(d['device_kinds'])}) x {d['device_count']}, "
           f"{d['cpu_count']} CPUs, torch threads {d['torch_threads']}, "
           f"load average at start {d['load_average_start']}, "
           f"at end {d.get('load_average_end')}.",
           f"Measured float32 matmul peak (best of start and end of the run): "
           f"**{rep['matmul_peak_gflops']:.1f} GFLOP/s** (jax, per size: "
           + ", ".join(f"{k}: {v:.1f}" for k, v in rep["matmul"]["jax"].items()) + ")"
           + (f"; torch: " + ", ".join(f"{k}: {v:.1f}" for k, v in rep["matmul"]["torch"].items())
              if rep["matmul"].get("torch") else "") + ".", ""]
  if rep["workloads"]:
    lines += ["## Training throughput", "",
              "| workload | method | models | steps/model | batch | examples/s | models/hour (recipe) "
              "| GFLOP/s | % of peak | seconds (best) | all repeats s | epoch loss first -> last |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, w in rep["workloads"].items():
      s = w["setup"]
      for method in s["methods"]:
        r = w[method]
        lines.append(f"| {name} | {method} | {r['models']} | {r['steps']} | {s['batch_size']} | "
                     f"{_f(r['examples_per_s'], 0)} | {_f(r['models_per_hour'], 2)} | {_f(r['gflops'])} | "
                     f"{_f(100 * r['fraction_of_peak'])} | {_f(r['seconds'], 2)} | "
                     f"{', '.join(f'{t:.2f}' for t in r['all_seconds'])} | "
                     f"{r['mean_first_epoch_loss']:.3f} -> {r['mean_final_epoch_loss']:.3f} |")
    lines += ["", "| workload | ratios (examples/s) | engine models/step | engine micro-batch "
              "| FLOPs/example (source) | recipe |", "|---|---|---:|---:|---|---|"]
    for name, w in rep["workloads"].items():
      s = w["setup"]
      ratios = ", ".join(f"{k} {v:.2f}x" for k, v in w["ratios"].items()) or "n/a"
      lines.append(f"| {name} | {ratios} | {s.get('models_per_step', 'n/a')} | {s.get('microbatch_size', 'n/a')} | "
                   f"{s['flops_per_example'] / 1e6:.2f} M ({s['flops_source']}; analytic "
                   f"{s['flops_per_example_analytic'] / 1e6:.2f} M) | {s['recipe']} |")
    notes = sorted({n for w in rep["workloads"].values() for n in w["setup"]["notes"]})
    if notes:
      lines += [""] + [f"- {n}" for n in notes]
  if rep.get("lira"):
    r = rep["lira"]
    lines += ["", "## LiRA leave-one-out (online + offline)", "",
              "| shape | miajax warm s | miajax incl. compile s | numpy s (extrapolated from N examples) "
              "| speedup | max abs diff |", "|---|---:|---:|---:|---:|---:|",
              f"| {r['shape']} | {r['miajax_warm_s']:.2f} | {r['miajax_s']:.2f} | "
              f"{r['numpy_extrapolated_s']:.0f} ({r['numpy_subset_examples']}) | {r['speedup']:.0f}x | "
              f"{r['max_abs_diff_on_subset']:.1e} |"]
  if rep.get("memory"):
    m = rep["memory"]
    lines += ["", "## Engine peak host memory", "",
              "| models | candidates | models/step (planner) | chunks | peak RSS GiB (children) "
              "| child self GiB | train s |", "|---:|---:|---:|---:|---:|---:|---:|",
              f"| {m['models']} | {m['candidate_examples']} | {m['models_per_step']} | {m['chunks']} | "
              f"{m['peak_rss_gib']:.2f} | {m['self_peak_rss_gib']:.2f} | {m['train_seconds']:.1f} |"]
  lines += ["", "## Goals", "", "| goal | value | goal | value/goal | status | note |", "|---|---:|---:|---:|---|---|"]
  for g in rep["goals"]:
    status = "n/a" if g["met"] is None else ("pass" if g["met"] else "MISSED")
    lines.append(f"| {g['name']} | {_f(g['value'], 2)} | {g['kind']} {g['goal']:g} | "
                 f"{_f(g['ratio_to_goal'], 2)} | {status} | {g['detail']} |")
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
  loads = [l[0] for l in (rep["device"]["load_average_start"], rep["device"].get("load_average_end")) if l]
  if loads and max(loads) > 0.5 * cpus:
    notes.append(f"CPU busy: 1-minute load average up to {max(loads):.1f} on {cpus} CPUs; "
                 "throughputs (especially the torch rows) may be understated")
  for name, w in rep["workloads"].items():
    for method in w["setup"]["methods"]:
      times = w[method]["all_seconds"]
      if len(times) > 1 and max(times) > 1.5 * min(times):
        notes.append(f"{name}/{method}: repeats took {', '.join(f'{t:.1f}' for t in times)} s "
                     "(interference; the best counts)")
  return notes


def run(cfg: BenchConfig, *, table=None, log: Callable[[str], None] = print) -> dict:
  """Runs everything ``cfg`` asks for; returns the report and writes it when ``cfg.output_dir`` is set."""
  table = WORKLOADS if table is None else table
  for name in cfg.workloads:
    if name not in table:
      raise ValueError(f"workloads: unknown {name!r}; known: {list(table)}")
  notes = []
  torch, torch_note = (None, None)
  if any(m in TORCH_METHODS for m in cfg.methods):
    torch, torch_note = import_torch()
    if torch is None:
      notes.append(torch_note)
    else:
      torch.set_num_threads(os.cpu_count() or 1)
  rep: dict = dict(device=dict(
      backend=jax.default_backend(), device_kinds=sorted({d.device_kind for d in jax.devices()}),
      device_count=jax.device_count(), cpu_count=os.cpu_count(), jax_version=jax.__version__,
      torch_version=None if torch is None else torch.__version__,
      torch_threads=None if torch is None else torch.get_num_threads(), load_average_start=_load_average()))
  timing = {}
  t = time.perf_counter()
  log(f"float32 matmul peak, sizes {cfg.matmul_sizes} ...")
  mm = matmul_peak(cfg.matmul_sizes)
  rep["matmul_peak_gflops"] = mm["gflops"]
  rep["matmul"] = dict(jax=mm["per_size"],
                       torch=None if torch is None else torch_matmul(torch, cfg.matmul_sizes))
  timing["matmul"] = time.perf_counter() - t
  log(f"matmul peak {mm['gflops']:.1f} GFLOP/s")
  rep["workloads"] = {}
  for name in cfg.workloads:
    t = time.perf_counter()
    rep["workloads"][name] = run_workload(table[name], cfg, mm["gflops"], torch, torch_note, log)
    timing[name] = time.perf_counter() - t
  rep["lira"] = None
  if cfg.lira:
    t = time.perf_counter()
    log(f"LiRA leave-one-out on {list(cfg.lira_shape)} vs numpy on {cfg.numpy_examples} examples ...")
    rep["lira"] = run_lira(cfg.lira_shape, cfg.numpy_examples, cfg.seed)
    timing["lira"] = time.perf_counter() - t
  rep["memory"] = None
  if cfg.memory_models:
    if MEMORY_WORKLOAD not in table:
      raise ValueError(f"memory needs workload {MEMORY_WORKLOAD!r} in the table")
    t = time.perf_counter()
    log(f"peak memory: {cfg.memory_models} {MEMORY_WORKLOAD} models in a child process ...")
    rep["memory"] = run_memory(table[MEMORY_WORKLOAD], cfg.memory_models, cfg.memory_examples, cfg.seed)
    timing["memory"] = time.perf_counter() - t
  # The peak is measured again at the end and the best counts: a busy CPU only lowers it.
  t = time.perf_counter()
  mm_end = matmul_peak(cfg.matmul_sizes)
  timing["matmul"] += time.perf_counter() - t
  rep["matmul"]["jax_start"], rep["matmul"]["jax_end"] = mm["per_size"], mm_end["per_size"]
  rep["matmul"]["jax"] = {k: max(v, mm_end["per_size"][k]) for k, v in mm["per_size"].items()}
  peak = max(rep["matmul"]["jax"].values())
  if peak > rep["matmul_peak_gflops"]:
    for w in rep["workloads"].values():
      for method in w["setup"]["methods"]:
        w[method]["fraction_of_peak"] = w[method]["gflops"] / peak
  rep["matmul_peak_gflops"] = peak
  rep["device"]["load_average_end"] = _load_average()
  rep["goals"] = goals(rep)
  rep["notes"] = notes + _interference_notes(rep) + [
      "All methods run one after another in this process after their own warm-up (compile / first steps); "
      "throughput = models x steps x batch / seconds (best of --repeats); models/hour = examples/s / "
      "the examples one model sees in the workload's recipe.",
      "Engine seconds are one whole train_models call (init, per-epoch shuffles and steps of every chunk).",
      "Synthetic data except mlp_digits; the machine may be shared with other jobs (see load averages)."]
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
flags.DEFINE_string("workloads", "all", f"Comma list of {list(WORKLOADS)} or 'all'.")
flags.DEFINE_string("methods", "all", f"Comma list of {list(METHODS)} or 'all'.")
flags.DEFINE_integer("num_models", None, "Models per method for every workload (default: per workload).")
flags.DEFINE_integer("steps", None, "Timed training steps per model (default: per workload).")
flags.DEFINE_bool("lira", True, "Also time LiRA leave-one-out against the numpy loop.")
flags.DEFINE_string("lira_shape", "256,50000,2", "models,examples,queries of the LiRA timing.")
flags.DEFINE_integer("numpy_examples", 100, "Examples the numpy LiRA loop runs before extrapolating.")
flags.DEFINE_integer("memory_models", 256, f"{MEMORY_WORKLOAD} models of the peak-memory run (0: skip).")
flags.DEFINE_integer("memory_examples", 40_000, "Candidate examples of the peak-memory run.")
flags.DEFINE_string("matmul_sizes", "2048,4096", "Square float32 matmul sizes for the peak.")
flags.DEFINE_integer("repeats", 3, "Timed runs per method after the warm-up; the best counts.")
flags.DEFINE_integer("seed", 0, "Seed of data, membership and initialisation.")
flags.DEFINE_string("output_dir", None, "Where report.json and report.md go.")
flags.DEFINE_string("memory_child", None, "Internal: run the peak-memory child with this JSON spec.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cpu.use_all_cores()  # before any JAX computation: one CPU device per core for the engine
  if FLAGS.memory_child:
    print(json.dumps(memory_child(json.loads(FLAGS.memory_child))), flush=True)
    return
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")
  try:
    cfg = parse_config(workloads=FLAGS.workloads, methods=FLAGS.methods, num_models=FLAGS.num_models,
                       steps=FLAGS.steps, lira=FLAGS.lira, lira_shape=FLAGS.lira_shape,
                       numpy_examples=FLAGS.numpy_examples, memory_models=FLAGS.memory_models,
                       memory_examples=FLAGS.memory_examples, matmul_sizes=FLAGS.matmul_sizes,
                       repeats=FLAGS.repeats, seed=FLAGS.seed, output_dir=FLAGS.output_dir)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  t = time.perf_counter()
  rep = run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
  print(markdown(rep))
  print(f"total {time.perf_counter() - t:.0f} s; wrote {cfg.output_dir}/report.json and report.md")


if __name__ == "__main__":
  app.run(main)
