"""A shadow store entry's files checked and repaired, block by block.

A *block* is one trained chunk of models: ``chunks/<name>.npz`` (its
metadata, sealed with the entry's fingerprint and holding the sha256 of the
two files below, see :mod:`miajax.runs.integrity`), ``params/<name>/``
(orbax, saved into a unique temporary directory and renamed) and
``logits/<queries>/<name>.npy``. Every file is recorded in the entry's
``manifest.json`` as well.

:func:`miajax.ensure_shadows` repairs: a block whose metadata, parameters or
training-time logits fail is moved aside (``*.corrupt``) and retrained;
logits of another query set (computed from the parameters later, the same way
again) are moved aside and computed again; ``store.json``, ``labels.npy`` and
a lost ``manifest.json`` are rewritten. Readers (:func:`miajax.load_store`,
``Shadows.variables``) refuse with a one-line ``CorruptFileError`` naming the
file. An entry written before manifests (no manifest, no sealed block) is
*legacy*: read unverified with one log line, and recorded as found by the
next ``ensure_shadows``.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil

import numpy as np

from miajax.runs import claims as claims_lib
from miajax.runs import integrity
from miajax.runs import io
from miajax.runs.integrity import corrupt

__all__ = ["StoreFiles", "for_reading", "open_store"]

REPAIR = (
  "rerun miajax.ensure_shadows (experiments/audit.py) with this store to "
  "move the block aside and retrain it"
)


class StoreFiles:
  """The checked blocks of one store entry, for one process."""

  def __init__(self, path, fingerprint, log, repair: bool, legacy: bool):
    self.path, self.log = pathlib.Path(path), log
    self.repair, self.legacy = repair, legacy
    self.manifest = io.Manifest(self.path, fingerprint)
    self.reader = integrity.ChunkReader(
      self.path, self.manifest, fingerprint, legacy, keep_arrays=True
    )
    self.claims = claims_lib.Claims(self.path, log)
    self._trees: dict[tuple, str] = {}

  def blocks(self) -> dict[str, range]:
    """Chunk name -> models, of blocks whose metadata and parameters exist."""
    return {
      f.stem: models
      for f, models in io.chunk_files(self.path / "chunks").items()
      if (self.path / "params" / f.stem).is_dir()
    }

  def _files(self):
    return None if self.legacy else self.manifest.files()

  def metadata(self, name: str, files=None) -> integrity.Chunk:
    return self.reader.read(
      self.path / "chunks" / f"{name}.npz",
      io.parse_chunk_name(name),
      self._files() if files is None else files,
    )

  def _sha(self, path: pathlib.Path) -> str:
    """sha256 of a file, or :func:`io.tree_sha256` of a directory."""
    # What kept its names, inodes, sizes and times is hashed once per
    # process: a store is looked at on every plan.
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    stamp = tuple(
      (str(p), st.st_ino, st.st_size, st.st_mtime_ns)
      for p in files
      if p.is_file() and (st := p.stat())
    )
    if stamp not in self._trees:
      hash_ = io.tree_sha256 if path.is_dir() else io.file_sha256
      self._trees[stamp] = hash_(path)
    return self._trees[stamp]

  def _want(self, path, files, sealed) -> str | None:
    """The sha256 ``path`` must have: the manifest's, else the seal's."""
    entry = (files or {}).get(self.manifest.key(path))
    return entry["sha256"] if entry else sealed

  def problem(self, name: str, queries: str | None = None):
    """``(file, what is wrong)`` of the block's metadata, parameters and
    ``queries``' logits; ``None`` if nothing is."""
    files = self._files()
    meta = self.metadata(name, files)
    if meta.problem:
      return meta.path, meta.problem
    params = self.path / "params" / name
    want = self._want(params, files, _str(meta.arrays, "params_sha256"))
    if want is None and not self.legacy:
      return params, f"recorded neither in {io.MANIFEST} nor in its block"
    if want is not None and self._sha(params) != want:
      return params, "its files differ from the sha256 recorded when saved"
    if queries is not None:
      return self.logits_problem(name, queries, meta.arrays, files)
    return None

  def logits_problem(self, name, queries, arrays=None, files=None):
    path = self.path / "logits" / queries / f"{name}.npy"
    if self.legacy or not path.exists():
      return None
    files = self._files() if files is None else files
    if arrays is None:
      arrays = self.metadata(name, files).arrays or {}
    sealed = (
      _str(arrays, "logits_sha256")
      if _str(arrays, "queries") == queries
      else None
    )
    want = self._want(path, files, sealed)
    if want is None:
      return path, f"not recorded in {io.MANIFEST}"
    if self._sha(path) != want:
      return path, "its sha256 differs from the one recorded when written"
    return None

  def check(self, names, queries: str | None = None) -> None:
    """Refuses (one line) the first of the blocks ``names`` that is bad."""
    for name in dict.fromkeys(names):
      if bad := self.problem(name, queries):
        raise corrupt(*bad, REPAIR)

  def owners(self, num_models: int, queries: str, fix: bool) -> dict[int, str]:
    """Model -> the good block holding it, for the models ``< num_models``.

    ``fix`` (while this process holds no model lock): a bad block is set
    aside for retraining (``repair``) or refused; otherwise passed over.
    """
    owner: dict[int, str] = {}
    for name, models in self.blocks().items():
      if all(m in owner or m >= num_models for m in models):
        continue
      bad = self.problem(name, queries)
      if bad and fix:
        bad = self._fix(name, models, queries, bad)
      if not bad:
        for m in models:
          owner.setdefault(m, name)
    return owner

  def _fix(self, name, models, queries, bad):
    """Sets the block (or only logits computed after training) aside;
    returns what is still wrong (``None`` if nothing)."""
    if not self.repair:
      raise corrupt(*bad, REPAIR)
    if not self.claims.take(models):
      return bad  # another process holds these models
    try:
      self.reader.forget(self.path / "chunks" / f"{name}.npz")
      bad = self.problem(name, queries)
      if bad is None:
        return None
      logits = self.path / "logits" / queries / f"{name}.npy"
      trained_with = _str(self.metadata(name).arrays or {}, "queries")
      if bad[0] == logits and trained_with not in (None, queries):
        integrity.set_aside(
          logits, bad[1], self.log, "computing them again from the parameters"
        )
        self.manifest.forget(logits)
        return self.problem(name, queries)
      self.log(
        f"{bad[0]}: {bad[1]}; moving block {name} aside (*.corrupt) and "
        f"retraining models [{models.start}, {models.stop})"
      )
      block = [
        self.path / "chunks" / f"{name}.npz",
        self.path / "params" / name,
        *sorted((self.path / "logits").glob(f"*/{name}.npy")),
      ]
      for p in block:
        if p.exists():
          io.set_aside(p)
        self.reader.forget(p)
      self.manifest.forget(*block)
      return bad
    finally:
      self.claims.release(models)

  def started(self, chunk) -> None:
    """Cleans what a killed writer of these models left (their locks are held)."""
    name = io.chunk_name(chunk)
    checkpoint = f"{io.chunk_name(chunk, io.CHECKPOINT)}.npz"
    for path in (
      self.path / "chunks" / f"{name}.npz",
      self.path / "params" / name,
      self.path / "checkpoints" / checkpoint,
      *(d / f"{name}.npy" for d in (self.path / "logits").glob("*")),
    ):
      io.remove_temporaries(path)

  @contextlib.contextmanager
  def holding(self, models):
    """Waits for, then holds, the locks of ``models``: taken in ascending
    order, so waiters never deadlock (holders that did not wait never wait)."""
    locks = []
    try:
      for m in sorted(models):
        locks.append(io.lock(self.claims.path(m)))
      yield
    finally:
      for held in locks:
        held.release()

  def sweep(self) -> None:
    """Temporaries and orbax leftovers of killed writers nobody is writing."""
    for d in ("chunks", "params", "checkpoints"):
      self.claims.sweep(self.path / d)
    for d in (self.path / "logits").glob("*"):
      self.claims.sweep(d)
    # Left by versions that let orbax save in place (it renames its own
    # temporary at the end).
    for left in sorted(
      (self.path / "params").glob("chunk_*.orbax-checkpoint-tmp*")
    ):
      models = io.parse_chunk_name(left.name.split(".")[0])
      if models is not None and self.claims.take(models):
        try:
          shutil.rmtree(left, ignore_errors=True)
          self.log(f"removed {left}, left by a save that was killed")
        finally:
          self.claims.release(models)


