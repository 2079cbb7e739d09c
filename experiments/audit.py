"""Audit an external model: LiRA, RMIA and the threshold attacks against one target trained anywhere.

  python experiments/audit.py --dataset=digits --target_outputs=target_logits.npy \\
      --target_members=members.npy --num_models=16 --output_dir=runs/audit

The target is given as its outputs on every candidate of the pool
(``--target_outputs``: logits or probabilities, ``[examples, classes]`` or
``[examples, queries, classes]``, .npy or .npz, from any framework) and the
pool indices it trained on (``--target_members``, int .npy).  Shadow models are
trained with the recipe flags on random halves of the pool (paired design), or
reused from ``--shadow_store`` (see miajax.runs.store: a store trained for this pool
and recipe trains nothing; one with fewer models trains only the missing ones).
Every shadow is a reference model, the external model the only target.

Writes under --output_dir: report.json (the schema of experiments/lira.py,
"target" holding the target's accuracy on its members and on the pool's
non-members, "recipe" the shadows' training recipe, "ranked_by" the attack
scores.csv is ordered by), roc.png, and scores.csv (one row per candidate:
index, is_member, label, each attack's score and rank; most exposed first by
the strongest attack, see ``strongest_attack``).

Every target file is checked before anything is trained or written; a bad one
is a usage error naming its flag.
"""

import dataclasses
import os
import pathlib
import tempfile
import time
import warnings
from typing import NamedTuple

import numpy as np
from absl import app, flags, logging

import audit_report
import common
import harness
from configs import audit as audit_config
from miajax import attacks, engine, plots, report, scores, usability
from miajax.runs import store

FLAGS = flags.FLAGS

LIRA_ATTACKS = {
  "lira_online": (attacks.lira_online, False),
  "lira_online_fixed": (attacks.lira_online, True),
  "lira_offline": (attacks.lira_offline, False),
  "lira_offline_fixed": (attacks.lira_offline, True),
}
# Global-threshold attacks on the classic signals (Yeom et al. 2018; Song & Mittal 2021), sign: higher = member.
THRESHOLD_ATTACKS = {
  "loss_threshold": "cross_entropy",
  "confidence_threshold": "confidence",
  "entropy_threshold": "entropy",
  "modified_entropy_threshold": "modified_entropy",
}
# How far rows of --target_kind=probabilities may sum from 1: float16 softmax outputs are off by ~1e-3.
PROB_SUM_TOL = 1e-2
PROB_RANGE_TOL = 1e-6


TARGET_KINDS = ("auto", "logits", "probabilities")


def looks_like_probabilities(out: np.ndarray) -> bool:
  """Every row non-negative and summing to 1 (within float16 rounding): softmax outputs, not logits."""
  return bool(
    out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(-1), 1, atol=1e-3)
  )


def define_flags() -> None:
  """Defined when run, not on import: tests import the validation functions beside other scripts' flags."""
  config = audit_config.get_config()
  # An audit never runs the label-only attacks: their views' flags would do nothing.
  common.define_training_flags(config, label_only_views=False)
  # The recipe must match the target's: --helpshort lists its flags beside the audit's own.
  flags.adopt_module_key_flags(common)
  flags.DEFINE_string(
    "pool_npz",
    config["pool_npz"],
    "Candidate pool as an .npz with x [N, ...] and int y [N] (optionally x_test, "
    "y_test for the shadows' test accuracy) instead of --dataset's training set; --dataset then "
    "only picks the default recipe.",
  )
  flags.DEFINE_integer(
    "num_classes",
    config["num_classes"],
    "Classes of --pool_npz (default: largest label + 1).",
  )
  flags.DEFINE_string(
    "target_outputs",
    config["target_outputs"],
    "The target's outputs on every pool example: .npy, or .npz holding one "
    "array (or one named 'logits'/'probabilities'), shape [examples, classes] or "
    "[examples, queries, classes] (queries as --queries).",
  )
  flags.DEFINE_string(
    "target_members",
    config["target_members"],
    "int .npy of the pool indices the target trained on.",
  )
  flags.DEFINE_enum(
    "target_kind",
    config["target_kind"],
    TARGET_KINDS,
    "What --target_outputs holds; probabilities become logits through a log "
    "floored at the smallest float32. auto: logits, except that outputs that "
    "look like probabilities (every row non-negative, summing to 1) are "
    "refused: say which they are.",
  )
  flags.DEFINE_string(
    "shadow_store",
    config["shadow_store"],
    "Shadow-model store root (default: <output_dir>/shadow_store); "
    "shadows trained for the same pool and recipe are reused from it.",
  )
  flags.DEFINE_enum(
    "variant",
    config["variant"],
    ["miajax", "reference"],
    "LiRA variant (see README).",
  )
  audit_report.define_flags()


