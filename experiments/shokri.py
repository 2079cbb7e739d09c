"""Shokri et al. (S&P 2017): shadow models + per-class attack models, swept over training-set sizes.

  python experiments/shokri.py --output_dir=runs/shokri_digits

For each size n in --sizes: the pool (training and test splits together) is
cut into the target's n members, the target's n non-members (the evaluation
set) and the rest, the shadow pool.  Each of --num_shadows shadow models
draws n members and n non-members from the shadow pool (shadows overlap each
other, never the target's data).  Target and shadows are trained in one
vmapped call with the same recipe; the shadows' posteriors on their members
and non-members form the attack dataset; the attack models
(miajax.attacks.shokri) then score the target's 2n examples.

Default sizes.  The common reproduction trains CIFAR-10 targets on 2,500 /
5,000 / 10,000 / 15,000 of its 60,000 images, i.e. 1/24, 1/12, 1/6 and 1/4
of the pool; the defaults are these fractions of the dataset's pool, which
gives exactly those sizes for CIFAR-10 and 74 / 149 / 299 / 449 for digits
(1,797 images).  1/4 is also the largest fraction that works: the target's
2n examples and one shadow's 2n must fit disjointly (4n <= pool).

Per size the report gives the attack's precision, recall and F1 for the
member class at the attack model's own decision (probability 0.5, or SVM
margin 0), its accuracy there (= balanced accuracy, IN and OUT being equal),
the best balanced accuracy over thresholds and the AUC (with bootstrap
intervals: the evaluation set is small), the target's train accuracy (its n
members) and test accuracy (all pool examples it did not train on), and, as
a yardstick, the AUC of the true-label probability itself (no shadows).
Writes <output_dir>/report.json and prints the same numbers as a table.
"""

import time
import warnings

import jax
import numpy as np
from absl import app, flags, logging

import common
import harness
from configs import shokri as shokri_config
from miajax import data, engine, metrics, report
from miajax.attacks import shokri

FLAGS = flags.FLAGS
CONFIG = shokri_config.get_config()
common.define_recipe_flags(CONFIG)
flags.DEFINE_list(
  "sizes",
  CONFIG["sizes"],
  "Training-set sizes n (members per model); default: 1/24, 1/12, 1/6, 1/4 "
  "of the pool (74,149,299,449 for digits).",
)
flags.DEFINE_integer(
  "num_shadows", CONFIG["num_shadows"], "Shadow models per size."
)
flags.DEFINE_enum(
  "attack_model",
  CONFIG["attack_model"],
  list(shokri.MODELS),
  "Attack model (miajax.attacks.shokri).",
)
flags.DEFINE_bool(
  "per_class",
  CONFIG["per_class"],
  "One attack model per true class (else a single one).",
)


def train_config() -> engine.TrainConfig:
  """Target and shadow recipe: the shared recipe flags (experiments/common.py)."""
  return common.train_config()


def parse_sizes(pool: int, batch_size: int) -> list[int]:
  if FLAGS.sizes:
    try:
      sizes = [int(s) for s in FLAGS.sizes]
    except ValueError:
      raise app.UsageError(
        f"--sizes must be comma-separated integers, got {FLAGS.sizes}"
      ) from None
  else:
    sizes = [int(pool * f) for f in CONFIG["pool_fractions"]]
  for n in sizes:
    if 4 * n > pool:
      raise app.UsageError(
        f"--sizes: n={n} needs 4n={4 * n} examples (target in/out + one shadow's "
        f"in/out, disjoint) but the pool has {pool}"
      )
    if n < batch_size:
      raise app.UsageError(
        f"--sizes: n={n} is smaller than --batch_size={batch_size}"
      )
  return sizes


def design(pool: int, n: int, num_shadows: int, seed: int):
  """Target blocks and shadow membership for one size.

  Returns (target_in, target_out: int64[n], keep: bool[1 + shadows, pool] with row 0 the target,
  include: bool[1 + shadows, pool], each shadow row's n members + n non-members).
  """
  split = data.disjoint_split(pool, [n, n, pool - 2 * n, 0], seed=seed)
  # The third block is the whole shadow pool; each shadow draws its own in/out from it.
  shadow_pool = split["shadow_in"]
  rng = np.random.default_rng([seed, n])
  keep = np.zeros((1 + num_shadows, pool), bool)
  include = np.zeros_like(keep)
  keep[0, split["target_in"]] = True
  include[0, split["target_in"]] = include[0, split["target_out"]] = True
  for s in range(1, 1 + num_shadows):
    drawn = rng.permutation(shadow_pool)[: 2 * n]
    keep[s, drawn[:n]] = True
    include[s, drawn] = True
  return split["target_in"], split["target_out"], keep, include


def softmax(logits):
  return np.asarray(
    jax.nn.softmax(logits.astype(np.float32), axis=-1), np.float64
  )


