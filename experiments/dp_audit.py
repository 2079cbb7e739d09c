"""Many-run black-box canary audit of DP-SGD on digits (miajax.dp_audit).

  python experiments/dp_audit.py --num_models=256 --canary=noise --output_dir=runs/dp_audit_digits

Trains --num_models models of one DP-SGD recipe (noise multiplier from the RDP
accountant for --target_epsilon at --delta) in one train_models call; each
model includes the canary set with probability 1/2. The canary score (mean
logit-scaled confidence of the canary label) of every final model feeds
jax-privacy's Clopper-Pearson epsilon lower bound (all thresholds with
Bonferroni, or --threshold_strategy=split). Prints a table and writes
report.json: the lower bound next to the accountant's epsilon.
"""

from __future__ import annotations

import time

import numpy as np
from absl import flags

import harness
import miajax
from miajax import defenses as D
from miajax import dp_audit
from miajax.engine import batches

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_integer("num_models", 256, "Models (trials), >= 4.")
  flags.DEFINE_enum(
    "canary",
    "noise",
    list(dp_audit.CANARY_KINDS),
    "noise: uniform-noise images with label 0 (out of distribution); "
    "mislabeled: test digits with a wrong label.",
  )
  flags.DEFINE_integer(
    "num_canaries",
    1,
    "Canaries in the set (k > 1 audits the group guarantee).",
  )
  flags.DEFINE_float("noise_high", 1.0, "Noise canaries' pixel upper bound.")
  flags.DEFINE_float("target_epsilon", 4.0, "Accountant epsilon (RDP).")
  flags.DEFINE_float("delta", 1e-5, "Delta of the recipe and the bound.")
  flags.DEFINE_float("l2_norm_clip", 1.0, "DP-SGD clipping norm.")
  flags.DEFINE_integer("epochs", 2, "Epochs.")
  flags.DEFINE_integer("batch_size", 64, "Batch size.")
  flags.DEFINE_float("learning_rate", 1.0, "Constant SGD learning rate.")
  flags.DEFINE_integer(
    "hidden", 0, "Hidden units of the fixed-init MLP (0: softmax regression)."
  )
  flags.DEFINE_enum(
    "threshold_strategy", "bonferroni", ["bonferroni", "split"], "Bound."
  )
  flags.DEFINE_float("confidence", 0.95, "Confidence of the bound.")
  flags.DEFINE_string("output_dir", None, "Where report.json goes.")
  flags.DEFINE_integer("seed", 0, "Canary, inclusion and training seed.")


def main(argv):
  harness.start(argv)
  if FLAGS.num_models < 4:
    harness.usage_error(f"--num_models must be >= 4, got {FLAGS.num_models}")
  if FLAGS.num_canaries < 1:
    harness.usage_error(
      f"--num_canaries must be >= 1, got {FLAGS.num_canaries}"
    )
  out = harness.make_output_dir()
  t0 = time.perf_counter()
  ds = miajax.load("digits")
  k = FLAGS.num_canaries
  if FLAGS.canary == "noise":
    cx, cy = dp_audit.noise_canaries(
      ds.x_train.shape[1:], k, label=0, high=FLAGS.noise_high, seed=FLAGS.seed
    )
  else:
    cx, cy = dp_audit.mislabeled_canaries(
      ds.x_test, ds.y_test, k, num_classes=10, seed=FLAGS.seed
    )
  n = len(ds.y_train)
  keep = np.ones((2, n + k), bool)
  keep[1, n:] = False  # the smallest training set: the largest sample rate
  rate, steps = batches.dp_sampling(keep, FLAGS.batch_size, FLAGS.epochs)
  sigma = D.dp_noise_multiplier(
    target_epsilon=FLAGS.target_epsilon,
    sample_rate=rate,
    steps=steps,
    delta=FLAGS.delta,
  )
  cfg = miajax.TrainConfig(
    model=dp_audit.fixed_init_mlp(FLAGS.hidden, 10, seed=FLAGS.seed),
    epochs=FLAGS.epochs,
    batch_size=FLAGS.batch_size,
    learning_rate=FLAGS.learning_rate,
    momentum=0.0,
    weight_decay=0.0,
    schedule="constant",
    seed=FLAGS.seed,
    defense=D.dp_sgd(FLAGS.l2_norm_clip, sigma),
  )
  res = dp_audit.canary_audit(
    cfg,
    ds.x_train,
    ds.y_train,
    cx,
    cy,
    num_models=FLAGS.num_models,
    num_classes=10,
    delta=FLAGS.delta,
    confidence=FLAGS.confidence,
    threshold_strategy=FLAGS.threshold_strategy,
    seed=FLAGS.seed,
  )
  scores, include = res["scores"], res["include"]
  rep = {
    "config": {
      name: getattr(FLAGS, name)
      for name in (
        "num_models",
        "canary",
        "num_canaries",
        "noise_high",
        "target_epsilon",
        "delta",
        "l2_norm_clip",
        "epochs",
        "batch_size",
        "learning_rate",
        "hidden",
        "threshold_strategy",
        "confidence",
        "seed",
      )
    },
    "sampling": "shuffled fixed-size batches, accounted as Poisson",
    "accounting": res["accounting"],
    "claimed_epsilon": res["claimed_epsilon"],
    "claimed_delta": res["claimed_delta"],
    "lower_bound": res["bound"],
    "score_mean": {
      "in": float(scores[include].mean()),
      "out": float(scores[~include].mean()),
    },
    "timing_s": {
      "train_and_query": res["train_s"],
      "total": time.perf_counter() - t0,
    },
  }
  harness.write_report(out, rep)
  b = res["bound"]
  print(
    f"{'models':>6} {'canary':>10} {'sigma':>7} {'accountant eps':>15} "
    f"{'lower bound':>12} {'TP/in':>9} {'FP/out':>9}\n"
    f"{FLAGS.num_models:>6} {FLAGS.canary:>10} {sigma:>7.3f} "
    f"{res['claimed_epsilon']:>15.3f} {b['epsilon']:>12.3f} "
    f"{b['tp']:>4}/{b['n_in']:<4} {b['fp']:>4}/{b['n_out']:<4}\n"
    f"delta {res['claimed_delta']:g}, {FLAGS.confidence:.0%} confidence, "
    f"{FLAGS.threshold_strategy}; train+query {res['train_s']:.1f} s"
  )


if __name__ == "__main__":
  define_flags()
  harness.run(main)
