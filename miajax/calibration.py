"""Calibrate the shadow recipe to a target: a grid of recipes trained as one program, the closest picked.

An audit of a model trained elsewhere needs shadows trained like it, and the
recipe that trained it (epochs, weight decay, schedule) is often unknown or
unstated. :func:`calibrate` trains a few models of every candidate recipe on
random halves of the pool and keeps the candidate whose members' and
non-members' score distributions lie closest to the target's
(:func:`miajax.match.distance`: the summed 1-Wasserstein distances of the
logit-scaled confidence). The learning rate, momentum, weight decay, label
smoothing and epochs of the candidates are per-model values
(:mod:`miajax.hyperparams`; a model stops after its own epochs, its schedule
scaled to them), so every candidate sharing a schedule and batch size is
one compiled program; each other schedule or batch size is one more.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Callable, NamedTuple

import numpy as np

from miajax import defenses
from miajax import designs
from miajax import engine
from miajax import match
from miajax.engine.recipe import TrainConfig
from miajax.hyperparams import PerModel, per_model

__all__ = [
  "GRID_FIELDS",
  "Calibration",
  "default_grid",
  "parse_grid",
  "candidates",
  "calibrate",
]

# Per-model values of one program, then the fields that need their own.
PER_MODEL = (
  "learning_rate",
  "momentum",
  "weight_decay",
  "label_smoothing",
  "epochs",
)
PER_PROGRAM = ("schedule", "batch_size")
GRID_FIELDS = PER_MODEL + PER_PROGRAM


def default_grid(base: TrainConfig) -> dict:
  """The candidates tried when none are given: lengths around the base recipe's, with and without weight decay, both schedules.

  Epochs ``base/3, base, 3 base, 7 base`` span an under-trained to a heavily
  over-fitted target (the over-fitted ones are what default shadows miss);
  the learning rate, momentum and batch size are the base's.
  """
  e = int(base.max_epochs)
  decay = (
    base.weight_decay if not isinstance(base.weight_decay, PerModel) else 0.0
  )
  return {
    "epochs": sorted({max(1, round(e / 3)), e, 3 * e, 7 * e}),
    "weight_decay": sorted({0.0, decay or 5e-4}),
    "schedule": ["cosine", "constant"],
  }


def parse_grid(text: str) -> dict:
  """``"epochs=10,30;weight_decay=0,5e-4;schedule=cosine,constant"`` as a grid dict (errors name the part)."""
  grid = {}
  for part in filter(None, (p.strip() for p in text.split(";"))):
    name, sep, values = part.partition("=")
    name = name.strip()
    if not sep or not values.strip():
      raise ValueError(f"grid part {part!r} must be name=v1,v2,...")
    if name not in GRID_FIELDS:
      raise ValueError(
        f"grid part {part!r}: {name!r} is not one of {', '.join(GRID_FIELDS)}"
      )
    raw = [v.strip() for v in values.split(",") if v.strip()]
    try:
      if name == "schedule":
        vals = raw
      elif name in ("epochs", "batch_size"):
        vals = [int(v) for v in raw]
      else:
        vals = [float(v) for v in raw]
    except ValueError:
      kind = "integers" if name in ("epochs", "batch_size") else "numbers"
      raise ValueError(f"grid part {part!r}: values must be {kind}") from None
    grid[name] = vals
  if not grid:
    raise ValueError("grid is empty: give name=v1,v2;... parts")
  return grid


def candidates(base: TrainConfig, grid: dict) -> list[dict]:
  """Every combination of the grid's values, each a dict of all :data:`GRID_FIELDS` (the base's where the grid is silent)."""
  unknown = sorted(set(grid) - set(GRID_FIELDS))
  if unknown:
    raise ValueError(
      f"grid: unknown fields {unknown}; known: {list(GRID_FIELDS)}"
    )
  if "label_smoothing" in grid and base.defense is not None:
    raise ValueError(
      "grid: label_smoothing candidates need a base recipe without a defense"
    )
  fixed = {
    "learning_rate": base.learning_rate,
    "momentum": base.momentum,
    "weight_decay": base.weight_decay,
    "label_smoothing": 0.0,
    "epochs": base.epochs,
    "schedule": base.schedule,
    "batch_size": base.batch_size,
  }
  per = [n for n in fixed if isinstance(fixed[n], PerModel)]
  if per:
    raise ValueError(f"calibrate: the base recipe's {per} must be scalars")
  names = list(grid)
  out = []
  for combo in itertools.product(*(grid[n] for n in names)):
    out.append({**fixed, **dict(zip(names, combo))})
  return out


class Calibration(NamedTuple):
  """What :func:`calibrate` found.

  ``table``: one dict per candidate (its recipe values, the member and
  non-member accuracy and loss of its models, the distances ``w1_members``,
  ``w1_nonmembers``, ``w1``); ``best``: the index of the closest;
  ``config``: the base recipe with the pick; ``programs``: compiled
  training programs used; ``models``: models trained; ``seconds``.
  """

  table: list
  best: int
  config: TrainConfig
  programs: int
  models: int
  seconds: float


def _program_config(
  base: TrainConfig, group: list[dict], k: int
) -> TrainConfig:
  rep = lambda name: [c[name] for c in group for _ in range(k)]
  lengths = rep("epochs")
  smooth = rep("label_smoothing")
  return dataclasses.replace(
    base,
    learning_rate=per_model(rep("learning_rate")),
    momentum=per_model(rep("momentum")),
    weight_decay=per_model(rep("weight_decay")),
    epochs=per_model(lengths) if len(set(lengths)) > 1 else lengths[0],
    defense=(
      defenses.label_smoothing(per_model(smooth))
      if any(smooth)
      else base.defense
    ),
    schedule=group[0]["schedule"],
    batch_size=group[0]["batch_size"],
  )


def pick_config(base: TrainConfig, candidate: dict) -> TrainConfig:
  """The base recipe with one candidate's values (scalars)."""
  eps = candidate["label_smoothing"]
  if not 0 <= eps < 1:
    raise ValueError(f"label_smoothing must lie in [0, 1), got {eps!r}")
  return dataclasses.replace(
    base,
    **{n: candidate[n] for n in GRID_FIELDS if n != "label_smoothing"},
    defense=defenses.label_smoothing(eps) if eps else base.defense,
  )


