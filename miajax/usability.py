"""Which trained models an audit can use, and what its attacks could score.

A model that diverged, whose logits are not finite or have blown up, or
that learned nothing (member accuracy not above chance) is no evidence
about the recipe's leakage: as a target it pools noise into the ROC, as a
shadow it corrupts the IN/OUT fits (one logit of 8e28 squares to inf in
float32). `model_usability` says which models to keep and why the others
go; `summarise_scored` summarises an attack over the scores it could
compute (`too_few_shadows="nan"` leaves NaN where an example had too few
usable shadows) and counts the rest. Pure numpy; docs/attacks.md states
the rules.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from miajax import report

__all__ = [
  "CHANCE_SDS",
  "MAX_ABS_LOGIT",
  "REASONS",
  "Usability",
  "model_usability",
  "scored",
  "summarise_scored",
]

# A healthy classifier's logits are tens (the digits recipe: |logit| <= ~20).
# At 1e4 every softmax probability is exactly 0 or 1 even in float64 (exp
# underflows below -745), so the probability signals keep only the argmax,
# and float32 spaces logits 1e-3 apart there; LiRA's squares overflow float32
# only beyond ~1.8e19, so the bound trips long before the arithmetic breaks.
MAX_ABS_LOGIT = 1e4
# Margin above chance, in binomial standard deviations. A collapsed network
# (one class for every input) sits at or below chance exactly and needs no
# margin; one sd also drops input-blind guessing 84 % of the time, while a
# model that learned anything, however weakly (2 epochs on 150 members:
# 0.18 against 0.14, 1.4 sd), stays. A significance test (3.1 sd at 1e-3)
# would drop such weak models of small pools, which are measurements.
CHANCE_SDS = 1.0
# Why a model is excluded, in the order they are tested (the first that
# applies is the model's reason).
REASONS = ("diverged", "non_finite_logits", "logit_bound", "chance_accuracy")


class Usability(NamedTuple):
  """Per-model verdict of `model_usability`.

  Attributes:
    usable: bool[models].
    reason: per model, None if usable, else one of `REASONS`.
    detail: per model, None if usable, else the numbers behind the reason.
  """

  usable: np.ndarray
  reason: tuple[str | None, ...]
  detail: tuple[str | None, ...]

  def excluded(self) -> list[dict]:
    """``[{"model": m, "reason": ..., "detail": ...}]`` of the excluded models, JSON-ready."""
    return [
      {"model": m, "reason": self.reason[m], "detail": self.detail[m]}
      for m in np.flatnonzero(~self.usable).tolist()
    ]


def _chance(labels, keep):
  """(members int[models], best constant predictor's accuracy float[models])."""
  onehot = labels[None, :] == np.unique(labels)[:, None]  # [classes, examples]
  counts = keep.astype(np.int64) @ onehot.T.astype(
    np.int64
  )  # [models, classes]
  n = counts.sum(1)
  return n, counts.max(1) / np.maximum(n, 1)


def model_usability(
  logits,
  labels,
  keep,
  train_accuracy,
  *,
  diverged=None,
  max_abs_logit: float = MAX_ABS_LOGIT,
  chance_sds: float | None = CHANCE_SDS,
) -> Usability:
  """Whether each model is usable by an audit, and why not.

  A model is excluded for the first of `REASONS` that applies:

  - ``diverged``: its training loss went non-finite (`diverged[m]`);
  - ``non_finite_logits``: a NaN or inf anywhere in its logits;
  - ``logit_bound``: some ``|logit| > max_abs_logit`` (`MAX_ABS_LOGIT`
    says why 1e4);
  - ``chance_accuracy``: its accuracy on its own members is not above
    chance plus a binomial margin, ``p0 + chance_sds * sqrt(p0 (1 - p0) /
    n)`` (`CHANCE_SDS` says why one sd). Chance ``p0`` is the best constant
    predictor's accuracy on the model's ``n`` members, the most frequent
    class's share (no input-blind predictor does better in expectation),
    not ``1 / classes``. A model without members fails.

  Args:
    logits: float[models, examples, queries, classes] (any trailing axes).
    labels: int[examples].
    keep: bool[models, examples], the models' members.
    train_accuracy: float[models], each model's accuracy on its members.
    diverged: optional bool[models], models whose loss went non-finite.
    max_abs_logit: the logit bound, > 0.
    chance_sds: the chance margin, >= 0; None skips the chance test (a
      defense that leaves its models at chance is a result to report, not
      a model to drop).

  Returns:
    A `Usability`: ``usable`` bool[models] and a reason per excluded model.
  """
  logits = np.asarray(logits)
  keep = np.asarray(keep, bool)
  labels = np.asarray(labels)
  acc = np.asarray(train_accuracy, np.float64)
  models = logits.shape[0]
  if keep.shape != (models, labels.shape[0]):
    raise ValueError(
      f"keep must be bool[models, examples] = {(models, labels.shape[0])}, "
      f"got shape {keep.shape}"
    )
  if acc.shape != (models,):
    raise ValueError(
      f"train_accuracy must be float[{models}], got shape {acc.shape}"
    )
  diverged = (
    np.zeros(models, bool) if diverged is None else np.asarray(diverged, bool)
  )
  if diverged.shape != (models,):
    raise ValueError(
      f"diverged must be bool[{models}], got shape {diverged.shape}"
    )
  if not max_abs_logit > 0:
    raise ValueError(f"max_abs_logit must be > 0, got {max_abs_logit}")
  if chance_sds is not None and not chance_sds >= 0:
    raise ValueError(f"chance_sds must be >= 0 or None, got {chance_sds}")

  n, p0 = _chance(labels, keep)
  bar = p0 + (chance_sds or 0.0) * np.sqrt(p0 * (1 - p0) / np.maximum(n, 1))
  reason, detail = [], []
  for m in range(models):
    # One model at a time: no temporary the size of all the logits.
    peak = float(np.max(np.abs(logits[m]))) if logits[m].size else 0.0
    if diverged[m]:
      why = ("diverged", "non-finite training loss")
    elif not np.isfinite(peak):
      bad = int(np.size(logits[m]) - np.count_nonzero(np.isfinite(logits[m])))
      why = ("non_finite_logits", f"{bad} of {logits[m].size} logits nan/inf")
    elif peak > max_abs_logit:
      why = ("logit_bound", f"max |logit| {peak:.3g} > {max_abs_logit:g}")
    elif chance_sds is not None and not (n[m] > 0 and acc[m] > bar[m]):
      why = (
        "chance_accuracy",
        f"member accuracy {acc[m]:.4f} on {int(n[m])} members not above "
        f"{bar[m]:.4f}: chance {p0[m]:.4f} (most frequent class) + "
        f"{chance_sds:g} sd",
      )
    else:
      why = (None, None)
    reason.append(why[0])
    detail.append(why[1])
  usable = np.array([r is None for r in reason], bool)
  return Usability(usable, tuple(reason), tuple(detail))


def _empty_summary() -> dict:
  return {
    "auc": None,
    "balanced_accuracy": None,
    "tpr_at_fpr": {report.level_key(x): None for x in report.FPR_LEVELS},
    "tnr_at_fnr": {report.level_key(x): None for x in report.FNR_LEVELS},
  }


def scored(scores, is_member):
  """``(scores, is_member)`` at the finite scores only (1-D), or as given when all are finite."""
  scores = np.asarray(scores)
  is_member = np.asarray(is_member)
  finite = np.isfinite(scores)
  if finite.all():
    return scores, is_member
  return scores[finite], is_member[finite]


def summarise_scored(
  scores, is_member, summarise: Callable = report.attack_summary
) -> dict:
  """An attack's summary over its scored entries, with the unscored counted.

  Args:
    scores: float[..., examples], NaN (or inf) where the attack could not
      score, e.g. float[targets, examples] from
      ``leave_one_out(..., too_few_shadows="nan")``.
    is_member: bool, same shape.
    summarise: ``(scores, is_member) -> dict`` on finite scores, e.g.
      `miajax.report.attack_summary` (default).

  Returns:
    ``summarise``'s dict over the finite scores (called on the arrays as
    given when all are finite), or the report schema with None values when
    fewer than 2 members or 2 non-members are scored; plus ``"unscored_examples"`` (examples
    with an unscored entry for some target) and ``"unscored_scores"``
    (entries left out of the pooled ROC).
  """
  scores = np.asarray(scores)
  is_member = np.asarray(is_member)
  if scores.shape != is_member.shape or scores.ndim < 1:
    raise ValueError(
      f"scores and is_member must have the same shape [..., examples], got "
      f"{scores.shape} and {is_member.shape}"
    )
  values, members = scored(scores, is_member)
  # attack_summary's epsilon bound needs two of each class.
  counts = (
    np.count_nonzero(members),
    np.size(members) - np.count_nonzero(members),
  )
  summary = summarise(values, members) if min(counts) >= 2 else _empty_summary()
  unscored = ~np.isfinite(scores).reshape(-1, scores.shape[-1])
  return {
    **summary,
    "unscored_examples": int(unscored.any(0).sum()),
    "unscored_scores": int(unscored.sum()),
  }