def _str(arrays, key) -> str | None:
  value = (arrays or {}).get(key)
  return None if value is None else str(np.asarray(value))


def _is_legacy(path: pathlib.Path, manifest: io.Manifest) -> bool:
  return not manifest.exists() and not integrity.sealed_fingerprints(
    io.chunk_files(path / "chunks")
  )


def open_store(
  path: pathlib.Path, fingerprint: str, labels: np.ndarray, log
) -> StoreFiles:
  """The entry's files for :func:`miajax.ensure_shadows`, under its lock:
  the manifest read, rebuilt or (legacy) started from what is there,
  ``store.json`` recorded, ``labels.npy`` checked or rewritten, then the
  temporaries of killed writers swept."""
  manifest = io.Manifest(path, fingerprint)
  with io.lock(path / "locks" / "store.lock"):
    legacy = _is_legacy(path, manifest)
    try:
      data = manifest.read()
    except ValueError as e:
      data = None
      problem = str(e).removeprefix(f"{manifest.path}: ")
      integrity.set_aside(manifest.path, problem, log, "rebuilding it")
    if data is not None and data.get("fingerprint") not in ("", fingerprint):
      problem = "it belongs to another store entry"
      integrity.set_aside(manifest.path, problem, log, "rebuilding it")
    if not manifest.exists():
      _start_manifest(path, manifest, legacy, log)
    lab = path / "labels.npy"
    data = integrity.npy_bytes(labels)
    io.remove_temporaries(lab)
    if lab.exists() and lab.read_bytes() != data:
      integrity.set_aside(
        lab, "its labels differ from the pool's", log, "rewriting it"
      )
    if not lab.exists():
      io.write_bytes_atomic(lab, data)
    store_json = path / "store.json"
    manifest.record(
      {lab: io.file_sha256(lab), store_json: io.file_sha256(store_json)}
    )
  files = StoreFiles(path, fingerprint, log, repair=True, legacy=False)
  files.sweep()
  return files


