"""ROC plots on log-log axes, the view that shows low-FPR behaviour (LiRA, Fig. 1 style)."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from miajax.metrics import _checks, _roc

__all__ = ["plot_roc"]

_FLOOR = 1e-5  # lower limit of both axes
_GRID = np.logspace(-5, 0, 800)


def _staircase(fpr: np.ndarray, tpr: np.ndarray):
  """The ROC's upper envelope sampled on a log grid (millions of points plot slowly)."""
  idx = np.searchsorted(fpr, _GRID, side="right") - 1
  return _GRID, tpr[idx]


def plot_roc(
  curves: dict, path, *, title: str | None = None, dpi: int = 150
) -> str:
  """Write a PNG of ROC curves with log-log axes from 1e-5 to 1.

  Each legend entry reads ``"name (AUC 0.xxx, TPR@0.1%FPR x.x%)"`` (``n/a``
  when there are fewer than 1,000 non-members). A dashed diagonal marks
  chance. Uses matplotlib's Agg canvas directly, so no global backend or
  pyplot state is touched.

  Args:
    curves: ``{name: (scores float[...], is_member bool[...])}``.
    path: output file; its directory must exist.
    title: optional axes title.
    dpi: resolution.

  Returns:
    ``path`` as a str.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if not isinstance(curves, dict) or not curves:
    raise ValueError(
      "curves must be a non-empty dict name -> (scores, is_member)"
    )
  prepared = []
  for name, pair in curves.items():
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
      raise ValueError(f"curves[{name!r}] must be a pair (scores, is_member)")
    # Sort once per curve; the public functions would each sort again.
    split = _checks._split(*pair)
    ranked = _roc._ranked(split)
    fpr = np.concatenate(
      [[0.0], (1.0 - ranked.neg_below / split.neg.size)[::-1]]
    )
    tpr = np.concatenate(
      [[0.0], (1.0 - ranked.pos_below / split.pos.size)[::-1]]
    )
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # shown as n/a instead
      low = _roc._tpr_at(split, 0.001, "tpr_at_fpr", "non-members")
    area = _roc._auc(split, ranked)
    low_text = "n/a" if math.isnan(low) else f"{100 * low:.1f}%"
    prepared.append(
      (f"{name} (AUC {area:.3f}, TPR@0.1%FPR {low_text})", fpr, tpr)
    )

  path = os.fspath(path)
  fig = Figure(figsize=(5.5, 5.0))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(
    [_FLOOR, 1],
    [_FLOOR, 1],
    linestyle="--",
    color="gray",
    linewidth=1,
    label="chance",
  )
  for label, fpr, tpr in prepared:
    x, y = _staircase(fpr, tpr)
    ax.plot(x, np.maximum(y, _FLOOR), linewidth=1.5, label=label)
  ax.set_xscale("log", nonpositive="clip")
  ax.set_yscale("log", nonpositive="clip")
  ax.set_xlim(_FLOOR, 1)
  ax.set_ylim(_FLOOR, 1)
  ax.set_xlabel("False positive rate")
  ax.set_ylabel("True positive rate")
  if title is not None:
    ax.set_title(str(title))
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi, format="png")
  return path
