"""Checkpoints inside a chunk: a run killed mid-chunk resumes at its last saved
epoch and ends with exactly the outputs of an uninterrupted run."""

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from miajax import data, defenses, runs, engine
from miajax.runs import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
SILENT = dict(log=lambda s: None, progress=lambda p: None)


class Boom(Exception):
  pass


def _fail_at(models_done: int, epoch: int):
  """A progress callback raising after ``epoch`` of the chunk after
  ``models_done`` models."""

  def progress(p):
    if p["models_done"] == models_done and p["epoch"] == epoch:
      raise Boom

  return progress


def _spec(axis=None, **train_kwargs) -> runs.RunSpec:
  cfg = dict(
    model="mlp",
    model_kwargs=(("activation", "relu"), ("widths", (16,))),
    epochs=4,
    batch_size=32,
    learning_rate=0.1,
  )
  return runs.RunSpec(
    dataset="digits",
    num_examples=240,
    num_models=4,
    train=engine.TrainConfig(**{**cfg, **train_kwargs}),
    # No micro-batch timing run on the CPU paths.
    lowering=engine.Lowering(model_axis=axis, models_per_step=2, microbatch=32),
  )


def _replace_train(spec: runs.RunSpec, **changes) -> runs.RunSpec:
  return dataclasses.replace(
    spec, train=dataclasses.replace(spec.train, **changes)
  )


@pytest.mark.parametrize(
  "axis,every,fail_epoch,resume_epoch,defense",
  [
    (None, 1, 3, 3, None),  # resolves to "vmap" (asserted)
    # Saved every 2 epochs, failing after epoch 3: the last saved epoch is 2.
    ("loop", 2, 3, 2, defenses.dp_sgd(1.0, 0.5)),
  ],
)
@pytest.mark.slow
def test_a_chunk_failing_mid_way_resumes_and_equals_an_uninterrupted_run(
  tmp_path, axis, every, fail_epoch, resume_epoch, defense
):
  spec = _spec(axis, defense=defense)
  low = engine.resolve_lowering(
    spec.train, (8, 8, 1), 10, lowering=spec.lowering
  )
  assert low.model_axis == (axis or "vmap")
  ref = runs.run_training(spec, tmp_path / "ref", **SILENT)

  run = tmp_path / "run"
  with pytest.raises(Boom):
    runs.run_training(
      spec,
      run,
      log=lambda s: None,
      progress=_fail_at(2, fail_epoch),
      checkpoint_every_epochs=every,
    )
  ckpt = run / "chunks" / "checkpoint_00002_00004.npz"
  first = run / "chunks" / "chunk_00000_00002.npz"
  assert ckpt.exists() and first.exists()
  assert not (run / "chunks" / "chunk_00002_00004.npz").exists()
  first_mtime = first.stat().st_mtime_ns

  # Other checkpoint settings, another chunk size: the same run, it resumes.
  lines, seen = [], []
  res = runs.run_training(
    dataclasses.replace(
      spec, lowering=dataclasses.replace(spec.lowering, models_per_step=4)
    ),
    run,
    log=lines.append,
    progress=seen.append,
    checkpoint_every_s=0,
  )
  assert (
    f"resuming models [2, 4) from the checkpoint at epoch {resume_epoch} of 4"
    in lines
  ), lines
  assert res.resumed_epochs == {(2, 4): resume_epoch}
  assert (res.chunks_reused, res.chunks_trained) == (1, 1)
  # Only the epochs after the checkpoint ran, and only for models 2 and 3.
  assert [(p["chunk_models"], p["epoch"]) for p in seen] == [
    (2, e) for e in range(resume_epoch + 1, 5)
  ]
  assert first.stat().st_mtime_ns == first_mtime
  assert not ckpt.exists()  # deleted once the chunk's file was written
  np.testing.assert_array_equal(res.logits, ref.logits)
  np.testing.assert_array_equal(res.train_accuracy, ref.train_accuracy)
  np.testing.assert_array_equal(res.test_accuracy, ref.test_accuracy)
  assert json.loads((run / "models.json").read_text()) == json.loads(
    (tmp_path / "ref" / "models.json").read_text()
  )


