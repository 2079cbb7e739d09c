"""miajax.usability: which models an audit keeps, and summaries over what was scored."""

import numpy as np
import pytest

import miajax
from miajax import attacks, report, scores, usability

CLASSES = 4


def _pool(models=8, examples=200, seed=0):
  """Healthy logits float32[models, examples, 1, classes] (every model right
  on 90 % of the examples), labels with class 0 as 40 % of them, and a keep."""
  rng = np.random.default_rng(seed)
  labels = rng.choice(CLASSES, size=examples, p=[0.4, 0.2, 0.2, 0.2])
  logits = rng.normal(0, 1, (models, examples, 1, CLASSES))
  right = rng.random((models, examples)) < 0.9
  pred = np.where(right, labels, (labels + 1) % CLASSES)
  logits[np.arange(models)[:, None], np.arange(examples), 0, pred] += 8.0
  keep = rng.random((models, examples)) < 0.5
  return logits.astype(np.float32), labels, keep


def _accuracy(logits, labels, keep):
  correct = logits[:, :, 0].argmax(-1) == labels
  return (correct & keep).sum(1) / keep.sum(1)


def _verdict(logits, labels, keep, **kw):
  return miajax.model_usability(
    logits, labels, keep, _accuracy(logits, labels, keep), **kw
  )


def test_each_reason_and_a_usable_model():
  logits, labels, keep = _pool()
  diverged = np.zeros(8, bool)
  diverged[0] = True
  logits[0, 3, 0, 1] = np.nan  # diverged comes first: NaN is its symptom
  logits[1, 5, 0, 2] = np.nan
  logits[2, 7, 0, 0] = -np.inf
  logits[3, 9, 0, 3] = 2e4  # finite but blown up
  logits[4, 11, 0, 3] = -1e4  # exactly on the bound: still usable
  logits[5, :, 0, 0] += 100.0  # always class 0: the majority class's share
  got = _verdict(logits, labels, keep, diverged=diverged)
  assert got.reason == (
    "diverged",
    "non_finite_logits",
    "non_finite_logits",
    "logit_bound",
    None,
    "chance_accuracy",
    None,
    None,
  )
  assert got.usable.tolist() == [False] * 4 + [True, False, True, True]
  assert got.detail[1] == f"1 of {200 * CLASSES} logits nan/inf"
  assert got.detail[3] == "max |logit| 2e+04 > 10000"
  assert [e["model"] for e in got.excluded()] == [0, 1, 2, 3, 5]
  assert got.excluded()[3] == {
    "model": 3,
    "reason": "logit_bound",
    "detail": got.detail[3],
  }
  # The bound is a parameter: a tighter one catches the 1e4 model too.
  tight = _verdict(logits, labels, keep, diverged=diverged, max_abs_logit=50)
  assert tight.reason[4] == "logit_bound"


def test_chance_is_the_most_frequent_class_not_one_over_classes():
  logits, labels, keep = _pool()
  logits[0, :, 0, 0] += 100.0  # constant predictor of class 0
  acc = _accuracy(logits, labels, keep)
  share = np.bincount(labels[keep[0]], minlength=CLASSES).max() / keep[0].sum()
  # It is right exactly on its members of class 0: far above 1 / C = 0.25.
  assert acc[0] == pytest.approx(share) and acc[0] > 0.3
  got = miajax.model_usability(logits, labels, keep, acc)
  assert got.reason[0] == "chance_accuracy"
  assert f"chance {share:.4f} (most frequent class)" in got.detail[0]


def test_chance_margin_is_one_binomial_sd_above_the_majority_share():
  # Counted independently: the members' most frequent class, then the
  # binomial sd of an input-blind predictor's accuracy on n members.
  logits, labels, keep = _pool(models=1, examples=400)
  members = labels[keep[0]]
  n = members.size
  p0 = max(np.sum(members == c) for c in range(CLASSES)) / n
  bar = p0 + np.sqrt(p0 * (1 - p0) / n)
  k_min = int(np.floor(bar * n)) + 1  # the fewest correct above the bar
  for k, ok in ((k_min - 1, False), (k_min, True), (n, True), (0, False)):
    got = miajax.model_usability(logits, labels, keep, [k / n])
    assert got.usable.tolist() == [ok], (k, k_min, got.detail)
  # Two sds ask for more; None tests nothing (defenses.py's rows).
  two = miajax.model_usability(logits, labels, keep, [k_min / n], chance_sds=2)
  assert two.reason == ("chance_accuracy",)
  off = miajax.model_usability(logits, labels, keep, [0.0], chance_sds=None)
  assert off.usable.tolist() == [True]


def test_no_members_and_nan_accuracy_are_not_usable():
  logits, labels, keep = _pool(models=3)
  keep[0] = False
  acc = _accuracy(logits, labels, keep)  # 0 / 0 for model 0
  acc[1] = np.nan
  got = miajax.model_usability(logits, labels, keep, acc)
  assert got.reason == ("chance_accuracy", "chance_accuracy", None)


