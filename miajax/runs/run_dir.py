"""Run directories: train shadow models chunk by chunk, write each chunk atomically, resume.

A run directory holds::

    config.json          everything that determines the result
    chunks/chunk_00000_00016.npz   one finished chunk of models (atomic rename)
    chunks/checkpoint_00016_00032.npz   the training state of a chunk in
                         flight (every few minutes or epochs; deleted once the
                         chunk's file is written)
    keep.npy             bool[models, examples]
    logits.npy           float32[models, examples, queries, classes] on the training set
    labels.npy           int32[examples]
    label_views.npy      int16[models, examples, views] predicted labels of the
                         label-only views (only with RunSpec.label_only)
    extra_<name>.npy     float32[models, inputs, classes] logits on extra query
                         inputs (run_training's extra_queries)
    models.json          per-model train/test accuracy, final loss, divergence
    manifest.json        the sha256 of every file above (runs.run_files)
    locks/               advisory locks: which process trains which models

Rerunning the same command skips chunks already on disk and resumes a chunk in
flight from its checkpoint, so a killed run loses at most the epochs since the
last checkpoint, and its outputs equal an uninterrupted run's.  A different
configuration in the same directory is refused rather than mixed; a chunk that
fails its checks is retrained.  Processes sharing the directory split the
chunks between them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import time
from typing import Any, Callable

import numpy as np

from miajax import data as data_lib
from miajax import engine as train_lib
from miajax.runs import checkpoint as checkpoint_lib
from miajax.runs import claims as claims_lib
from miajax.runs import decisions
from miajax.runs import integrity
from miajax.runs import io
from miajax.runs import label_views
from miajax.runs import merge as merge_lib
from miajax.runs import progress as progress_lib
from miajax.runs import run_files
from miajax.runs.spec import (
  ConfigMismatchError,
  RunResult,
  RunSpec,
  load_dataset,
  make_keep,
)

__all__ = [
  "run_training",
  "load_run",
  "label_view_predictions",
]

# Reading a finished run is checking its files: it lives with those checks.
load_run = run_files.load_run
label_view_predictions = label_views.label_view_predictions


def run_training(
  spec: RunSpec,
  output_dir,
  *,
  log: Callable[[str], None] = print,
  chunk_models: list[int] | None = None,
  merge: bool = True,
  extra_queries: dict[str, tuple[Any, dict]] | None = None,
  checkpoint_every_s: float = 300.0,
  checkpoint_every_epochs: int = 0,
  progress: Callable[[dict], None] | None = None,
  repair: bool = True,
  eta_after: Callable[[int], float] | None = None,
) -> RunResult | None:
  """Trains (or resumes) every model of ``spec`` into ``output_dir``.

  Args:
    spec: the run's :class:`RunSpec`.
    output_dir: the run directory (created if needed).
    log: a function that receives progress lines.
    chunk_models: train only these model indices (a process's slice in a
      multi-process run); ``None`` trains all.
    merge: assemble ``keep.npy`` / ``logits.npy`` when every chunk is done.
    extra_queries: ``{name: (inputs float[n, ...], description)}``: more
      inputs every model is queried on once trained (e.g. HAMP's random
      inputs); their logits ``float32[models, n, classes]`` are kept beside the
      chunk's and returned in ``RunResult.extra_logits[name]``. ``description``
      (JSON) says how the inputs were made; it enters ``config.json``, so a
      rerun with other inputs is refused rather than mixed.
    checkpoint_every_s: save the training state of the chunk in flight at
      the first epoch boundary this many seconds after the last save (0:
      never by time).
    checkpoint_every_epochs: also save it every this many epochs (0: never
      by epoch count). Neither setting is part of the run's configuration:
      a rerun with other values resumes the same run.
    progress: receives the engine's per-epoch dicts (see
      :func:`miajax.engine.train_chunks`) instead of the default display (a
      line redrawn on a terminal ``sys.stderr``, else lines to ``log``).
    repair: a chunk file that fails its checks (unreadable, changed since
      written, another run's) is moved aside as ``*.corrupt`` and its models
      retrained; ``keep.npy`` / ``labels.npy`` are rewritten and the outputs
      merged again (see :mod:`miajax.runs.run_files`). ``False``: a one-line
      ``CorruptFileError`` naming the file instead.
    eta_after: the caller's estimate of the seconds its work after training
      (e.g. attacks) takes, given the run's scores (models x training
      examples): the default display's ETA counts it beside the training
      and queries left.

  Processes running this on one directory at once split the chunks (per-model
  locks, :mod:`miajax.runs.claims`): each model is trained once.

  Returns:
    The merged :class:`RunResult`, or ``None`` if ``merge`` is false or other
    processes' chunks are still missing.
  """
  checkpoint_lib.check_intervals(checkpoint_every_s, checkpoint_every_epochs)
  ds = load_dataset(spec)
  keep = make_keep(spec, ds.x_train.shape[0])
  # Validate everything before touching the directory or compiling anything.
  extra_queries = _check(spec, ds, keep, extra_queries)
  spec_json = _config_json(spec, ds, extra_queries)
  out = _prepare_dir(output_dir, json.loads(json.dumps(spec_json)))
  # Decided once per run directory: every resume and process reads it back.
  spec = dataclasses.replace(
    spec,
    lowering=decisions.for_run(
      spec, ds.x_train, ds.num_classes, keep, out, log
    ),
  )
  files = run_files.open_run(
    out,
    integrity.fingerprint_of(json.loads(json.dumps(spec_json))),
    {"keep": keep, "labels": ds.y_train.astype(np.int32)},
    log=log,
    repair=repair,
  )
  run = _Run(spec, ds, keep, out, extra_queries, log, files)
  mine = _my_models(spec, chunk_models)
  todo, reused, done = _plan(run, mine)

  t_start = time.perf_counter()
  progress, shown = _display(run, mine, done, progress, eta_after)
  checkpoints = checkpoint_lib.Checkpointer(
    out / "chunks",
    every_s=checkpoint_every_s,
    every_epochs=checkpoint_every_epochs,
    fingerprint=hashlib.sha256(
      json.dumps(spec_json, sort_keys=True).encode()
    ).hexdigest()[:16],
    log=run.log,
  )
  try:
    # ``todo`` becomes the chunks this process trained (others may train
    # some of the planned ones).
    train_s, predict_s, resumed, todo = _train(
      run, todo, progress, checkpoints, shown, mine
    )
  finally:
    if shown is not None:
      shown.close()
  elapsed = time.perf_counter() - t_start
  _log_summary(run, todo, elapsed, (train_s, predict_s), shown, checkpoints)
  if not merge:
    return None
  result = merge_lib.merge_chunks(out, spec.num_models, log=run.log)
  if result is None:
    return None
  result.chunks_trained, result.chunks_reused = len(todo), reused
  result.train_seconds, result.predict_seconds = train_s, predict_s
  result.resumed_epochs = resumed
  return result


@dataclasses.dataclass
class _Run:
  """What the steps of one :func:`run_training` call share."""

  spec: RunSpec
  ds: data_lib.Dataset
  keep: np.ndarray
  out: pathlib.Path
  extra_queries: dict[str, tuple[Any, dict]]
  log: Callable[[str], None]
  files: run_files.RunFiles
  per_step: int = 0  # the planned chunk size


def _check(spec: RunSpec, ds, keep, extra_queries) -> dict:
  """Raises ``ValueError`` for unusable inputs; returns ``extra_queries``."""
  x, y = ds.x_train, ds.y_train
  train_lib.check_inputs(x, y, keep, spec.train, ds.num_classes)
  spec.lowering.validate(spec.train.batch_size)
  train_lib.query_views(x[:1], spec.queries)
  if spec.label_only is not None:
    spec.label_only.check(x.shape[1:])
  extra_queries = dict(extra_queries or {})
  for name, (inputs, _) in extra_queries.items():
    if not name.isidentifier():
      raise ValueError(f"extra_queries names must be identifiers, got {name!r}")
    if np.shape(inputs)[1:] != x.shape[1:] or np.shape(inputs)[0] < 1:
      raise ValueError(
        f"extra_queries[{name!r}] must be inputs [n, {', '.join(map(str, x.shape[1:]))}], got "
        f"shape {np.shape(inputs)}"
      )
  return extra_queries


def _config_json(spec: RunSpec, ds, extra_queries: dict) -> dict:
  """``config.json``: the spec, a user model's parameter shapes, extra queries."""
  # A user model is identified by its parameter shapes: a resume with
  # another architecture is refused.
  spec_json = spec.to_json(
    input_shape=tuple(ds.x_train.shape[1:]), num_classes=ds.num_classes
  )
  if extra_queries:
    spec_json["extra_queries"] = {
      name: desc for name, (_, desc) in sorted(extra_queries.items())
    }
  return spec_json


