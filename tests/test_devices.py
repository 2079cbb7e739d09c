"""Scale-out: the models axis sharded over 4 (forced) CPU devices, and a 2-process run merged.

Both compare against a plain single-device, single-process run of the same models.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from miajax import data, runs, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ["--widths=32", "--epochs=2", "--batch_size=32", "--num_examples=300"]

# Trains 6 models (a count that 4 devices do not divide) and reports where they lived.
SHARD_SCRIPT = r"""
import json, sys
import jax, numpy as np
from miajax import data, train
ds = data.load("digits")
keep = data.paired_keep(6, 300, seed=1)
cfg = train.TrainConfig(model="mlp", model_kwargs=(("widths", (32,)),), epochs=2, batch_size=32,
                        models_per_step=int(sys.argv[2]), model_axis=sys.argv[3])
shards = []  # per epoch: (device id, models held) of the chunk's parameters *during* training
chunks = list(train.train_chunks(ds.x_train[:300], ds.y_train[:300], keep, cfg, num_classes=10,
                                 progress=lambda p: shards.append(p["model_shards"])))
devices = sorted({d.id for c in chunks for d in jax.tree_util.tree_leaves(c.variables)[0].sharding.device_set})
res = train.train_models(ds.x_train[:300], ds.y_train[:300], keep, cfg, num_classes=10)
logits = train.predict(cfg, res.variables, ds.x_test[:40], num_classes=10)
np.save(sys.argv[1], logits)
print(json.dumps({"local_devices": jax.local_device_count(), "devices_used": devices, "shards": shards,
                  "chunks": [len(c.model_indices) for c in chunks]}))