def _start_manifest(path, manifest, legacy: bool, log) -> None:
  if not legacy:
    log(
      f"{manifest.path} is missing: rebuilding it (blocks are checked by "
      "their seals; logits of other query sets are computed again)"
    )
    manifest.record({})
    return
  chunks = [
    p
    for p in io.chunk_files(path / "chunks")
    if (path / "params" / p.stem).is_dir()
  ]
  found = {p: io.file_sha256(p) for p in chunks}
  for p in chunks:
    found[path / "params" / p.stem] = io.tree_sha256(path / "params" / p.stem)
  for p in (path / "logits").glob("*/chunk_*.npy"):
    found[p] = io.file_sha256(p)
  if found:
    log(
      f"{path}: legacy store entry (written before manifests): its "
      f"{len(chunks)} blocks are taken as they are and recorded now"
    )
  manifest.record(found)


def for_reading(path, fingerprint: str, log) -> StoreFiles:
  """The entry's files for a reader: what fails is refused (one line), nothing repaired."""
  path = pathlib.Path(path)
  manifest = io.Manifest(path, fingerprint)
  legacy = _is_legacy(path, manifest)
  if legacy:
    log(
      f"{path}: legacy store entry (written before manifests): its files are "
      "read unverified"
    )
  elif _read(manifest) is None:
    raise corrupt(
      manifest.path,
      "missing (deleted?)",
      "rerun miajax.ensure_shadows (experiments/audit.py) with this store "
      "to rebuild it",
    )
  return StoreFiles(path, fingerprint, log, repair=False, legacy=legacy)


def _read(manifest: io.Manifest) -> dict | None:
  try:
    return manifest.read()
  except ValueError as e:
    raise corrupt(
      manifest.path,
      str(e).removeprefix(f"{manifest.path}: "),
      "rerun miajax.ensure_shadows (experiments/audit.py) with this store "
      "to rebuild it",
    ) from None