def _prepare_dir(output_dir, spec_json: dict) -> pathlib.Path:
  out = pathlib.Path(output_dir)
  try:
    (out / "chunks").mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(
      f"output_dir {str(out)!r} cannot be created or written: {e}"
    ) from None
  if not os.access(out, os.W_OK):
    raise ValueError(f"output_dir {str(out)!r} is not writable")
  cfg_path = out / "config.json"
  # Two processes starting one directory: one writes config.json, the other
  # compares with it.
  with io.lock(out / "locks" / "run.lock"):
    if cfg_path.exists():
      old = json.loads(cfg_path.read_text())
      if old != spec_json:
        diff = sorted(_diff_keys(old, spec_json))
        raise ConfigMismatchError(
          f"output_dir {str(out)!r} holds a run with a different configuration "
          f"(differs in: {', '.join(diff)}); use a new --output_dir or delete the old run"
        )
    else:
      run_files.refuse_foreign_chunks(
        out, integrity.fingerprint_of(spec_json), ConfigMismatchError
      )
      io.write_json_atomic(cfg_path, spec_json)
  return out


def _diff_keys(a, b, prefix="") -> set[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = set()
    for k in set(a) | set(b):
      out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return set() if a == b else {prefix.rstrip(".")}


def _my_models(spec: RunSpec, chunk_models) -> list[int]:
  mine = (
    list(range(spec.num_models))
    if chunk_models is None
    else sorted(set(chunk_models))
  )
  if mine and (mine[0] < 0 or mine[-1] >= spec.num_models):
    raise ValueError(
      f"chunk_models must lie in [0, {spec.num_models}), got {mine[0]}..{mine[-1]}"
    )
  return mine


def _plan(run: _Run, mine: list[int]) -> tuple[list[list[int]], int, set[int]]:
  """The chunks of ``mine`` left to train, the chunk files reused, the models done.

  Bad chunk files are set aside (or refused); stale checkpoints removed.
  """
  cfg, ds = run.spec.train, run.ds
  done = run.files.done(fix=True)
  finished = run.files.chunk_files()
  reused = sum(
    1 for r in finished.values() if set(r) & set(mine) and set(r) <= done
  )
  k = run.per_step = train_lib.plan_models_per_step(
    cfg,
    ds.num_classes,
    ds.x_train.shape[1:],
    run.spec.num_models,
    lowering=run.spec.lowering,
  )
  todo = _left(run, mine, done)
  if reused:
    run.log(f"resuming: {reused} chunks already on disk, {len(todo)} to train")
  run.log(
    f"training {sum(map(len, todo))} models in {len(todo)} chunks of up to {k} "
    f"({cfg.model}, {ds.x_train.shape[0]} candidate examples, {cfg.epochs} epochs, "
    f"{train_lib.models_mesh().size} devices)"
  )
  return todo, reused, done


def _left(run: _Run, mine: list[int], done: set[int]) -> list[list[int]]:
  """The chunks of ``mine`` not ``done``, checkpointed ones kept whole."""
  saved = checkpoint_lib.checkpoint_files(run.out / "chunks")
  for path, r in saved.items():
    # Killed between writing a chunk and deleting its checkpoint: the chunk
    # file supersedes it.
    if set(r) <= set(mine) and set(r) <= done:
      path.unlink(missing_ok=True)
    elif set(r) <= set(mine) and set(r) & done:
      run.log(
        f"not using the checkpoint {path.name}: some of its models are "
        "already in chunk files"
      )
  return merge_lib.plan_around(
    [m for m in mine if m not in done], run.per_step, list(saved.values())
  )


def _display(run: _Run, mine, done, progress, eta_after=None):
  """``(progress, shown)``: the caller's listener, else a :class:`Progress`
  display (``shown``), through whose ``log`` every later line then goes so
  that it does not tear the redrawn line. Its ETA counts the queries
  (``_train`` reports each chunk's) and ``eta_after`` of the scores."""
  if progress is not None:
    return progress, None
  scores = run.spec.num_models * run.ds.x_train.shape[0]
  shown = progress_lib.Progress(
    total_models=len(mine),
    done_models=len(set(mine) & done),
    epochs=run.spec.train.epochs,
    log=run.log,
    queries=True,
    after_s=eta_after(scores) if eta_after is not None else 0.0,
  )
  run.log = shown.log
  return shown, shown


def _train(run: _Run, todo, progress, checkpoints, shown, mine):
  """Trains ``todo`` (then whatever other processes left of ``mine``) and
  writes each chunk's file as it finishes.

  Returns the seconds spent training and querying, the epoch each chunk
  resumed from a checkpoint at, keyed ``(first model, last + 1)``, and the
  chunks this process trained.
  """
  ds, cfg = run.ds, run.spec.train
  seconds = {"train": 0.0, "predict": 0.0}
  resumed = {}
  plans = iter([todo])

  def plan():
    first = next(plans, None)
    return (
      first if first is not None else _left(run, mine, run.files.done(True))
    )

  def train(chunks):
    for result in train_lib.train_chunks(
      cfg,
      ds.x_train,
      ds.y_train,
      run.keep,
      num_classes=ds.num_classes,
      lowering=run.spec.lowering,
      chunks=chunks,
      progress=progress,
      checkpoints=checkpoints,
    ):
      query_s = _write_chunk(run, result)
      seconds["predict"] += query_s
      seconds["train"] += result.train_seconds
      if result.resumed_epoch:
        idx = result.model_indices
        resumed[(int(idx[0]), int(idx[-1]) + 1)] = result.resumed_epoch
      if shown is not None:
        shown.chunk_done(len(result.model_indices), query_seconds=query_s)

  trained = claims_lib.train_claimed(
    run.files.claims,
    plan,
    lambda chunk: bool(set(chunk) & run.files.done()),
    train,
    run.files.started,
  )
  return seconds["train"], seconds["predict"], resumed, trained


def _log_summary(run: _Run, todo, elapsed, phase_s, shown, checkpoints):
  """Logs the models trained, the time of each phase, the rates, the
  checkpoints written; ``phase_s``: the seconds training and querying."""
  train_s, predict_s = phase_s
  n_trained = sum(map(len, todo))
  if n_trained:
    epochs = run.spec.train.epochs
    seen = int(run.keep[[m for c in todo for m in c]].sum()) * epochs
    rate = shown.rate if shown is not None else None
    steady = (
      f"{rate.per_s:,.0f} training examples/s after compiling "
      f"(~{rate.compile_seconds:.1f} s)"
      if rate is not None and rate.compile_seconds is not None
      else f"{seen / max(train_s, 1e-9):,.0f} training examples/s"
    )
    run.log(
      f"trained {n_trained} models in {elapsed:.1f} s (training "
      f"{train_s:.1f} s, queries {predict_s:.1f} s; {steady}; "
      f"{n_trained / max(elapsed, 1e-9):.2f} models/s)"
    )
  if checkpoints.saves:
    run.log(
      f"wrote {checkpoints.saves} checkpoint(s) in "
      f"{checkpoints.save_seconds:.2f} s "
      f"({checkpoints.last_bytes / 2**20:.2f} MiB the last)"
    )


def _write_chunk(run: _Run, result) -> float:
  """Queries a trained chunk and writes its file; returns the seconds taken."""
  spec, cfg, ds, keep = run.spec, run.spec.train, run.ds, run.keep
  x, y = ds.x_train, ds.y_train
  t0 = time.perf_counter()
  query = functools.partial(
    train_lib.predict,
    cfg,
    result.variables,
    num_classes=ds.num_classes,
    lowering=spec.lowering,
  )
  logits = query(x, queries=spec.queries)
  test_logits = query(ds.x_test)
  extra = {}
  if spec.label_only is not None:
    extra["label_views"] = label_view_predictions(
      cfg,
      result.variables,
      x,
      spec.label_only,
      ds.num_classes,
      identity_labels=logits[:, :, 0].argmax(-1),
      lowering=spec.lowering,
    )
  for name, (inputs, _) in run.extra_queries.items():
    extra[f"extra_{name}"] = query(inputs)[:, :, 0].astype(np.float32)
  seconds = time.perf_counter() - t0
  idx = result.model_indices
  correct = logits[:, :, 0].argmax(-1) == y
  train_acc = (correct & keep[idx]).sum(1) / keep[idx].sum(1)
  test_acc = (test_logits[:, :, 0].argmax(-1) == ds.y_test).mean(1)
  run.files.write_chunk(
    idx,
    dict(
      model_indices=idx,
      logits=logits.astype(np.float32),
      train_accuracy=train_acc,
      test_accuracy=test_acc,
      loss=result.loss,
      diverged=result.diverged,
      **extra,
    ),
  )
  for m in np.flatnonzero(result.diverged):
    run.log(
      f"  WARNING: model {idx[m]} diverged (non-finite loss); it is flagged and excluded from attacks"
    )
  return seconds
