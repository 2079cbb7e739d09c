"""A run directory's files checked and repaired: ``manifest.json``, ``keep.npy`` / ``labels.npy``, the chunks, the merged outputs.

Every file a run writes is recorded in ``manifest.json`` (its sha256, see
:class:`miajax.runs.io.Manifest`) and every chunk is sealed with the run's
fingerprint (:mod:`miajax.runs.integrity`). What a rerun does with a file
that fails:

- a chunk (unreadable, changed since written, another run's): moved aside as
  ``*.corrupt`` and its models retrained (``repair=False``: refused with a
  one-line :class:`CorruptFileError` naming it);
- ``keep.npy`` / ``labels.npy``: rewritten from the spec (after moving the
  bad one aside); the merged outputs: merged again from the chunks;
- ``manifest.json`` missing or unreadable: rebuilt from the sealed chunks
  (whose seals prove them), the spec and a new merge;
- ``config.json`` missing: rewritten if the sealed chunks are this run's,
  else the run is refused as another configuration's.

Readers (:func:`miajax.runs.load_run`, the merge) refuse instead of repairing.
A directory written before manifests (no manifest, no sealed chunk) is
*legacy*: read unverified with one log line, and recorded as found by the
first run that writes into it.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Callable

import numpy as np

from miajax.runs import claims as claims_lib
from miajax.runs import integrity
from miajax.runs import io
from miajax.runs.integrity import CorruptFileError, corrupt
from miajax.runs.spec import RunResult, label_queries

__all__ = [
  "CorruptFileError",
  "RunFiles",
  "check_file",
  "for_reading",
  "load_run",
  "open_run",
  "refuse_foreign_chunks",
]

SCRIPT = "experiments/train_models.py"


def retrain_hint(models: range) -> str:
  return (
    f"rerun {SCRIPT} with the same flags (runs.run_training) to move it aside "
    f"and retrain models [{models.start}, {models.stop})"
  )


REMERGE = (
  f"rerun {SCRIPT} with the same flags (runs.run_training) to check the "
  "chunks and merge them again"
)


class RunFiles:
  """The checked files of one run directory, for one process."""

  def __init__(self, out, manifest, reader, claims, log, repair: bool):
    self.out, self.manifest, self.reader = out, manifest, reader
    self.claims, self.log, self.repair = claims, log, repair

  def chunk_files(self) -> dict[pathlib.Path, range]:
    return io.chunk_files(self.out / "chunks")

  def done(self, fix: bool = False) -> set[int]:
    """The models of good chunk files on disk now.

    ``fix`` (only while this process holds no model lock): a bad chunk is set
    aside (``repair``) or refused; a good one that a killed writer never
    recorded is recorded.
    """
    files = self.manifest.files()
    done, unrecorded = set(), {}
    for path, models in self.chunk_files().items():
      chunk = self.reader.read(path, models, files)
      if not chunk.problem:
        done.update(models)
        if self.manifest.key(path) not in files:
          unrecorded[path] = chunk.sha256
      elif fix:
        self._bad_chunk(chunk)
    if fix and unrecorded:
      self.manifest.record(unrecorded)
    return done

  def _bad_chunk(self, chunk: integrity.Chunk) -> None:
    if not self.repair:
      raise corrupt(
        chunk.path,
        chunk.problem,
        f"rerun with --repair (repair=True) to move it aside and retrain "
        f"models [{chunk.models.start}, {chunk.models.stop})",
      )
    if not self.claims.take(chunk.models):
      return  # another process is training or repairing these models
    try:
      self.reader.forget(chunk.path)
      again = self.reader.read(chunk.path, chunk.models)
      if again.problem and chunk.path.exists():
        integrity.set_aside(
          chunk.path,
          again.problem,
          self.log,
          f"retraining models [{chunk.models.start}, {chunk.models.stop})",
        )
        self.manifest.forget(chunk.path)
        self.reader.forget(chunk.path)
    finally:
      self.claims.release(chunk.models)

  def started(self, chunk) -> None:
    """Cleans what a killed writer of these models left (their locks are held)."""
    path = self.out / "chunks" / f"{io.chunk_name(chunk)}.npz"
    io.remove_temporaries(path)
    io.remove_temporaries(
      self.out / "chunks" / f"{io.chunk_name(chunk, io.CHECKPOINT)}.npz"
    )

  def write_chunk(self, models, arrays: dict) -> None:
    """The chunk's file, sealed with the run's fingerprint and recorded."""
    path = self.out / "chunks" / f"{io.chunk_name(models)}.npz"
    self.manifest.save_npz(
      path, integrity.seal(arrays, self.manifest.fingerprint)
    )


def refuse_foreign_chunks(out: pathlib.Path, fingerprint: str, mismatch):
  """With ``config.json`` missing, the sealed chunks say whose run this is.

  Raises ``mismatch`` (``ConfigMismatchError``) if any chunk was sealed by
  another configuration or is unsealed (a legacy run, whose configuration is
  lost with its ``config.json``).
  """
  paths = list(io.chunk_files(out / "chunks"))
  if not paths:
    return
  sealed = integrity.sealed_fingerprints(paths)
  foreign = [p for p, fp in sealed.items() if fp != fingerprint]
  unsealed = [p for p in paths if p not in sealed]
  if foreign or (unsealed and not sealed):
    bad = (foreign or unsealed)[0]
    why = (
      f"was written by another configuration (fingerprint "
      f"{sealed[bad][:12]}..., this run's {fingerprint[:12]}...)"
      if foreign
      else "predates fingerprints, so its configuration is unknown"
    )
    raise mismatch(
      f"output_dir {str(out)!r} has no config.json and {bad.relative_to(out)} "
      f"{why}; use a new --output_dir or delete the old run"
    )


def open_run(
  out: pathlib.Path,
  fingerprint: str,
  arrays: dict[str, np.ndarray],
  *,
  log: Callable[[str], None],
  repair: bool = True,
) -> RunFiles:
  """Checks (and repairs) the manifest, ``config.json``'s record and
  ``<name>.npy`` of ``arrays`` (``keep``, ``labels``) under the run's lock."""
  manifest = io.Manifest(out, fingerprint)
  with io.lock(out / "locks" / "run.lock"):
    data = _manifest(manifest, fingerprint, log, repair)
    if data is None:
      _adopt_or_rebuild(out, manifest, log)
    found = {
      out / f"{name}.npy": _expected_file(
        out / f"{name}.npy", integrity.npy_bytes(array), log, repair
      )
      for name, array in arrays.items()
    }
    config = out / "config.json"
    if config.exists():  # its content was compared with the spec's
      io.remove_temporaries(config)
      found[config] = io.file_sha256(config)
    manifest.record(found)
  reader = integrity.ChunkReader(out, manifest, fingerprint, legacy=False)
  claims = claims_lib.Claims(out, log)
  claims.sweep(out / "chunks")
  return RunFiles(out, manifest, reader, claims, log, repair)


