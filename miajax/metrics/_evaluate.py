"""Every metric of one attack from a single validation and sort of its scores."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

from miajax.metrics._checks import (
  _check_count,
  _check_delta,
  _check_level,
  _resolvable,
  _rng,
  _split,
  _swap,
)
from miajax.metrics._epsilon import _epsilon_lower_bound
from miajax.metrics._intervals import (
  _basic,
  _bootstrap_auc_bal,
  _check_interval_args,
  _percentile,
  _tpr_interval,
)
from miajax.metrics._roc import _auc, _balanced_accuracy, _ranked, _tpr_at


class Evaluation(NamedTuple):
  """Everything :func:`evaluate` computes from one sort of the scores.

  Rate tables are keyed by the level as a float; unresolvable levels (too
  few non-members for an FPR level, members for an FNR level) hold ``nan``
  and ``(nan, nan)``.
  """

  auc: float
  auc_ci: tuple[float, float]
  balanced_accuracy: float
  balanced_accuracy_ci: tuple[float, float]
  tpr_at_fpr: dict[float, float]
  tpr_at_fpr_ci: dict[float, tuple[float, float]]
  tnr_at_fnr: dict[float, float]
  tnr_at_fnr_ci: dict[float, tuple[float, float]]
  epsilon_lower_bound: float
  num_members: int
  num_non_members: int


def evaluate(
  scores,
  is_member,
  *,
  fpr_levels=(0.01, 0.001, 1e-05),
  fnr_levels=(0.001,),
  confidence: float = 0.95,
  seed: int = 0,
  num_bootstrap: int = 1000,
  num_draws: int = 2000,
  delta: float = 0.0,
) -> Evaluation:
  """Every metric of this module for one attack, validating and sorting once.

  Each number equals what the single-metric function returns with the same
  arguments and ``seed``: :func:`auc`, :func:`auc_interval`,
  :func:`balanced_accuracy`, :func:`balanced_accuracy_interval` (both
  intervals from ``num_bootstrap`` replicates), :func:`tpr_at_fpr`,
  :func:`tpr_at_fpr_interval` and their TNR twins (fiducial, ``num_draws``
  draws), :func:`epsilon_lower_bound` (with ``delta``). On 2,000,000 scores
  it takes about 2-4 s on 2 CPU cores, mostly the AUC bootstrap.

  Args:
    scores: ``float[...]``, higher = member.
    is_member: ``bool[...]``, same shape.
    fpr_levels, fnr_levels: levels in (0, 1) for the TPR@FPR / TNR@FNR tables.
    confidence: level of every interval and of the epsilon bound.
    seed: integer seed shared by all intervals and the epsilon split.
    num_bootstrap: replicates for the AUC and balanced-accuracy intervals.
    num_draws: Monte Carlo draws for the TPR/TNR intervals.
    delta: the delta of the epsilon lower bound, in [0, 1).

  Returns:
    An :class:`Evaluation`. Unresolvable levels are ``nan`` with one
    ``RuntimeWarning`` naming all of them.
  """
  fpr_levels = [_check_level("fpr_levels", x) for x in fpr_levels]
  fnr_levels = [_check_level("fnr_levels", x) for x in fnr_levels]
  confidence, num_bootstrap = _check_interval_args(confidence, num_bootstrap)
  num_draws = _check_count("num_draws", num_draws, 10)
  seed = _check_count("seed", seed, 0)
  delta = _check_delta(delta)
  split = _split(scores, is_member)
  ranked = _ranked(split)
  auc_value = _auc(split, ranked)
  bal_value = _balanced_accuracy(split, ranked)
  auc_reps, bal_reps = _bootstrap_auc_bal(
    split, ranked, num_bootstrap, _rng(seed)
  )
  tables, unresolved = [], []
  for role, levels, data in (
    ("TPR@FPR", fpr_levels, split),
    ("TNR@FNR", fnr_levels, _swap(split)),
  ):
    values, intervals = {}, {}
    for level in levels:
      if not _resolvable(data.neg.size, level):
        # Checked here so that one warning below covers every level.
        values[level], intervals[level] = math.nan, (math.nan, math.nan)
        unresolved.append(f"{role} {level:g}")
        continue
      values[level] = _tpr_at(data, level, role, "")
      intervals[level] = _tpr_interval(
        data, level, confidence, num_draws, _rng(seed), "fiducial", role, ""
      )
    tables += [values, intervals]
  if unresolved:
    warnings.warn(
      f"{', '.join(unresolved)} unresolvable with {split.pos.size} members "
      f"and {split.neg.size} non-members; returning nan",
      RuntimeWarning,
      stacklevel=2,
    )
  return Evaluation(
    auc=auc_value,
    auc_ci=_percentile(auc_reps, confidence),
    balanced_accuracy=bal_value,
    balanced_accuracy_ci=_basic(bal_reps, bal_value, confidence),
    tpr_at_fpr=tables[0],
    tpr_at_fpr_ci=tables[1],
    tnr_at_fnr=tables[2],
    tnr_at_fnr_ci=tables[3],
    epsilon_lower_bound=_epsilon_lower_bound(
      split, delta, confidence, _rng(seed)
    ),
    num_members=int(split.pos.size),
    num_non_members=int(split.neg.size),
  )
