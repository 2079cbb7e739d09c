"""Scale-out: the models axis sharded over 4 (forced) CPU devices, and a 2-process run merged.

Both compare against a plain single-device, single-process run of the same models.
"""

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from miajax import data, runs, engine
from miajax.attacks import label_only

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = [
  "--widths=32",
  "--activation=tanh",
  "--epochs=2",
  "--batch_size=32",
  "--num_examples=300",
]
# The RunSpec of the two-process test's flags (common.run_spec with the digits defaults).  Its
# recipe is the one the 4-device test trains (SHARD_SCRIPT): in this process, the two runs on one
# device share their compiled programs through the compilation cache.
SINGLE_SPEC = runs.RunSpec(
  dataset="digits",
  num_examples=300,
  num_models=6,
  train=engine.TrainConfig(
    model="mlp",
    model_kwargs=(("activation", "tanh"), ("widths", (32,))),
    epochs=2,
    batch_size=32,
    learning_rate=0.1,
  ),
  label_only=label_only.LabelOnlyQueries(sigmas=()),
)

# Trains 6 models (a count that 4 devices do not divide) once per configuration "models_per_step,
# model_axis" of argv[2:] (one process and one data load for all of them; each configuration its
# own programs) and reports where they lived.  train_models is the code under test; its calls to
# train_chunks are recorded on the way, so that the chunks' parameters can be inspected without
# training the models a second time.
SHARD_SCRIPT = r"""
import json, sys
import jax, numpy as np
from miajax import data, engine
from miajax.engine import loop
from miajax.runs import compilation_cache
compilation_cache.use_compilation_cache()  # the session's: what loop mode compiles per device, once
ds = data.load("digits")
keep = data.paired_keep(6, 300, seed=1)
record = loop.train_chunks
def recording(*args, **kwargs):
  for chunk in record(*args, **kwargs):
    chunks.append(chunk)
    yield chunk
loop.train_chunks = recording
for case in sys.argv[2:]:
  models_per_step, model_axis = case.split(",")
  cfg = engine.TrainConfig(model="mlp", model_kwargs=(("activation", "tanh"), ("widths", (32,))), epochs=2, batch_size=32)
  low = engine.Lowering(models_per_step=int(models_per_step), model_axis=model_axis)
  chunks, shards = [], []  # per epoch: (device id, models held) of the chunk's parameters *during* training
  res = engine.train_models(cfg, ds.x_train[:300], ds.y_train[:300], keep, num_classes=10, lowering=low,
                           progress=lambda p: shards.append(p["model_shards"]))
  devices = sorted({d.id for c in chunks for d in jax.tree_util.tree_leaves(c.variables)[0].sharding.device_set})
  logits = engine.predict(cfg, res.variables, ds.x_test[:40], num_classes=10, lowering=low)
  np.save(f"{sys.argv[1]}/{models_per_step}-{model_axis}.npy", logits)
  print(json.dumps({"case": case, "local_devices": jax.local_device_count(), "devices_used": devices,
                    "shards": shards, "chunks": [len(c.model_indices) for c in chunks]}))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
  """{(models_per_step, model_axis): (info, logits)} of every case, trained on 4 devices by SHARD_SCRIPT,
  and the logits of the same models trained on this process's one device."""
  out = tmp_path_factory.mktemp("four")
  script = out / "shard.py"
  script.write_text(SHARD_SCRIPT)
  env = {
    **os.environ,
    "PYTHONUNBUFFERED": "1",
    "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=4",
  }
  # Two processes of two cases each (about equal compile times) run side by side: compiling
  # keeps one core busy, and the cases share hardly any program.
  halves = [[(6, "loop"), (3, "vmap")], [(6, "unroll"), (6, "vmap")]]
  procs = [
    subprocess.Popen(
      [sys.executable, str(script), str(out), *(f"{k},{a}" for k, a in half)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
      cwd=ROOT,
    )
    for half in halves
  ]
  try:
    # Meanwhile, the reference: the same 6 models in one plain chunk on this process's one
    # device.  models_per_step and model_axis say how a run executes, not what it computes
    # (RunSpec.to_json leaves them out), so every 4-device case must reproduce it; on one
    # device the four cases agree to 2.4e-7 (test_train compares the modes there).
    ds = data.load("digits")
    keep = data.paired_keep(6, 300, seed=1)
    cfg = SINGLE_SPEC.train
    res = engine.train_models(
      cfg,
      ds.x_train[:300],
      ds.y_train[:300],
      keep,
      num_classes=10,
      lowering=engine.Lowering(models_per_step=6, model_axis="vmap"),
    )
    one = engine.predict(cfg, res.variables, ds.x_test[:40], num_classes=10)
    outs = [p.communicate(timeout=600) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  infos = {}
  for p, half, (stdout, stderr) in zip(procs, halves, outs):
    assert p.returncode == 0, stderr[-3000:]
    lines = [json.loads(line) for line in stdout.strip().splitlines()]
    assert [i["case"] for i in lines] == [f"{k},{a}" for k, a in half]
    infos.update(zip(half, lines))
  four = {
    case: (info, np.load(out / f"{case[0]}-{case[1]}.npy"))
    for case, info in infos.items()
  }
  return four, one


@pytest.mark.parametrize(
  "models_per_step,model_axis",
  [(6, "vmap"), (3, "vmap"), (6, "unroll"), (6, "loop")],
)
@pytest.mark.slow
def test_models_sharded_over_four_devices_match_one_device(
  four_devices, models_per_step, model_axis
):
  # Every way of combining a device's models (batched, unrolled in one program, one call per
  # model on its own device) must spread the models over all devices and not change them.
  four, one = four_devices
  info, logits = four[models_per_step, model_axis]
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
  np.testing.assert_allclose(logits, one, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_two_processes_merge_to_the_single_process_result(tmp_path):
  port = _free_port()
  # Label-only views on (augmentations only: the noise views' compilation is the slow part and
  # adds nothing multi-process), so that their merge is compared too.
  common = [
    "experiments/train_models.py",
    "--num_models=6",
    *SMALL,
    "--label_only_sigmas=",
  ]
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
  multi = {
    name: np.load(tmp_path / "multi" / name)
    for name in ("keep.npy", "labels.npy", "logits.npy", "label_views.npy")
  }

  # The separate merge command rebuilds the same arrays from the chunks ...
  (tmp_path / "multi" / "logits.npy").unlink()
  merge = subprocess.Popen(
    [
      sys.executable,
      *common,
      f"--output_dir={tmp_path / 'multi'}",
      "--merge_only",
    ],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    # ... while this process trains the single-process run of the same flags (SINGLE_SPEC:
    # config.json below shows it is the same run).
    runs.run_training(SINGLE_SPEC, tmp_path / "single", log=lambda s: None)
    _, err = merge.communicate(timeout=600)
  finally:
    if merge.poll() is None:
      merge.kill()
  assert json.loads((tmp_path / "multi" / "config.json").read_text()) == (
    json.loads((tmp_path / "single" / "config.json").read_text())
  )
  for name in ("keep.npy", "labels.npy", "logits.npy"):
    np.testing.assert_allclose(
      multi[name], np.load(tmp_path / "single" / name), rtol=1e-5, atol=1e-5
    )
  # The predicted labels of the label-only views: the same, but for argmax ties that float
  # reassociation (2 devices per process here, 1 there) may break either way.
  views = np.load(tmp_path / "single" / "label_views.npy")
  assert multi["label_views.npy"].shape == views.shape
  assert np.mean(multi["label_views.npy"] != views) <= 1e-3
  assert merge.returncode == 0, err[-3000:]
  np.testing.assert_array_equal(
    np.load(tmp_path / "multi" / "logits.npy"), multi["logits.npy"]
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


# --num_processes=2 without --coordinator_address is refused before training and writes nothing:
# test_bad_inputs.py's script case multi_process_without_coordinator.


@pytest.mark.slow
def test_merge_waits_for_every_model_and_accepts_mixed_chunk_sizes(tmp_path):
  spec = runs.RunSpec(
    dataset="digits",
    num_examples=200,
    num_models=4,
    train=engine.TrainConfig(
      model="mlp",
      model_kwargs=(("widths", (16,)),),
      epochs=1,
      batch_size=32,
    ),
    lowering=engine.Lowering(models_per_step=1),
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
  spec2 = dataclasses.replace(spec, lowering=engine.Lowering(models_per_step=2))
  res = runs.run_training(spec2, tmp_path, log=lambda s: None)
  assert res.logits.shape == (4, 200, 1, 10) and res.chunks_trained == 1
  whole = runs.run_training(spec2, tmp_path / "whole", log=lambda s: None)
  np.testing.assert_allclose(res.logits, whole.logits, rtol=1e-5, atol=1e-5)
