"""experiments/audit.py --calibrate end to end: the recipe it picks, report.json's "calibration" and "match", report.html.

The target is trained outside the engine (experiments/external_target.py's
hand-written JAX loop): 40 epochs at a constant learning rate without weight
decay on half of the first 300 digits. A calibrated audit must pick the
40-epoch candidate of a 2-or-40-epoch grid and train its shadows with it; an
uncalibrated audit with 2-epoch shadows must say that its shadows do not
match the target.
"""

import html
import json

import numpy as np
import pytest

import miajax
from miajax import match
from test_audit import ROOT, _run  # noqa: F401 (ROOT: experiments/ on sys.path)

from external_target import train_target  # noqa: E402 (experiments/, put on sys.path by test_audit)

N, C = 300, 10
TARGET_EPOCHS = 40
GRID = "epochs=2,40;weight_decay=0;schedule=constant"
SHADOWS = ["--widths=32", "--num_models=4"]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
  """A pool of the first 300 digits as --pool_npz and an external target on half of it: (pool, args)."""
  tmp = tmp_path_factory.mktemp("calibrate_target")
  ds = miajax.load("digits")
  x, y = ds.x_train[:N], ds.y_train[:N]
  np.savez(tmp / "pool.npz", x=x, y=y)
  members = np.sort(np.random.default_rng(1).permutation(N)[: N // 2])
  logits = train_target(
    x,
    y,
    members,
    num_classes=C,
    epochs=TARGET_EPOCHS,
    weight_decay=0.0,
    schedule="constant",
    widths=(32,),
  )
  assert (
    logits.shape == (N, C) and (logits.argmax(-1) == y)[members].mean() > 0.9
  )
  np.save(tmp / "target.npy", logits)
  np.save(tmp / "members.npy", members)
  args = [
    f"--pool_npz={tmp / 'pool.npz'}",
    f"--target_outputs={tmp / 'target.npy'}",
    f"--target_members={tmp / 'members.npy'}",
  ]
  return dict(x=x, y=y, logits=logits, members=members, args=args)


def _audit(tmp_path_factory, target, name, *more):
  out = tmp_path_factory.mktemp(name) / "out"
  proc = _run(*target["args"], *SHADOWS, f"--output_dir={out}", *more)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, target):
  """The audit with --calibrate over 2 and 40 epochs: (output dir, process, report)."""
  return _audit(
    tmp_path_factory,
    target,
    "calibrated",
    "--calibrate",
    f"--calibrate_grid={GRID}",
  )


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory, target):
  """The audit without --calibrate, its shadows trained for 2 epochs: (output dir, process, report)."""
  return _audit(tmp_path_factory, target, "mismatched", "--epochs=2")


def test_calibration_picks_the_targets_epochs(calibrated):
  _, proc, rep = calibrated
  cal = rep["calibration"]
  assert cal["grid"] == {
    "epochs": [2, TARGET_EPOCHS],
    "weight_decay": [0.0],
    "schedule": ["constant"],
  }
  assert cal["models_per_candidate"] == 2 and cal["models"] == 4
  # One schedule and one batch size: both lengths in one compiled program.
  assert cal["programs"] == 1
  assert len(cal["candidates"]) == 2
  chosen = [c for c in cal["candidates"] if c["chosen"]]
  assert len(chosen) == 1, cal["candidates"]
  assert cal["candidates"][cal["chosen"]]["chosen"] is True
  pick = chosen[0]
  assert pick["epochs"] == TARGET_EPOCHS, cal["candidates"]
  assert pick["w1"] == min(c["w1"] for c in cal["candidates"])
  # The shadows trained with the picked recipe.
  assert rep["recipe"]["epochs"] == pick["epochs"]
  assert rep["recipe"]["weight_decay"] == 0.0
  assert rep["recipe"]["schedule"] == "constant"
  assert rep["timing_s"]["calibrate"] > 0
  assert rep["timing_s"]["calibrate"] == cal["seconds"]
  assert "in one compiled program" in proc.stderr
  assert f"picked epochs={TARGET_EPOCHS}, weight_decay=0.0" in proc.stdout
  # Shadows trained like the target match it: no warning.
  assert rep["match"]["mismatch"] is False
  assert "WARNING" not in proc.stdout


def test_calibrated_report_html_has_the_calibration_and_the_match(calibrated):
  out, _, rep = calibrated
  page = (out / "report.html").read_text()
  assert 'id="calibration-table"' in page
  assert 'id="match-table"' in page
  assert html.escape(rep["match"]["verdict"]) in page
  assert rep["match"]["verdict"].startswith("shadows match the target")


def test_match_w1_is_recomputed_from_the_store(calibrated, target):
  _, _, rep = calibrated
  m = rep["match"]
  assert set(m) == {
    "table",
    "w1_members",
    "w1_nonmembers",
    "w1",
    "threshold",
    "mismatch",
    "verdict",
  }
  assert m["threshold"] == match.MISMATCH_W1
  assert [row["models"] for row in m["table"]] == [
    "target",
    "shadows (IN / OUT)",
  ]
  # report["shadows"]["store"] is the store directory itself (<root>/<fingerprint>).
  assert rep["shadows"]["usable_models"] == 4
  shadows = miajax.load_store(
    rep["shadows"]["store"], num_models=4, log=lambda s: None
  )
  is_member = np.zeros(N, bool)
  is_member[target["members"]] = True
  again = match.match_report(
    target["logits"], is_member, shadows.logits, shadows.keep, target["y"]
  )
  assert abs(again["w1"] - m["w1"]) <= 1e-9
  assert abs(again["w1_members"] - m["w1_members"]) <= 1e-9
  assert again["mismatch"] == m["mismatch"] and again["verdict"] == m["verdict"]


def test_uncalibrated_short_shadows_warn_of_a_mismatch(mismatched):
  out, proc, rep = mismatched
  assert rep["calibration"] is None
  assert rep["timing_s"]["calibrate"] == 0.0
  assert rep["recipe"]["epochs"] == 2
  m = rep["match"]
  assert m["mismatch"] is True and m["w1"] > m["threshold"], m
  assert m["verdict"].startswith("shadows do not match the target")
  (line,) = [s for s in proc.stdout.splitlines() if "WARNING" in s]
  assert line.startswith(m["verdict"]) and "try --calibrate" in line
  assert "try --calibrate" in proc.stderr  # the log's warning too
  assert "compiled program" not in proc.stderr
  assert "calibration:" not in proc.stdout
  assert (out / "report.html").exists()