class BatchNormMLP(nn.Module):
  """Batch statistics and dropout: state to carry, randomness to re-derive."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16)(x.reshape((x.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.2, deterministic=not train)(nn.relu(x))
    return nn.Dense(10)(x)


@pytest.mark.slow
def test_batch_norm_dropout_and_augmentation_resume_exactly(tmp_path):
  ds = data.load("digits")
  # _spec()'s 240 examples in batches of 32: the compiled epoch order of its
  # chunks of 2 is this one's too.
  x, y = ds.x_train[:240], ds.y_train[:240]
  keep = data.paired_keep(2, 240, seed=2)
  cfg = engine.TrainConfig(
    model=BatchNormMLP(),
    optimizer="adam",
    learning_rate=1e-2,
    epochs=3,
    batch_size=32,
    augment=True,
  )
  ref = engine.train_models(cfg, x, y, keep, num_classes=10)
  lines = []
  saver = checkpoint.Checkpointer(tmp_path, every_epochs=1, log=lines.append)
  with pytest.raises(Boom):
    for _ in engine.train_chunks(
      cfg,
      x,
      y,
      keep,
      num_classes=10,
      checkpoints=saver,
      progress=_fail_at(0, 2),
    ):
      pass
  (got,) = engine.train_chunks(
    cfg, x, y, keep, num_classes=10, checkpoints=saver
  )
  assert lines == ["resuming models [0, 2) from the checkpoint at epoch 2 of 3"]
  assert got.resumed_epoch == 2
  assert "batch_stats" in got.variables
  for a, b in zip(
    jax.tree_util.tree_leaves(got.variables),
    jax.tree_util.tree_leaves(ref.variables),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got.loss, ref.loss)


def _state(n=2, epoch=1, width=3):
  return dict(
    model=({"w": np.arange(n * width, dtype=np.float32).reshape(n, width)},),
    alive=np.ones(n, bool),
    loss_sum=np.full((n, epoch), 0.5, np.float32),
  )


def _shapes(n=2, width=3):
  return lambda epoch: jax.tree_util.tree_map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _state(n, epoch, width)
  )


def test_stale_or_corrupt_checkpoints_are_set_aside_never_used(tmp_path):
  lines = []
  c = checkpoint.Checkpointer(tmp_path, fingerprint="run-a", log=lines.append)
  ident = dict(seed=0, members="abc")
  path = c.save([4, 5], 1, 3, _state(), ident)
  assert path.name == "checkpoint_00004_00006.npz"
  back = c.restore([4, 5], 3, ident, _shapes())
  assert back.epoch == 1 and back.tree["alive"].dtype == np.bool_
  np.testing.assert_array_equal(
    back.tree["model"][0]["w"], _state()["model"][0]["w"]
  )
  saved = path.read_bytes()

  cases = [
    (dict(ident=dict(seed=1, members="abc")), "differs in: seed"),
    (dict(fingerprint="run-b"), "differs in: fingerprint"),
    (dict(epochs=5), "written for 3 epochs, not 5"),
    (dict(like=_shapes(width=4)), "other shapes or dtypes"),
  ]
  for change, reason in cases:
    path.write_bytes(saved)
    lines.clear()
    other = checkpoint.Checkpointer(
      tmp_path, fingerprint=change.get("fingerprint", "run-a"), log=lines.append
    )
    got = other.restore(
      [4, 5],
      change.get("epochs", 3),
      change.get("ident", ident),
      change.get("like", _shapes()),
    )
    assert got is None and not path.exists()
    assert len(lines) == 1 and reason in lines[0], lines
    assert "checkpoint_00004_00006.npz" in lines[0]
  # Nothing was deleted: every stale file is kept aside, byte for byte.
  aside = sorted(tmp_path.glob("checkpoint_00004_00006.npz.stale*"))
  assert len(aside) == len(cases)
  assert all(p.read_bytes() == saved for p in aside)

  path.write_bytes(saved[: len(saved) // 2])  # a truncated file
  lines.clear()
  assert c.restore([4, 5], 3, ident, _shapes()) is None
  assert "unreadable" in lines[0] and not path.exists()
  # Only checkpoint_<start>_<stop>.npz files count as checkpoints.
  assert list(checkpoint.checkpoint_files(tmp_path).values()) == []


def test_a_checkpoint_of_another_run_is_ignored_in_a_run_directory(tmp_path):
  spec = _spec()
  with pytest.raises(Boom):
    runs.run_training(
      spec,
      tmp_path / "a",
      log=lambda s: None,
      progress=_fail_at(2, 2),
      checkpoint_every_epochs=1,
    )
  other = _replace_train(spec, seed=1)
  (tmp_path / "b" / "chunks").mkdir(parents=True)
  name = "checkpoint_00002_00004.npz"
  foreign = (tmp_path / "a" / "chunks" / name).read_bytes()
  (tmp_path / "b" / "chunks" / name).write_bytes(foreign)
  lines, seen = [], []
  res = runs.run_training(
    other, tmp_path / "b", log=lines.append, progress=seen.append
  )
  assert not any("resuming models" in s for s in lines)
  assert any(
    s.startswith(f"ignoring the checkpoint {name}: it belongs to another run")
    and "seed" in s
    for s in lines
  ), lines
  assert res.resumed_epochs == {}
  # Models 2 and 3 trained from their first epoch, on their own seed.
  assert [p["epoch"] for p in seen if p["models_done"] == 2] == [1, 2, 3, 4]
  stale = tmp_path / "b" / "chunks" / (name + ".stale")
  assert stale.read_bytes() == foreign


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(checkpoint_every_s=-1.0), "checkpoint_every_s"),
    (dict(checkpoint_every_s=float("nan")), "checkpoint_every_s"),
    (dict(checkpoint_every_epochs=1.5), "checkpoint_every_epochs"),
    (dict(checkpoint_every_epochs=-2), "checkpoint_every_epochs"),
  ],
)
def test_bad_checkpoint_intervals_fail_before_anything_is_written(
  tmp_path, kwargs, match
):
  with pytest.raises(ValueError, match=match):
    runs.run_training(_spec(), tmp_path / "run", **SILENT, **kwargs)
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_models_resumes_after_sigkill_mid_chunk(tmp_path):
  # One chunk of 2 models for 200 epochs, a checkpoint after every epoch: the
  # kill lands inside the chunk however fast the machine is. The model and the
  # data are _spec()'s (a width-16 MLP, 240 digits, chunks of 2): the programs
  # that do not depend on the epoch count (initialisation, epoch order,
  # predictions) load from the session's compilation cache.
  args = [
    "--num_models=2",
    "--models_per_step=2",
    "--widths=16",
    "--epochs=200",
    "--batch_size=32",
    "--num_examples=240",
    "--label_only=false",
  ]
  # The in-process reference runs on this process's devices: so does the script.
  flags = os.environ.get("XLA_FLAGS", "")
  env = {
    **os.environ,
    "PYTHONUNBUFFERED": "1",
    "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count="
    f"{jax.local_device_count()}",
  }
  script = [sys.executable, str(ROOT / "experiments" / "train_models.py")]
  part = tmp_path / "part"
  cmd = [*script, f"--output_dir={part}", *args]
  log = (tmp_path / "killed.log").open("w")
  p = subprocess.Popen(
    [*cmd, "--checkpoint_every_epochs=1"],
    cwd=ROOT,
    env=env,
    stdout=log,
    stderr=log,
  )
  deadline = time.time() + 300
  ckpt = part / "chunks" / "checkpoint_00000_00002.npz"
  while time.time() < deadline and p.poll() is None and not ckpt.exists():
    time.sleep(0.01)
  p.send_signal(signal.SIGKILL)
  p.wait()
  log.close()
  killed_log = (tmp_path / "killed.log").read_text()
  assert ckpt.exists(), killed_log[-3000:]
  assert not list((part / "chunks").glob("chunk_*.npz"))

  spec = runs.RunSpec(
    dataset="digits",
    num_examples=240,
    num_models=2,
    train=engine.TrainConfig(
      model="mlp",
      model_kwargs=(("activation", "relu"), ("widths", (16,))),
      epochs=200,
      batch_size=32,
      learning_rate=0.1,
    ),
    lowering=engine.Lowering(models_per_step=2),
  )
  # The script resumes in a new process while this one trains the
  # uninterrupted reference and then runs the script on the reference's
  # directory with a changed configuration: independent work, side by side.
  ref_dir = tmp_path / "ref"
  err_path = tmp_path / "resumed.err"
  with (tmp_path / "resumed.out").open("w") as out, err_path.open("w") as err:
    resumed = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
    try:
      ref = runs.run_training(spec, ref_dir, **SILENT)
      # A changed configuration in a finished run directory of this
      # configuration (the reference's config.json is the script's, asserted
      # below): a one-line usage error, nothing written.
      before = {q: q.stat().st_mtime_ns for q in ref_dir.rglob("*")}
      changed = subprocess.run(
        [
          *script,
          f"--output_dir={ref_dir}",
          *args[:3],
          "--epochs=4",
          *args[4:],
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
      )
      returncode = resumed.wait(timeout=600)
    finally:
      if resumed.poll() is None:
        resumed.kill()
        resumed.wait()
  stderr = err_path.read_text()
  assert returncode == 0, stderr[-3000:]
  m = re.search(
    r"resuming models \[0, 2\) from the checkpoint at epoch (\d+) of 200",
    stderr,
  )
  assert m and int(m.group(1)) >= 1, stderr[-3000:]
  print(f"resumed at epoch {m.group(1)} of 200 after SIGKILL")
  assert not ckpt.exists()

  # The same configuration as the script's (else the comparison means nothing).
  assert json.loads((part / "config.json").read_text()) == json.loads(
    (ref_dir / "config.json").read_text()
  )
  np.testing.assert_array_equal(np.load(part / "logits.npy"), ref.logits)
  np.testing.assert_array_equal(np.load(part / "keep.npy"), ref.keep)

  assert changed.returncode == 2
  assert (
    "different configuration" in changed.stderr
    and "train.epochs" in changed.stderr
  )
  assert "Traceback" not in changed.stderr
  assert {q: q.stat().st_mtime_ns for q in ref_dir.rglob("*")} == before
  assert [line for line in changed.stderr.splitlines() if "error:" in line][
    0
  ].startswith("train_models.py: error:")
