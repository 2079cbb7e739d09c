"""kill -9 at three moments, one in the middle of a checkpoint write: the rerun equals an uninterrupted run."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = [
  "--num_models=4",
  "--models_per_step=2",
  "--widths=16",
  "--epochs=150",
  "--batch_size=32",
  "--num_examples=240",
  "--label_only=false",
  "--checkpoint_every_epochs=1",
]
# train_models.py as a user runs it, except that while the file SLOW exists
# every checkpoint write stops half-way (its temporary file on disk) for a
# minute: the test's kill then lands inside the write.
DRIVER = r"""
import os, pathlib, runpy, sys, time
from miajax.runs import io
write_atomic = io.write_atomic
def slow(path, write, **kw):
  def half_way(f):
    write(f)
    if pathlib.Path(path).name.startswith("checkpoint_") and os.path.exists(
      os.environ["SLOW"]
    ):
      f.flush()
      time.sleep(60)
  return write_atomic(path, half_way, **kw)
io.write_atomic = slow
script = os.path.join(os.environ["ROOT"], "experiments", "train_models.py")
sys.argv = [script, *sys.argv[1:]]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""


def _start(cmd, env, log):
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)


def _kill_when(p, ready, deadline_s=300.0, then_s=0.0):
  """SIGKILLs ``p`` ``then_s`` seconds after ``ready()`` holds; returns whether it held."""
  deadline = time.time() + deadline_s
  while time.time() < deadline and p.poll() is None and not ready():
    time.sleep(0.005)
  held = ready()
  time.sleep(then_s)
  p.send_signal(signal.SIGKILL)
  p.wait()
  return held


@pytest.mark.slow
def test_three_kills_then_a_rerun_equal_an_uninterrupted_run(tmp_path):
  rng = np.random.default_rng(7)  # the moments: random, and the same each run
  driver = tmp_path / "driver.py"
  driver.write_text(DRIVER)
  slow = tmp_path / "slow"
  flags = os.environ.get("XLA_FLAGS", "")
  env = {
    **os.environ,
    "PYTHONUNBUFFERED": "1",
    "ROOT": str(ROOT),
    "SLOW": str(slow),
    "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count="
    f"{jax.local_device_count()}",
  }
  run = tmp_path / "run"
  chunks = run / "chunks"
  cmd = [sys.executable, str(driver), f"--output_dir={run}", *ARGS]
  log = (tmp_path / "runs.log").open("w")

  # 1. Mid-chunk: a random moment after the first checkpoint of models [0, 2).
  p = _start(cmd, env, log)
  first = chunks / "checkpoint_00000_00002.npz"
  assert _kill_when(p, first.exists, then_s=float(rng.uniform(0, 0.5)))

  # 2. Inside a checkpoint write: its temporary file is on disk.
  slow.touch()
  p = _start(cmd, env, log)
  half_written = lambda: any(
    f.name.startswith(".checkpoint_") for f in chunks.iterdir()
  )
  assert _kill_when(p, half_written)
  slow.unlink()

  # 3. After the first chunk's file: a random moment in the second chunk.
  p = _start(cmd, env, log)
  done = chunks / "chunk_00000_00002.npz"
  assert _kill_when(p, done.exists, then_s=float(rng.uniform(0, 0.5)))
  assert not (run / "logits.npy").exists()

  # The rerun finishes; an uninterrupted run of the same command is the reference.
  finish = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
  ref = tmp_path / "ref"
  solo = subprocess.run(
    [sys.executable, str(driver), f"--output_dir={ref}", *ARGS],
    cwd=ROOT,
    env=env,
    stdout=log,
    stderr=log,
  )
  log.close()
  text = (tmp_path / "runs.log").read_text()
  assert finish.returncode == 0 and solo.returncode == 0, text[-3000:]
  assert "resuming models" in text, text[-3000:]
  for name in ("logits.npy", "keep.npy"):
    np.testing.assert_array_equal(np.load(run / name), np.load(ref / name))
  # Nothing half-written is left behind.
  assert not [f for f in chunks.iterdir() if f.name.startswith(".")]
