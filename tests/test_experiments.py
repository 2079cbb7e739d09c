"""The scripts end to end: report schema, resume after SIGKILL, refusing a changed config, real data."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
SMALL = ["--widths=64", "--epochs=3", "--batch_size=32"]


def _run(script, *args, timeout=600):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  return subprocess.run(
    [sys.executable, str(ROOT / "experiments" / script), *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
    cwd=ROOT,
  )


def _check_report(report, label_only=True):
  assert set(report) >= {"config", "target", "attacks", "timing_s"}
  for name in (
    "lira_online",
    "lira_online_fixed",
    "lira_offline",
    "lira_offline_fixed",
    "global_threshold",
    "rmia",
    "rmia_offline",
    "loss_threshold",
    "confidence_threshold",
    "entropy_threshold",
    "modified_entropy_threshold",
  ) + (
    (
      "label_gap",
      "label_aug",
      "label_aug_lira",
      "label_noise",
      "label_noise_lira",
    )
    if label_only
    else ()
  ):
    a = report["attacks"][name]
    assert 0.0 <= a["auc"] <= 1.0 and 0.5 <= a["balanced_accuracy"] <= 1.0
    assert set(a["tpr_at_fpr"]) == {"0.01", "0.001", "1e-05"} and set(
      a["tnr_at_fnr"]
    ) == {"0.001"}
  assert (
    0
    <= report["target"]["test_accuracy"]
    <= report["target"]["train_accuracy"]
    <= 1
  )


def test_lira_main_job_on_digits(tmp_path):
  proc = _run("lira.py", f"--output_dir={tmp_path}", "--num_models=8", *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  _check_report(report)
  assert (
    report["config"]["num_models"] == 8
    and report["protocol"]["pooled_scores"] == 8 * 1297
  )
  assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (
    "| lira_online |" in proc.stdout
    and "| modified_entropy_threshold |" in proc.stdout
  )
  assert "| label_aug_lira |" in proc.stdout
  assert np.load(tmp_path / "run" / "label_views.npy").shape == (
    8,
    1297,
    18 + 3 * 8,
  )
  assert all(abs(v["auc"] - 0.5) < 0.05 for v in report["null_check"].values())

  # Low-cost audit on the same run: models 0-3 are the only references, models 4-7 the targets.
  refs = _run(
    "lira.py",
    f"--output_dir={tmp_path / 'refs'}",
    f"--run_dir={tmp_path / 'run'}",
    "--num_references=4",
  )
  assert refs.returncode == 0, refs.stderr[-3000:]
  rep4 = json.loads((tmp_path / "refs" / "report.json").read_text())
  _check_report(rep4)
  assert (
    rep4["protocol"]["num_references"] == 4
    and rep4["protocol"]["pooled_scores"] == 4 * 1297
  )
  assert all(abs(v["auc"] - 0.5) < 0.05 for v in rep4["null_check"].values())
  bad = _run(
    "lira.py",
    f"--output_dir={tmp_path / 'bad'}",
    f"--run_dir={tmp_path / 'run'}",
    "--num_references=3",
  )
  assert bad.returncode != 0 and "--num_references must be even" in bad.stderr


def test_train_models_resumes_after_sigkill_without_retraining(tmp_path):
  # Enough epochs that a chunk takes ~1 s: the kill must land between chunks on a fast machine too.
  args = ["--num_models=6", "--models_per_step=2", *SMALL, "--epochs=200"]
  full = tmp_path / "full"
  proc = _run("train_models.py", f"--output_dir={full}", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]

  part = tmp_path / "part"
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  log = (tmp_path / "killed.log").open("w")
  p = subprocess.Popen(
    [
      sys.executable,
      str(ROOT / "experiments" / "train_models.py"),
      f"--output_dir={part}",
      *args,
    ],
    cwd=ROOT,
    env=env,
    stdout=log,
    stderr=log,
  )
  deadline = time.time() + 300
  while (
    time.time() < deadline
    and p.poll() is None
    and not list((part / "chunks").glob("chunk_*.npz"))
  ):
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  log.close()
  finished = sorted(c.name for c in (part / "chunks").glob("chunk_*.npz"))
  assert 1 <= len(finished) < 3, (
    finished,
    (tmp_path / "killed.log").read_text()[-3000:],
  )
  assert not (part / "logits.npy").exists()
  mtimes = {c: (part / "chunks" / c).stat().st_mtime_ns for c in finished}

  proc = _run("train_models.py", f"--output_dir={part}", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (
    f"resuming: {len(finished)} chunks already on disk, {3 - len(finished)} to train"
    in proc.stderr
  )
  print(f"chunks reused after SIGKILL: {len(finished)} of 3")
  for c, t in mtimes.items():  # finished chunks were not rewritten
    assert (part / "chunks" / c).stat().st_mtime_ns == t
  np.testing.assert_array_equal(
    np.load(part / "logits.npy"), np.load(full / "logits.npy")
  )
  np.testing.assert_array_equal(
    np.load(part / "keep.npy"), np.load(full / "keep.npy")
  )

  before = {q: q.stat().st_mtime_ns for q in part.rglob("*")}
  changed = _run(
    "train_models.py",
    f"--output_dir={part}",
    "--num_models=6",
    "--widths=64",
    "--epochs=4",
    "--batch_size=32",
  )
  assert (
    changed.returncode == 2
  )  # a usage error: one line, no traceback, nothing written
  assert (
    "different configuration" in changed.stderr
    and "train.epochs" in changed.stderr
  )
  assert "Traceback" not in changed.stderr
  assert {q: q.stat().st_mtime_ns for q in part.rglob("*")} == before
  assert [line for line in changed.stderr.splitlines() if "error:" in line][
    0
  ].startswith("train_models.py: error:")


@pytest.mark.skipif(
  not FASHION_DIR.exists() and os.environ.get("CI") != "true",
  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); required in CI",
)
def test_lira_on_real_fashion_mnist_small(tmp_path):
  t0 = time.time()
  proc = _run(
    "lira.py",
    "--dataset=fashion_mnist",
    f"--output_dir={tmp_path}",
    "--num_models=8",
    "--num_examples=4000",
    "--epochs=2",
    "--label_only=false",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  _check_report(report, label_only=False)
  assert "label_aug" not in report["attacks"]
  assert report["protocol"]["pooled_scores"] == 8 * 4000
  assert (
    report["target"]["test_accuracy"] > 0.7
  )  # real images, a real classifier
  assert time.time() - t0 < 180