class Target(NamedTuple):
  logits: np.ndarray  # float32[examples, queries, classes]
  members: np.ndarray  # int64[members], sorted
  is_member: np.ndarray  # bool[examples]


def check_target(
  outputs,
  members,
  *,
  kind: str,
  pool_size: int,
  num_classes: int,
  num_queries: int,
) -> Target:
  """Validates the target's outputs and member indices; a bad value is an ``app.UsageError`` naming its flag."""
  if kind not in TARGET_KINDS:
    raise app.UsageError(
      f"--target_kind must be one of {', '.join(TARGET_KINDS)}, got {kind!r}"
    )
  out = np.asarray(outputs)
  where = "--target_outputs"
  if out.dtype == bool or not (
    np.issubdtype(out.dtype, np.floating)
    or np.issubdtype(out.dtype, np.integer)
  ):
    raise app.UsageError(
      f"{where} must hold real numbers, got dtype {out.dtype}"
    )
  if out.ndim not in (2, 3):
    raise app.UsageError(
      f"{where} must be [examples, classes] or [examples, queries, classes], got shape "
      f"{out.shape} (rank {out.ndim})"
    )
  if out.shape[0] != pool_size:
    raise app.UsageError(
      f"{where} has {out.shape[0]} rows but the pool has {pool_size} examples (one row per "
      "candidate, in pool order; check --num_examples)"
    )
  if out.shape[-1] != num_classes:
    raise app.UsageError(
      f"{where} has {out.shape[-1]} classes but the pool has {num_classes}"
    )
  queries = 1 if out.ndim == 2 else out.shape[1]
  if queries != num_queries:
    raise app.UsageError(
      f"{where} has {queries} queries per example but --queries gives the shadows "
      f"{num_queries}; export the target on the same views, or set --queries"
    )
  out = out.astype(np.float64).reshape(pool_size, queries, num_classes)
  bad = ~np.isfinite(out)
  if bad.any():
    first = np.argwhere(bad)[0]
    raise app.UsageError(
      f"{where} holds {int(bad.sum())} NaN/inf values (first at {tuple(int(i) for i in first)})"
    )
  if kind == "probabilities":
    if out.min() < -PROB_RANGE_TOL or out.max() > 1 + PROB_RANGE_TOL:
      raise app.UsageError(
        f"{where} with --target_kind=probabilities must lie in [0, 1], got [{out.min():.4g}, "
        f"{out.max():.4g}] (logits? use --target_kind=logits)"
      )
    sums = out.sum(-1)
    worst = np.abs(sums - 1).max()
    if worst > PROB_SUM_TOL:
      raise app.UsageError(
        f"{where} with --target_kind=probabilities must sum to 1 over classes, a row sums to "
        f"{sums.flat[np.abs(sums - 1).argmax()]:.4g} (apply softmax, or pass logits)"
      )
    logits = np.log(np.maximum(out, np.finfo(np.float32).tiny))
  else:
    logits = out
    if looks_like_probabilities(out):
      if kind == "auto":
        # Read as logits they would give every attack the wrong scores,
        # silently: the user must say which they are.
        raise app.UsageError(
          f"{where} look like probabilities (every row non-negative, summing "
          "to 1): pass --target_kind=probabilities, or --target_kind=logits "
          "if they are logits"
        )
      logging.warning(
        "%s look like probabilities (every row in [0, 1] summing to 1); if so, pass "
        "--target_kind=probabilities",
        where,
      )
  if np.abs(logits).max() > np.finfo(np.float32).max:
    raise app.UsageError(f"{where} holds values beyond float32 range")

  m = np.asarray(members)
  where = "--target_members"
  if m.ndim != 1:
    raise app.UsageError(
      f"{where} must be a 1-D array of pool indices, got shape {m.shape}"
    )
  if m.size == 0:
    raise app.UsageError(
      f"{where} is empty: the target must have trained on some pool examples"
    )
  if not np.issubdtype(m.dtype, np.integer) or m.dtype == bool:
    raise app.UsageError(
      f"{where} must hold integer pool indices, got dtype {m.dtype} (a boolean mask: save "
      "np.flatnonzero(mask); floats: .astype(int))"
    )
  if m.min() < 0 or m.max() >= pool_size:
    raise app.UsageError(
      f"{where} must lie in [0, {pool_size}), got [{m.min()}, {m.max()}]"
    )
  uniq, counts = np.unique(m, return_counts=True)
  if (counts > 1).any():
    raise app.UsageError(
      f"{where} repeats {int((counts > 1).sum())} indices (first {int(uniq[counts > 1][0])})"
    )
  if uniq.size == pool_size:
    raise app.UsageError(
      f"{where} names every pool example: an audit needs non-members too"
    )
  is_member = np.zeros(pool_size, bool)
  is_member[uniq] = True
  return Target(logits.astype(np.float32), uniq.astype(np.int64), is_member)


