"""Per-attack summaries for ``report.json`` and a Markdown table.

The summary follows the report schema of every script for one attack,
``{"auc", "balanced_accuracy", "tpr_at_fpr": {"0.01", "0.001", "1e-05"},
"tnr_at_fnr": {"0.001"}}``, extended with 95 % intervals and the empirical
epsilon lower bound. Values that cannot be resolved (too few non-members for a level)
are ``None``, because ``NaN`` is not valid JSON.
"""

from __future__ import annotations

import math
import numbers

from miajax import metrics

# Re-exported: scripts write report.json through this module.
from miajax.runs.io import to_jsonable, write_json_atomic

__all__ = [
  "FPR_LEVELS",
  "FNR_LEVELS",
  "attack_summary",
  "format_table",
  "level_key",
  "to_jsonable",
  "write_json_atomic",
]

FPR_LEVELS = (0.01, 0.001, 1e-05)
FNR_LEVELS = (0.001,)


def level_key(level: float) -> str:
  """The JSON key of a level: ``str(float)``, i.e. "0.01", "0.001", "1e-05"."""
  return str(float(level))


def _num(x):
  x = float(x)
  return None if math.isnan(x) else x


def _pair(low_high):
  low, high = low_high
  return (
    None if math.isnan(low) or math.isnan(high) else [float(low), float(high)]
  )


def attack_summary(
  scores,
  is_member,
  *,
  confidence: float = 0.95,
  seed: int = 0,
  num_bootstrap: int = 1000,
  num_draws: int = 2000,
  fpr_levels=FPR_LEVELS,
  fnr_levels=FNR_LEVELS,
  delta: float = 0.0,
) -> dict:
  """Metrics of one attack, JSON-ready: :func:`miajax.metrics.evaluate`.

  Every number equals what the corresponding ``miajax.metrics`` function
  returns with the same ``seed`` (the scores are sorted once and shared).

  Cost on 2,000,000 scores: about 2-4 s on 2 CPU cores, dominated by the
  AUC/balanced-accuracy bootstrap (``num_bootstrap`` = 1000 replicates drawn
  as multinomial counts over at most 4096 score groups); the TPR/TNR
  intervals use ``num_draws`` = 2000 Monte Carlo draws at O(1) each.

  Args:
    scores: ``float[...]``, higher = member.
    is_member: ``bool[...]``, same shape.
    confidence: level of every interval and of the epsilon bound.
    seed: integer seed shared by all intervals.
    num_bootstrap: replicates for the AUC and balanced-accuracy intervals.
    num_draws: draws for the TPR@FPR / TNR@FNR intervals.
    fpr_levels, fnr_levels: levels for the ``tpr_at_fpr`` / ``tnr_at_fnr`` keys.
    delta: the delta of the epsilon lower bound.

  Returns:
    ``{"auc", "auc_ci": [lo, hi], "balanced_accuracy", "balanced_accuracy_ci",
    "tpr_at_fpr": {key: value}, "tpr_at_fpr_ci": {key: [lo, hi]},
    "tnr_at_fnr": {...}, "tnr_at_fnr_ci": {...}, "epsilon_lower_bound",
    "num_members", "num_non_members"}`` with keys from :func:`level_key`;
    ``None`` for unresolvable levels and their intervals (with one
    ``RuntimeWarning`` naming them).
  """
  if (
    isinstance(delta, bool)
    or not isinstance(delta, numbers.Real)
    or not 0.0 <= delta < 1.0
  ):
    raise ValueError(f"delta must be a float in [0, 1), got {delta!r}")
  result = metrics.evaluate(
    scores,
    is_member,
    fpr_levels=fpr_levels,
    fnr_levels=fnr_levels,
    confidence=confidence,
    seed=seed,
    num_bootstrap=num_bootstrap,
    num_draws=num_draws,
    delta=delta,
  )
  return {
    "auc": result.auc,
    "auc_ci": list(result.auc_ci),
    "balanced_accuracy": result.balanced_accuracy,
    "balanced_accuracy_ci": list(result.balanced_accuracy_ci),
    "tpr_at_fpr": _by_key(result.tpr_at_fpr, _num),
    "tpr_at_fpr_ci": _by_key(result.tpr_at_fpr_ci, _pair),
    "tnr_at_fnr": _by_key(result.tnr_at_fnr, _num),
    "tnr_at_fnr_ci": _by_key(result.tnr_at_fnr_ci, _pair),
    "epsilon_lower_bound": result.epsilon_lower_bound,
    "num_members": result.num_members,
    "num_non_members": result.num_non_members,
  }


def _by_key(table, convert):
  return {level_key(level): convert(v) for level, v in table.items()}


def format_value(
  value, ci=None, *, rate: bool = False, missing: str = "n/a"
) -> str:
  """``0.612 [0.581, 0.640]`` (the table's and report.html's form); ``missing`` for None or NaN."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return missing
  # Small rates (e.g. TPR at 0.001 % FPR) need more digits to differ from 0.
  if rate and 0 < abs(value) < 0.001:
    spec = ".1e"
  elif rate and 0 < abs(value) < 0.01:
    spec = ".4f"
  else:
    spec = ".3f"
  text = format(value, spec)
  if ci is not None and all(c is not None and not math.isnan(c) for c in ci):
    text += f" [{format(ci[0], spec)}, {format(ci[1], spec)}]"
  return text


def _percent(level: float) -> str:
  return f"{100 * level:g}%"


def format_table(
  attacks: dict, *, fpr_levels=FPR_LEVELS, fnr_levels=FNR_LEVELS
) -> str:
  """A Markdown table with one row per attack.

  Columns: AUC, bal. acc, TPR at each FPR level, TNR at each FNR level and the
  empirical epsilon lower bound (when present). Cells read
  ``0.084 [0.071, 0.098]`` where the summary holds an interval and ``n/a``
  where the value is unresolvable or missing.

  Args:
    attacks: ``{name: summary}`` with summaries as from :func:`attack_summary`
      (the plain schema without intervals works too).

  Returns:
    str, the table without a trailing newline.
  """
  if not isinstance(attacks, dict):
    raise TypeError(
      f"attacks must be a dict name -> summary, got {type(attacks).__name__}"
    )
  with_eps = any("epsilon_lower_bound" in s for s in attacks.values())
  header = (
    ["attack", "AUC", "bal. acc"]
    + [f"TPR@{_percent(x)}FPR" for x in fpr_levels]
    + [f"TNR@{_percent(x)}FNR" for x in fnr_levels]
    + (["eps lower bound"] if with_eps else [])
  )
  rule = "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"
  lines = ["| " + " | ".join(header) + " |", rule]
  for name, summary in attacks.items():
    if not isinstance(summary, dict):
      raise TypeError(
        f"attacks[{name!r}] must be a summary dict, "
        f"got {type(summary).__name__}"
      )
    row = [
      str(name),
      format_value(summary.get("auc"), summary.get("auc_ci")),
      format_value(
        summary.get("balanced_accuracy"), summary.get("balanced_accuracy_ci")
      ),
    ]
    for table, levels in (
      ("tpr_at_fpr", fpr_levels),
      ("tnr_at_fnr", fnr_levels),
    ):
      values = summary.get(table) or {}
      intervals = summary.get(table + "_ci") or {}
      row += [
        format_value(
          values.get(level_key(x)), intervals.get(level_key(x)), rate=True
        )
        for x in levels
      ]
    if with_eps:
      eps = summary.get("epsilon_lower_bound")
      row.append("n/a" if eps is None else f"{eps:.2f}")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)