"""


def _python(args, *, env_extra=None, timeout=600):
  env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
  return subprocess.run(
    [sys.executable, *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
    cwd=ROOT,
  )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize(
  "models_per_step,model_axis",
  [(6, "vmap"), (3, "vmap"), (6, "unroll"), (6, "loop")],
)
def test_models_sharded_over_four_devices_match_one_device(
  tmp_path, models_per_step, model_axis
):
  # Every way of combining a device's models (batched, unrolled in one program, one call per
  # model on its own device) must spread the models over all devices and not change them.
  script = tmp_path / "shard.py"
  script.write_text(SHARD_SCRIPT)
  four = _python(
    [str(script), str(tmp_path / "four.npy"), str(models_per_step), model_axis],
    env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
  )
  assert four.returncode == 0, four.stderr[-3000:]
  info = json.loads(four.stdout.strip().splitlines()[-1])
  assert info["local_devices"] == 4
  assert (
    len(info["devices_used"]) == 4
  )  # the model axis really is spread over every device
  assert info["chunks"] == ([6] if models_per_step == 6 else [3, 3])
  # While training, every epoch's parameters lie in one block per device (padded to 8 models: 2 each for a
  # chunk of 6, 1 each for a chunk of 3); a replicated or single-device chunk would fail here.
  per_device = 2 if models_per_step == 6 else 1
  assert len(info["shards"]) == 2 * len(info["chunks"])  # 2 epochs per chunk
  for epoch_shards in info["shards"]:
    held = {}
    for device, models in epoch_shards:
      held[device] = held.get(device, 0) + models
    assert sorted(held) == [0, 1, 2, 3]
    assert set(held.values()) == {per_device}

  ds = data.load("digits")
  keep = data.paired_keep(6, 300, seed=1)
  cfg = train.TrainConfig(
    model="mlp",
    model_kwargs=(("widths", (32,)),),
    epochs=2,
    batch_size=32,
    models_per_step=models_per_step,
    model_axis=model_axis,
  )
  res = train.train_models(
    ds.x_train[:300], ds.y_train[:300], keep, cfg, num_classes=10
  )
  one = train.predict(cfg, res.variables, ds.x_test[:40], num_classes=10)
  np.testing.assert_allclose(
    np.load(tmp_path / "four.npy"), one, rtol=1e-5, atol=1e-5
  )


def test_two_processes_merge_to_the_single_process_result(tmp_path):
  port = _free_port()
  common = ["experiments/train_models.py", "--num_models=6", *SMALL]
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        *common,
        f"--output_dir={tmp_path / 'multi'}",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={p}",
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for p in (0, 1)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "process 1 merges" in outs[0][0]
  chunk_names = sorted(
    f.name for f in (tmp_path / "multi" / "chunks").iterdir()
  )
  assert chunk_names == [
    "chunk_00000_00003.npz",
    "chunk_00003_00006.npz",
  ]  # one slice per process

  single = _python([*common, f"--output_dir={tmp_path / 'single'}"])
  assert single.returncode == 0, single.stderr[-3000:]
  for name in ("keep.npy", "labels.npy", "logits.npy"):
    np.testing.assert_allclose(
      np.load(tmp_path / "multi" / name),
      np.load(tmp_path / "single" / name),
      rtol=1e-5,
      atol=1e-5,
    )

  # The separate merge command rebuilds the same arrays from the chunks.
  before = np.load(tmp_path / "multi" / "logits.npy")
  (tmp_path / "multi" / "logits.npy").unlink()
  merged = _python(
    [*common, f"--output_dir={tmp_path / 'multi'}", "--merge_only"]
  )
  assert merged.returncode == 0, merged.stderr[-3000:]
  np.testing.assert_array_equal(
    np.load(tmp_path / "multi" / "logits.npy"), before
  )


def test_process_slices_partition_the_models():
  for num_models, procs in [(6, 2), (7, 3), (256, 8), (5, 5)]:
    slices = [runs.process_slice(num_models, p, procs) for p in range(procs)]
    assert sum(slices, []) == list(range(num_models))
    assert max(map(len, slices)) - min(map(len, slices)) <= 1


@pytest.mark.parametrize(
  "args, match",
  [
    ((6, 2, 2), "process_id must be in"),
    ((6, -1, 2), "process_id must be in"),
    ((6, 0, 0), "num_processes must be >= 1"),
    ((3, 0, 4), "num_processes=4 exceeds num_models=3"),
  ],
)
def test_bad_process_slices(args, match):
  with pytest.raises(ValueError, match=match):
    runs.process_slice(*args)


def test_multi_process_without_coordinator_fails_before_training(tmp_path):
  proc = _python(
    [
      "experiments/train_models.py",
      "--num_models=6",
      *SMALL,
      f"--output_dir={tmp_path}",
      "--num_processes=2",
      "--process_id=0",
    ],
    timeout=120,
  )
  assert proc.returncode != 0 and "--coordinator_address" in proc.stderr
  assert not any(tmp_path.iterdir())


def test_merge_waits_for_every_model_and_accepts_mixed_chunk_sizes(tmp_path):
  spec = runs.RunSpec(
    dataset="digits",
    num_examples=200,
    num_models=4,
    train=train.TrainConfig(
      model="mlp",
      model_kwargs=(("widths", (16,)),),
      epochs=1,
      batch_size=32,
      models_per_step=1,
    ),
  )
  assert (
    runs.run_training(
      spec, tmp_path, log=lambda s: None, chunk_models=[0, 1], merge=False
    )
    is None
  )
  assert runs.merge_chunks(tmp_path) is None  # models 2 and 3 missing
  with pytest.raises(TimeoutError, match=r"models \[2, 3\]"):
    runs.wait_and_merge(tmp_path, 4, timeout_s=0.0, poll_s=0.0)
  # Finish with another chunk size (as after a restart with more free memory).
  spec2 = runs.RunSpec(
    **{
      **spec.__dict__,
      "train": train.TrainConfig(
        model="mlp",
        model_kwargs=(("widths", (16,)),),
        epochs=1,
        batch_size=32,
        models_per_step=2,
      ),
    }
  )
  res = runs.run_training(spec2, tmp_path, log=lambda s: None)
  assert res.logits.shape == (4, 200, 1, 10) and res.chunks_trained == 1
  whole = runs.run_training(spec2, tmp_path / "whole", log=lambda s: None)
  np.testing.assert_allclose(res.logits, whole.logits, rtol=1e-5, atol=1e-5)
