"""How a run executes, decided once: the resolved :class:`miajax.Lowering` of a run directory or store entry.

On CPU the engine picks a gradient micro-batch by timing the candidates, and
the pick changes the float rounding of every step. Timing noise may change
speed, never bits: so the run's complete lowering (model axis, micro-batch,
convolution form, compute dtype, models per step) is resolved once, logged,
written as ``lowering.json`` beside the run's ``config.json`` (or the store
entry's ``store.json``), and every resume and every process of the run
reads it back instead of deciding again.

A fresh run directory asks the machine's decision cache first
(``~/.cache/miajax/lowering``, ``MIAJAX_LOWERING_CACHE=DIR`` moves it, ``=0``
turns it off): the same command on the same machine and JAX gives the same
bits whatever the load when it starts. An explicit choice (a ``Lowering``
field set by the caller) wins over the cache; over a run's record only where
it cannot change the numbers (``models_per_step``, ``steps_per_call``): a
different micro-batch, model axis, convolution or dtype for a run already
started is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Callable

import jax

from miajax import engine

__all__ = ["ENV", "NUMERIC_FIELDS", "decide", "for_run", "cache_dir"]

ENV = "MIAJAX_LOWERING_CACHE"
FILE = "lowering.json"
# The fields that change a trained model's bits.
NUMERIC_FIELDS = ("model_axis", "microbatch", "conv_impl", "compute_dtype")


def cache_dir() -> pathlib.Path | None:
  """The machine's decision cache (None when ``MIAJAX_LOWERING_CACHE=0``)."""
  value = os.environ.get(ENV)
  if value == "0":
    return None
  if value:
    return pathlib.Path(value)
  return pathlib.Path.home() / ".cache" / "miajax" / "lowering"


def _machine_key(config, input_shape, num_classes, given) -> str:
  """What a decision depends on: the program, the shapes, the machine, JAX."""
  device = jax.local_devices()[0]
  ident = {
    "program": engine.fingerprint(engine.program_key(config)),
    "input_shape": list(input_shape),
    "num_classes": int(num_classes),
    "given": dataclasses.asdict(given),
    "platform": device.platform,
    "device_kind": device.device_kind,
    "devices": jax.local_device_count(),
    "jax": jax.__version__,
  }
  text = json.dumps(ident, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write_once(path: pathlib.Path, record: dict) -> dict:
  """Writes ``record`` at ``path`` unless it exists; returns what is there.

  Create-if-absent through a hard link of a finished temporary file: two
  processes deciding at once both read back the one that won.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(record, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    try:
      os.link(tmp, path)
    except FileExistsError:
      pass
  finally:
    pathlib.Path(tmp).unlink(missing_ok=True)
  return json.loads(path.read_text())


def _read_record(path: pathlib.Path) -> engine.Lowering:
  """The recorded lowering; a damaged record is refused in one line."""
  try:
    low = _as_lowering(json.loads(path.read_text()))
    low.validate()
  except (OSError, ValueError, TypeError) as e:
    raise ValueError(
      f"{path}: not a readable lowering record ({type(e).__name__}: {e}); "
      "restore it, or delete it to decide the lowering again (the chunks "
      "trained so far may then differ from the rest in float rounding)"
    ) from None
  return low


def _as_lowering(record: dict) -> engine.Lowering:
  fields = {f.name for f in dataclasses.fields(engine.Lowering)}
  return engine.Lowering(**{k: v for k, v in record.items() if k in fields})


def _check_against(recorded: engine.Lowering, given: engine.Lowering, where):
  for name in NUMERIC_FIELDS:
    want = getattr(given, name)
    have = getattr(recorded, name)
    if name == "compute_dtype" and want == "float32":
      continue  # the default: config.json compares the dtype already
    if want is not None and want != have:
      raise ValueError(
        f"{where} was trained with {name}={have!r} ({FILE}); {name}={want!r} "
        "would change the models' numbers: pass the same value or use a new "
        "directory"
      )


def decide(
  directory,
  given: engine.Lowering,
  resolve: Callable[[engine.Lowering], engine.Lowering],
  *,
  config,
  input_shape,
  num_classes: int,
  log: Callable[[str], None] = print,
) -> engine.Lowering:
  """The run's complete lowering: recorded in ``directory``, else cached for this machine, else resolved now.

  Args:
    directory: the run directory or store entry (``lowering.json`` lives there).
    given: the caller's choices (``None`` fields are decided).
    resolve: ``Lowering -> complete Lowering`` for this run (the engine's
      :func:`miajax.engine.resolve_lowering` with the run's step count, and
      the planner's models per step).
    config, input_shape, num_classes: the recipe and shapes (the cache key).
    log: receives one line saying what runs and where it came from.
  """
  path = pathlib.Path(directory) / FILE
  if path.exists():
    recorded = _read_record(path)
    _check_against(recorded, given, f"{str(directory)!r}")
    overrides = {
      k: getattr(given, k)
      for k in ("models_per_step", "steps_per_call")
      if getattr(given, k) is not None
    }
    low, source = dataclasses.replace(recorded, **overrides), FILE
  else:
    cached = _from_cache(config, input_shape, num_classes, given)
    if cached is not None:
      low, source = resolve(cached), "this machine's decision cache"
    else:
      low, source = resolve(given), "decided now"
      _to_cache(config, input_shape, num_classes, given, low)
    low = _as_lowering(_write_once(path, dataclasses.asdict(low)))
  log(
    f"lowering ({source}): model_axis={low.model_axis}, "
    f"models_per_step={low.models_per_step}, microbatch={low.microbatch}, "
    f"conv={low.conv_impl}, dtype={low.compute_dtype}, backend={low.backend}"
  )
  return low


def _cache_file(config, input_shape, num_classes, given):
  root = cache_dir()
  if root is None:
    return None
  return root / f"{_machine_key(config, input_shape, num_classes, given)}.json"


def _from_cache(config, input_shape, num_classes, given):
  path = _cache_file(config, input_shape, num_classes, given)
  if path is None or not path.is_file():
    return None
  try:
    cached = _as_lowering(json.loads(path.read_text()))
  except (ValueError, TypeError):  # a damaged entry is decided again
    return None
  # models_per_step depends on the run's model count: the planner redoes it.
  return dataclasses.replace(cached, models_per_step=given.models_per_step)


def _to_cache(config, input_shape, num_classes, given, low) -> None:
  path = _cache_file(config, input_shape, num_classes, given)
  if path is None:
    return
  try:
    _write_once(path, dataclasses.asdict(low))
  except OSError:  # a read-only home: the run directory still records it
    pass


def for_run(spec, x, num_classes: int, keep, directory, log) -> engine.Lowering:
  """:func:`decide` for a :class:`miajax.RunSpec` training ``keep``'s models on ``x``."""
  cfg, shape = spec.train, tuple(x.shape[1:])
  # Every model's steps, as the engine counts them for the micro-batch timing.
  steps = (
    spec.num_models * cfg.epochs * engine.steps_per_epoch(keep, cfg.batch_size)
  )

  def resolve(given):
    low = engine.resolve_lowering(
      cfg, shape, num_classes, lowering=given, steps=steps
    )
    per_step = engine.plan_models_per_step(
      cfg, num_classes, shape, spec.num_models, lowering=low
    )
    return dataclasses.replace(low, models_per_step=per_step)

  return decide(
    directory,
    spec.lowering,
    resolve,
    config=cfg,
    input_shape=shape,
    num_classes=num_classes,
    log=log,
  )