def _read_array(path, flag: str, prefer=()) -> np.ndarray:
  p = pathlib.Path(path)
  if not p.is_file():
    raise app.UsageError(f"{flag}: {str(p)!r} does not exist")
  try:
    loaded = np.load(p, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise app.UsageError(
      f"{flag}: {str(p)!r} is not a readable .npy/.npz file ({e})"
    ) from None
  if isinstance(loaded, np.ndarray):
    return loaded
  with loaded:
    keys = list(loaded.files)
    pick = [k for k in prefer if k in keys]
    if len(keys) != 1 and not pick:
      raise app.UsageError(
        f"{flag}: {str(p)!r} holds arrays {keys}; keep one, or name it "
        f"{' or '.join(map(repr, prefer)) or 'as a single array'}"
      )
    return loaded[pick[0] if pick else keys[0]]


def load_target(
  outputs_path,
  members_path,
  *,
  kind: str,
  pool_size: int,
  num_classes: int,
  num_queries: int,
) -> Target:
  """Reads and validates ``--target_outputs`` and ``--target_members`` (``app.UsageError`` on any problem)."""
  if not outputs_path:
    raise app.UsageError("--target_outputs is required")
  if not members_path:
    raise app.UsageError("--target_members is required")
  outputs = _read_array(
    outputs_path, "--target_outputs", prefer=(kind, "logits", "probabilities")
  )
  members = _read_array(members_path, "--target_members", prefer=("members",))
  return check_target(
    outputs,
    members,
    kind=kind,
    pool_size=pool_size,
    num_classes=num_classes,
    num_queries=num_queries,
  )


def load_pool(spec) -> store.Pool:
  """The candidate pool of the flags; a missing or malformed one is a usage error."""
  if FLAGS.pool_npz:
    path = pathlib.Path(FLAGS.pool_npz)
    arrays = {}
    if path.is_file():
      try:
        with np.load(path, allow_pickle=False) as f:
          arrays = {k: f[k] for k in f.files}
      except (OSError, ValueError, EOFError) as e:
        raise app.UsageError(
          f"--pool_npz: {str(path)!r} is not a readable .npz ({e})"
        ) from None
    else:
      raise app.UsageError(f"--pool_npz: {str(path)!r} does not exist")
    if "x" not in arrays or "y" not in arrays:
      raise app.UsageError(
        f"--pool_npz needs arrays 'x' and 'y', found {sorted(arrays)}"
      )
    x, y = arrays["x"], arrays["y"]
    if (
      not np.issubdtype(y.dtype, np.integer)
      or y.ndim != 1
      or len(y) != len(x)
      or len(y) < 2
    ):
      raise app.UsageError(
        f"--pool_npz: y must be int [N] beside x [N, ...], got {y.dtype} {y.shape}, x {x.shape}"
      )
    if FLAGS.num_examples is not None:
      if not 2 <= FLAGS.num_examples <= len(y):
        raise app.UsageError(
          f"--num_examples must be in [2, {len(y)}], got {FLAGS.num_examples}"
        )
      x, y = x[: FLAGS.num_examples], y[: FLAGS.num_examples]
    if not np.isfinite(x).all():
      raise app.UsageError("--pool_npz: x holds non-finite values")
    num_classes = FLAGS.num_classes or int(y.max()) + 1
    test = (
      (arrays["x_test"], arrays["y_test"])
      if "x_test" in arrays and "y_test" in arrays
      else (None, None)
    )
    try:
      return store.Pool(path.stem, x, y, num_classes, *test)
    except ValueError as e:
      raise app.UsageError(f"--pool_npz: {e}") from None
  try:
    return store.pool_from_spec(spec)
  except (ValueError, TypeError) as e:
    raise app.UsageError(f"--dataset={FLAGS.dataset}: {e}") from None


def _write_csv_atomic(path: pathlib.Path, header: list[str], rows) -> None:
  fd, tmp = tempfile.mkstemp(
    dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
  )
  try:
    with os.fdopen(fd, "w") as f:
      f.write(",".join(header) + "\n")
      for row in rows:
        f.write(",".join(row) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def attack_target(
  shadows: store.Shadows,
  target: Target,
  labels: np.ndarray,
  *,
  usable=None,
  variant: str = "miajax",
  log=logging.info,
) -> tuple[dict, dict]:
  """Every attack on the one target with the usable shadows as references: (summaries, scores[examples]).

  ``usable``: ``bool[models]`` (``usability.model_usability``; default: the
  non-diverged shadows).  An example with too few usable references is
  unscored (NaN) and counted in its attack's summary; without any usable
  shadow only the attacks that need none run.
  """
  ok = ~shadows.diverged if usable is None else np.asarray(usable, bool)
  keep, logits = shadows.keep[ok], shadows.logits[ok]
  lab = labels[None, :, None]
  target_scaled = np.asarray(scores.logit_scaled(target.logits[None], lab))
  computed = {}
  if ok.any():
    shadow_scaled = np.asarray(scores.logit_scaled(logits, lab))
    shadow_conf = np.asarray(scores.confidence(logits, lab))
    target_conf = np.asarray(scores.confidence(target.logits[None], lab))
    few = dict(too_few_shadows="nan")
    computed = {
      name: (
        lambda fn=fn, fix=fix: fn(
          shadow_scaled,
          keep,
          target_scaled,
          fix_variance=fix,
          variant=variant,
          **few,
        )
      )
      for name, (fn, fix) in LIRA_ATTACKS.items()
    }
  computed["global_threshold"] = lambda: attacks.global_threshold(target_scaled)
  if ok.any():
    computed["rmia"] = lambda: attacks.rmia(
      shadow_conf, keep, target_conf, **few
    )
    computed["rmia_offline"] = lambda: attacks.rmia(
      shadow_conf, keep, target_conf, offline=True, **few
    )
  for name, signal in THRESHOLD_ATTACKS.items():
    computed[name] = lambda signal=signal: attacks.global_threshold(
      np.asarray(scores.membership_signal(signal, target.logits[None], lab))
    )
  summaries, all_scores = {}, {}
  for name, fn in computed.items():
    t0 = time.perf_counter()
    s = np.asarray(fn(), np.float64)[0]
    all_scores[name] = s
    with warnings.catch_warnings():
      # Levels finer than 1/non-members are reported as null ("n/a").
      warnings.filterwarnings("ignore", message=".*unresolvable.*")
      summaries[name] = usability.summarise_scored(s, target.is_member)
    auc, unscored = summaries[name]["auc"], summaries[name]["unscored_examples"]
    log(
      f"{name}: AUC {'n/a' if auc is None else f'{auc:.4f}'}"
      + (f", {unscored} examples unscored" if unscored else "")
      + f" ({time.perf_counter() - t0:.1f} s)"
    )
  return summaries, all_scores


def strongest_attack(summaries: dict) -> dict:
  """The attack scores.csv ranks candidates by, and why: ``{"attack", "rule", "fpr", "tpr", "auc"}``.

  The highest TPR at the lowest of the report's FPR levels that the pool's
  non-members resolve (0.1% from 1,000 non-members, 1% from 100), ties
  broken by AUC, then by the report's order.  An audit asks which members an
  attack exposes while almost never accusing a non-member (Carlini et al.
  2022); the AUC averages over error rates nobody would act on, and a level
  finer than 1/non-members is not measured at all.  Only attacks that scored
  members and non-members compete; without any, the first attack of the
  report stands (``fpr`` None).
  """
  ran = {k: v for k, v in summaries.items() if v["auc"] is not None}
  resolved = sorted(
    (float(level), level)
    for v in ran.values()
    for level, tpr in v["tpr_at_fpr"].items()
    if tpr is not None
  )
  level = resolved[0][1] if resolved else None

  def power(name):
    tpr = ran[name]["tpr_at_fpr"].get(level) if level else None
    return (-1.0 if tpr is None else tpr, ran[name]["auc"])

  if not ran:
    return {
      "attack": next(iter(summaries)),
      "rule": "no attack scored both members and non-members: the first of the report",
      "fpr": None,
      "tpr": None,
      "auc": None,
    }
  best = max(ran, key=power)  # the first of equals: the report's order
  fpr = None if level is None else float(level)
  return {
    "attack": best,
    "rule": (
      f"highest TPR at {100 * fpr:g}% FPR (the lowest FPR level the "
      "non-members resolve), ties broken by AUC"
      if fpr is not None
      else "highest AUC (no FPR level resolved)"
    ),
    "fpr": fpr,
    "tpr": ran[best]["tpr_at_fpr"].get(level) if level else None,
    "auc": ran[best]["auc"],
  }


def exposure_ranks(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(order, rank)``: candidates most exposed first, and each one's 1-based place (0: unscored).

  Equal scores go by pool index; unscored (NaN) candidates come last, unranked.
  """
  order = np.lexsort((np.arange(score.size), -score))
  rank = np.empty(score.size, np.int64)
  rank[order] = np.arange(1, score.size + 1)
  rank[np.isnan(score)] = 0
  return order, rank


def write_scores(path, all_scores: dict, ranked_by: str, is_member, labels):
  """scores.csv: candidates most exposed first by ``ranked_by``, every attack's score and rank beside it."""
  # The ranking attack's columns first: the rows are in its order.
  names = [ranked_by, *(n for n in all_scores if n != ranked_by)]
  ranks = {n: exposure_ranks(all_scores[n])[1] for n in names}
  order = exposure_ranks(all_scores[ranked_by])[0]
  _write_csv_atomic(
    path,
    ["index", "is_member", "label"]
    + [c for n in names for c in (n, f"{n}_rank")],
    (
      [str(i), str(int(is_member[i])), str(int(labels[i]))]
      + [
        c
        for n in names
        for c in (
          f"{all_scores[n][i]:.9g}",
          str(ranks[n][i]) if ranks[n][i] else "",
        )
      ]
      for i in order
    ),
  )


def main(argv):
  harness.start(argv)
  if FLAGS.shadow_store:
    # Before any training: the store is written as its shadows are trained.
    harness.check_writable(FLAGS.shadow_store, "--shadow_store")
  t_start = time.perf_counter()
  if FLAGS.design != "paired":
    raise app.UsageError(
      "--design must be paired for an audit: the shadow store grows a paired design "
      "(see miajax.runs.store)"
    )
  if FLAGS.num_models < 4 or FLAGS.num_models % 2:
    # Paired shadows give every example M/2 IN and M/2 OUT references; LiRA's variances need >= 2 of each.
    raise app.UsageError(
      f"--num_models must be even and >= 4, got {FLAGS.num_models}"
    )
  spec = common.run_spec()
  grid = audit_report.check_flags(spec.train)
  pool = load_pool(spec)
  if FLAGS.pool_npz:
    spec = dataclasses.replace(
      spec, dataset=pool.name, data_dir=None, num_examples=None
    )
  try:
    num_queries = int(engine.query_views(pool.x[:1], spec.queries).shape[0])
  except ValueError as e:
    raise app.UsageError(f"--queries: {e}") from None
  target = load_target(
    FLAGS.target_outputs,
    FLAGS.target_members,
    kind=FLAGS.target_kind,
    pool_size=pool.x.shape[0],
    num_classes=pool.num_classes,
    num_queries=num_queries,
  )
  out = (
    harness.make_output_dir()
  )  # only now: a bad target file must leave nothing behind
  t_valid = time.perf_counter()
  logging.info(
    "target: %d candidates, %d members, %d queries, %d classes",
    pool.x.shape[0],
    target.members.size,
    num_queries,
    pool.num_classes,
  )

  calibrated = None
  if grid is not None:
    spec, calibrated = audit_report.calibrate(spec, pool, target, grid)
  t_calibrated = time.perf_counter()

  root = (
    pathlib.Path(FLAGS.shadow_store)
    if FLAGS.shadow_store
    else out / "shadow_store"
  )
  try:
    shadows = store.ensure_shadows(
      root,
      pool,
      spec,
      log=logging.info,
      checkpoint_every_s=FLAGS.checkpoint_every_s,
      checkpoint_every_epochs=FLAGS.checkpoint_every_epochs,
    )
  except ValueError as e:
    raise app.UsageError(f"--shadow_store / recipe: {e}") from None
  t_shadows = time.perf_counter()
  verdict = common.judge_models(
    shadows.logits,
    shadows.labels,
    shadows.keep,
    shadows.train_accuracy,
    shadows.diverged,
    what="shadow model",
  )
  ok = verdict.usable
  if not ok.any():
    logging.error(
      "no usable shadow model: only the attacks that need none are run"
    )
  matched = audit_report.match_section(target, shadows, ok, pool.y)
  summaries, all_scores = attack_target(
    shadows, target, pool.y, usable=ok, variant=FLAGS.variant
  )
  t_attacked = time.perf_counter()

  ranked_by = strongest_attack(summaries)
  write_scores(
    out / "scores.csv",
    all_scores,
    ranked_by["attack"],
    target.is_member,
    pool.y,
  )
  curves = common.roc_curves(all_scores, summaries, target.is_member)
  if curves:
    plots.plot_roc(
      curves,
      out / "roc.png",
      title=f"{pool.name}: external target, {int(ok.sum())} shadow models",
    )
  pred = target.logits[:, 0].argmax(-1)
  correct = pred == pool.y
  rep = {
    # The recipe flags as resolved (--epochs left to the dataset's default reads 30, not None);
    # --pkeep is the lira design's, which an audit refuses.
    "config": common.flag_values(train=spec.train, omit=("pkeep",)),
    # What every shadow trained with (the store's recipe): the target should match it.
    "recipe": spec.to_json()["train"],
    # The target's accuracy on its own members and on the pool's other candidates (its held-out data here).
    "target": {
      "train_accuracy": float(correct[target.is_member].mean()),
      "test_accuracy": float(correct[~target.is_member].mean()),
      "test_accuracy_on": "pool non-members",
      "members": int(target.members.size),
      "non_members": int((~target.is_member).sum()),
      # auto lets only logits through.
      "kind": "logits" if FLAGS.target_kind == "auto" else FLAGS.target_kind,
    },
    "shadows": {
      "models": int(shadows.keep.shape[0]),
      "trained": shadows.trained,
      "reused": shadows.reused,
      "store": str(shadows.path),
      "fingerprint": shadows.fingerprint,
      "usable_models": int(ok.sum()),
      # Over the usable shadows only.
      "train_accuracy": (
        float(shadows.train_accuracy[ok].mean()) if ok.any() else None
      ),
      "test_accuracy": (
        float(np.mean(shadows.test_accuracy[ok]))
        if ok.any() and np.isfinite(shadows.test_accuracy[ok]).all()
        else None
      ),
      "diverged_models": np.flatnonzero(shadows.diverged).tolist(),
      "excluded_models": verdict.excluded(),
    },
    "protocol": {
      "evaluation": "external_target",
      "references": int(ok.sum()),
      "examples": int(pool.x.shape[0]),
      "queries": num_queries,
      "pool": pool.identity(),
    },
    "attacks_skipped": None
    if ok.any()
    else "no usable shadow model: only the attacks that need none ran",
    "attacks": summaries,
    "ranked_by": ranked_by,
    "match": matched,
    "calibration": calibrated,
    "timing_s": {
      "validate": t_valid - t_start,
      "calibrate": calibrated["seconds"] if calibrated else 0.0,
      "train": shadows.train_seconds,
      "predict": shadows.predict_seconds,
      "shadows_wall": t_shadows - t_calibrated,
      "attacks": t_attacked - t_shadows,
      "total": time.perf_counter() - t_start,
    },
  }
  count = (
    f"{int(ok.sum())} " + ("" if ok.all() else "usable ") + "shadow models"
  )
  count += "" if ok.all() else f" of {ok.size}"
  text = [
    f"\n{pool.name}: external target audited with {count} ({shadows.trained} trained now, "
    f"{shadows.reused} reused), {pool.x.shape[0]} candidates, {target.members.size} members",
    f"target train accuracy {rep['target']['train_accuracy']:.4f}, "
    f"accuracy on pool non-members {rep['target']['test_accuracy']:.4f}\n",
    report.format_table(summaries),
    f"\nscores.csv ranks candidates by {ranked_by['attack']}: {ranked_by['rule']}",
  ]
  if matched:
    text.append(
      matched["verdict"]
      + (
        "  WARNING: lira_online may be weakened; try --calibrate"
        if matched["mismatch"]
        else ""
      )
    )
  if calibrated:
    pick = calibrated["candidates"][calibrated["chosen"]]
    text.append(
      f"calibration: {len(calibrated['candidates'])} candidates, {calibrated['models']} models "
      f"in {calibrated['programs']} compiled program(s), {calibrated['seconds']:.1f} s; "
      "picked "
      + ", ".join(f"{k}={pick[k]}" for k in calibrated["grid"])
      + f" (W1 {pick['w1']:.3f}); shadows and attacks "
      f"{rep['timing_s']['shadows_wall'] + rep['timing_s']['attacks']:.1f} s"
    )
  text += common.unscored_lines(summaries)
  also = ([out / "roc.png"] if curves else []) + [out / "scores.csv"]
  if FLAGS.html:
    also.append(
      audit_report.write_html(
        out, rep, pool, target, all_scores[ranked_by["attack"]]
      )
    )
  harness.finish(
    out,
    rep,
    "\n".join(text),
    wall_s=rep["timing_s"]["total"],
    also=also,
  )


if __name__ == "__main__":
  define_flags()
  harness.run(main)
