"""The main job: LiRA (and friends) against shadow models, leave-one-out.

  python experiments/lira.py --output_dir=runs/lira_digits

Trains --num_models models (paired design: each on a random half of the
training set) or reuses --run_dir from experiments/train_models.py, scores
every model's outputs, and attacks every model in turn with all the others as
its shadows.  All targets' scores are pooled into one ROC per attack.  Writes
report.json (schema: ../shared/DESIGN.md), roc.png and prints the table.
"""

import time
import warnings

import numpy as np
from absl import app, flags, logging

import common
import miajax
from miajax import attacks, plots, report, runs, scores

FLAGS = flags.FLAGS
common.define_training_flags()
flags.DEFINE_string("run_dir", None, "Reuse a finished run of experiments/train_models.py (default: train "
                    "into <output_dir>/run).")
flags.DEFINE_enum("variant", "miajax", ["miajax", "reference"], "LiRA variant (see README).")
flags.DEFINE_bool("null_check", True, "Also attack with an independent random keep mask that the models were "
                  "not trained on (for shadows and evaluation): every AUC must be 0.5 up to noise.")

LIRA_ATTACKS = {
    "lira_online": dict(attack="lira_online"),
    "lira_online_fixed": dict(attack="lira_online", fix_variance=True),
    "lira_offline": dict(attack="lira_offline"),
    "lira_offline_fixed": dict(attack="lira_offline", fix_variance=True),
    "global_threshold": dict(attack="global_threshold"),
}
RMIA_ATTACKS = {"rmia": dict(attack="rmia"), "rmia_offline": dict(attack="rmia_offline")}


def attack_all(run: runs.RunResult, *, variant: str, log=logging.info, keep=None):
  """Leave-one-out attacks on a run; returns ({name: summary}, {name: scores}, kept rows).

  ``keep`` replaces the run's own design (the null check).
  """
  ok = ~run.diverged
  if not ok.all():
    logging.warning("excluding %d diverged models from the attacks: %s", (~ok).sum(), np.flatnonzero(~ok))
  keep = (run.keep if keep is None else keep)[ok]
  logits = run.logits[ok]
  lira_scores = np.asarray(scores.logit_scaled(logits, run.labels[None, :, None]))
  probs = np.asarray(scores.confidence(logits, run.labels[None, :, None]))
  summaries, all_scores = {}, {}
  for name, kw in {**LIRA_ATTACKS, **RMIA_ATTACKS}.items():
    t0 = time.perf_counter()
    is_rmia = name.startswith("rmia")
    s = attacks.leave_one_out(probs if is_rmia else lira_scores, keep,
                              variant="miajax" if is_rmia else variant, **kw)
    s = np.asarray(s)
    all_scores[name] = s
    with warnings.catch_warnings():
      # Levels finer than 1/non-members are reported as null ("n/a"), said once below.
      warnings.filterwarnings("ignore", message=".*unresolvable.*")
      summaries[name] = report.attack_summary(s, keep)
    log(f"{name}: AUC {summaries[name]['auc']:.4f} ({time.perf_counter() - t0:.1f} s)")
  return summaries, all_scores, keep


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")
  if not FLAGS.run_dir and FLAGS.num_models < 6:
    # Balanced leave-one-out drops two models per example; per-example variances then need
    # >= 2 IN and >= 2 OUT shadows, i.e. M/2 - 1 >= 2.  Refuse before training anything.
    raise app.UsageError(f"--num_models must be >= 6 for leave-one-out LiRA, got {FLAGS.num_models}")
  import pathlib
  out = pathlib.Path(FLAGS.output_dir)
  t_start = time.perf_counter()
  if FLAGS.run_dir:
    run = runs.load_run(FLAGS.run_dir)
  else:
    run = runs.run_training(common.run_spec(), out / "run", log=logging.info)
  t_trained = time.perf_counter()

  summaries, all_scores, keep = attack_all(run, variant=FLAGS.variant)
  t_attacked = time.perf_counter()
  null = None
  if FLAGS.null_check:
    # Same models and scores, a design they were not trained on: any signal here would be an artefact.
    # Not a paired design: sharing the real design's model pairing would leak through each target's
    # partner (whose real membership is the complement of the target's).
    fake = miajax.lira_keep(run.keep.shape[0], run.keep.shape[1], seed=FLAGS.seed + 10_007)
    null_summaries, _, _ = attack_all(run, variant=FLAGS.variant, keep=fake, log=lambda s: None)
    null = {name: {"auc": v["auc"], "tpr_at_fpr": v["tpr_at_fpr"]} for name, v in null_summaries.items()}
  plots.plot_roc({name: (all_scores[name], keep) for name in
                  ("lira_online", "lira_online_fixed", "lira_offline", "global_threshold", "rmia")},
                 out / "roc.png", title=f"{FLAGS.dataset}: {keep.shape[0]} models, leave-one-out")
  ok = ~run.diverged
  rep = {
      "config": common.flag_values(),
      "target": {"train_accuracy": float(run.train_accuracy[ok].mean()),
                 "test_accuracy": float(run.test_accuracy[ok].mean())},
      "protocol": {"evaluation": "leave_one_out", "models": int(keep.shape[0]),
                   "examples": int(keep.shape[1]), "pooled_scores": int(keep.size),
                   "diverged_models": np.flatnonzero(run.diverged).tolist()},
      "attacks": summaries,
      "null_check": null,
      "timing_s": {"train": run.train_seconds, "predict": run.predict_seconds,
                   "train_and_predict_wall": t_trained - t_start, "attacks": t_attacked - t_trained,
                   "total": time.perf_counter() - t_start},
  }
  report.write_json_atomic(out / "report.json", rep)
  print(f"\n{FLAGS.dataset}: {keep.shape[0]} models, {keep.shape[1]} examples, leave-one-out "
        f"(every model attacked with the others as shadows; {keep.size:,} pooled scores)")
  print(f"target train accuracy {rep['target']['train_accuracy']:.4f}, "
        f"test accuracy {rep['target']['test_accuracy']:.4f}\n")
  print(report.format_table(summaries))
  if null:
    print("\nnull check (independent random keep mask): AUC " +
          ", ".join(f"{k} {v['auc']:.3f}" for k, v in null.items()))
  print(f"\nwall time {rep['timing_s']['total']:.1f} s; wrote {out / 'report.json'} and {out / 'roc.png'}")


if __name__ == "__main__":
  app.run(main)
