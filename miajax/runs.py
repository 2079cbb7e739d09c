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

Rerunning the same command skips chunks already on disk and resumes a chunk in
flight from its checkpoint, so a killed run loses at most the epochs since the
last checkpoint, and its outputs equal an uninterrupted run's.  A different
configuration in the same directory is refused rather than mixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
import time
from typing import Any, Callable

import numpy as np

from miajax import checkpoint as checkpoint_lib
from miajax import config as config_lib
from miajax import data as data_lib
from miajax import label_only as label_only_lib
from miajax import progress as progress_lib
from miajax.report import write_json_atomic
from miajax import train as train_lib

__all__ = [
  "ConfigMismatchError",
  "RunSpec",
  "RunResult",
  "run_training",
  "load_run",
  "merge_chunks",
  "wait_and_merge",
  "label_view_predictions",
  "process_slice",
  "write_json_atomic",
  "save_npy_atomic",
]


class ConfigMismatchError(ValueError):
  """A run directory holds a run of another configuration (nothing was written)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What to train: the data, the membership design and the training recipe."""

  dataset: str = "digits"
  data_dir: str | None = None
  num_examples: int | None = None  # None: the whole training set
  design: str = "paired"  # "paired" or "lira"
  num_models: int = 64
  pkeep: float = 0.5
  queries: str = "identity"
  train: train_lib.TrainConfig = train_lib.TrainConfig()
  # Perturbed copies of every candidate whose predicted labels the run keeps (label-only attacks).
  label_only: label_only_lib.LabelOnlyQueries | None = None

  def to_json(self) -> dict:
    """Everything that determines the result, JSON-ready (a user model's parameter shapes are added by
    :func:`run_training`, which knows the input shape)."""
    d = {
      f.name: getattr(self, f.name)
      for f in dataclasses.fields(self)
      if f.name not in ("train", "label_only")
    }
    cfg = self.train
    tc = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    tc["model_kwargs"] = {
      k: list(v) if isinstance(v, tuple) else v for k, v in cfg.model_kwargs
    }
    tc["defense"] = _describe_defense(cfg.defense)
    if not cfg.builtin_model:
      tc["model"] = {"user": cfg.describe_model()}
    if not cfg.builtin_optimizer:
      tc["optimizer"] = {"user": cfg.describe_optimizer()}
    tc["loss"] = (
      None
      if cfg.loss is None
      else getattr(cfg.loss, "__qualname__", type(cfg.loss).__name__)
    )
    if tc["model_name"] is None:
      tc.pop(
        "model_name"
      )  # runs written before user models existed keep their fingerprint
    if tc["loss"] is None:
      tc.pop("loss")
    # Chunking changes float reassociation only, not the experiment.
    tc.pop("models_per_step")
    tc.pop("steps_per_call")
    tc.pop("microbatch_size")
    tc.pop("model_axis")
    d["train"] = tc
    if (
      self.label_only is not None
    ):  # absent otherwise: runs written before label-only views keep their fingerprint
      d["label_only"] = self.label_only.to_json()
    return d


def _describe_defense(defense) -> Any:
  """The defense's ``describe()`` (built-in or user-written), checked to be JSON."""
  if defense is None:
    return None
  from miajax import defenses

  desc = defenses.describe(defense)
  try:
    json.dumps(desc)
  except (TypeError, ValueError) as e:
    raise ValueError(
      f"defense {defense!r}: describe() must return JSON-serialisable values "
      f"(it identifies the run directory), got {desc!r}: {e}"
    ) from None
  return desc


