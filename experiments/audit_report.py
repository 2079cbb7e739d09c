"""audit.py's calibration step, match diagnostic and report.html (kept apart from its attack code)."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from absl import app, flags, logging

import miajax
from miajax import calibration, match

FLAGS = flags.FLAGS

EXPOSED = 32  # training examples drawn in report.html


def define_flags() -> None:
  flags.DEFINE_bool(
    "calibrate",
    False,
    "Pick the shadows' recipe first: train --calibrate_models models per "
    "candidate of --calibrate_grid (per-model values in one compiled program "
    "per schedule and batch size) and keep the candidate whose member and "
    "non-member scores lie closest to the target's.",
  )
  flags.DEFINE_string(
    "calibrate_grid",
    "",
    "Candidates as 'epochs=10,30;weight_decay=0,5e-4;schedule=cosine,constant' "
    f"over {', '.join(calibration.GRID_FIELDS)}; fields left out keep the "
    "recipe flags' values. Default: epochs base/3, base, 3x and 7x the "
    "recipe's, weight decay 0 and the recipe's, both schedules.",
  )
  flags.DEFINE_integer(
    "calibrate_models",
    2,
    "Models per calibration candidate (even, >= 2; complementary halves).",
  )
  flags.DEFINE_bool(
    "html",
    True,
    "Also write report.html: the tables, the ROC, the match diagnostic and "
    f"the {EXPOSED} most exposed training examples, in one self-contained file.",
  )


def check_flags(train) -> dict | None:
  """The calibration grid, checked before anything is trained (usage errors name the flag)."""
  if FLAGS.calibrate_models < 2 or FLAGS.calibrate_models % 2:
    raise app.UsageError(
      f"--calibrate_models must be even and >= 2, got {FLAGS.calibrate_models}"
    )
  if FLAGS.calibrate_grid and not FLAGS.calibrate:
    raise app.UsageError("--calibrate_grid needs --calibrate")
  if not FLAGS.calibrate:
    return None
  try:
    grid = (
      calibration.parse_grid(FLAGS.calibrate_grid)
      if FLAGS.calibrate_grid
      else calibration.default_grid(train)
    )
    for cand in calibration.candidates(train, grid):
      calibration.pick_config(train, cand).validate()
  except ValueError as e:
    raise app.UsageError(f"--calibrate_grid: {e}") from None
  return grid


def calibrate(spec, pool, target, grid):
  """``(spec with the picked recipe, the report's "calibration" section)``."""
  try:
    cal = calibration.calibrate(
      pool.x,
      pool.y,
      target.logits,
      target.is_member,
      base=spec.train,
      num_classes=pool.num_classes,
      grid=grid,
      models_per_candidate=FLAGS.calibrate_models,
      seed=FLAGS.seed,
      lowering=spec.lowering,
      log=logging.info,
    )
  except ValueError as e:
    # A candidate the pool cannot train (a batch above a half's size), or
    # every candidate diverged: refused before the store is written.
    raise app.UsageError(f"--calibrate_grid: {e}") from None
  section = {
    "grid": grid,
    "models_per_candidate": FLAGS.calibrate_models,
    "programs": cal.programs,
    "models": cal.models,
    "seconds": cal.seconds,
    "distance": "W1(target members, candidate IN) + W1(target non-members, "
    "candidate OUT) of the logit-scaled confidence",
    "chosen": cal.best,
    "candidates": cal.table,
  }
  return dataclasses.replace(spec, train=cal.config), section


def match_section(target, shadows, usable, labels) -> dict | None:
  """The match diagnostic over the usable shadows (None without any); warns on a mismatch."""
  if not usable.any():
    return None
  rep = match.match_report(
    target.logits,
    target.is_member,
    shadows.logits[usable],
    shadows.keep[usable],
    labels,
  )
  if rep["mismatch"]:
    logging.warning(
      "%s: lira_online may lose its power (see docs/audit.md, 'How well do "
      "the shadows match'); try --calibrate",
      rep["verdict"],
    )
  return rep


def write_html(
  out: pathlib.Path, rep: dict, pool, target, score
) -> pathlib.Path:
  """report.html beside report.json: the ``EXPOSED`` members ``score`` ranks highest drawn."""
  order = np.lexsort(
    (np.arange(score.size), -np.nan_to_num(score, nan=-np.inf))
  )
  rank = np.empty(score.size, np.int64)
  rank[order] = np.arange(1, score.size + 1)
  members = [i for i in order if target.is_member[i] and np.isfinite(score[i])]
  exposed = []
  for i in members[:EXPOSED]:
    item = dict(
      index=int(i),
      rank=int(rank[i]),
      label=int(pool.y[i]),
      score=float(score[i]),
      is_member=True,
    )
    x = np.asarray(pool.x[i], np.float32)
    item["image" if x.ndim >= 2 else "row"] = x
    exposed.append(item)
  roc = out / "roc.png"
  return miajax.write_html_report(
    out / "report.html",
    rep,
    roc_png=roc.read_bytes() if roc.exists() else None,
    exposed=exposed,
    title=f"{pool.name}: membership-inference audit",
  )
