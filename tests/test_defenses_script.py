"""experiments/defenses.py end to end on a tiny table: report schema, shared runs, DP accounting, resume."""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from miajax import data, defenses

ROOT = pathlib.Path(__file__).resolve().parents[1]
ATTACKS = {
  "lira_online",
  "lira_offline",
  "global_threshold",
  "max_confidence",
  "label_aug",
  "label_aug_lira",
  "label_noise",
  "label_noise_lira",
}
# 8 models, widths 32, 2 epochs, batch 64 on all 1297 digits: the recipe of test_experiments.py's
# LiRA job, so that the second of the two scripts to run loads the first one's compiled programs
# (training, prediction, attacks) from the session's compilation cache.
ARGS = [
  "--num_models=8",
  "--epochs=2",
  "--dp_epochs=2",
  "--widths=32",
  "--batch_size=64",
  "--rows=none,topk,rounding,temperature,label_only,dp_eps8",
  # Only the epsilon of the dp_eps8 row: every other one costs a noise-multiplier search
  # (seconds of RDP accounting) for a row that is not run.
  "--dp_epsilons=8",
  "--dropout_sweep=",
]


def _run(out, *extra):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  return subprocess.run(
    [
      sys.executable,
      str(ROOT / "experiments" / "defenses.py"),
      f"--output_dir={out}",
      *ARGS,
      *extra,
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
    cwd=ROOT,
  )


@pytest.mark.slow
def test_defense_table_small(tmp_path):
  proc = _run(tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rep = json.loads((tmp_path / "report.json").read_text())

  rows = {r["name"]: r for r in rep["rows"]}
  assert list(rows) == [
    "none",
    "topk",
    "rounding",
    "temperature",
    "label_only",
    "dp_eps8",
  ]
  assert rep["dropout_sweep"] == []
  for r in rows.values():
    assert set(r["attacks"]) == ATTACKS
    for a in r["attacks"].values():
      assert a["auc_ci"][0] <= a["auc"] <= a["auc_ci"][1], a
      # Balanced accuracy is 1/2 + max(TPR - FPR) / 2 over the same ROC.
      tpr = a["tpr_at_fpr"]["0.01"]
      assert a["balanced_accuracy"] >= 0.5 + (tpr - 0.01) / 2 - 1e-9, a
      assert set(a["tpr_at_fpr"]) == {"0.01", "0.001", "1e-05"} and set(
        a["tnr_at_fnr"]
      ) == {"0.001"}
      assert a["num_members"] + a["num_non_members"] == 8 * 1297
    assert math.isclose(
      r["train_test_gap"],
      r["train_accuracy"] - r["test_accuracy"],
      abs_tol=1e-12,
    )
    emp = r["empirical_epsilon"]
    assert emp["epsilon"] == max(emp["per_attack"].values()) >= 0.0
  assert rep["config"]["num_models"] == 8 and rep["baseline_row"] == "none"
  assert rep["target"]["test_accuracy"] == rows["none"]["test_accuracy"]

  # top-k is query-time only: same training run, same argmax, and the top probability is released
  # exactly, so the max-confidence attack cannot change.
  assert rows["topk"]["run"] == rows["none"]["run"]
  assert rows["topk"]["test_accuracy"] == rows["none"]["test_accuracy"]
  assert rows["topk"]["output"] == {"name": "top_k", "k": 1}
  # Equal up to float32 rounding of the log/exp round trip (different scores would move the AUC by >= 1e-5).
  assert math.isclose(
    rows["topk"]["attacks"]["max_confidence"]["auc"],
    rows["none"]["attacks"]["max_confidence"]["auc"],
    rel_tol=1e-6,
  )
  assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(
    {r["run"] for r in rows.values()}
  )
  # The output rows share the undefended models and keep the top-1 label: the label-only attacks cannot move,
  # while a label-only output leaves LiRA no more than the correctness bit.
  for name in ("rounding", "temperature", "label_only"):
    assert rows[name]["run"] == rows["none"]["run"]
    for attack in (
      "label_aug",
      "label_aug_lira",
      "label_noise",
      "label_noise_lira",
    ):
      assert (
        rows[name]["attacks"][attack]["auc"]
        == rows["none"]["attacks"][attack]["auc"]
      )
  # Only the label is released, so the top released probability is 1 for every example: no signal at all.
  assert rows["label_only"]["attacks"]["max_confidence"]["auc"] == 0.5
  assert rows["none"]["attacks"]["max_confidence"]["auc"] != 0.5
  assert rows["rounding"]["output"] == {"name": "rounding", "decimals": 1}

  # DP row: the numbers the accountant was given, recomputed independently.
  dp = rows["dp_eps8"]["dp"]
  keep = data.paired_keep(8, 1297, seed=0)
  members = keep.sum(1)
  rate, steps = 64 / members.min(), 2 * math.ceil(members.max() / 64)
  assert (members.min(), members.max(), steps) == (648, 649, 22)
  assert (
    dp["sample_rate"] == rate and dp["steps"] == steps and dp["delta"] == 1e-5
  )
  assert dp["l2_norm_clip"] == 1.0 and rows["dp_eps8"]["epochs"] == 2
  # The smallest noise multiplier that meets epsilon 8 (dp_noise_multiplier's rtol of 1e-5):
  # checked on the accountant directly, two evaluations instead of the search's twenty.
  direct, below = (
    defenses.dp_epsilon(
      noise_multiplier=dp["noise_multiplier"] * f,
      sample_rate=rate,
      steps=steps,
      delta=1e-5,
    )
    for f in (1.0, 1.0 - 2e-5)
  )
  assert dp["epsilon"] == direct and 7.99 < direct <= 8.0 < below
  assert dp["empirical_epsilon_below_accountant"] == (
    rows["dp_eps8"]["empirical_epsilon"]["epsilon"] <= direct
  )

  assert (tmp_path / "privacy_utility.png").read_bytes()[
    :8
  ] == b"\x89PNG\r\n\x1a\n"
  assert not (tmp_path / "dropout_sweep.png").exists()
  table = (tmp_path / "table.md").read_text()
  assert (
    "| dp_eps8 |" in table
    and "| none / lira_online |" in table
    and table in proc.stdout
  )

  # A rerun trains nothing and reproduces the table's numbers: both training runs (none, DP) and
  # an output row on the stored label views (the other output rows are the same stored logits
  # through other transforms).
  again = _run(tmp_path, "--rows=none,label_only,dp_eps8")
  assert again.returncode == 0, again.stderr[-3000:]
  assert (
    again.stderr.count("resuming: 1 chunks already on disk, 0 to train") == 2
  )
  assert "| label_only |" in table
  rep2 = json.loads((tmp_path / "report.json").read_text())
  assert [r["name"] for r in rep2["rows"]] == ["none", "label_only", "dp_eps8"]
  for r2 in rep2["rows"]:
    np.testing.assert_equal(rows[r2["name"]]["attacks"], r2["attacks"])
