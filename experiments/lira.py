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

With --budgets=1,2,4,..., every reference-based attack (LiRA, RMIA, BASE,
BaVarIA) again with only each target's first k other models as references
(experiments/budgets.py): budgets.json, budgets.md, budgets.png.
"""

import collections
import time
import warnings

import numpy as np
from absl import app, flags, logging

import budgets as budgets_lib
import common
import harness
import miajax
from configs import lira as lira_config
from miajax import attacks, metrics, plots, report, runs, scores, usability
from miajax.attacks import label_only
from miajax.engine import costs

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
flags.DEFINE_string(
  "budgets",
  "",
  "Budget table, e.g. 1,2,4,8,16,32,64: every reference-based attack again with "
  "only the first k other models as references for each k (no retraining), "
  "written to budgets.json, budgets.md and budgets.png.",
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
  """Rows ``[0, r)`` are the references, the rest the targets; ``float[targets, examples]``,
  NaN at examples with too few references."""
  shadow, shadow_keep, target = values[:r], keep[:r], values[r:]
  few = dict(too_few_shadows="nan")
  if attack == "lira_online":
    return attacks.lira_online(
      shadow,
      shadow_keep,
      target,
      fix_variance=fix_variance,
      variant=variant,
      **few,
    )
  if attack == "lira_offline":
    return attacks.lira_offline(
      shadow,
      shadow_keep,
      target,
      fix_variance=fix_variance,
      variant=variant,
      **few,
    )
  if attack == "global_threshold":
    return attacks.global_threshold(target)
  return attacks.rmia(
    shadow, shadow_keep, target, offline=attack == "rmia_offline", **few
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


def _no_attacks(usable, num_references) -> str | None:
  """Why no attack can run on the usable models (None: they can)."""
  if num_references:
    refs, targets = usable[:num_references].sum(), usable[num_references:].sum()
    if refs and targets:
      return None
    return (
      f"{refs} usable reference models and {targets} usable targets; "
      "the attacks need at least one of each"
    )
  if usable.sum() >= 3:
    return None
  # The binomial label-only test leaves out two models per target.
  return f"{usable.sum()} usable models; leave-one-out needs at least 3"


def attack_all(
  run: runs.RunResult,
  *,
  variant: str,
  usable,
  log=logging.info,
  keep=None,
  num_references=None,
  summarise=report.attack_summary,
):
  """Attacks on a run's usable models; returns ({name: summary}, {name: scores}, evaluated keep rows).

  ``usable``: ``bool[models]`` (``usability.model_usability``), the models
  attacked and used as shadows.  Leave-one-out by default; with
  ``num_references`` R, the usable models among ``[0, R)`` are the
  references and those among ``[R, M)`` the targets.  An example left with
  too few usable shadows is not scored (NaN) and its attack's summary
  counts it (``unscored_examples``, ``unscored_scores``).  ``keep``
  replaces the run's own design (the null check).  ``summarise(scores,
  is_member)`` makes each attack's summary over the scored entries
  (default: every metric with its interval).
  """
  keep = (run.keep if keep is None else keep)[usable]
  logits = run.logits[usable]
  lira_scores = np.asarray(
    scores.logit_scaled(logits, run.labels[None, :, None])
  )
  probs = np.asarray(scores.confidence(logits, run.labels[None, :, None]))
  # The references that are usable: the first r of the usable rows.
  r = int(usable[:num_references].sum()) if num_references else 0
  computed = {}
  for name, kw in {**LIRA_ATTACKS, **RMIA_ATTACKS}.items():
    is_rmia = name.startswith("rmia")
    values = probs if is_rmia else lira_scores
    if num_references:
      computed[name] = lambda kw=kw, values=values: _with_references(
        kw["attack"],
        values,
        keep,
        r,
        fix_variance=kw.get("fix_variance", False),
        variant=variant,
      )
    else:
      computed[name] = lambda kw=kw, values=values, is_rmia=is_rmia: (
        attacks.leave_one_out(
          values,
          keep,
          variant="miajax" if is_rmia else variant,
          too_few_shadows="nan",
          **kw,
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
      run.label_views[usable],
      run.labels,
      keep,
      run.label_only,
      num_references=r or None,
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
      summaries[name] = usability.summarise_scored(s, evaluated, summarise)
    auc, unscored = summaries[name]["auc"], summaries[name]["unscored_examples"]
    log(
      f"{name}: AUC {'n/a' if auc is None else f'{auc:.4f}'}"
      + (f", {unscored} examples unscored" if unscored else "")
      + f" ({time.perf_counter() - t0:.1f} s)"
    )
  return summaries, all_scores, evaluated


def _phase_line(timing: dict, *, reused: bool) -> str:
  """``time by phase: training ... s, queries ... s, ...``: the phases that ran."""
  phases = (
    ("training", "train"),
    ("queries", "predict"),
    ("attacks", "attacks"),
    ("null check", "null_check"),
    ("budgets", "budgets"),
  )
  return (
    "\ntime by phase: "
    + ", ".join(
      f"{what} {timing[key]:.1f} s"
      for what, key in phases
      if timing.get(key) is not None
    )
    + (" (a reused run: no training)" if reused else "")
  )


def _efficiency(spec, run, seconds: float) -> dict:
  """The job's FLOPs (XLA's count, by phase) over its wall time x the matmul peak measured now."""
  flops = runs.run_flops(spec, runs.load_dataset(spec), run.keep)
  peak = costs.matmul_peak_gflops()
  return {**costs.efficiency(flops, seconds, peak["gflops"]), "peak": peak}


def _efficiency_line(eff: dict) -> str:
  parts = ", ".join(
    f"{k} {v / 1e12:.2f}" for k, v in eff["flops"].items() if v is not None
  )
  return (
    f"efficiency: {eff['total_flops'] / 1e12:.2f} TFLOP ({parts}) in "
    f"{eff['seconds']:.1f} s = {eff['achieved_gflops']:.1f} GFLOP/s, "
    f"{eff['fraction_of_peak']:.0%} of the float32 matmul peak measured now "
    f"({eff['peak_gflops']:.0f} GFLOP/s)"
  )


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
  try:
    ks = budgets_lib.parse(FLAGS.budgets) if FLAGS.budgets else []
  except ValueError as e:
    raise app.UsageError(f"--budgets: {e}") from None
  if ks and r is not None:
    raise app.UsageError(
      "--budgets takes the references from every other model: leave out --num_references"
    )
  run = runs.load_run(FLAGS.run_dir) if FLAGS.run_dir else None
  # Before any training or attack: a bad --output_dir must not cost a run.
  out = harness.make_output_dir()
  t_start = time.perf_counter()
  if run is None:
    # The progress line's ETA counts the attacks and null check as 5 s
    # (compiling, fixed costs) + 6 us a score (model x example), fitted on a
    # 2-core CPU: 3-9 s (compile cache warm or cold) for 8 x 1,297 digits
    # scores, 33 s for 64 x 60,000 in docs/fashion_mnist.md (933 s less 867 s
    # training and 33 s queries). A guess (they cannot be timed before they
    # run), a few % of a job.
    spec = common.run_spec()
    run = common.train_run(
      spec,
      out / "run",
      log=logging.info,
      eta_after=lambda scores: 5.0 + 6e-6 * scores,
    )
  t_trained = time.perf_counter()

  if r is not None and r >= run.keep.shape[0]:
    raise app.UsageError(
      f"--num_references={r} leaves no target among the run's {run.keep.shape[0]} models"
    )
  verdict = common.judge_models(
    run.logits,
    run.labels,
    run.keep,
    run.train_accuracy,
    run.diverged,
    what="model",
  )
  usable = verdict.usable
  skipped = _no_attacks(usable, r)
  summaries, all_scores, null = {}, {}, None
  keep = run.keep[usable][int(usable[:r].sum()) if r else 0 :]
  if skipped:
    logging.error("no attack run: %s", skipped)
  else:
    summaries, all_scores, keep = attack_all(
      run, variant=FLAGS.variant, usable=usable, num_references=r
    )
  t_attacked = time.perf_counter()
  if FLAGS.null_check and not skipped:
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
      usable=usable,
      keep=fake,
      log=lambda s: None,
      num_references=r,
      summarise=_auc_and_tpr,
    )
  t_null = time.perf_counter()
  curves = common.roc_curves(
    all_scores, summaries, keep, extra=("label_aug_lira", "label_noise_lira")
  )
  if curves:
    plots.plot_roc(
      curves,
      out / "roc.png",
      title=f"{FLAGS.dataset}: "
      + (
        f"{r} reference models, {keep.shape[0]} targets"
        if r
        else f"{keep.shape[0]} models, leave-one-out"
      ),
    )

  def mean_over_usable(accuracy):
    return float(accuracy[usable].mean()) if usable.any() else None

  rep = {
    "config": common.flag_values(),
    "target": {
      "train_accuracy": mean_over_usable(run.train_accuracy),
      "test_accuracy": mean_over_usable(run.test_accuracy),
    },
    "protocol": {
      "evaluation": f"{r}_references" if r else "leave_one_out",
      "num_references": r,
      "models": int(run.keep.shape[0]),
      "usable_models": int(usable.sum()),
      "examples": int(keep.shape[1]),
      "pooled_scores": int(keep.size),
      "diverged_models": np.flatnonzero(run.diverged).tolist(),
    },
    "excluded_models": verdict.excluded(),
    "attacks_skipped": skipped,
    # No attack ran: every example is unscored (the attacks count their own otherwise).
    "unscored_examples": int(run.keep.shape[1]) if skipped else None,
    "attacks": summaries,
    "null_check": null,
    "null_check_skipped": f"no attack run: {skipped}"
    if skipped and FLAGS.null_check
    else None,
    "timing_s": {
      "train": run.train_seconds,
      "predict": run.predict_seconds,
      "train_and_predict_wall": t_trained - t_start,
      "attacks": t_attacked - t_trained,
      "null_check": t_null - t_attacked if null is not None else None,
      "total": time.perf_counter() - t_start,
    },
  }
  how = (
    f"models {r}..{run.keep.shape[0] - 1} attacked with models 0..{r - 1} as references"
    if r
    else "every model attacked with the others as shadows"
  )
  accuracy = (
    f"target train accuracy {rep['target']['train_accuracy']:.4f}, "
    f"test accuracy {rep['target']['test_accuracy']:.4f}"
    if usable.any()
    else "target accuracy n/a (no usable model)"
  )
  text = [
    f"\n{FLAGS.dataset}: {run.keep.shape[0]} models, {keep.shape[1]} examples, "
    f"{'fixed references' if r else 'leave-one-out'} ({how}; {keep.size:,} pooled scores)",
  ]
  if not usable.all():
    reasons = collections.Counter(e["reason"] for e in rep["excluded_models"])
    text.append(
      f"{int((~usable).sum())} models excluded as unusable ("
      + ", ".join(f"{n} {why}" for why, n in reasons.items())
      + f"); {int(usable.sum())} usable"
    )
  text.append(accuracy + "\n")
  if skipped:
    text.append(f"no attack run: {skipped}")
  else:
    text.append(report.format_table(summaries))
  text += common.unscored_lines(summaries)
  if null:
    text.append(
      "\nnull check (independent random keep mask): AUC "
      + ", ".join(
        f"{k} {'n/a' if v['auc'] is None else format(v['auc'], '.3f')}"
        for k, v in null.items()
      )
    )
  also = [out / "roc.png"] if curves else []
  if ks and not skipped:
    t0 = time.perf_counter()
    rows = budgets_lib.budget_table(run, usable, ks, log=logging.info)
    also += budgets_lib.write(
      out,
      rows,
      f"{FLAGS.dataset}: {int(usable.sum())} models, first k as references",
    )
    rep["budgets"] = rows
    rep["timing_s"]["budgets"] = time.perf_counter() - t0
    text.append(
      "\nbudget table (each model a target, its first k others the references)\n"
    )
    text.append(budgets_lib.format_table(rows))
  # Budgets run after the report's total was first taken.
  rep["timing_s"]["total"] = time.perf_counter() - t_start
  text.append(_phase_line(rep["timing_s"], reused=bool(FLAGS.run_dir)))
  if not FLAGS.run_dir and run.chunks_trained and not run.chunks_reused:
    rep["efficiency"] = _efficiency(spec, run, t_null - t_start)
    text.append(_efficiency_line(rep["efficiency"]))
  harness.finish(
    out,
    rep,
    "\n".join(text),
    wall_s=rep["timing_s"]["total"],
    also=also,
  )


if __name__ == "__main__":
  harness.run(main)
