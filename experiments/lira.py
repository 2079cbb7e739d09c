"""The main job: LiRA (and friends) against shadow models, leave-one-out.

  python experiments/lira.py --output_dir=runs/lira_digits

Trains --num_models models (paired design: each on a random half of the
training set) or reuses --run_dir from experiments/train_models.py, scores
every model's outputs, and attacks every model in turn with all the others as
its shadows.  All targets' scores are pooled into one ROC per attack.  Writes
report.json (schema in the README), roc.png and prints the table.

Attacks: LiRA online/offline (+ fixed variance), the global threshold on
LiRA's logit-scaled score, RMIA online/offline, the global-threshold attacks
on loss, confidence, entropy and modified entropy, and (with --label_only,
the default) the label-only attacks of miajax.attacks.label_only: the gap attack,
augmentation and noise-robustness attacks, each thresholded and with the
binomial shadow-model test.
"""

import time
import warnings

import numpy as np
from absl import app, flags, logging

import common
import harness
import miajax
from configs import lira as lira_config
from miajax import attacks, metrics, plots, report, runs, scores
from miajax.attacks import label_only

FLAGS = flags.FLAGS
CONFIG = lira_config.get_config()
common.define_training_flags(CONFIG)
flags.DEFINE_string(
  "run_dir",
  CONFIG["run_dir"],
  "Reuse a finished run of experiments/train_models.py (default: train "
  "into <output_dir>/run).",
)
flags.DEFINE_enum(
  "variant",
  CONFIG["variant"],
  ["miajax", "reference"],
  "LiRA variant (see README).",
)
flags.DEFINE_integer(
  "num_references",
  CONFIG["num_references"],
  "Low-cost audit: models 0..R-1 are the only reference (shadow) "
  "models and every other model is attacked with them (R even, so that the paired design "
  "gives every example R/2 IN and R/2 OUT references).  Default: leave-one-out.",
)
flags.DEFINE_bool(
  "null_check",
  CONFIG["null_check"],
  "Also attack with an independent random keep mask that the models were "
  "not trained on (for shadows and evaluation): every AUC must be 0.5 up to noise.",
)

LIRA_ATTACKS = {
  "lira_online": dict(attack="lira_online"),
  "lira_online_fixed": dict(attack="lira_online", fix_variance=True),
  "lira_offline": dict(attack="lira_offline"),
  "lira_offline_fixed": dict(attack="lira_offline", fix_variance=True),
  "global_threshold": dict(attack="global_threshold"),
}
RMIA_ATTACKS = {
  "rmia": dict(attack="rmia"),
  "rmia_offline": dict(attack="rmia_offline"),
}
# Global-threshold attacks on the classic signals (Yeom et al. 2018; Song & Mittal 2021), sign: higher = member.
THRESHOLD_ATTACKS = {
  "loss_threshold": "cross_entropy",
  "confidence_threshold": "confidence",
  "entropy_threshold": "entropy",
  "modified_entropy_threshold": "modified_entropy",
}


def _with_references(
  attack: str, values, keep, r: int, *, fix_variance=False, variant="miajax"
):
  """Models ``[0, r)`` are the references, the rest the targets; ``float[targets, examples]``."""
  shadow, shadow_keep, target = values[:r], keep[:r], values[r:]
  if attack == "lira_online":
    return attacks.lira_online(
      shadow, shadow_keep, target, fix_variance=fix_variance, variant=variant
    )
  if attack == "lira_offline":
    return attacks.lira_offline(
      shadow, shadow_keep, target, fix_variance=fix_variance, variant=variant
    )
  if attack == "global_threshold":
    return attacks.global_threshold(target)
  return attacks.rmia(
    shadow, shadow_keep, target, offline=attack == "rmia_offline"
  )


