"""miajax.runs.io: the one atomic writer and the one chunk file name."""

import json
import os
import stat

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
