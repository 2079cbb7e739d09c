"""miajax.runs.io: the one atomic writer and the one chunk file name."""

import json
import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest

from miajax.runs import io


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "a.npz"
  io.save_npz_atomic(path, x=np.arange(3), y=np.ones((2, 2), np.float32))
  with np.load(path) as z:
    assert z["x"].tolist() == [0, 1, 2] and z["y"].dtype == np.float32
  io.save_npy_atomic(tmp_path / "b.npy", np.eye(2))
  np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.eye(2))
  io.write_bytes_atomic(tmp_path / "c.bin", b"abc")
  assert (tmp_path / "c.bin").read_bytes() == b"abc"
  for name in ("a.npz", "b.npy", "c.bin"):
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644
  assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npy", "c.bin"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "a.bin"
  path.write_bytes(b"old")

  def fail(f):
    f.write(b"half")
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError):
    io.write_atomic(path, fail)
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["a.bin"]
  with pytest.raises(TypeError):  # serialised before anything is opened
    io.write_json_atomic(path, {"bad": object()})
  assert path.read_bytes() == b"old"


def test_write_json_atomic_writes_plain_json(tmp_path):
  path = tmp_path / "a.json"
  io.write_json_atomic(path, {"a": np.float32(0.5), "b": [np.nan], 3: (1,)})
  assert path.read_text().endswith("\n")
  assert json.loads(path.read_text()) == {"a": 0.5, "b": [None], "3": [1]}


def test_temporaries_are_those_of_one_target(tmp_path):
  target = tmp_path / "checkpoint_00000_00002.npz"
  mine = tmp_path / ".checkpoint_00000_00002.npz.x1y2.tmp"
  other = tmp_path / ".checkpoint_00002_00004.npz.x1y2.tmp"
  mine.write_bytes(b"")
  other.write_bytes(b"")
  assert io.temporaries(target) == [mine]


def test_chunk_names_round_trip():
  assert io.chunk_name([0, 1, 15]) == "chunk_00000_00016"
  assert io.chunk_name(np.arange(16, 32), io.CHECKPOINT) == (
    "checkpoint_00016_00032"
  )
  assert io.chunk_name([123456]) == "chunk_123456_123457"
  for models, prefix in (([3, 4], io.CHUNK), ([100000], io.CHECKPOINT)):
    assert io.parse_chunk_name(io.chunk_name(models, prefix), prefix) == range(
      models[0], models[-1] + 1
    )
  for name in (
    "chunk_00004_00004",  # empty
    "chunk_00008_00004",
    "chunk_00000_00016_copy",
    "chunk_-1_00004",
    "chunk_a_b",
    "checkpoint_00000_00016",  # another prefix
  ):
    assert io.parse_chunk_name(name) is None, name


def test_chunk_files_reads_the_ranges_from_the_names(tmp_path):
  assert io.chunk_files(tmp_path / "missing") == {}
  for name in (
    "chunk_00000_00008.npz",
    "chunk_00008_00016.npz",
    "chunk_00016_00016.npz",
    "checkpoint_00016_00024.npz",
    "checkpoint_00016_00024.npz.stale",
    ".chunk_00016_00024.npz.abc.tmp",
  ):
    (tmp_path / name).write_bytes(b"")
  assert {p.name: r for p, r in io.chunk_files(tmp_path).items()} == {
    "chunk_00000_00008.npz": range(0, 8),
    "chunk_00008_00016.npz": range(8, 16),
  }
  assert {
    p.name: r for p, r in io.chunk_files(tmp_path, io.CHECKPOINT).items()
  } == {"checkpoint_00016_00024.npz": range(16, 24)}


def test_digest_sees_bytes_shape_and_dtype():
  a = np.arange(6, dtype=np.int32)
  assert io.digest(a) == io.digest(a.copy()) and len(io.digest(a)) == 16
  assert io.digest(a) != io.digest(a.reshape(2, 3))
  assert io.digest(a) != io.digest(a.astype(np.int64))
  assert io.digest(a, a) != io.digest(a)


def test_save_dir_atomic_renames_a_finished_directory_over_the_target(
  tmp_path,
):
  def write(d):
    assert not d.exists()  # orbax refuses to save into an existing one
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.bin").write_bytes(b"one")

  target = tmp_path / "params"
  (target / "old").mkdir(parents=True)  # a killed writer's leftover
  sha = io.save_dir_atomic(target, write)
  assert sorted(p.name for p in target.rglob("*")) == ["a.bin", "sub"]
  assert sha == io.tree_sha256(target)
  assert os.listdir(tmp_path) == ["params"]  # no temporary left
  (target / "sub" / "a.bin").write_bytes(b"two")
  assert io.tree_sha256(target) != sha

  def fail(d):
    d.mkdir()
    (d / "half").write_bytes(b"")
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError):
    io.save_dir_atomic(tmp_path / "other", fail)
  assert os.listdir(tmp_path) == ["params"]