def _manifest(manifest, fingerprint, log, repair) -> dict | None:
  try:
    data = manifest.read()
  except ValueError as e:
    problem = str(e).removeprefix(f"{manifest.path}: ")
    if not repair:
      raise corrupt(manifest.path, problem, "rerun with --repair to rebuild it")
    integrity.set_aside(manifest.path, problem, log, "rebuilding it")
    return None
  if data is not None and not data.get("fingerprint"):
    # Started by a writer that did not know the fingerprint (a file
    # recorded before this opened the run).
    manifest.update(lambda d: d.update(fingerprint=fingerprint))
  elif data is not None and data.get("fingerprint") != fingerprint:
    problem = "it belongs to a run of another configuration"
    if not repair:
      raise corrupt(manifest.path, problem, "rerun with --repair to rebuild it")
    integrity.set_aside(manifest.path, problem, log, "rebuilding it")
    return None
  return data


def _adopt_or_rebuild(out, manifest, log) -> None:
  """A directory without a manifest: legacy (record its chunks as found) or
  one whose manifest was lost (sealed chunks prove themselves later)."""
  paths = io.chunk_files(out / "chunks")
  sealed = integrity.sealed_fingerprints(paths)
  if sealed:
    log(
      f"{manifest.path} is missing: rebuilding it (the {len(sealed)} sealed "
      "chunk files are checked by their seals, the outputs merged again)"
    )
    manifest.record({})
    return
  found = {p: io.file_sha256(p) for p in paths}
  if found:
    log(
      f"{out}: legacy run directory (written before manifests): its "
      f"{len(found)} chunk files are taken as they are and recorded now"
    )
  manifest.record(found)


