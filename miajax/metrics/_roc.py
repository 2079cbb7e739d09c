"""Point metrics of the ROC: the curve, AUC, balanced accuracy, TPR at low FPR.

All from one sort of the scores (`_ranked`: counts per distinct score), with
ties handled as `sklearn.metrics` does; `precision_recall_f1` gives the
per-class table of one threshold.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from miajax.metrics._checks import (
  _check_level,
  _resolvable,
  _split,
  _Split,
  _swap,
  _unresolvable_warning,
)


class _Ranked(NamedTuple):
  values: np.ndarray  # float64[distinct], ascending
  pos_count: np.ndarray  # int64[distinct]: members at each value
  neg_count: np.ndarray
  pos_below: np.ndarray  # int64[distinct]: members strictly below each value
  neg_below: np.ndarray


def _ranked(split: _Split) -> _Ranked:
  pooled = np.concatenate([split.pos, split.neg])
  # Two sorted runs: the stable sort (timsort) merges them in linear time.
  order = np.argsort(pooled, kind="stable")
  pooled = pooled[order]
  first = np.empty(pooled.size, dtype=bool)
  first[0] = True
  np.not_equal(pooled[1:], pooled[:-1], out=first[1:])
  heads = np.flatnonzero(first)
  members_before = np.concatenate([[0], np.cumsum(order < split.pos.size)])
  pos_below = members_before[heads]
  neg_below = heads - pos_below
  pos_count = np.diff(pos_below, append=split.pos.size)
  neg_count = np.diff(neg_below, append=split.neg.size)
  return _Ranked(pooled[heads], pos_count, neg_count, pos_below, neg_below)


def _max_count(level: float, n: int) -> int:
  """Largest integer m with ``m / n <= level``, rounding exactly as ROC's fpr = fps / n."""
  m = int(math.floor(level * n))
  while m + 1 <= n and (m + 1) / n <= level:
    m += 1
  while m > 0 and m / n > level:
    m -= 1
  return m


def _tp_within(split: _Split, max_fp):
  """Largest TP count over thresholds with at most ``max_fp`` false positives.

  That is the number of members strictly above the (max_fp + 1)-th largest
  non-member score. Vectorised over ``max_fp``; negative counts give 0
  (no threshold qualifies, so predict nothing) and counts >= n give all.
  """
  max_fp = np.asarray(max_fp, dtype=np.int64)
  n = split.neg.size
  idx = np.clip(n - 1 - max_fp, 0, n - 1)
  above = split.pos.size - np.searchsorted(
    split.pos, split.neg[idx], side="right"
  )
  above = np.where(max_fp >= n, split.pos.size, above)
  return np.where(max_fp < 0, 0, above)


def roc_curve(scores, is_member):
  """ROC over every distinct score, like ``sklearn.metrics.roc_curve(drop_intermediate=False)``.

  Args:
    scores: ``float[...]`` finite, higher = member.
    is_member: ``bool[...]`` of the same shape (0/1 accepted), both classes present.

  Returns:
    ``(fpr, tpr, thresholds)``, each ``float64[points]`` with ``points`` =
    distinct scores + 1; thresholds decrease from ``inf`` (predict nothing).
  """
  split = _split(scores, is_member)
  r = _ranked(split)
  tps = np.concatenate([[0], (split.pos.size - r.pos_below)[::-1]])
  fps = np.concatenate([[0], (split.neg.size - r.neg_below)[::-1]])
  thresholds = np.concatenate([[np.inf], r.values[::-1]])
  return fps / split.neg.size, tps / split.pos.size, thresholds


def _auc(split: _Split, r: _Ranked) -> float:
  # Mann-Whitney: each member beats the non-members below it, ties count 1/2.
  wins = np.dot(r.pos_count.astype(np.float64), r.neg_below + 0.5 * r.neg_count)
  return float(wins / (split.pos.size * float(split.neg.size)))


def auc(scores, is_member) -> float:
  """Area under the ROC curve (ties count 1/2), equal to ``sklearn.metrics.roc_auc_score``.

  Args as :func:`roc_curve`. Returns a float in [0, 1].
  """
  split = _split(scores, is_member)
  return _auc(split, _ranked(split))


def _balanced_accuracy(split: _Split, r: _Ranked) -> float:
  gap = (r.neg_below / split.neg.size) - (r.pos_below / split.pos.size)
  return float((1.0 + max(0.0, gap.max())) / 2.0)


