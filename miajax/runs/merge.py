"""Several processes, one run: model slices, chunk plans, and the merge.

Each process of a multi-process run trains its own :func:`process_slice` of
the models into the same run directory; whichever finishes last (or
``experiments/train_models.py --merge_only``) assembles the run's arrays from
the chunk files with :func:`merge_chunks`. Only the files' names say which
models are done (see :mod:`miajax.runs.io`), so chunk sizes may differ
between processes and reruns.
"""

from __future__ import annotations

import pathlib
import time
from typing import Callable

import numpy as np

from miajax.runs import integrity
from miajax.runs import io
from miajax.runs import run_files
from miajax.runs.spec import RunResult, label_queries

__all__ = [
  "merge_chunks",
  "plan_around",
  "plan_chunks",
  "process_slice",
  "wait_and_merge",
]


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


def plan_chunks(models: list[int], k: int) -> list[list[int]]:
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


def plan_around(
  models: list[int], k: int, keep_whole: list[range]
) -> list[list[int]]:
  """:func:`plan_chunks`, keeping each range of ``keep_whole`` one chunk.

  A chunk's checkpoint resumes only the same models, and the planned size
  may have changed since (free memory), so checkpointed chunks keep theirs.
  """
  left, whole = set(models), []
  for r in sorted(keep_whole, key=lambda r: (r.start, -len(r))):
    if set(r) <= left:
      whole.append(list(r))
      left -= set(r)
  rest = plan_chunks([m for m in models if m in left], k)
  return sorted(whole + rest, key=lambda c: c[0])


def merge_chunks(
  out, num_models: int | None = None, *, log: Callable[[str], None] = print
) -> RunResult | None:
  """Assembles ``logits.npy`` and ``models.json`` once every model's chunk is on disk.

  Reads whichever chunk files exist (their sizes may differ, e.g. written by
  several processes); returns ``None`` while some model is still missing.
  ``num_models`` defaults to the rows of the run's ``keep.npy``. Every file
  read is checked (its seal, its record in ``manifest.json``): a bad one is a
  one-line ``CorruptFileError`` naming it. One process merges at a time
  (``locks/merge.lock``), and a merge of the chunks an earlier one already
  merged, whose outputs are intact, writes nothing.
  """
  out = pathlib.Path(out)
  if not (out / "keep.npy").exists() or not (out / "labels.npy").exists():
    raise ValueError(
      f"run directory {str(out)!r} has no keep.npy/labels.npy: it was never started "
      "with experiments/train_models.py --output_dir=<run_dir>"
    )
  with io.lock(out / "locks" / "merge.lock"):
    return _merge(out, num_models, log)


def _merge(out: pathlib.Path, num_models, log) -> RunResult | None:
  manifest, files, legacy = run_files.for_reading(out, log)
  for name in ("keep.npy", "labels.npy", "config.json"):
    if (out / name).exists():
      run_files.check_file(out / name, manifest, files)
  keep = np.load(out / "keep.npy")
  num_models = keep.shape[0] if num_models is None else num_models
  owner: dict[int, pathlib.Path] = {}
  chunk_files = io.chunk_files(out / "chunks")
  for path, models in chunk_files.items():
    for m in models:
      # Overlapping chunks hold identical models: keep the first.
      owner.setdefault(m, path)
  if any(m not in owner for m in range(num_models)):
    return None
  paths = list(dict.fromkeys(owner[m] for m in range(num_models)))
  reader = integrity.ChunkReader(
    out, manifest, manifest.fingerprint, legacy, keep_arrays=True
  )
  chunks = [reader.read(p, chunk_files[p], files) for p in paths]
  for c in chunks:
    if c.problem:
      raise integrity.corrupt(
        c.path, c.problem, run_files.retrain_hint(c.models)
      )
  parts = [c.arrays for c in chunks]
  index = {}
  for i, part in enumerate(parts):
    for j, m in enumerate(part["model_indices"]):
      if 0 <= m < num_models and owner[int(m)] == paths[i]:
        index[int(m)] = (i, j)
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
    label_only=label_queries(out) if label_views is not None else None,
    extra_logits=extra_logits,
  )
  arrays = {"logits.npy": logits}
  if label_views is not None:
    arrays["label_views.npy"] = label_views
  for name, value in extra_logits.items():
    arrays[f"extra_{name}.npy"] = value
  models_json = {
    "train_accuracy": res.train_accuracy.tolist(),
    "test_accuracy": res.test_accuracy.tolist(),
    "diverged": res.diverged.tolist(),
    "final_loss": [
      None if not np.isfinite(v) else float(v) for v in take("loss")[:, -1]
    ],
  }
  merged = {manifest.key(c.path): c.sha256 for c in chunks}
  outputs = [*arrays, "models.json"]
  if legacy:
    # Taken as found: from now on the directory is checked like any other.
    log(f"{out}: recording the legacy run's files in {io.MANIFEST}")
    manifest.record(
      {
        **{c.path: c.sha256 for c in chunks},
        **{
          out / n: io.file_sha256(out / n)
          for n in ("keep.npy", "labels.npy", "config.json")
          if (out / n).exists()
        },
      }
    )
  # Left by a merge that was killed: merges hold the lock this one holds.
  for tmp in out.glob(".*.tmp"):
    target = io.temporary_target(tmp.name) or ""
    if target in outputs or target.startswith(("extra_", "label_views")):
      io.remove_temporaries(out / target)
  if not legacy and _merged_already(out, manifest, merged, outputs, log):
    return res
  for name, value in arrays.items():
    manifest.save_npy(out / name, value)
  manifest.write_json(out / "models.json", models_json)
  log(f"merged {len(paths)} chunk files into {', '.join(outputs)}")
  manifest.update(
    lambda d: d.update(merged={"chunks": merged, "outputs": outputs})
  )
  return res


def _merged_already(out, manifest, merged, outputs, log) -> bool:
  """Whether an earlier merge of exactly these chunk files left these outputs intact."""
  record = (manifest.read() or {}).get("merged") or {}
  if record.get("chunks") != merged or record.get("outputs") != outputs:
    return False
  files = manifest.files()
  for name in outputs:
    if problem := manifest.problem(out / name, files=files):
      log(f"{out / name}: {problem}; merging the chunks again")
      return False
  return True


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
    result = merge_chunks(out, num_models, log=log)
    if result is not None:
      return result
    if time.monotonic() - t0 > timeout_s:
      have = set().union(*io.chunk_files(pathlib.Path(out) / "chunks").values())
      missing = sorted(set(range(num_models)) - have)
      raise TimeoutError(
        f"gave up merging {str(out)!r} after {timeout_s:.0f} s: models {missing[:10]}"
        f"{'...' if len(missing) > 10 else ''} are still missing; rerun the merge later with "
        "experiments/train_models.py --merge_only"
      )
    time.sleep(poll_s)