@dataclasses.dataclass
class RunResult:
  keep: np.ndarray  # bool[models, examples]
  logits: np.ndarray  # float32[models, examples, queries, classes]
  labels: np.ndarray  # int32[examples]
  train_accuracy: np.ndarray  # float[models], on each model's members
  test_accuracy: np.ndarray  # float[models]
  diverged: np.ndarray  # bool[models]
  chunks_trained: int
  chunks_reused: int
  train_seconds: float
  predict_seconds: float
  label_views: np.ndarray | None = (
    None  # int16[models, examples, views], with RunSpec.label_only
  )
  label_only: label_only_lib.LabelOnlyQueries | None = (
    None  # what made label_views
  )
  extra_logits: dict[str, np.ndarray] = dataclasses.field(
    default_factory=dict
  )  # name -> [models, inputs, classes]
  # (first model, last + 1) -> the epoch a chunk resumed from its checkpoint at
  resumed_epochs: dict[tuple[int, int], int] = dataclasses.field(
    default_factory=dict
  )


def _label_queries(out: pathlib.Path) -> label_only_lib.LabelOnlyQueries | None:
  """The label-only queries recorded in a run directory's config.json, if any."""
  path = out / "config.json"
  spec = (
    json.loads(path.read_text()).get("label_only") if path.exists() else None
  )
  return (
    None
    if spec is None
    else label_only_lib.LabelOnlyQueries(
      shift=spec["shift"],
      sigmas=tuple(spec["sigmas"]),
      copies=spec["copies"],
      seed=spec["seed"],
    )
  )


def _write_atomic(path, write) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames it into place."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(
    dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
  )
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def save_npy_atomic(path, array) -> None:
  _write_atomic(path, lambda f: np.save(f, array))


def _save_npz_atomic(path: pathlib.Path, **arrays) -> None:
  _write_atomic(path, lambda f: np.savez(f, **arrays))


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
  if cfg_path.exists():
    old = json.loads(cfg_path.read_text())
    if old != spec_json:
      diff = sorted(_diff_keys(old, spec_json))
      raise ConfigMismatchError(
        f"output_dir {str(out)!r} holds a run with a different configuration "
        f"(differs in: {', '.join(diff)}); use a new --output_dir or delete the old run"
      )
  else:
    write_json_atomic(cfg_path, spec_json)
  return out


def _diff_keys(a, b, prefix="") -> set[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = set()
    for k in set(a) | set(b):
      out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return set() if a == b else {prefix.rstrip(".")}


def _chunk_path(out: pathlib.Path, chunk) -> pathlib.Path:
  return out / "chunks" / f"chunk_{chunk[0]:05d}_{chunk[-1] + 1:05d}.npz"


def _chunk_files(out: pathlib.Path) -> dict[pathlib.Path, range]:
  """Finished chunk files and the model range each holds (from the name)."""
  found = {}
  for path in sorted((out / "chunks").glob("chunk_*_*.npz")):
    parts = path.stem.split("_")
    try:
      start, stop = int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
      continue
    if stop > start:
      found[path] = range(start, stop)
  return found


def process_slice(
  num_models: int, process_id: int, num_processes: int
) -> list[int]:
  """The contiguous block of model indices that process ``process_id`` of ``num_processes`` trains."""
  for name, value in (
    ("num_processes", num_processes),
    ("process_id", process_id),
  ):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"{name} must be an integer, got {value!r}")
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise ValueError(
      f"process_id must be in [0, {num_processes}), got {process_id}"
    )
  if num_processes > num_models:
    raise ValueError(
      f"num_processes={num_processes} exceeds num_models={num_models}: a process would "
      "have nothing to train"
    )
  lo, hi = (
    process_id * num_models // num_processes,
    (process_id + 1) * num_models // num_processes,
  )
  return list(range(lo, hi))


def _plan_chunks(models: list[int], k: int) -> list[list[int]]:
  """Runs of consecutive model indices, each cut into chunks of at most ``k``."""
  runs_, chunks = [], []
  for m in models:
    if runs_ and m == runs_[-1][-1] + 1:
      runs_[-1].append(m)
    else:
      runs_.append([m])
  for run in runs_:
    chunks += [run[i : i + k] for i in range(0, len(run), k)]
  return chunks


