"""Timing noise changes speed, never bits: a run's lowering is decided once and reused."""

import dataclasses
import json

import numpy as np
import pytest

from miajax import engine, runs
from miajax.engine import lowering as lowering_lib
from miajax.engine.cpu import microbatch as cpu

# Batch 32: the micro-batch candidates are 8, 16 and 32 (the whole batch).
PICKS_8 = {8: 1.0, 16: 2.0, 32: 2.0}
PICKS_32 = {8: 2.0, 16: 2.0, 32: 1.0}


def _spec(**lowering) -> runs.RunSpec:
  return runs.RunSpec(
    dataset="digits",
    num_examples=240,
    num_models=4,
    train=engine.TrainConfig(
      model="mlp",
      model_kwargs=(("activation", "relu"), ("widths", (16,))),
      epochs=2,
      batch_size=32,
    ),
    # One model per call: the CPU form whose micro-batch is measured.
    lowering=engine.Lowering(model_axis="loop", models_per_step=2, **lowering),
  )


@pytest.fixture
def timings(monkeypatch, tmp_path):
  """Sets the micro-batch timings the CPU lowering sees (always measured)."""
  monkeypatch.setenv("MIAJAX_LOWERING_CACHE", str(tmp_path / "machine"))
  monkeypatch.setattr(cpu, "measurement_pays", lambda *a, **k: True)

  def use(table):
    monkeypatch.setattr(cpu, "microbatch_timings", lambda *a, **k: table)
    lowering_lib._resolve.cache_clear()

  yield use
  lowering_lib._resolve.cache_clear()


def _train(spec, out, **kw):
  lines = []
  res = runs.run_training(
    spec, out, log=lines.append, checkpoint_every_s=0, **kw
  )
  return res, lines


def _fail_after_first_chunk(p):
  if p["models_done"] == 2:
    raise RuntimeError("killed")


@pytest.mark.slow
def test_a_resume_under_other_timings_equals_the_uninterrupted_run(
  timings, tmp_path, monkeypatch
):
  spec = _spec()
  timings(PICKS_8)
  ref, lines = _train(spec, tmp_path / "ref")
  assert any("microbatch=8" in line for line in lines), lines
  # The other timings would pick the whole batch, and change the numbers.
  monkeypatch.setenv("MIAJAX_LOWERING_CACHE", "0")
  timings(PICKS_32)
  other, _ = _train(spec, tmp_path / "other")
  assert not np.array_equal(other.logits, ref.logits)

  monkeypatch.setenv("MIAJAX_LOWERING_CACHE", str(tmp_path / "fresh"))
  timings(PICKS_8)
  with pytest.raises(RuntimeError, match="killed"):
    _train(spec, tmp_path / "run", progress=_fail_after_first_chunk)
  recorded = json.loads((tmp_path / "run" / "lowering.json").read_text())
  assert recorded["microbatch"] == 8 and recorded["model_axis"] == "loop"
  timings(PICKS_32)  # the machine got busy: a fresh decision would differ
  res, lines = _train(spec, tmp_path / "run")
  assert any("lowering (lowering.json)" in line for line in lines), lines
  assert res.chunks_reused == 1 and res.chunks_trained == 1
  np.testing.assert_array_equal(res.logits, ref.logits)


@pytest.mark.slow
def test_the_same_command_twice_under_other_timings_gives_the_same_bits(
  timings, tmp_path
):
  spec = _spec()
  timings(PICKS_8)
  first, _ = _train(spec, tmp_path / "first")
  timings(PICKS_32)
  second, lines = _train(spec, tmp_path / "second")
  assert any("this machine's decision cache" in line for line in lines), lines
  np.testing.assert_array_equal(second.logits, first.logits)


def test_a_run_refuses_a_lowering_that_would_change_its_numbers(
  timings, tmp_path
):
  spec = _spec()
  timings(PICKS_8)
  _train(spec, tmp_path / "run")
  for field, value in (("microbatch", 16), ("model_axis", "vmap")):
    changed = dataclasses.replace(
      spec, lowering=dataclasses.replace(spec.lowering, **{field: value})
    )
    with pytest.raises(ValueError, match=f"{field}=.*lowering.json"):
      _train(changed, tmp_path / "run")
  # How many models run at once does not change them: accepted.
  more = dataclasses.replace(
    spec, lowering=dataclasses.replace(spec.lowering, models_per_step=4)
  )
  res, _ = _train(more, tmp_path / "run")
  assert res.chunks_trained == 0


def test_a_checkpoint_of_another_lowering_is_set_aside(timings, tmp_path):
  spec = _spec()
  timings(PICKS_8)
  with pytest.raises(RuntimeError, match="killed"):
    _train(
      spec,
      tmp_path / "run",
      progress=lambda p: (
        (_ for _ in ()).throw(RuntimeError("killed"))
        if p["epoch"] == 1
        else None
      ),
      checkpoint_every_epochs=1,
    )
  ckpt = tmp_path / "run" / "chunks" / "checkpoint_00000_00002.npz"
  assert ckpt.exists()
  # Another lowering in a new directory, with that checkpoint copied in:
  # its identity names the micro-batch, so it is not resumed from.
  (tmp_path / "other" / "chunks").mkdir(parents=True)
  (tmp_path / "other" / "chunks" / ckpt.name).write_bytes(ckpt.read_bytes())
  res, lines = _train(_spec(microbatch=16), tmp_path / "other")
  assert not any("resuming models" in line for line in lines), lines
  assert res.chunks_trained == 2


def test_a_damaged_lowering_record_is_refused_in_one_line(timings, tmp_path):
  spec = _spec()
  timings(PICKS_8)
  _train(spec, tmp_path / "run")
  record = tmp_path / "run" / "lowering.json"
  for damage in ('{"microbatch": ', '{"model_axis": "pmap"}'):
    record.write_text(damage)
    with pytest.raises(ValueError, match=r"lowering.json: not a readable"):
      _train(spec, tmp_path / "run")
