"""Atomic files and chunk file names: how every run file reaches the disk.

Every file of a run directory, shadow store or report goes through
:func:`write_atomic`: the bytes go to a temporary file beside the target
(``.<name>.<random>.tmp``, so that a rename never crosses file systems),
which is fsynced, made readable like any file (0644), moved over the target
with ``os.replace`` (atomic on POSIX and Windows), and the directory is
fsynced where the platform allows, so that the rename itself survives a
crash. A reader (another process merging chunks, a rerun after a kill)
therefore sees the old file or the whole new one, never a torn one; a
failure before the rename leaves the old file and no temporary.

A chunk's files are named by the models they hold, ``<prefix><first>_<end>``
with the numbers zero-padded to five digits: ``chunk_00000_00016.npz`` (a run
directory's finished chunk, a store's chunk metadata), ``params/chunk_00000_
00016/`` and ``logits/<queries>/chunk_00000_00016.npy`` (a store's),
``checkpoint_00016_00032.npz`` (a chunk in flight). Chunk sizes may change
between runs (free memory), so what is on disk is read from these names, never
from a plan.

Only the standard library and numpy are imported: :mod:`miajax.report` writes
through this module and must stay importable without the training stack.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import pathlib
import re
import tempfile
from typing import IO, Callable, Sequence

import numpy as np

__all__ = [
  "CHECKPOINT",
  "CHUNK",
  "chunk_files",
  "chunk_name",
  "digest",
  "parse_chunk_name",
  "save_npy_atomic",
  "save_npz_atomic",
  "temporaries",
  "to_jsonable",
  "write_atomic",
  "write_bytes_atomic",
  "write_json_atomic",
]

CHUNK = "chunk_"
CHECKPOINT = "checkpoint_"
_TMP_SUFFIX = ".tmp"
_RANGE = re.compile(r"([0-9]+)_([0-9]+)")


def write_atomic(path, write: Callable[[IO[bytes]], object]) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames it over ``path``."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(
    dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX
  )
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    # mkstemp creates the file 0600; outputs are read by other users' tools.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  _fsync_directory(path.parent)


def _fsync_directory(directory: pathlib.Path) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:  # not possible on every platform (Windows)
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def temporaries(path) -> list[pathlib.Path]:
  """Temporary files :func:`write_atomic` left for ``path`` (a kill mid-write)."""
  path = pathlib.Path(path)
  return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{_TMP_SUFFIX}"))


def write_bytes_atomic(path, data: bytes) -> None:
  write_atomic(path, lambda f: f.write(data))


def write_json_atomic(path, obj, *, indent: int = 2) -> None:
  """Writes ``to_jsonable(obj)`` as JSON (UTF-8, a final newline), atomically.

  The text is serialised before anything is opened, so a value JSON cannot
  hold leaves the old file untouched.
  """
  text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n"
  write_bytes_atomic(path, text.encode("utf-8"))


def save_npy_atomic(path, array) -> None:
  write_atomic(path, lambda f: np.save(f, array))


def save_npz_atomic(path, **arrays) -> None:
  write_atomic(path, lambda f: np.savez(f, **arrays))


def to_jsonable(obj):
  """``obj`` with numpy values made plain Python and NaN/inf made ``None``.

  dict keys become ``str``; tuples and arrays become lists.
  """
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return [to_jsonable(v) for v in obj.tolist()]
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  return obj


def chunk_name(models: Sequence[int], prefix: str = CHUNK) -> str:
  """``<prefix><first>_<last + 1>`` of a chunk's model indices (no suffix)."""
  return f"{prefix}{int(models[0]):05d}_{int(models[-1]) + 1:05d}"


def parse_chunk_name(name: str, prefix: str = CHUNK) -> range | None:
  """The models a :func:`chunk_name` promises (``None``: not such a name)."""
  if not name.startswith(prefix):
    return None
  match = _RANGE.fullmatch(name[len(prefix) :])
  if match is None:
    return None
  start, stop = int(match[1]), int(match[2])
  return range(start, stop) if stop > start else None


def chunk_files(
  directory, prefix: str = CHUNK, suffix: str = ".npz"
) -> dict[pathlib.Path, range]:
  """Files ``<prefix><first>_<end><suffix>`` in ``directory`` and their models."""
  directory = pathlib.Path(directory)
  found = {}
  if not directory.is_dir():
    return found
  for path in sorted(directory.glob(f"{prefix}*_*{suffix}")):
    models = parse_chunk_name(path.name[: len(path.name) - len(suffix)], prefix)
    if models is not None:
      found[path] = models
  return found


def digest(*arrays) -> str:
  """A short hash of arrays' bytes, shapes and dtypes (a chunk's inputs)."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]
