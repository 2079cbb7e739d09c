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

Integrity. A :class:`Manifest` (``manifest.json`` at a run directory's or
store entry's root) records the sha256 and size of every file written through
it, computed from the temporary file before its rename; readers compare
(:meth:`Manifest.problem`). :func:`save_dir_atomic` does for a directory
(orbax's parameters) what :func:`write_atomic` does for a file: a unique
temporary directory beside the target, renamed over it once complete.

Concurrency. :func:`try_lock` and :func:`lock` take an advisory ``flock`` on a
lock file (never deleted: a deleted lock file lets two processes lock two
different files of one name). Locks are released when closed or when their
process dies, so a killed process never leaves a lock behind. Without
``fcntl`` (Windows) they lock nothing: one process per directory there.

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
import shutil
import socket
import tempfile
from typing import IO, Callable, Sequence

import numpy as np

try:
  import fcntl
except ImportError:  # Windows
  fcntl = None

__all__ = [
  "CHECKPOINT",
  "CHUNK",
  "MANIFEST",
  "Lock",
  "Manifest",
  "arrays_digest",
  "chunk_files",
  "chunk_name",
  "digest",
  "file_sha256",
  "lock",
  "parse_chunk_name",
  "remove_temporaries",
  "save_dir_atomic",
  "save_npy_atomic",
  "save_npz_atomic",
  "set_aside",
  "temporaries",
  "temporary_target",
  "to_jsonable",
  "tree_sha256",
  "try_lock",
  "write_atomic",
  "write_bytes_atomic",
  "write_json_atomic",
]

CHUNK = "chunk_"
CHECKPOINT = "checkpoint_"
MANIFEST = "manifest.json"
_TMP_SUFFIX = ".tmp"
_RANGE = re.compile(r"([0-9]+)_([0-9]+)")
_TEMPORARY = re.compile(r"\.(.+)\.[^.]+" + re.escape(_TMP_SUFFIX))


def write_atomic(
  path, write: Callable[[IO[bytes]], object], *, sha256: bool = False
) -> str | None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames it over ``path``.

  With ``sha256`` returns the hex sha256 of the bytes renamed into place
  (read back from the temporary file: zip writers seek, so the bytes cannot be
  hashed on their way out).
  """
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(
    dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX
  )
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    digest_ = file_sha256(tmp) if sha256 else None
    # mkstemp creates the file 0600; outputs are read by other users' tools.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  _fsync_directory(path.parent)
  return digest_


def save_dir_atomic(path, write: Callable[[pathlib.Path], object]) -> str:
  """Calls ``write(directory)`` on a new directory, then renames it to ``path``.

  ``directory`` does not exist yet when ``write`` is called (orbax refuses to
  save into an existing one); it lies inside a unique temporary directory
  beside ``path``, so that two writers never share a name and a killed one
  leaves only a temporary (:func:`remove_temporaries`). An existing ``path``
  is replaced: the caller holds the lock of what it writes. Returns
  :func:`tree_sha256` of what was renamed into place.
  """
  path = pathlib.Path(path)
  box = pathlib.Path(
    tempfile.mkdtemp(
      dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX
    )
  )
  try:
    inner = box / "d"
    write(inner)
    digest_ = tree_sha256(inner)
    if path.exists():
      shutil.rmtree(path)
    os.rename(inner, path)
  finally:
    shutil.rmtree(box, ignore_errors=True)
  _fsync_directory(path.parent)
  return digest_


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
  """Temporaries :func:`write_atomic` or :func:`save_dir_atomic` left for ``path`` (a kill mid-write)."""
  path = pathlib.Path(path)
  return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{_TMP_SUFFIX}"))


def temporary_target(name: str) -> str | None:
  """The name a temporary called ``name`` was to become (``None``: not one)."""
  match = _TEMPORARY.fullmatch(name)
  return match[1] if match else None


def remove_temporaries(path) -> int:
  """Deletes :func:`temporaries` of ``path``; returns how many.

  Only for a caller that holds the lock of whatever writes ``path``: another
  writer's temporary would vanish under it.
  """
  found = temporaries(path)
  for tmp in found:
    if tmp.is_dir():
      shutil.rmtree(tmp, ignore_errors=True)
    else:
      tmp.unlink(missing_ok=True)
  return len(found)


def set_aside(path, suffix: str = ".corrupt") -> pathlib.Path:
  """Renames ``path`` (a file or directory) to ``<name><suffix>``, or
  ``<name><suffix>1``, ... if taken: never deleted, never overwritten."""
  path = pathlib.Path(path)
  aside, n = path.with_name(path.name + suffix), 1
  while aside.exists():
    aside = path.with_name(f"{path.name}{suffix}{n}")
    n += 1
  os.replace(path, aside)
  return aside


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


def file_sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(1 << 22):
      h.update(block)
  return h.hexdigest()


def tree_sha256(directory) -> str:
  """One sha256 over every file below ``directory``: relative names and contents."""
  directory = pathlib.Path(directory)
  h = hashlib.sha256()
  for path in sorted(p for p in directory.rglob("*") if p.is_file()):
    h.update(f"{path.relative_to(directory).as_posix()}\0".encode())
    h.update(f"{file_sha256(path)}\0".encode())
  return h.hexdigest()


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


def arrays_digest(arrays: dict) -> str:
  """The sha256 of named arrays (names, dtypes, shapes, bytes), in name order."""
  h = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"{name}\0{a.dtype.str}{a.shape}\0".encode())
    h.update(a.tobytes())
  return h.hexdigest()


class Lock:
  """An advisory lock held on a lock file until :meth:`release` (or exit)."""

  def __init__(self, fd: int | None, path: pathlib.Path):
    self._fd, self.path = fd, path

  def release(self) -> None:
    if self._fd is not None:
      if fcntl is not None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def _acquire(path, blocking: bool, holder: bool) -> Lock | None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  if fcntl is not None:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
      os.close(fd)
      return None
    except BaseException:
      os.close(fd)
      raise
  if holder:
    # Who holds it, for the log lines of processes that find it taken.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
  return Lock(fd, path)


def try_lock(path, *, holder: bool = False) -> Lock | None:
  """The lock on ``path`` (created if needed), or ``None`` if another holds it.

  ``holder`` writes ``pid N on host`` into the file for :func:`lock_holder`.
  """
  return _acquire(path, False, holder)


def lock(path, *, holder: bool = False) -> Lock:
  """The lock on ``path``, waiting for whoever holds it (a context manager)."""
  return _acquire(path, True, holder)


def lock_holder(path) -> str:
  """``pid N on host`` of the last holder that wrote itself into ``path``."""
  try:
    return pathlib.Path(path).read_text().strip() or "another process"
  except OSError:
    return "another process"


class Manifest:
  """``manifest.json`` of a directory: the sha256 and size of the files in it.

  ``{"format": 1, "fingerprint": <the directory's recipe>, "files": {<path
  relative to root>: {"sha256", "bytes", ...}}}``. Every change is a
  read-modify-write under ``locks/manifest.lock``, so processes writing
  files into one directory at once do not lose each other's entries.
  """

  FORMAT = 1

  def __init__(self, root, fingerprint: str = ""):
    self.root = pathlib.Path(root)
    self.path = self.root / MANIFEST
    self.fingerprint = fingerprint
    self._lock = self.root / "locks" / "manifest.lock"

  def exists(self) -> bool:
    return self.path.exists()

  def read(self) -> dict | None:
    """The manifest, ``None`` if there is none; ``ValueError`` naming it if unreadable."""
    try:
      data = json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (OSError, ValueError) as e:
      raise ValueError(
        f"{self.path}: unreadable ({type(e).__name__}: {e})"
      ) from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
      raise ValueError(f"{self.path}: not a manifest (no 'files' table)")
    return data

  def files(self) -> dict[str, dict]:
    return (self.read() or {}).get("files", {})

  def key(self, path) -> str:
    return pathlib.Path(os.path.relpath(path, self.root)).as_posix()

  def update(self, change: Callable[[dict], object]) -> None:
    """``change(manifest)`` under the lock, then written back atomically."""
    with lock(self._lock):
      remove_temporaries(self.path)
      data = self.read() or {
        "format": self.FORMAT,
        "fingerprint": self.fingerprint,
        "files": {},
      }
      change(data)
      write_json_atomic(self.path, data)

  def record(self, entries: dict, **meta) -> None:
    """``{path: sha256}`` into the manifest (sizes read from the files);
    ``meta`` sets top-level keys."""
    rows = {
      self.key(p): {
        "sha256": sha,
        "bytes": _size(pathlib.Path(p)),
      }
      for p, sha in entries.items()
    }
    self.update(lambda d: (d["files"].update(rows), d.update(meta)))

  def forget(self, *paths) -> None:
    keys = [self.key(p) for p in paths]
    self.update(lambda d: [d["files"].pop(k, None) for k in keys])

  def write(self, path, write: Callable[[IO[bytes]], object]) -> str:
    """:func:`write_atomic`, then the file's sha256 into the manifest."""
    sha = write_atomic(path, write, sha256=True)
    self.record({path: sha})
    return sha

  def save_npy(self, path, array) -> str:
    return self.write(path, lambda f: np.save(f, array))

  def save_npz(self, path, arrays: dict) -> str:
    return self.write(path, lambda f: np.savez(f, **arrays))

  def write_json(self, path, obj) -> str:
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return self.write(path, lambda f: f.write(text.encode("utf-8")))

  def save_dir(self, path, write: Callable[[pathlib.Path], object]) -> str:
    sha = save_dir_atomic(path, write)
    self.record({path: sha})
    return sha

  def problem(self, path, sha256: str | None = None, files=None) -> str:
    """What is wrong with ``path`` against the manifest ("" if nothing).

    ``sha256``: the content's hash if the caller has already read it
    (a directory: its :func:`tree_sha256`); ``files``: a :meth:`files`
    snapshot, to read the manifest once for many checks.
    """
    path = pathlib.Path(path)
    entry = (self.files() if files is None else files).get(self.key(path))
    if entry is None:
      return f"not recorded in {MANIFEST}"
    if not path.exists():
      return "missing"
    if sha256 is None:
      sha256 = tree_sha256(path) if path.is_dir() else file_sha256(path)
    if sha256 != entry.get("sha256"):
      return (
        f"its sha256 {sha256[:12]}... differs from the {entry.get('sha256', '')[:12]}... "
        f"{MANIFEST} recorded when it was written (changed since)"
      )
    return ""


def _size(path: pathlib.Path) -> int:
  if path.is_dir():
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
  return path.stat().st_size