def _plan_around(
  models: list[int], k: int, keep_whole: list[range]
) -> list[list[int]]:
  """:func:`_plan_chunks`, keeping each range of ``keep_whole`` one chunk.

  A chunk's checkpoint resumes only the same models, and the planned size
  may have changed since (free memory), so checkpointed chunks keep theirs.
  """
  left, whole = set(models), []
  for r in sorted(keep_whole, key=lambda r: (r.start, -len(r))):
    if set(r) <= left:
      whole.append(list(r))
      left -= set(r)
  rest = _plan_chunks([m for m in models if m in left], k)
  return sorted(whole + rest, key=lambda c: c[0])


def make_keep(spec: RunSpec, num_examples: int) -> np.ndarray:
  if spec.design == "paired":
    return data_lib.paired_keep(
      spec.num_models, num_examples, seed=spec.train.seed
    )
  if spec.design == "lira":
    return data_lib.lira_keep(
      spec.num_models, num_examples, pkeep=spec.pkeep, seed=spec.train.seed
    )
  raise ValueError(f"design must be 'paired' or 'lira', got {spec.design!r}")


def load_dataset(spec: RunSpec) -> data_lib.Dataset:
  ds = data_lib.load(spec.dataset, data_dir=spec.data_dir)
  if spec.num_examples is not None:
    ds = data_lib.subset(ds, spec.num_examples)
  return ds


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
      :func:`miajax.train.train_chunks`) instead of the default display (a
      line redrawn on a terminal ``sys.stderr``, else lines to ``log``).

  Returns:
    The merged :class:`RunResult`, or ``None`` if ``merge`` is false or other
    processes' chunks are still missing.
  """
  checkpoint_lib.check_intervals(checkpoint_every_s, checkpoint_every_epochs)
  ds = load_dataset(spec)
  x, y = ds.x_train, ds.y_train
  keep = make_keep(spec, x.shape[0])
  # Validate everything before touching the directory or compiling anything.
  cfg = spec.train
  train_lib._check_inputs(x, y, keep, cfg, ds.num_classes)
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
  spec_json = spec.to_json()
  if not cfg.builtin_model:  # a resume with another architecture is refused
    spec_json["train"]["model"] = config_lib.model_fingerprint(
      cfg, tuple(x.shape[1:]), ds.num_classes
    )
  if extra_queries:
    spec_json["extra_queries"] = {
      name: desc for name, (_, desc) in sorted(extra_queries.items())
    }
  out = _prepare_dir(output_dir, json.loads(json.dumps(spec_json)))
  save_npy_atomic(out / "keep.npy", keep) if not (
    out / "keep.npy"
  ).exists() else None
  save_npy_atomic(out / "labels.npy", y.astype(np.int32)) if not (
    out / "labels.npy"
  ).exists() else None

  mine = (
    list(range(spec.num_models))
    if chunk_models is None
    else sorted(set(chunk_models))
  )
  if mine and (mine[0] < 0 or mine[-1] >= spec.num_models):
    raise ValueError(
      f"chunk_models must lie in [0, {spec.num_models}), got {mine[0]}..{mine[-1]}"
    )
  # Chunk sizes may differ between runs (free memory changes), so what is done is read from the
  # files' model ranges, not from a plan.
  finished = _chunk_files(out)
  done_models = set().union(*finished.values()) if finished else set()
  reused = sum(1 for r in finished.values() if set(r) & set(mine))
  k = train_lib.plan_models_per_step(
    cfg, ds.num_classes, x.shape[1:], spec.num_models
  )
  saved = checkpoint_lib.checkpoint_files(out / "chunks")
  for path, r in saved.items():
    # Killed between writing a chunk and deleting its checkpoint: the chunk
    # file supersedes it.
    if set(r) <= set(mine) and set(r) <= done_models:
      path.unlink(missing_ok=True)
    elif set(r) <= set(mine) and set(r) & done_models:
      log(
        f"not using the checkpoint {path.name}: some of its models are "
        "already in chunk files"
      )
  todo = _plan_around(
    [m for m in mine if m not in done_models], k, list(saved.values())
  )
  for chunk in todo:
    checkpoint_lib.remove_temporaries(out / "chunks", chunk)
  if reused:
    log(f"resuming: {reused} chunks already on disk, {len(todo)} to train")
  log(
    f"training {sum(map(len, todo))} models in {len(todo)} chunks of up to {k} "
    f"({cfg.model}, {x.shape[0]} candidate examples, {cfg.epochs} epochs, "
    f"{train_lib.models_mesh().size} devices)"
  )

  train_s = predict_s = 0.0
  t_start = time.perf_counter()
  shown = None
  if progress is None:
    shown = progress_lib.Progress(
      total_models=len(mine),
      done_models=len(set(mine) & done_models),
      epochs=cfg.epochs,
      log=log,
    )
    progress, log = shown, shown.log
  checkpoints = checkpoint_lib.Checkpointer(
    out / "chunks",
    every_s=checkpoint_every_s,
    every_epochs=checkpoint_every_epochs,
    fingerprint=hashlib.sha256(
      json.dumps(spec_json, sort_keys=True).encode()
    ).hexdigest()[:16],
    log=log,
  )
  resumed = {}
  try:
    for result in train_lib.train_chunks(
      x,
      y,
      keep,
      cfg,
      num_classes=ds.num_classes,
      chunks=todo,
      progress=progress,
      checkpoints=checkpoints,
    ):
      predict_s += _write_chunk(
        out, spec, cfg, ds, keep, result, extra_queries, log
      )
      train_s += result.train_seconds
      if result.resumed_epoch:
        idx = result.model_indices
        resumed[(int(idx[0]), int(idx[-1]) + 1)] = result.resumed_epoch
      if shown is not None:
        shown.chunk_done(len(result.model_indices))
  finally:
    if shown is not None:
      shown.close()
  elapsed = time.perf_counter() - t_start
  n_trained = sum(map(len, todo))
  if n_trained:
    seen = int(keep[[m for c in todo for m in c]].sum()) * cfg.epochs
    rate = shown.rate if shown is not None else None
    steady = (
      f"{rate.per_s:,.0f} training examples/s after compiling "
      f"(~{rate.compile_seconds:.1f} s)"
      if rate is not None and rate.compile_seconds is not None
      else f"{seen / max(train_s, 1e-9):,.0f} training examples/s"
    )
    log(
      f"trained {n_trained} models in {elapsed:.1f} s ({steady}; "
      f"{n_trained / max(elapsed, 1e-9):.2f} models/s)"
    )
  if checkpoints.saves:
    mib = checkpoints.last_bytes / 2**20
    log(
      f"wrote {checkpoints.saves} checkpoint(s) in "
      f"{checkpoints.save_seconds:.2f} s ({mib:.2f} MiB the last)"
    )
  if not merge:
    return None
  result = merge_chunks(out, spec.num_models)
  if result is None:
    return None
  result.chunks_trained, result.chunks_reused = len(todo), reused
  result.train_seconds, result.predict_seconds = train_s, predict_s
  result.resumed_epochs = resumed
  return result


def _write_chunk(out, spec, cfg, ds, keep, result, extra_queries, log) -> float:
  """Queries a trained chunk and writes its file; returns the seconds taken."""
  x, y = ds.x_train, ds.y_train
  t0 = time.perf_counter()
  logits = train_lib.predict(
    cfg, result.variables, x, num_classes=ds.num_classes, queries=spec.queries
  )
  test_logits = train_lib.predict(
    cfg, result.variables, ds.x_test, num_classes=ds.num_classes
  )
  extra = {}
  if spec.label_only is not None:
    extra["label_views"] = label_view_predictions(
      cfg, result.variables, x, spec.label_only, ds.num_classes
    )
  for name, (inputs, _) in extra_queries.items():
    extra[f"extra_{name}"] = train_lib.predict(
      cfg, result.variables, inputs, num_classes=ds.num_classes
    )[:, :, 0].astype(np.float32)
  seconds = time.perf_counter() - t0
  idx = result.model_indices
  correct = logits[:, :, 0].argmax(-1) == y
  train_acc = (correct & keep[idx]).sum(1) / keep[idx].sum(1)
  test_acc = (test_logits[:, :, 0].argmax(-1) == ds.y_test).mean(1)
  _save_npz_atomic(
    _chunk_path(out, list(idx)),
    model_indices=idx,
    logits=logits.astype(np.float32),
    train_accuracy=train_acc,
    test_accuracy=test_acc,
    loss=result.loss,
    diverged=result.diverged,
    **extra,
  )
  for m in np.flatnonzero(result.diverged):
    log(
      f"  WARNING: model {idx[m]} diverged (non-finite loss); it is flagged and excluded from attacks"
    )
  return seconds


def label_view_predictions(
  cfg: train_lib.TrainConfig,
  variables,
  x,
  queries: label_only_lib.LabelOnlyQueries,
  num_classes: int,
  *,
  max_inputs: int = 1 << 16,
) -> np.ndarray:
  """Predicted labels ``int16[models, examples, views]`` of ``queries``' views of ``x``.

  The views are made a block of examples at a time (about ``max_inputs``
  inputs per block), so memory stays bounded for large pools.
  """
  n = x.shape[0]
  per = max(1, max_inputs // queries.num_views(x.shape[1:]))
  # Small inputs (digits, tabular rows) leave the default batch dispatch-bound; keep ~4 MiB of inputs per batch.
  batch = int(
    np.clip((1 << 20) // max(1, int(np.prod(x.shape[1:]))), 1024, 16384)
  )
  out = []
  for s in range(0, n, per):
    views = np.asarray(
      queries.views(np.asarray(x[s : s + per], np.float32), start=s)
    )  # [V, b, ...]
    v, b = views.shape[:2]
    logits = train_lib.predict(
      cfg,
      variables,
      views.reshape((v * b,) + views.shape[2:]),
      num_classes=num_classes,
      batch_size=batch,
    )[:, :, 0]
    out.append(
      logits.argmax(-1).reshape(-1, v, b).transpose(0, 2, 1).astype(np.int16)
    )
  return np.concatenate(out, 1)


def merge_chunks(out, num_models: int | None = None) -> RunResult | None:
  """Assembles ``logits.npy`` and ``models.json`` once every model's chunk is on disk.

  Reads whichever chunk files exist (their sizes may differ, e.g. written by
  several processes); returns ``None`` while some model is still missing.
  ``num_models`` defaults to the rows of the run's ``keep.npy``.
  """
  out = pathlib.Path(out)
  if not (out / "keep.npy").exists() or not (out / "labels.npy").exists():
    raise ValueError(
      f"run directory {str(out)!r} has no keep.npy/labels.npy: it was never started "
      "with experiments/train_models.py --output_dir=<run_dir>"
    )
  keep = np.load(out / "keep.npy")
  num_models = keep.shape[0] if num_models is None else num_models
  owner: dict[int, pathlib.Path] = {}
  for path, models in _chunk_files(out).items():
    for m in models:
      owner.setdefault(
        m, path
      )  # overlapping chunks hold identical models: keep the first
  if any(m not in owner for m in range(num_models)):
    return None
  paths = list(dict.fromkeys(owner[m] for m in range(num_models)))
  parts = [dict(np.load(p)) for p in paths]
  index = {}
  for i, part in enumerate(parts):
    for j, m in enumerate(part["model_indices"]):
      if 0 <= m < num_models and owner[int(m)] == paths[i]:
        index[int(m)] = (i, j)
  if len(index) != num_models:
    raise ValueError(
      f"run directory {str(out)!r}: chunk files do not hold the models their names promise"
    )
  take = lambda key: np.stack(
    [parts[i][key][j] for i, j in (index[m] for m in range(num_models))]
  )
  labels = np.load(out / "labels.npy")
  logits = take("logits")
  label_views = (
    take("label_views") if all("label_views" in p for p in parts) else None
  )
  extra_names = set.intersection(
    *({k for k in p if k.startswith("extra_")} for p in parts)
  )
  extra_logits = {k[len("extra_") :]: take(k) for k in sorted(extra_names)}
  res = RunResult(
    keep=keep,
    logits=logits,
    labels=np.asarray(labels, np.int32),
    train_accuracy=take("train_accuracy"),
    test_accuracy=take("test_accuracy"),
    diverged=take("diverged"),
    chunks_trained=0,
    chunks_reused=len(paths),
    train_seconds=0.0,
    predict_seconds=0.0,
    label_views=label_views,
    label_only=_label_queries(out) if label_views is not None else None,
    extra_logits=extra_logits,
  )
  save_npy_atomic(out / "logits.npy", logits)
  if label_views is not None:
    save_npy_atomic(out / "label_views.npy", label_views)
  for name, value in extra_logits.items():
    save_npy_atomic(out / f"extra_{name}.npy", value)
  write_json_atomic(
    out / "models.json",
    {
      "train_accuracy": res.train_accuracy.tolist(),
      "test_accuracy": res.test_accuracy.tolist(),
      "diverged": res.diverged.tolist(),
      "final_loss": [
        None if not np.isfinite(v) else float(v) for v in take("loss")[:, -1]
      ],
    },
  )
  return res


def wait_and_merge(
  out,
  num_models: int,
  *,
  timeout_s: float = 3600.0,
  poll_s: float = 2.0,
  log: Callable[[str], None] = print,
) -> RunResult:
  """Waits until every model's chunk is on disk (other processes' too), then merges."""
  t0 = time.monotonic()
  while True:
    result = merge_chunks(out, num_models)
    if result is not None:
      return result
    if time.monotonic() - t0 > timeout_s:
      have = (
        set().union(*_chunk_files(pathlib.Path(out)).values())
        if _chunk_files(pathlib.Path(out))
        else set()
      )
      missing = sorted(set(range(num_models)) - have)
      raise TimeoutError(
        f"gave up merging {str(out)!r} after {timeout_s:.0f} s: models {missing[:10]}"
        f"{'...' if len(missing) > 10 else ''} are still missing; rerun the merge later with "
        "experiments/train_models.py --merge_only"
      )
    time.sleep(poll_s)


def load_run(run_dir) -> RunResult:
  """Reads a finished run directory written by :func:`run_training`."""
  run_dir = pathlib.Path(run_dir)
  for name in ("keep.npy", "logits.npy", "labels.npy", "models.json"):
    if not (run_dir / name).exists():
      raise ValueError(
        f"run_dir {str(run_dir)!r} has no {name}; train it first with "
        "experiments/train_models.py --output_dir=<run_dir>"
      )
  info = json.loads((run_dir / "models.json").read_text())
  return RunResult(
    keep=np.load(run_dir / "keep.npy"),
    logits=np.load(run_dir / "logits.npy"),
    labels=np.load(run_dir / "labels.npy"),
    train_accuracy=np.asarray(info["train_accuracy"]),
    test_accuracy=np.asarray(info["test_accuracy"]),
    diverged=np.asarray(info["diverged"]),
    chunks_trained=0,
    chunks_reused=0,
    train_seconds=0.0,
    predict_seconds=0.0,
    label_views=np.load(run_dir / "label_views.npy")
    if (run_dir / "label_views.npy").exists()
    else None,
    label_only=_label_queries(run_dir),
    extra_logits={
      p.stem[len("extra_") :]: np.load(p)
      for p in sorted(run_dir.glob("extra_*.npy"))
    },
  )
