"""What a chunk file proves about itself, and the one-line error for a file that fails.

Every chunk file of a run directory or store entry is *sealed* when written:
it carries the recipe fingerprint of the directory it was trained for
(``fingerprint``: the sha256 of ``config.json``'s content, or the store
entry's fingerprint) and the sha256 of all its arrays (``digest``). So a chunk
tells by itself whether it belongs to this run and whether its bytes are the
ones written, even with ``config.json`` or ``manifest.json`` gone; the
manifest's sha256 of the whole file is checked as well.

A run directory's bad chunk is retrained or refused in
:mod:`miajax.runs.run_files`, a store's in :mod:`miajax.runs.store_files`.

Chunks written before seals (no ``fingerprint``) are *legacy*: in a directory
without a manifest they are read unverified (one log line); once the
directory has a manifest they are trusted only as recorded in it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as bytes_io
import json
import os
import pathlib
from typing import Callable

import numpy as np

from miajax.runs import io

__all__ = [
  "Chunk",
  "CorruptFileError",
  "ChunkReader",
  "corrupt",
  "fingerprint_of",
  "npy_bytes",
  "read_chunk",
  "seal",
  "sealed_fingerprints",
  "set_aside",
]

FINGERPRINT = "fingerprint"
DIGEST = "digest"


class CorruptFileError(ValueError):
  """A file of a run directory or store fails its checks (one line: the
  file, what is wrong, how to repair)."""


def corrupt(path, problem: str, repair: str) -> CorruptFileError:
  return CorruptFileError(f"{path}: {problem}; {repair}")


def fingerprint_of(config: dict) -> str:
  """The recipe fingerprint of a ``config.json`` content (a JSON dict)."""
  return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def seal(arrays: dict, fingerprint: str) -> dict:
  """``arrays`` plus the fingerprint and the digest of both, as written."""
  sealed = {**arrays, FINGERPRINT: np.asarray(fingerprint)}
  return {**sealed, DIGEST: np.asarray(io.arrays_digest(sealed))}


@dataclasses.dataclass
class Chunk:
  """A chunk file read and checked: its arrays (``None`` if unreadable) and
  ``problem`` ("" when it passed)."""

  path: pathlib.Path
  models: range
  arrays: dict | None
  problem: str
  sha256: str = ""
  sealed: bool = False
  recorded: bool = False  # its sha256 is in the manifest


def read_chunk(
  path, models: range, fingerprint: str, files: dict | None, key: str
) -> Chunk:
  """Reads a chunk file once and checks it.

  ``files`` is the manifest's table (``None``: the directory has no manifest
  and is legacy: unsealed chunks pass unverified); ``key`` is the file's
  entry there.
  """
  path = pathlib.Path(path)
  try:
    # Hashed as a stream, then loaded: a chunk can be gigabytes, and the
    # seal's digest covers what np.load returns.
    sha = io.file_sha256(path)
  except OSError as e:
    return Chunk(path, models, None, f"unreadable ({e.strerror or e})")
  entry = (files or {}).get(key)
  chunk = Chunk(path, models, None, "", sha, recorded=entry is not None)
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # truncated, flipped bytes (zip CRC), not a zip
    chunk.problem = f"unreadable ({type(e).__name__}: {e})"
    return chunk
  chunk.problem = _check(arrays, models, fingerprint, files, entry, sha)
  chunk.sealed = FINGERPRINT in arrays
  if not chunk.problem:
    arrays.pop(FINGERPRINT, None)
    arrays.pop(DIGEST, None)
    chunk.arrays = arrays
  return chunk


def _check(arrays, models, fingerprint, files, entry, sha) -> str:
  held = arrays.get("model_indices")
  if held is None or np.asarray(held).tolist() != list(models):
    return f"it does not hold the models [{models.start}, {models.stop}) its name promises"
  if FINGERPRINT in arrays:
    theirs = str(arrays[FINGERPRINT])
    if theirs != fingerprint:
      return (
        f"it was written by a run of another configuration (fingerprint "
        f"{theirs[:12]}..., this run's {fingerprint[:12]}...)"
      )
    sealed = {k: v for k, v in arrays.items() if k != DIGEST}
    if str(arrays.get(DIGEST)) != io.arrays_digest(sealed):
      return "its arrays differ from the digest sealed into it when written"
  elif files is not None and entry is None:
    return (
      f"it has no fingerprint (written before seals) and is not in "
      f"{io.MANIFEST}: nothing says which run wrote it"
    )
  if entry is not None and entry.get("sha256") != sha:
    return (
      f"its sha256 differs from the one {io.MANIFEST} recorded when it was "
      "written (changed since)"
    )
  return ""


class ChunkReader:
  """Reads the chunk files of one directory, each checked once per content.

  A process re-plans while others add chunk files; a file already checked is
  not read again unless it changed (inode, size or mtime). Only the verdict
  is kept, not the arrays, unless ``keep_arrays`` (small chunks: a store's
  metadata).
  """

  def __init__(
    self,
    root,
    manifest: io.Manifest,
    fingerprint: str,
    legacy: bool,
    keep_arrays: bool = False,
  ):
    self.root = pathlib.Path(root)
    self.manifest, self.fingerprint = manifest, fingerprint
    self.legacy, self.keep_arrays = legacy, keep_arrays
    self._seen: dict[pathlib.Path, tuple[tuple, Chunk]] = {}

  def read(self, path, models: range, files=None) -> Chunk:
    path = pathlib.Path(path)
    try:
      st = os.stat(path)
      stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
      stamp = None
    seen = self._seen.get(path)
    if seen is not None and seen[0] == stamp and stamp is not None:
      return seen[1]
    if files is None and not self.legacy:
      files = self.manifest.files()
    chunk = read_chunk(
      path, models, self.fingerprint, files, self.manifest.key(path)
    )
    kept = (
      chunk if self.keep_arrays else dataclasses.replace(chunk, arrays=None)
    )
    self._seen[path] = (stamp, kept)
    return chunk

  def forget(self, path) -> None:
    self._seen.pop(pathlib.Path(path), None)


def sealed_fingerprints(paths) -> dict[pathlib.Path, str]:
  """The fingerprint sealed into each readable chunk of ``paths``."""
  found = {}
  for path in paths:
    try:
      with np.load(path, allow_pickle=False) as z:
        if FINGERPRINT in z.files:
          found[pathlib.Path(path)] = str(z[FINGERPRINT])
    except Exception:
      continue
  return found


def npy_bytes(array) -> bytes:
  """The bytes ``np.save`` writes for ``array``: what a file derived from
  the spec (``keep.npy``, ``labels.npy``) must hold."""
  buf = bytes_io.BytesIO()
  np.save(buf, array)
  return buf.getvalue()


def set_aside(
  path, problem: str, log: Callable[[str], None], what: str
) -> pathlib.Path:
  """Moves a bad file aside as ``*.corrupt`` (kept for inspection) with a log line."""
  aside = io.set_aside(path)
  log(f"{path}: {problem}; moved aside as {aside.name}, {what}")
  return aside