def calibrate(
  x,
  y,
  target_logits,
  target_is_member,
  *,
  base: TrainConfig,
  num_classes: int,
  grid: dict | None = None,
  models_per_candidate: int = 2,
  seed: int = 0,
  lowering=None,
  log: Callable[[str], None] | None = None,
) -> Calibration:
  """Trains every candidate recipe and picks the one whose outputs match the target's.

  Args:
    x: ``float[examples, ...]`` the pool; y: ``int[examples]``.
    target_logits: ``float[examples, classes]`` (or ``[examples, queries,
      classes]``, query 0 used): the target's logits on the pool.
    target_is_member: ``bool[examples]``: the pool examples it trained on.
    base: the recipe the candidates vary (model, optimizer, defense...).
    grid: ``{field: [values]}`` over :data:`GRID_FIELDS` (default:
      :func:`default_grid`).
    models_per_candidate: even, >= 2: models of each candidate, on
      complementary halves (the same halves for every candidate, so that
      candidates differ only by their recipe).
    lowering: a :class:`miajax.Lowering` for the candidates' programs.
  """
  log = log or (lambda s: None)
  t0 = time.perf_counter()
  k = int(models_per_candidate)
  if k < 2 or k % 2:
    raise ValueError(f"models_per_candidate must be even and >= 2, got {k}")
  target_is_member = np.asarray(target_is_member, bool)
  y = np.asarray(y)
  if target_is_member.shape != y.shape:
    raise ValueError(
      f"target_is_member must be bool[{y.shape[0]}] (one per pool example), "
      f"got shape {target_is_member.shape}"
    )
  target = match.sides(np.asarray(target_logits)[None], y, target_is_member)
  cands = candidates(base, default_grid(base) if grid is None else grid)
  groups: dict = {}
  for i, c in enumerate(cands):
    groups.setdefault((c["schedule"], c["batch_size"]), []).append(i)
  halves = designs.paired_keep(k, y.shape[0], seed=seed)
  table = [None] * len(cands)
  for (schedule, batch), idx in groups.items():
    group = [cands[i] for i in idx]
    cfg = _program_config(base, group, k)
    cfg.validate()
    keep = np.tile(halves, (len(group), 1))
    log(
      f"calibration: {len(group)} candidates x {k} models (schedule "
      f"{schedule}, batch {batch}) in one compiled program"
    )
    res = engine.train_models(
      cfg, x, y, keep, num_classes=num_classes, lowering=lowering
    )
    logits = engine.predict(
      cfg, res.variables, x, num_classes=num_classes, lowering=lowering
    )
    for j, i in enumerate(idx):
      rows = slice(j * k, (j + 1) * k)
      ok = ~res.diverged[rows]
      if not ok.any():
        table[i] = {**cands[i], "diverged": True, "w1": None}
        continue
      s = match.sides(logits[rows][ok], y, keep[rows][ok])
      table[i] = {
        **cands[i],
        "member_accuracy": float(s.member_correct.mean()),
        "nonmember_accuracy": float(s.nonmember_correct.mean()),
        "member_loss": float(s.member_loss.mean()),
        "nonmember_loss": float(s.nonmember_loss.mean()),
        **match.distance(target, s),
      }
  best = int(np.argmin([np.inf if r["w1"] is None else r["w1"] for r in table]))
  if table[best]["w1"] is None:
    raise ValueError(
      "calibrate: every candidate diverged; lower the learning rates"
    )
  for i, row in enumerate(table):
    row["chosen"] = i == best
  seconds = time.perf_counter() - t0
  log(
    f"calibration: {len(cands)} candidates, {len(cands) * k} models, "
    f"{len(groups)} compiled program(s), {seconds:.1f} s; closest "
    f"(W1 {table[best]['w1']:.3f}): "
    + ", ".join(f"{n}={cands[best][n]}" for n in GRID_FIELDS)
  )
  return Calibration(
    table,
    best,
    pick_config(base, cands[best]),
    len(groups),
    len(cands) * k,
    seconds,
  )