def balanced_accuracy(scores, is_member) -> float:
  """Best balanced accuracy over thresholds: ``max over ROC points of (tpr + 1 - fpr) / 2``.

  Args as :func:`roc_curve`. Returns a float in [0.5, 1] (the predict-nothing
  point gives 0.5).
  """
  split = _split(scores, is_member)
  return _balanced_accuracy(split, _ranked(split))


def _tpr_at(split: _Split, level: float, what: str, role: str) -> float:
  if not _resolvable(split.neg.size, level):
    _unresolvable_warning(what, level, split.neg.size, role)
    return math.nan
  tp = _tp_within(split, _max_count(level, split.neg.size))
  return float(tp / split.pos.size)


def tpr_at_fpr(scores, is_member, fpr: float) -> float:
  """The largest TPR among ROC points with FPR <= ``fpr``.

  Args:
    scores, is_member: as :func:`roc_curve`.
    fpr: level in (0, 1).

  Returns:
    float; ``nan`` with a ``RuntimeWarning`` when there are fewer than
    ``1 / fpr`` non-members (no ROC point can have FPR in (0, fpr]).
  """
  fpr = _check_level("fpr", fpr)
  return _tpr_at(_split(scores, is_member), fpr, "tpr_at_fpr", "non-members")


def tnr_at_fnr(scores, is_member, fnr: float) -> float:
  """The largest TNR among ROC points with FNR <= ``fnr`` (members and non-members swapped).

  Predicts non-member where ``score <= t``. ``nan`` with a warning when there
  are fewer than ``1 / fnr`` members. Args as :func:`tpr_at_fpr`.
  """
  fnr = _check_level("fnr", fnr)
  return _tpr_at(_swap(_split(scores, is_member)), fnr, "tnr_at_fnr", "members")


def threshold_at_fpr(scores, is_member, fpr: float) -> float:
  """The threshold of the ROC point that :func:`tpr_at_fpr` picks.

  Predicting member where ``score >= threshold`` gives FPR <= ``fpr`` and
  TPR = ``tpr_at_fpr(scores, is_member, fpr)`` on these scores. ``inf`` when
  only the predict-nothing point qualifies; ``nan`` (with a warning) when
  the level is unresolvable.
  """
  fpr = _check_level("fpr", fpr)
  split = _split(scores, is_member)
  n = split.neg.size
  if not _resolvable(n, fpr):
    _unresolvable_warning("threshold_at_fpr", fpr, n, "non-members")
    return math.nan
  cut = split.neg[n - 1 - _max_count(fpr, n)]
  # The smallest pooled score strictly above the cut is the ROC threshold.
  candidates = [
    a[i]
    for a in (split.pos, split.neg)
    if (i := np.searchsorted(a, cut, side="right")) < a.size
  ]
  return float(min(candidates)) if candidates else math.inf


def precision_recall_f1(scores, is_member, threshold: float) -> dict:
  """Per-class precision, recall, F1 and support, predicting member where ``score >= threshold``.

  Matches ``sklearn.metrics.precision_recall_fscore_support(..., zero_division=0)``.

  Returns:
    ``{"member": {"precision", "recall", "f1", "support"},
    "non_member": {...}, "accuracy": float}``.
  """
  if (
    isinstance(threshold, bool)
    or not isinstance(threshold, numbers.Real)
    or math.isnan(threshold)
  ):
    raise TypeError(
      f"threshold must be a real number (inf allowed), got {threshold!r}"
    )
  split = _split(scores, is_member)
  n_pos, n_neg = split.pos.size, split.neg.size
  tp = n_pos - int(np.searchsorted(split.pos, threshold, side="left"))
  fp = n_neg - int(np.searchsorted(split.neg, threshold, side="left"))
  fn, tn = n_pos - tp, n_neg - fp

  def _ratio(a, b):
    return a / b if b else 0.0

  def _row(hit, false_alarm, miss, support):
    return {
      "precision": _ratio(hit, hit + false_alarm),
      "recall": _ratio(hit, hit + miss),
      "f1": _ratio(2 * hit, 2 * hit + false_alarm + miss),
      "support": int(support),
    }

  return {
    "member": _row(tp, fp, fn, n_pos),
    "non_member": _row(tn, fn, fp, n_neg),
    "accuracy": (tp + tn) / (n_pos + n_neg),
  }
