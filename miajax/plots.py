"""ROC plots on log-log axes, the view that shows low-FPR behaviour (LiRA, Fig. 1 style)."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from miajax.metrics import _checks, _roc

__all__ = ["plot_roc", "roc_figure"]

_FLOOR = (
  1e-5  # lower limit of both axes for pools of 100,000 non-members and more
)


def _staircase(fpr: np.ndarray, tpr: np.ndarray, floor: float):
  """The ROC's upper envelope sampled on a log grid (millions of points plot slowly)."""
  grid = np.logspace(np.log10(floor), 0, 800)
  idx = np.searchsorted(fpr, grid, side="right") - 1
  return grid, tpr[idx]


def roc_figure(curves: dict, *, title: str | None = None):
  """A matplotlib ``Figure`` of ROC curves on log-log axes (see :func:`plot_roc`)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if not isinstance(curves, dict) or not curves:
    raise ValueError(
      "curves must be a non-empty dict name -> (scores, is_member)"
    )
  prepared = []
  most_negatives = 0
  for name, pair in curves.items():
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
      raise ValueError(f"curves[{name!r}] must be a pair (scores, is_member)")
    # Sort once per curve; the public functions would each sort again.
    split = _checks._split(*pair)
    most_negatives = max(most_negatives, split.neg.size)
    ranked = _roc._ranked(split)
    fpr = np.concatenate(
      [[0.0], (1.0 - ranked.neg_below / split.neg.size)[::-1]]
    )
    tpr = np.concatenate(
      [[0.0], (1.0 - ranked.pos_below / split.pos.size)[::-1]]
    )
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # left out instead
      low = _roc._tpr_at(split, 0.001, "tpr_at_fpr", "non-members")
    area = _roc._auc(split, ranked)
    # A level the non-members cannot resolve is no number: say nothing of it.
    low_text = "" if math.isnan(low) else f", TPR@0.1%FPR {100 * low:.1f}%"
    prepared.append((f"{name} (AUC {area:.3f}{low_text})", fpr, tpr))
  # Below one false positive in the pool every curve is flat: an empty axis.
  floor = max(_FLOOR, 1.0 / most_negatives)

  fig = Figure(figsize=(5.5, 5.0))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(
    [floor, 1],
    [floor, 1],
    linestyle="--",
    color="gray",
    linewidth=1,
    label="chance",
  )
  for label, fpr, tpr in prepared:
    x, y = _staircase(fpr, tpr, floor)
    ax.plot(x, np.maximum(y, _FLOOR), linewidth=1.5, label=label)
  ax.set_xscale("log", nonpositive="clip")
  ax.set_yscale("log", nonpositive="clip")
  ax.set_xlim(floor, 1)
  ax.set_ylim(_FLOOR, 1)
  ax.set_xlabel("False positive rate")
  ax.set_ylabel("True positive rate")
  if title is not None:
    ax.set_title(str(title))
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  return fig


def plot_roc(
  curves: dict, path, *, title: str | None = None, dpi: int = 150
) -> str:
  """Write a PNG of ROC curves with log-log axes.

  The FPR axis starts at the finest rate the pool resolves, one false
  positive (``1 / non-members`` of the curve with the most), but not below
  1e-5; the TPR axis spans 1e-5 to 1. Each legend entry reads ``"name (AUC
  0.xxx, TPR@0.1%FPR x.x%)"``, without the TPR when there are fewer than
  1,000 non-members. A dashed diagonal marks chance. Uses matplotlib's Agg
  canvas directly, so no global backend or pyplot state is touched.

  Args:
    curves: ``{name: (scores float[...], is_member bool[...])}``.
    path: output file; its directory must exist.
    title: optional axes title.
    dpi: resolution.

  Returns:
    ``path`` as a str.
  """
  fig = roc_figure(curves, title=title)
  path = os.fspath(path)
  fig.savefig(path, dpi=dpi, format="png")
  return path
