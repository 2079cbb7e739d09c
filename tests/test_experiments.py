"""The scripts end to end: report schema, resuming a failed run, real data.

A SIGKILL of experiments/train_models.py mid-chunk and a changed configuration
refused as a usage error are tested in test_checkpoint.py.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

import miajax
from miajax import engine, runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from configs import lira as lira_config  # plain values: defines no flags

FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
# The recipe of test_defenses_script.py (8 models on all 1297 digits): the second of the two
# scripts to run loads its training, prediction and attack programs from the session's
# compilation cache instead of compiling them.
SMALL = ["--widths=32", "--epochs=2", "--batch_size=64"]


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
    assert a["auc_ci"][0] <= a["auc"] <= a["auc_ci"][1], a
    # Balanced accuracy is 1/2 + max(TPR - FPR) / 2 over the same ROC.
    tpr = a["tpr_at_fpr"]["0.01"]
    assert a["balanced_accuracy"] >= 0.5 + (tpr - 0.01) / 2 - 1e-9, a
    assert set(a["tpr_at_fpr"]) == {"0.01", "0.001", "1e-05"} and set(
      a["tnr_at_fnr"]
    ) == {"0.001"}
  assert (
    0
    <= report["target"]["test_accuracy"]
    <= report["target"]["train_accuracy"]
    <= 1
  )


@pytest.mark.slow
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
  # An odd --num_references is refused in test_bad_inputs.py (lira_odd_num_references).


@pytest.mark.slow
def test_lira_writes_its_report_when_no_model_is_usable(tmp_path):
  # Issue 27's command: at learning rate 20 every model diverges, blows its
  # logits up (8e28, finite, not flagged as diverged) or ends at chance.
  proc = _run(
    "lira.py",
    f"--output_dir={tmp_path}",
    "--learning_rate=20",
    "--num_models=32",
    "--epochs=10",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  excluded = report["excluded_models"]
  assert [e["model"] for e in excluded] == list(range(32))
  assert {e["reason"] for e in excluded} == {
    "diverged",
    "logit_bound",
    "chance_accuracy",
  }
  diverged = set(report["protocol"]["diverged_models"])
  assert any(
    e["reason"] == "logit_bound" and e["model"] not in diverged
    for e in excluded
  )
  assert report["attacks"] == {} and report["null_check"] is None
  assert report["attacks_skipped"].startswith("0 usable models")
  assert report["unscored_examples"] == report["protocol"]["examples"] == 1297
  assert report["null_check_skipped"].startswith("no attack run: 0 usable")
  assert report["target"] == {"train_accuracy": None, "test_accuracy": None}
  assert "32 models excluded as unusable" in proc.stdout
  assert "no attack run" in proc.stdout


@pytest.mark.slow
def test_lira_attacks_the_usable_models_and_counts_the_unscored(tmp_path):
  # 22 of 32 models at learning rate 20 (diverged, blown up, at chance)
  # beside 10 at the recipe's 0.1: no flag mixes them (at 20 no model is
  # usable, above), a per-model learning rate does.
  rng = np.random.default_rng(0)
  bad = np.sort(rng.permutation(32)[:22])
  lr = np.full(32, 0.1)
  lr[bad] = 20.0
  cfg = engine.TrainConfig(
    model="mlp",
    model_kwargs=(("activation", "relu"), ("widths", (256, 128))),
    epochs=10,
    batch_size=64,
    learning_rate=miajax.per_model(lr),
    momentum=0.9,
    weight_decay=5e-4,
    schedule="cosine",
  )
  run = runs.run_training(
    runs.RunSpec(dataset="digits", num_models=32, train=cfg),
    tmp_path / "run",
    log=lambda s: None,
    progress=None,
    checkpoint_every_s=0,
  )
  proc = _run(
    "lira.py",
    f"--output_dir={tmp_path / 'out'}",
    f"--run_dir={tmp_path / 'run'}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  _check_report(report, label_only=False)
  excluded = {e["model"]: e["reason"] for e in report["excluded_models"]}
  assert sorted(excluded) == bad.tolist()
  assert {"diverged", "logit_bound", "chance_accuracy"} <= set(
    excluded.values()
  )
  assert any(
    why == "logit_bound" and not run.diverged[m] for m, why in excluded.items()
  )
  usable = np.ones(32, bool)
  usable[bad] = False
  assert report["protocol"]["usable_models"] == 10
  assert report["protocol"]["pooled_scores"] == 10 * 1297
  # The summary's accuracies are the usable models' only.
  assert report["target"]["train_accuracy"] == pytest.approx(
    run.train_accuracy[usable].mean()
  )
  assert report["target"]["test_accuracy"] == pytest.approx(
    run.test_accuracy[usable].mean()
  )
  # Leave-one-out LiRA needs 3 usable IN and OUT models per example
  # (offline: OUT only); the others are counted, not scored.
  keep = run.keep[usable]
  n_in, n_out = keep.sum(0), (~keep).sum(0)
  attacks_ = report["attacks"]
  thin = ((n_in < 3) | (n_out < 3)).sum()
  assert attacks_["lira_online"]["unscored_examples"] == thin > 0
  assert attacks_["lira_online"]["unscored_scores"] == 10 * thin
  assert attacks_["lira_offline"]["unscored_examples"] == (n_out < 3).sum()
  assert attacks_["rmia"]["unscored_examples"] == 0
  assert attacks_["loss_threshold"]["unscored_examples"] == 0
  assert attacks_["lira_online"]["auc"] > 0.55  # the trained models leak
  assert all(abs(v["auc"] - 0.5) < 0.05 for v in report["null_check"].values())
  assert "22 models excluded as unusable" in proc.stdout
  assert f"lira_online {thin}" in proc.stdout


def test_run_resumes_after_a_failure_without_retraining_finished_chunks(
  tmp_path,
):
  # The real SIGKILL of experiments/train_models.py mid-chunk is in
  # test_checkpoint.py; here the run fails right after its first chunk is
  # written, with no checkpoint to resume from.
  cfg = engine.TrainConfig(
    model="mlp",
    model_kwargs=(("activation", "relu"), ("widths", (16,))),
    epochs=4,
    batch_size=32,
    learning_rate=0.1,
  )
  spec = runs.RunSpec(
    dataset="digits",
    num_examples=240,
    num_models=6,
    train=cfg,
    lowering=engine.Lowering(models_per_step=2, microbatch=32),
  )
  quiet = dict(log=lambda s: None, checkpoint_every_s=0)
  full = runs.run_training(spec, tmp_path / "full", progress=None, **quiet)

  def fail_on_second_chunk(p):
    if p["models_done"] == 2:
      raise RuntimeError("injected failure")

  part = tmp_path / "part"
  with pytest.raises(RuntimeError, match="injected failure"):
    runs.run_training(spec, part, progress=fail_on_second_chunk, **quiet)
  finished = sorted(c.name for c in (part / "chunks").iterdir())
  assert finished == ["chunk_00000_00002.npz"]
  assert not (part / "logits.npy").exists()
  mtime = (part / "chunks" / finished[0]).stat().st_mtime_ns

  lines, seen = [], []
  res = runs.run_training(
    spec,
    part,
    log=lines.append,
    progress=seen.append,
    checkpoint_every_s=0,
  )
  assert "resuming: 1 chunks already on disk, 2 to train" in lines
  assert (res.chunks_reused, res.chunks_trained) == (1, 2)
  # The finished chunk did not run again: 2 chunks x 4 epochs, not models 0-1.
  assert [(p["models_done"], p["epoch"]) for p in seen] == [
    (done, e) for done in (0, 2) for e in range(1, 5)
  ]
  assert (part / "chunks" / finished[0]).stat().st_mtime_ns == mtime
  np.testing.assert_array_equal(res.logits, full.logits)
  np.testing.assert_array_equal(res.keep, full.keep)
  np.testing.assert_array_equal(
    np.load(part / "logits.npy"), np.load(tmp_path / "full" / "logits.npy")
  )


@pytest.mark.skipif(
  not FASHION_DIR.exists() and os.environ.get("CI") != "true",
  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); required in CI",
)
@pytest.mark.slow
def test_lira_on_real_fashion_mnist_small(tmp_path):
  t0 = time.time()
  # Fashion-MNIST's own recipe (the 784-256-128 MLP, batch 256, 15 epochs) on 1297 examples:
  # the attacks then run on the shapes of the digits runs (8 models x 1297 examples) and load
  # their compiled programs from the session's compilation cache.
  proc = _run(
    "lira.py",
    "--dataset=fashion_mnist",
    f"--output_dir={tmp_path}",
    "--num_models=8",
    "--num_examples=1297",
    "--label_only=false",
    "--null_check=false",  # asserted on digits (test_lira_main_job_on_digits)
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  _check_report(report, label_only=False)
  assert "label_aug" not in report["attacks"]
  assert report["protocol"]["pooled_scores"] == 8 * 1297
  assert (
    report["target"]["test_accuracy"] > 0.7
  )  # real images, a real classifier
  assert time.time() - t0 < 180


def test_lira_default_recipe():
  """The recipe lira.py runs without flags (docs, README and the tests' SMALL rely on it)."""
  c = lira_config.get_config()
  assert (c["dataset"], c["model"], c["model_kwargs"]) == (
    "digits",
    "mlp",
    {"widths": (256, 128), "activation": "relu"},
  )
  assert (c["epochs"], c["batch_size"], c["learning_rate"]) == (30, 64, 0.1)
  assert (c["optimizer"], c["momentum"], c["weight_decay"]) == (
    "sgd",
    0.9,
    5e-4,
  )
  assert (c["schedule"], c["num_models"], c["design"], c["queries"]) == (
    "cosine",
    64,
    "paired",
    "identity",
  )


# Imports lira.py with its config changed, then builds the RunSpec of each command line.
RECIPE_DRIVER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from configs import lira as lira_config
default = lira_config.get_config
lira_config.get_config = lambda: dict(
  default(), epochs=7, weight_decay=0.25, num_models=10
)
from absl import flags
import common, lira
out = {}
for argv in json.loads(sys.argv[2]):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["lira.py", *argv])
  spec = common.run_spec()
  t = spec.train
  out[" ".join(argv)] = [
    spec.num_models, t.model, dict(t.model_kwargs), t.epochs, t.batch_size,
    t.learning_rate, t.weight_decay, t.momentum, t.schedule,
  ]