def _expected_file(path, data: bytes, log, repair) -> str:
  """Makes ``path`` hold exactly ``data`` (derived from the spec); returns its sha256."""
  io.remove_temporaries(path)
  want = hashlib.sha256(data).hexdigest()
  if path.exists():
    if io.file_sha256(path) == want:
      return want
    problem = "its contents differ from what the run's spec gives"
    if not repair:
      raise corrupt(path, problem, "rerun with --repair to rewrite it")
    integrity.set_aside(path, problem, log, "rewriting it from the spec")
  io.write_bytes_atomic(path, data)
  return want


def for_reading(run_dir: pathlib.Path, log: Callable[[str], None]):
  """``(manifest, its files table, legacy)`` of a run directory for a reader.

  Raises a one-line ``ValueError`` if the manifest is unreadable, or missing
  from a directory whose chunks are sealed (it was deleted).
  """
  manifest = io.Manifest(run_dir)
  try:
    data = manifest.read()
  except ValueError as e:
    problem = str(e).removeprefix(f"{manifest.path}: ")
    raise corrupt(manifest.path, problem, REMERGE) from None
  if data is not None:
    manifest.fingerprint = str(data.get("fingerprint", ""))
    return manifest, data["files"], False
  if integrity.sealed_fingerprints(io.chunk_files(run_dir / "chunks")):
    raise corrupt(manifest.path, "missing (deleted?)", REMERGE)
  log(
    f"{run_dir}: legacy run directory (written before manifests): its files "
    "are read unverified"
  )
  return manifest, None, True


def check_file(path: pathlib.Path, manifest, files, hint: str = REMERGE):
  """Raises :class:`CorruptFileError` unless ``path`` matches its record
  (``files`` ``None``: legacy, nothing to check)."""
  if files is None:
    return
  problem = manifest.problem(path, files=files)
  if problem:
    raise corrupt(path, problem, hint)


def load_run(run_dir, *, log: Callable[[str], None] = print) -> RunResult:
  """Reads a finished run directory written by :func:`run_training`.

  Every file read must match its sha256 in ``manifest.json``: one that does
  not is a one-line ``CorruptFileError`` naming it (a rerun of the same
  command repairs it). A directory written before manifests is read
  unverified, with one line to ``log``.
  """
  run_dir = pathlib.Path(run_dir)
  for name in ("keep.npy", "logits.npy", "labels.npy", "models.json"):
    if not (run_dir / name).exists():
      raise ValueError(
        f"run_dir {str(run_dir)!r} has no {name}; train it first with "
        "experiments/train_models.py --output_dir=<run_dir>"
      )
  manifest, files, _ = for_reading(run_dir, log)
  for path in sorted(
    p
    for p in run_dir.iterdir()
    if p.name in ("config.json", "models.json") or p.suffix == ".npy"
  ):
    check_file(path, manifest, files)
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
    label_only=label_queries(run_dir),
    extra_logits={
      p.stem[len("extra_") :]: np.load(p)
      for p in sorted(run_dir.glob("extra_*.npy"))
    },
  )
