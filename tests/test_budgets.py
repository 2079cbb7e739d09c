"""lira.py --budgets: the attacks with the first k references of each target, from the trained models."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import miajax
from miajax import attacks, scores

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import budgets  # noqa: E402


def test_parse_sorts_and_refuses():
  assert budgets.parse("8, 1,2,2") == [1, 2, 8]
  for text, msg in [
    ("0", ">= 1"),
    ("a", "not an integer"),
    (" , ", "no budget"),
  ]:
    with pytest.raises(ValueError, match=msg):
      budgets.parse(text)


def test_reference_groups_skip_the_target_its_partner_and_unusable_models():
  usable = np.ones(8, bool)
  usable[5] = False
  groups = budgets.reference_groups(usable, 3, paired=True)
  refs = {t: r for r, ts in groups.items() for t in ts}
  assert sorted(refs) == [0, 1, 2, 3, 4, 6, 7]
  assert refs[0] == (2, 3, 4) and refs[1] == (2, 3, 4)
  assert refs[2] == (0, 1, 4) and refs[4] == (0, 1, 2)
  assert refs[7] == (0, 1, 2)
  # Unpaired: only the target itself is left out; a budget beyond the models is capped.
  lone = budgets.reference_groups(np.ones(4, bool), 10, paired=False)
  assert {t: r for r, ts in lone.items() for t in ts}[1] == (0, 2, 3)


def test_is_paired_reads_the_design():
  assert budgets.is_paired(miajax.paired_keep(6, 50, seed=0))
  assert not budgets.is_paired(miajax.lira_keep(6, 50, seed=0))


def test_budget_scores_equal_each_target_attacked_alone():
  rng = np.random.default_rng(0)
  keep = miajax.paired_keep(10, 120, seed=3)
  logits = rng.normal(size=(10, 120, 1, 4)).astype(np.float32)
  logits[..., 0] += 2 * keep[..., None]
  labels = np.zeros(120, np.int64)
  lab = labels[None, :, None]
  signals = {
    "logit_scaled": np.asarray(scores.logit_scaled(logits, lab)),
    "confidence": np.asarray(scores.confidence(logits, lab)),
    "log_confidence": np.asarray(attacks.base_signal(logits, lab)),
  }
  usable = np.ones(10, bool)
  got = budgets.budget_scores(signals, keep, usable, 6, paired=True)
  for t in (0, 3, 9):
    refs = [m for m in range(10) if m not in (t, t ^ 1)][:6]
    s = signals["logit_scaled"]
    want = attacks.lira_online(
      s[refs], keep[refs], s[[t]], too_few_shadows="nan"
    )[0]
    np.testing.assert_allclose(
      got["lira_online"][t], want, rtol=1e-6, atol=1e-6
    )
    c = signals["confidence"]
    want = attacks.rmia(
      c[refs], keep[refs], c[[t]], offline=True, too_few_shadows="nan"
    )[0]
    np.testing.assert_allclose(
      got["rmia_offline"][t], want, rtol=1e-6, atol=1e-6
    )
    want = attacks.bavaria(s[refs], keep[refs], s[[t]], kind="n", offline=True)[
      0
    ]
    np.testing.assert_allclose(
      got["bavaria_n_offline"][t], want, rtol=1e-6, atol=1e-6
    )


def _lira(*args, cwd=ROOT):
  return subprocess.run(
    [sys.executable, str(ROOT / "experiments" / "lira.py"), *args],
    capture_output=True,
    text=True,
    cwd=cwd,
    timeout=900,
  )


@pytest.mark.slow
def test_lira_writes_the_budget_table(tmp_path):
  proc = _lira(
    f"--output_dir={tmp_path}",
    "--num_models=8",
    "--epochs=3",
    "--nolabel_only",
    "--budgets=1,4,8",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rep = json.loads((tmp_path / "report.json").read_text())
  rows = rep["budgets"]
  assert len(rows) == 3 * len(budgets.ATTACKS)
  assert {r["budget"] for r in rows} == {1, 4, 8}
  # 8 paired models: a target has 6 others besides its partner.
  assert {r["references"] for r in rows if r["budget"] == 8} == {6}
  one = {r["attack"]: r for r in rows if r["budget"] == 1}
  # One reference: LiRA has no variance to fit; RMIA scores everything.
  assert one["lira_online"]["auc"] is None and one["lira_online"]["scored"] == 0
  assert one["rmia"]["unscored"] == 0 and 0.4 < one["rmia"]["auc"] < 0.8
  assert (tmp_path / "budgets.png").stat().st_size > 10_000
  table = (tmp_path / "budgets.md").read_text()
  assert "| 8 (all: 6) |" in table and "TPR at 0.1 % FPR" in table
  assert "budget table" in proc.stdout


@pytest.mark.parametrize(
  "flags, msg",
  [
    (["--budgets=0,2"], "--budgets: budgets must be >= 1"),
    (["--budgets=2,x"], "--budgets: budget 'x' is not an integer"),
    (["--budgets=2", "--num_references=4"], "leave out --num_references"),
  ],
)
def test_bad_budgets_are_one_line_usage_errors(tmp_path, flags, msg):
  proc = _lira(f"--output_dir={tmp_path / 'out'}", "--num_models=8", *flags)
  assert proc.returncode == 2
  assert msg in proc.stderr and proc.stderr.count("\n") == 2
  assert not (tmp_path / "out").exists()