print(json.dumps(out))
"""


def test_config_gives_the_flag_defaults_and_flags_override_it():
  cases = [
    [],
    ["--epochs=3", "--weight_decay=0", "--num_models=6", "--widths=32"],
    # Another dataset: its own recipe (recipes.DATASETS), not the job's digits one; the
    # settings that do not depend on the dataset stay the job's.
    ["--dataset=fashion_mnist"],
    ["--dataset=cifar10"],  # no recipe of its own: recipes.GENERIC
  ]
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      RECIPE_DRIVER,
      str(ROOT / "experiments"),
      json.dumps(cases),
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  mlp = {"activation": "relu", "widths": [256, 128]}
  generic = {"activation": "tanh", "widths": [1024, 512, 256, 128]}
  assert got == {
    "": [10, "mlp", mlp, 7, 64, 0.1, 0.25, 0.9, "cosine"],
    "--epochs=3 --weight_decay=0 --num_models=6 --widths=32": [
      6,
      "mlp",
      {"activation": "relu", "widths": [32]},
      3,
      64,
      0.1,
      0.0,
      0.9,
      "cosine",
    ],
    "--dataset=fashion_mnist": [
      10,
      "mlp",
      mlp,
      15,
      256,
      0.1,
      0.25,
      0.9,
      "cosine",
    ],
    "--dataset=cifar10": [
      10,
      "mlp",
      generic,
      30,
      128,
      0.1,
      0.25,
      0.9,
      "cosine",
    ],
  }