def test_bad_arguments_raise():
  logits, labels, keep = _pool(models=3)
  acc = _accuracy(logits, labels, keep)
  with pytest.raises(ValueError, match="keep must be"):
    miajax.model_usability(logits, labels, keep[:, :-1], acc)
  with pytest.raises(ValueError, match="train_accuracy must be"):
    miajax.model_usability(logits, labels, keep, acc[:2])
  with pytest.raises(ValueError, match="diverged must be"):
    miajax.model_usability(logits, labels, keep, acc, diverged=[True])
  with pytest.raises(ValueError, match="max_abs_logit"):
    miajax.model_usability(logits, labels, keep, acc, max_abs_logit=0)
  with pytest.raises(ValueError, match="chance_sds"):
    miajax.model_usability(logits, labels, keep, acc, chance_sds=-1.0)


def test_leave_one_out_over_usable_models_scores_what_it_can():
  # 12 models; 4 unusable (NaN, blown up, at chance). Over the 8 that are
  # left some examples have fewer than 3 IN (or OUT) models: leave-one-out
  # LiRA then needs "nan" to score the others.
  models, examples = 12, 300
  logits, labels, keep = _pool(models, examples, seed=1)
  logits[2, 0, 0, 0] = np.nan
  logits[5, 1, 0, 1] = 8e28
  logits[7, :, 0, 0] += 100.0
  logits[10, 4, 0, 2] = np.inf
  verdict = _verdict(logits, labels, keep)
  ok = verdict.usable
  assert np.flatnonzero(~ok).tolist() == [2, 5, 7, 10]
  x = np.asarray(scores.logit_scaled(logits[ok], labels[None, :, None]))
  k = keep[ok]
  n_in, n_out = k.sum(0), (~k).sum(0)
  with pytest.raises(ValueError, match="after removing the target"):
    attacks.leave_one_out(x, k, attack="lira_online")
  for attack, fix, need_in in (
    ("lira_online", False, 3),
    ("lira_online", True, 2),
    ("lira_offline", False, 0),
  ):
    need_out = 2 if fix else 3
    scorable = (n_in >= need_in) & (n_out >= need_out)
    assert 0 < (~scorable).sum() < examples // 2
    got = np.asarray(
      attacks.leave_one_out(
        x, k, attack=attack, fix_variance=fix, too_few_shadows="nan"
      )
    )
    assert got.shape == (8, examples)
    np.testing.assert_array_equal(np.isfinite(got), scorable[None].repeat(8, 0))
    # The attack run on the reduced pool's scorable examples, strictly.
    want = np.asarray(
      attacks.leave_one_out(
        x[:, scorable], k[:, scorable], attack=attack, fix_variance=fix
      )
    )
    np.testing.assert_array_equal(got[:, scorable], want)
    summary = usability.summarise_scored(got, k)
    assert summary["unscored_examples"] == (~scorable).sum()
    assert summary["unscored_scores"] == 8 * (~scorable).sum()
    assert summary["auc"] == report.attack_summary(want, k[:, scorable])["auc"]


def test_summarise_scored_counts_and_skips_the_unscored():
  rng = np.random.default_rng(3)
  is_member = rng.random((4, 50)) < 0.5
  s = rng.normal(size=(4, 50)) + is_member
  whole = usability.summarise_scored(s, is_member)
  assert whole == {
    **report.attack_summary(s, is_member),
    "unscored_examples": 0,
    "unscored_scores": 0,
  }
  s[:, [3, 17]] = np.nan
  s[1, 20] = np.inf
  part = usability.summarise_scored(s, is_member)
  keepers = np.isfinite(s)
  assert part == {
    **report.attack_summary(s[keepers], is_member[keepers]),
    "unscored_examples": 3,
    "unscored_scores": 9,
  }
  # Scored members only: nothing to rank, the schema with None values.
  s[~is_member] = np.nan
  empty = usability.summarise_scored(s, is_member)
  assert empty["auc"] is None and empty["balanced_accuracy"] is None
  assert empty["tpr_at_fpr"] == {"0.01": None, "0.001": None, "1e-05": None}
  assert empty["tnr_at_fnr"] == {"0.001": None}
  hit = (~is_member).any(0)
  hit[[3, 17, 20]] = True
  assert 0 < empty["unscored_examples"] == hit.sum() < 50
  # Single targets (audit.py) count entries; one scored member is too few.
  one = usability.summarise_scored(
    np.array([0.1, np.nan, 0.7, 0.2, 0.3]), np.array([1, 1, 0, 0, 0]) == 1
  )
  assert one["unscored_examples"] == one["unscored_scores"] == 1
  assert one["auc"] is None