def _auc_and_tpr(values, is_member) -> dict:
  """The null check's summary: AUC and TPR at the report's FPR levels, without intervals
  (the bootstrap of a full summary costs seconds per attack on large runs)."""
  tpr = {
    report.level_key(level): float(metrics.tpr_at_fpr(values, is_member, level))
    for level in report.FPR_LEVELS
  }
  return {
    "auc": metrics.auc(values, is_member),
    "tpr_at_fpr": {k: None if np.isnan(v) else v for k, v in tpr.items()},
  }


def attack_all(
  run: runs.RunResult,
  *,
  variant: str,
  log=logging.info,
  keep=None,
  num_references=None,
  summarise=report.attack_summary,
):
  """Attacks on a run; returns ({name: summary}, {name: scores}, evaluated keep rows).

  Leave-one-out by default; with ``num_references`` R, models ``[0, R)`` are
  the references and models ``[R, M)`` the targets.  ``keep`` replaces the
  run's own design (the null check).  ``summarise(scores, is_member)`` makes
  each attack's summary (default: every metric with its interval).
  """
  ok = ~run.diverged
  if not ok.all():
    logging.warning(
      "excluding %d diverged models from the attacks: %s",
      (~ok).sum(),
      np.flatnonzero(~ok),
    )
  keep = (run.keep if keep is None else keep)[ok]
  logits = run.logits[ok]
  lira_scores = np.asarray(
    scores.logit_scaled(logits, run.labels[None, :, None])
  )
  probs = np.asarray(scores.confidence(logits, run.labels[None, :, None]))
  r = num_references or 0
  computed = {}
  for name, kw in {**LIRA_ATTACKS, **RMIA_ATTACKS}.items():
    is_rmia = name.startswith("rmia")
    values = probs if is_rmia else lira_scores
    if num_references:
      computed[name] = lambda kw=kw, values=values: _with_references(
        kw["attack"],
        values,
        keep,
        num_references,
        fix_variance=kw.get("fix_variance", False),
        variant=variant,
      )
    else:
      computed[name] = lambda kw=kw, values=values, is_rmia=is_rmia: (
        attacks.leave_one_out(
          values, keep, variant="miajax" if is_rmia else variant, **kw
        )
      )
  for name, signal in THRESHOLD_ATTACKS.items():
    computed[name] = lambda signal=signal: attacks.global_threshold(
      np.asarray(
        scores.membership_signal(signal, logits[r:], run.labels[None, :, None])
      )
    )
  if run.label_views is not None and run.label_only is not None:
    label = label_only.attack_scores(
      run.label_views[ok],
      run.labels,
      keep,
      run.label_only,
      num_references=num_references,
    )
    computed.update({name: (lambda v=v: v) for name, v in label.items()})
  summaries, all_scores = {}, {}
  evaluated = keep[r:]
  for name, fn in computed.items():
    t0 = time.perf_counter()
    s = np.asarray(fn())
    all_scores[name] = s
    with warnings.catch_warnings():
      # Levels finer than 1/non-members are reported as null ("n/a"), said once below.
      warnings.filterwarnings("ignore", message=".*unresolvable.*")
      summaries[name] = summarise(s, evaluated)
    log(
      f"{name}: AUC {summaries[name]['auc']:.4f} ({time.perf_counter() - t0:.1f} s)"
    )
  return summaries, all_scores, evaluated


