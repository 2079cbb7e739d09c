"""miajax.report (summary schema, table, atomic JSON) and miajax.plots."""

import json
import math
import os
import warnings

import numpy as np
import pytest

from miajax import metrics, plots, report


def _scores(seed=0, n_pos=3000, n_neg=3000, mu=1.0):
  rng = np.random.default_rng(seed)
  scores = np.concatenate([rng.normal(mu, 1, n_pos), rng.normal(0, 1, n_neg)])
  return scores, np.arange(n_pos + n_neg) < n_pos


@pytest.fixture(scope="module")
def summary():
  scores, is_member = _scores()
  with pytest.warns(RuntimeWarning, match="1e-05"):
    return report.attack_summary(scores, is_member, seed=3)


def test_summary_schema_and_json(summary):
  assert set(summary["tpr_at_fpr"]) == {"0.01", "0.001", "1e-05"}
  assert set(summary["tnr_at_fnr"]) == {"0.001"}
  assert set(summary["tpr_at_fpr_ci"]) == {"0.01", "0.001", "1e-05"}
  for key in ("auc", "balanced_accuracy", "auc_ci", "epsilon_lower_bound"):
    assert key in summary
  # 3000 non-members cannot resolve 1e-5: None, not NaN (NaN is not JSON).
  assert summary["tpr_at_fpr"]["1e-05"] is None
  assert summary["tpr_at_fpr_ci"]["1e-05"] is None
  text = json.dumps(summary, allow_nan=False)
  assert json.loads(text) == summary


def test_summary_equals_metric_functions(summary):
  scores, is_member = _scores()
  assert summary["auc"] == metrics.auc(scores, is_member)
  assert summary["balanced_accuracy"] == metrics.balanced_accuracy(
    scores, is_member
  )
  assert summary["auc_ci"] == list(
    metrics.auc_interval(scores, is_member, seed=3)
  )
  assert summary["balanced_accuracy_ci"] == list(
    metrics.balanced_accuracy_interval(scores, is_member, seed=3)
  )
  for level in (0.01, 0.001):
    key = report.level_key(level)
    assert summary["tpr_at_fpr"][key] == metrics.tpr_at_fpr(
      scores, is_member, level
    )
    assert summary["tpr_at_fpr_ci"][key] == list(
      metrics.tpr_at_fpr_interval(scores, is_member, level, seed=3)
    )
  assert summary["tnr_at_fnr"]["0.001"] == metrics.tnr_at_fnr(
    scores, is_member, 0.001
  )
  assert summary["tnr_at_fnr_ci"]["0.001"] == list(
    metrics.tnr_at_fnr_interval(scores, is_member, 0.001, seed=3)
  )
  assert summary["epsilon_lower_bound"] == metrics.epsilon_lower_bound(
    scores, is_member, seed=3
  )
  assert summary["num_members"] == 3000 and summary["num_non_members"] == 3000


def test_format_table(summary):
  plain = {
    "auc": 0.5,
    "balanced_accuracy": 0.5,
    "tpr_at_fpr": {"0.01": 0.01, "0.001": None, "1e-05": None},
    "tnr_at_fnr": {"0.001": math.nan},
  }
  table = report.format_table(
    {"lira_online": summary, "global_threshold": plain}
  )
  lines = table.splitlines()
  assert len(lines) == 4  # header, rule, two rows
  assert lines[0].startswith(
    "| attack | AUC | bal. acc | TPR@1%FPR | TPR@0.1%FPR | TPR@0.001%FPR"
    " | TNR@0.1%FNR |"
  )
  assert all(line.count("|") == lines[0].count("|") for line in lines)
  row = lines[2]
  lo, hi = summary["auc_ci"]
  assert f"{summary['auc']:.3f} [{lo:.3f}, {hi:.3f}]" in row
  assert row.count("n/a") == 1  # TPR at 1e-5
  assert lines[3].count("n/a") == 4  # two None, one NaN, missing epsilon
  assert "| 0.500 | 0.500 | 0.010 |" in lines[3]
  with pytest.raises(TypeError):
    report.format_table([summary])


def test_small_rates_keep_digits():
  table = report.format_table(
    {
      "a": {
        "auc": 0.6,
        "balanced_accuracy": 0.55,
        "tpr_at_fpr": {"0.01": 0.0042, "0.001": 8.7e-05, "1e-05": 0.0},
        "tpr_at_fpr_ci": {"0.001": [3.8e-05, 1.25e-04]},
        "tnr_at_fnr": {"0.001": 0.2},
      }
    }
  )
  assert (
    "0.0042" in table
    and "8.7e-05 [3.8e-05, 1.3e-04]" in table
    and "| 0.000 |" in table
  )


def test_write_json_atomic(tmp_path):
  path = tmp_path / "report.json"
  path.write_text("old")
  obj = {
    "a": np.float32(0.5),
    "b": [np.int64(3), math.nan, math.inf],
    "c": np.arange(3),
    "d": {"x": (1, 2)},
    7: None,
  }
  report.write_json_atomic(path, obj)
  assert json.loads(path.read_text()) == {
    "a": 0.5,
    "b": [3, None, None],
    "c": [0, 1, 2],
    "d": {"x": [1, 2]},
    "7": None,
  }
  assert os.listdir(tmp_path) == ["report.json"]  # no temporary left behind
  # A failure while serialising leaves the previous file intact.
  with pytest.raises(TypeError):
    report.write_json_atomic(path, {"bad": object()})
  assert json.loads(path.read_text())["a"] == 0.5
  assert os.listdir(tmp_path) == ["report.json"]


def test_summary_bad_input():
  scores, is_member = _scores(n_pos=50, n_neg=50)
  with pytest.raises(ValueError, match="scores"):
    report.attack_summary(np.where(is_member, np.nan, scores), is_member)
  with pytest.raises(ValueError, match="fpr_levels"):
    report.attack_summary(scores, is_member, fpr_levels=(0.0,))


def test_summary_fast_on_large_input():
  # 400,000 scores; 2,000,000 take ~2.5 s on 2 cores (attack_summary docstring).
  import time

  scores, is_member = _scores(n_pos=200_000, n_neg=200_000, mu=0.5)
  start = time.perf_counter()
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # every level resolvable: no warning
    out = report.attack_summary(scores, is_member)
  assert time.perf_counter() - start < 10.0
  lo, hi = out["tpr_at_fpr_ci"]["1e-05"]
  assert lo <= out["tpr_at_fpr"]["1e-05"] <= hi


def test_plot_roc_png(tmp_path):
  curves = {
    "strong": _scores(1, 2000, 2000, 2.0),
    "weak": _scores(2, 500, 500, 0.3),
  }
  path = plots.plot_roc(curves, tmp_path / "roc.png", title="test")
  data = open(path, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(data) > 10_000
  with pytest.raises(ValueError):
    plots.plot_roc({}, tmp_path / "empty.png")
