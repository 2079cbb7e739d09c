"""End to end against the Adversarial Robustness Toolbox (optional ``bench`` extra): the demo's
digits shadows trained and queried by miajax and by ART's ``ShadowModels``."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from bench import torch_peers, workloads
import miajax
from miajax import engine

# The directory holding the bench package, for the fresh processes to import it from.
EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1]


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


def art_template(mods: dict, wl: workloads.Workload, epochs: int):
  """An untrained ART ``PyTorchClassifier`` that trains with ``wl``'s recipe when ``ShadowModels`` fits it.

  ``ShadowModels`` calls ``fit(x, y)`` with no arguments (so ART's defaults,
  batch 128 and 10 epochs without a schedule, would apply) and clones the
  template as ``type(self)(model, loss, ...)`` followed by ``reset()``
  (PyTorch's default initialisation).  A subclass is the only way to reach
  either: its ``fit`` hands ART's own ``fit`` the batch size, the epochs and
  an epoch-wise cosine scheduler; its ``reset`` draws weights at Flax's scale
  like :func:`bench.torch_peers.torch_model`.  ART's training loop itself is untouched.
  """
  torch = mods["torch"]

  class RecipeClassifier(mods["PyTorchClassifier"]):
    def fit(self, x, y, **kwargs):
      # ART steps the scheduler once per epoch; the closest it gets to the engine's per-step
      # cosine is each epoch at the cosine of its midpoint.
      sched = torch.optim.lr_scheduler.LambdaLR(
        self._optimizer, lambda e: workloads.cosine(e + 0.5, epochs)
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
      torch_peers.flax_scale_init_(torch, self.model)

  net = torch_peers.torch_model(torch, wl)
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
  miajax.use_all_cores()
  cache = miajax.use_compilation_cache()
  from miajax import data as data_lib

  wl = workloads.WORKLOADS[workloads.ART_WORKLOAD]
  ds = data_lib.load("digits")
  x, y = ds.x_train.astype(np.float32), ds.y_train.astype(np.int64)
  cfg = wl.config(epochs, seed)
  keep = data_lib.paired_keep(models, len(x), seed=seed)
  t = time.perf_counter()
  res = engine.train_models(cfg, x, y, keep, num_classes=wl.num_classes)
  logits = engine.predict(cfg, res.variables, x, num_classes=wl.num_classes)
  seconds = time.perf_counter() - t
  acc = float((np.asarray(logits)[:, :, 0].argmax(-1) == y).mean())
  print(json.dumps(dict(seconds=seconds, pool_accuracy=acc, cache=cache)))


def _fresh_process_seconds(
  models: int, epochs: int, seed: int, cache_dir: str
) -> dict:
  code = (
    f"import sys; sys.path.insert(0, {str(EXPERIMENTS)!r}); "
    f"from bench import art; art.art_miajax_child({models}, {epochs}, {seed})"
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


def _digits(wl: workloads.Workload):
  """The digits pool (train split) and test split, as both sides train on them."""
  from miajax import data as data_lib

  ds = data_lib.load("digits")
  x, y = ds.x_train.astype(np.float32), ds.y_train.astype(np.int64)
  x_test, y_test = ds.x_test.astype(np.float32), np.asarray(ds.y_test)
  if tuple(x.shape[1:]) != wl.input_shape:
    raise ValueError(
      f"ART comparison: digits are {x.shape[1:]}, not {wl.input_shape}"
    )
  return x, y, x_test, y_test


def _time_miajax(wl, pool, models, epochs, repeats, seed, log) -> dict:
  """miajax's side: two fresh processes, then this process's first and warm calls; accuracies."""
  from miajax import data as data_lib

  x, y, x_test, y_test = pool
  cfg = wl.config(epochs, seed)
  keep = data_lib.paired_keep(models, len(x), seed=seed)

  def once():
    res = engine.train_models(cfg, x, y, keep, num_classes=wl.num_classes)
    return res, engine.predict(
      cfg, res.variables, x, num_classes=wl.num_classes
    )

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
  once()
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    res, logits = once()
    times.append(time.perf_counter() - t)
  log(f"[art] miajax: first call {first:.1f} s, warm {min(times):.1f} s")
  correct = logits[:, :, 0].argmax(-1) == y
  test_logits = engine.predict(
    cfg, res.variables, x_test, num_classes=wl.num_classes
  )
  return dict(
    keep=keep,
    first=first,
    times=times,
    empty=empty,
    cached=cached,
    member_acc=(correct & keep).sum(1) / keep.sum(1),
    test_acc=(test_logits[:, :, 0].argmax(-1) == y_test).mean(1),
  )


def _time_art(mods, wl, pool, models, epochs, repeats, seed, threads, log):
  """ART's side: ``repeats`` fresh ``ShadowModels`` per torch thread count; accuracies of the last."""
  torch = mods["torch"]
  x, y, x_test, y_test = pool
  times, used_threads = [], []
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
        times.append(time.perf_counter() - t)
        used_threads.append(n_threads)
        log(f"[art] ART: {times[-1]:.1f} s")
  finally:
    torch.set_num_threads(saved_threads)
  # ART gives every shadow int(0.5 * pool) members, concatenated in order.
  members = len(member_y) // models
  return dict(
    times=times,
    threads=used_threads,
    members=members,
    nonmembers=len(nonmember_x),
    member_acc=(member_pred.argmax(-1) == member_y)
    .reshape(models, members)
    .mean(1),
    test_acc=np.array(
      [
        (m.predict(x_test).argmax(-1) == y_test).mean()
        for m in shadow.get_shadow_models()
      ]
    ),
  )


def _side(times, member_acc, test_acc) -> dict:
  return dict(
    seconds=min(times),
    all_seconds=times,
    mean_member_accuracy=float(np.mean(member_acc)),
    mean_test_accuracy=float(np.mean(test_acc)),
    min_test_accuracy=float(np.min(test_acc)),
    max_test_accuracy=float(np.max(test_acc)),
  )


def _notes(members: int, b: int, mj_steps: int) -> list:
  return [
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
  ]


def run_art(
  mods: dict,
  wl: workloads.Workload,
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
  pool = _digits(wl)
  mj = _time_miajax(wl, pool, models, epochs, repeats, seed, log)
  # One thread is ART's safe setting here: torch's OpenMP threads on a shared 2-core machine stall
  # waiting for each other (8 digits shadows: 0.6 s on 1 thread, 0.7-9 s on 2 in one session).
  threads = tuple(threads or dict.fromkeys((1, os.cpu_count() or 1)))
  a = _time_art(mods, wl, pool, models, epochs, repeats, seed, threads, log)
  keep, b, members = mj["keep"], wl.batch_size, a["members"]
  mj_steps = math.ceil(int(keep.sum(1).max()) / b)
  art_best = min(a["times"])
  return dict(
    workload=wl.name,
    dataset="digits",
    shadows=models,
    epochs=epochs,
    batch_size=b,
    learning_rate=wl.learning_rate,
    weight_decay=wl.weight_decay,
    pool_examples=len(pool[0]),
    test_examples=len(pool[2]),
    art_version=mods["version"],
    torch_version=mods["torch"].__version__,
    miajax=dict(
      _side(mj["times"], mj["member_acc"], mj["test_acc"]),
      first_call_seconds=mj["first"],
      fresh_process_seconds=mj["empty"]["seconds"],
      fresh_process_cached_seconds=mj["cached"]["seconds"],
      fresh_process_pool_accuracy=[
        mj["empty"]["pool_accuracy"],
        mj["cached"]["pool_accuracy"],
      ],
      members_per_shadow=[int(keep.sum(1).min()), int(keep.sum(1).max())],
      steps_per_epoch=mj_steps,
      examples_per_epoch=mj_steps * b,
      queried_per_shadow=len(pool[0]),
      schedule="cosine per step",
      init="Flax default (lecun_normal: truncated normal, variance 1/fan_in)",
      timed="train_models + predict (logits on the pool), one call",
    ),
    art=dict(
      _side(a["times"], a["member_acc"], a["test_acc"]),
      torch_threads=a["threads"],
      best_torch_threads=a["threads"][int(np.argmin(a["times"]))],
      members_per_shadow=[members, members],
      steps_per_epoch=math.ceil(members / b),
      examples_per_epoch=members,
      queried_per_shadow=members + a["nonmembers"] // models,
      schedule="cosine per epoch (LambdaLR at each epoch's midpoint)",
      init="normal, std 1/sqrt(fan_in), zero bias (reset() overridden)",
      timed="ShadowModels.generate_shadow_dataset(x, y, member_ratio=0.5)",
    ),
    # The headline counts miajax's compilation: a fresh process pays it, ART has none to pay.
    # The goal's number: a fresh process, as a user's second run of a recipe
    # starts (compiled programs from the persistent cache). The first run on
    # a machine compiles everything: speedup_empty_cache.
    speedup=art_best / mj["cached"]["seconds"],
    speedup_empty_cache=art_best / mj["empty"]["seconds"],
    speedup_first_call=art_best / mj["first"],
    speedup_warm=art_best / min(mj["times"]),
    notes=_notes(members, b, mj_steps),
  )