def run_size(x, y, num_classes, n, cfg):
  t0 = time.perf_counter()
  target_in, target_out, keep, include = design(
    len(y), n, FLAGS.num_shadows, FLAGS.seed
  )
  if (
    include[1:] & include[0]
  ).any():  # the protocol's one hard guarantee; cheap to enforce
    raise RuntimeError("a shadow model's data overlaps the target's")
  trained = engine.train_models(cfg, x, y, keep, num_classes=num_classes)
  if trained.diverged.any():
    raise RuntimeError(
      f"n={n}: models {np.flatnonzero(trained.diverged).tolist()} diverged; "
      "lower --learning_rate"
    )
  probs = softmax(
    engine.predict(cfg, trained.variables, x, num_classes=num_classes)[:, :, 0]
  )
  t_train = time.perf_counter()

  correct = probs.argmax(-1) == y[None]  # [models, pool]
  attack_data = shokri.attack_dataset(
    probs[1:], keep[1:], y, include=include[1:], seed=FLAGS.seed
  )
  fitted = shokri.fit_attack(
    attack_data.features,
    attack_data.is_member,
    attack_data.labels,
    model=FLAGS.attack_model,
    per_class=FLAGS.per_class,
    num_classes=num_classes,
    seed=FLAGS.seed,
  )
  evaluated = np.concatenate([target_in, target_out])
  is_member = np.arange(evaluated.size) < target_in.size
  scores = shokri.attack_scores(fitted, probs[0, evaluated], y[evaluated])
  t_attack = time.perf_counter()

  decision = metrics.precision_recall_f1(scores, is_member, fitted.threshold)
  with warnings.catch_warnings():
    # TPR at 0.1 % FPR and below needs >= 1,000 non-members; reported as null.
    warnings.filterwarnings("ignore", message=".*unresolvable.*")
    summary = report.attack_summary(scores, is_member, seed=FLAGS.seed)
  confidence = probs[0, evaluated, y[evaluated]]
  return {
    "n": n,
    "attack": {
      "precision": decision["member"]["precision"],
      "recall": decision["member"]["recall"],
      "f1": decision["member"]["f1"],
      "accuracy_at_decision": decision["accuracy"],
      "balanced_accuracy": summary["balanced_accuracy"],
      "balanced_accuracy_ci": summary["balanced_accuracy_ci"],
      "auc": summary["auc"],
      "auc_ci": summary["auc_ci"],
      "tpr_at_fpr": summary["tpr_at_fpr"],
      "decision_threshold": fitted.threshold,
      "fallback_classes": list(fitted.fallback_classes),
      "svm_params": {str(k): v for k, v in fitted.svm_params.items()},
    },
    "target": {
      "train_accuracy": float(correct[0, keep[0]].mean()),
      "test_accuracy": float(correct[0, ~keep[0]].mean()),
    },
    "shadows": {
      "train_accuracy": float(
        np.mean([correct[s, keep[s]].mean() for s in range(1, len(keep))])
      ),
      "test_accuracy": float(
        np.mean([correct[s, ~keep[s]].mean() for s in range(1, len(keep))])
      ),
      "attack_rows": int(attack_data.features.shape[0]),
    },
    "baseline_confidence_auc": metrics.auc(confidence, is_member),
    "evaluation": {
      "members": int(target_in.size),
      "non_members": int(target_out.size),
    },
    "timing_s": {
      "train_and_predict": t_train - t0,
      "attack_fit_and_score": t_attack - t_train,
    },
  }


def format_sizes(results) -> str:
  header = [
    "n",
    "target train acc",
    "target test acc",
    "precision",
    "recall",
    "F1",
    "acc@decision",
    "bal. acc (best)",
    "AUC",
    "AUC(p_y)",
  ]
  lines = [
    "| " + " | ".join(header) + " |",
    "|" + "|".join(["---:"] * len(header)) + "|",
  ]
  for r in results.values():
    a = r["attack"]
    cells = [
      str(r["n"]),
      f"{r['target']['train_accuracy']:.3f}",
      f"{r['target']['test_accuracy']:.3f}",
      f"{a['precision']:.3f}",
      f"{a['recall']:.3f}",
      f"{a['f1']:.3f}",
      f"{a['accuracy_at_decision']:.3f}",
      f"{a['balanced_accuracy']:.3f} [{a['balanced_accuracy_ci'][0]:.3f}, {a['balanced_accuracy_ci'][1]:.3f}]",
      f"{a['auc']:.3f} [{a['auc_ci'][0]:.3f}, {a['auc_ci'][1]:.3f}]",
      f"{r['baseline_confidence_auc']:.3f}",
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  harness.start(argv)
  if FLAGS.num_shadows < 1:
    raise app.UsageError(f"--num_shadows must be >= 1, got {FLAGS.num_shadows}")
  t_start = time.perf_counter()
  ds = data.load(FLAGS.dataset, data_dir=FLAGS.data_dir)
  # Shokri's sizes need more data than a training split: the test split joins the pool.
  x = np.concatenate([ds.x_train, ds.x_test])
  y = np.concatenate([ds.y_train, ds.y_test])
  cfg = train_config()
  sizes = parse_sizes(len(y), cfg.batch_size)
  out = harness.make_output_dir()

  results = {}
  for n in sizes:
    results[str(n)] = run_size(x, y, ds.num_classes, n, cfg)
    r = results[str(n)]
    logging.info(
      "n=%d: AUC %.3f, target train/test accuracy %.3f/%.3f (%.1f s)",
      n,
      r["attack"]["auc"],
      r["target"]["train_accuracy"],
      r["target"]["test_accuracy"],
      sum(r["timing_s"].values()),
    )
  rep = {
    "sizes": results,
    "config": common.flag_values(),
    "protocol": {
      "pool": int(len(y)),
      "num_shadows": FLAGS.num_shadows,
      "attack_model": FLAGS.attack_model,
      "per_class": FLAGS.per_class,
      "features": "full posterior vector (unsorted)",
    },
    "timing_s": {
      **{f"n={k}": sum(v["timing_s"].values()) for k, v in results.items()},
      "total": time.perf_counter() - t_start,
    },
  }
  header = (
    f"\n{FLAGS.dataset}: Shokri et al. shadow-model attack, {FLAGS.num_shadows} shadows per size, "
    f"attack model {FLAGS.attack_model} ({'per class' if FLAGS.per_class else 'single'}); "
    f"evaluation on the target's n members + n non-members; [95% bootstrap interval]\n"
  )
  harness.finish(
    out,
    rep,
    header + "\n" + format_sizes(results),
    wall_s=rep["timing_s"]["total"],
  )


if __name__ == "__main__":
  harness.run(main)