def test_set_aside_never_overwrites(tmp_path):
  path = tmp_path / "chunk_00000_00002.npz"
  names = []
  for content in (b"a", b"b"):
    path.write_bytes(content)
    names.append(io.set_aside(path).name)
  assert names == [
    "chunk_00000_00002.npz.corrupt",
    "chunk_00000_00002.npz.corrupt1",
  ]
  assert (tmp_path / names[1]).read_bytes() == b"b" and not path.exists()


def test_temporary_target_names_what_a_temporary_was_to_become(tmp_path):
  assert io.temporary_target(".chunk_00000_00002.npz.k3j_x.tmp") == (
    "chunk_00000_00002.npz"
  )
  assert io.temporary_target(".logits.npy.abc.tmp") == "logits.npy"
  for name in ("chunk_00000_00002.npz", ".hidden", "x.tmp", ".a.tmp"):
    assert io.temporary_target(name) is None, name
  # What write_atomic and save_dir_atomic really leave.
  fd, tmp = io.tempfile.mkstemp(dir=tmp_path, prefix=".a.npz.", suffix=".tmp")
  os.close(fd)
  assert io.temporary_target(os.path.basename(tmp)) == "a.npz"
  assert io.remove_temporaries(tmp_path / "a.npz") == 1
  assert not os.listdir(tmp_path)


def test_manifest_records_and_finds_changed_files(tmp_path):
  m = io.Manifest(tmp_path, "fp")
  assert m.read() is None and m.files() == {}
  m.save_npy(tmp_path / "a.npy", np.arange(4))
  m.write_json(tmp_path / "b.json", {"x": 1})
  sub = tmp_path / "chunks"
  sub.mkdir()
  m.save_npz(sub / "c.npz", {"y": np.ones(3)})
  data = json.loads((tmp_path / "manifest.json").read_text())
  assert data["fingerprint"] == "fp"
  assert sorted(data["files"]) == ["a.npy", "b.json", "chunks/c.npz"]
  assert data["files"]["a.npy"]["bytes"] == (tmp_path / "a.npy").stat().st_size
  for name in ("a.npy", "b.json", "chunks/c.npz"):
    assert m.problem(tmp_path / name) == "", name
  # A finite, plausible change: only the hash sees it.
  np.save(tmp_path / "a.npy", np.array([0, 1, 2, 4]))
  assert "differs" in m.problem(tmp_path / "a.npy")
  (tmp_path / "d.npy").write_bytes(b"")
  assert m.problem(tmp_path / "d.npy") == "not recorded in manifest.json"
  (tmp_path / "b.json").unlink()
  assert m.problem(tmp_path / "b.json") == "missing"
  m.forget(tmp_path / "b.json")
  assert "b.json" not in m.files()
  (tmp_path / "manifest.json").write_text("{trunc")
  with pytest.raises(ValueError, match=r"manifest\.json: unreadable"):
    m.read()


def test_arrays_digest_sees_names_values_and_dtypes():
  a = {"x": np.arange(3), "y": np.zeros(2, np.float32)}
  assert io.arrays_digest(a) == io.arrays_digest(dict(reversed(a.items())))
  assert io.arrays_digest(a) != io.arrays_digest({"x": a["x"], "z": a["y"]})
  assert io.arrays_digest(a) != io.arrays_digest({**a, "y": np.zeros(2)})
  b = {**a, "y": np.array([0.0, 1e-30], np.float32)}
  assert io.arrays_digest(a) != io.arrays_digest(b)


_HOLD = """
import sys, time
from miajax.runs import io
held = io.try_lock(sys.argv[1], holder=True)
print("held" if held else "taken", flush=True)
sys.stdin.readline()  # hold it until told to exit
"""


def test_locks_exclude_other_processes_and_die_with_them(tmp_path):
  path = tmp_path / "locks" / "model_00003.lock"
  p = subprocess.Popen(
    [sys.executable, "-c", _HOLD, str(path)],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert p.stdout.readline().strip() == "held"
    assert io.try_lock(path) is None
    assert io.lock_holder(path) == f"pid {p.pid} on {socket.gethostname()}"
    # The holder is killed, not asked: the kernel releases its lock.
    p.kill()
    p.wait()
    mine = io.try_lock(path)
    assert mine is not None
    # Held here now: a second process finds it taken.
    other = subprocess.run(
      [sys.executable, "-c", _HOLD, str(path)],
      input="\n",
      capture_output=True,
      text=True,
    )
    assert other.stdout.strip() == "taken"
    mine.release()
    with io.lock(path):
      pass
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