def main(argv):
  harness.start(argv)
  if not FLAGS.run_dir and FLAGS.num_models < 6:
    # Balanced leave-one-out drops two models per example; per-example variances then need
    # >= 2 IN and >= 2 OUT shadows, i.e. M/2 - 1 >= 2.  Refuse before training anything.
    raise app.UsageError(
      f"--num_models must be >= 6 for leave-one-out LiRA, got {FLAGS.num_models}"
    )
  r = FLAGS.num_references
  if r is not None and (
    r < 2 or r % 2 or (not FLAGS.run_dir and r >= FLAGS.num_models)
  ):
    raise app.UsageError(
      f"--num_references must be even, >= 2 and below --num_models (the rest are the "
      f"targets), got {r}"
    )
  run = runs.load_run(FLAGS.run_dir) if FLAGS.run_dir else None
  # Before any training or attack: a bad --output_dir must not cost a run.
  out = harness.make_output_dir()
  t_start = time.perf_counter()
  if run is None:
    run = common.train_run(common.run_spec(), out / "run", log=logging.info)
  t_trained = time.perf_counter()

  if r is not None and r >= run.keep.shape[0]:
    raise app.UsageError(
      f"--num_references={r} leaves no target among the run's {run.keep.shape[0]} models"
    )
  summaries, all_scores, keep = attack_all(
    run, variant=FLAGS.variant, num_references=r
  )
  t_attacked = time.perf_counter()
  null = None
  if FLAGS.null_check:
    # Same models and scores, a design they were not trained on: any signal here would be an artefact.
    # Not a paired design: sharing the real design's model pairing would leak through each target's
    # partner (whose real membership is the complement of the target's).
    fake = miajax.lira_keep(
      run.keep.shape[0], run.keep.shape[1], seed=FLAGS.seed + 10_007
    )
    if r:  # targets are never references here, so a paired design cannot leak through a partner
      fake = miajax.paired_keep(
        run.keep.shape[0], run.keep.shape[1], seed=FLAGS.seed + 10_007
      )
    null, _, _ = attack_all(
      run,
      variant=FLAGS.variant,
      keep=fake,
      log=lambda s: None,
      num_references=r,
      summarise=_auc_and_tpr,
    )
  plots.plot_roc(
    {
      name: (all_scores[name], keep)
      for name in (
        "lira_online",
        "lira_online_fixed",
        "lira_offline",
        "global_threshold",
        "rmia",
        "loss_threshold",
        "label_aug_lira",
        "label_noise_lira",
      )
      if name in all_scores
    },
    out / "roc.png",
    title=f"{FLAGS.dataset}: "
    + (
      f"{r} reference models, {keep.shape[0]} targets"
      if r
      else f"{keep.shape[0]} models, leave-one-out"
    ),
  )
  ok = ~run.diverged
  rep = {
    "config": common.flag_values(),
    "target": {
      "train_accuracy": float(run.train_accuracy[ok].mean()),
      "test_accuracy": float(run.test_accuracy[ok].mean()),
    },
    "protocol": {
      "evaluation": f"{r}_references" if r else "leave_one_out",
      "num_references": r,
      "models": int(run.keep.shape[0]),
      "examples": int(keep.shape[1]),
      "pooled_scores": int(keep.size),
      "diverged_models": np.flatnonzero(run.diverged).tolist(),
    },
    "attacks": summaries,
    "null_check": null,
    "timing_s": {
      "train": run.train_seconds,
      "predict": run.predict_seconds,
      "train_and_predict_wall": t_trained - t_start,
      "attacks": t_attacked - t_trained,
      "total": time.perf_counter() - t_start,
    },
  }
  how = (
    f"models {r}..{run.keep.shape[0] - 1} attacked with models 0..{r - 1} as references"
    if r
    else "every model attacked with the others as shadows"
  )
  text = [
    f"\n{FLAGS.dataset}: {run.keep.shape[0]} models, {keep.shape[1]} examples, "
    f"{'fixed references' if r else 'leave-one-out'} ({how}; {keep.size:,} pooled scores)",
    f"target train accuracy {rep['target']['train_accuracy']:.4f}, "
    f"test accuracy {rep['target']['test_accuracy']:.4f}\n",
    report.format_table(summaries),
  ]
  if null:
    text.append(
      "\nnull check (independent random keep mask): AUC "
      + ", ".join(f"{k} {v['auc']:.3f}" for k, v in null.items())
    )
  harness.finish(
    out,
    rep,
    "\n".join(text),
    wall_s=rep["timing_s"]["total"],
    also=[out / "roc.png"],
  )


if __name__ == "__main__":
  app.run(main)
