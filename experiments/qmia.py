"""QMIA (quantile-regression membership inference) beside LiRA on a finished run.

  python experiments/qmia.py --run_dir=runs/lira_digits/run --output_dir=runs/qmia_digits
  python experiments/qmia.py --run_dir=runs/fmnist64 --targets=4 --batch_size=128 \\
    --epochs=10 --output_dir=runs/qmia_fmnist

Bertran et al., "Scalable Membership Inference Attacks via Quantile
Regression" (NeurIPS 2023). The run's first --targets models are the
targets. A run directory keeps the models' logits on the pool, not their
parameters, so the targets are trained again (the engine's models are a
function of the recipe, the keep row and the model index: the script
reports how far the retrained targets' pool scores lie from the run's) and
queried on the dataset's test split, the public data, a member of no model.
QMIA trains --seeds regressors per target on those public scores through
the engine (``miajax.qmia_train``: every target and seed in one program) and
scores the pool. LiRA (online and offline) is leave-one-out over every
model of the run, as experiments/lira.py: each target against the other
M - 1 models as its shadows; the global threshold on the target's score is
the paper's marginal-quantile baseline. All on the logit-scaled confidence
of the true label; every attack's scores pooled over the targets.

Null check: QMIA's scores against --null_masks independent keep masks
(``miajax.lira_keep``) that no model trained on, pooled: AUC 0.5 up to
noise. Diagnostics: the regressors' Gaussian NLL on --holdout of the public
data left out of a second training, against the NLL of the public scores'
marginal Gaussian (how much the regressor learned about the examples).
Writes report.json.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from absl import app, flags, logging

import harness
import miajax
from miajax import attacks, engine, report

FLAGS = flags.FLAGS
DATASETS = ("digits", "fashion_mnist")
FPR_LEVELS = (0.01, 0.001)


def define_flags() -> None:
  flags.DEFINE_string(
    "run_dir", "runs/lira_digits/run", "A finished run (train_models.py)."
  )
  flags.DEFINE_integer("targets", 8, "Targets: the run's models 0..k-1.")
  flags.DEFINE_integer("seeds", 1, "QMIA regressors per target.")
  flags.DEFINE_list(
    "widths", ["256", "128"], "The regressor MLP's hidden widths."
  )
  flags.DEFINE_integer("epochs", 10, "Regressor training epochs.")
  flags.DEFINE_integer("batch_size", 64, "Regressor batch size.")
  flags.DEFINE_float("learning_rate", 1e-3, "Regressor Adam learning rate.")
  flags.DEFINE_float("weight_decay", 0.0, "Regressor decoupled weight decay.")
  flags.DEFINE_list(
    "alphas",
    [],
    "Quantile levels for a pinball-loss regressor; empty: the Gaussian one.",
  )
  flags.DEFINE_integer(
    "null_masks", 4, "Independent keep masks of the null check."
  )
  flags.DEFINE_float(
    "holdout",
    0.2,
    "Share of the public data held out for the NLL diagnostic (0: none).",
  )
  flags.DEFINE_integer("seed", 0, "Seed of the regressors and the null masks.")
  flags.DEFINE_string("output_dir", None, "Where report.json goes.")


def _run_recipe(run_dir: pathlib.Path):
  """The run's TrainConfig, Lowering, models per step and dataset, from its config.json and lowering.json."""
  spec = json.loads((run_dir / "config.json").read_text())
  train = {k: v for k, v in spec["train"].items() if k != "compute_dtype"}
  if train.get("defense") is not None:
    raise app.UsageError("--run_dir: qmia.py retrains undefended runs only")
  config = miajax.TrainConfig(**train)
  low = {}
  if (run_dir / "lowering.json").exists():
    low = json.loads((run_dir / "lowering.json").read_text())
  per_step = low.pop("models_per_step", None)
  low["compute_dtype"] = spec["train"].get("compute_dtype", "float32")
  return config, miajax.Lowering(**low), per_step, spec["dataset"]


def _retrain_targets(run, config, low, ds, targets, models_per_step):
  """The targets trained again (model indices kept): scores on the pool and on the test split.

  A vmapped run is retrained in its own chunks (``models_per_step``): a
  batched program's floats depend on the models beside each one.
  """
  chunk = [targets]
  if low.model_axis == "vmap" and models_per_step:
    last = max(targets) // models_per_step * models_per_step
    chunk = [
      list(range(s, min(s + models_per_step, run.keep.shape[0])))
      for s in range(0, last + 1, models_per_step)
    ]
  t0 = time.perf_counter()
  parts = list(
    engine.train_chunks(
      config,
      ds.x_train,
      ds.y_train,
      run.keep,
      num_classes=ds.num_classes,
      chunks=chunk,
      lowering=low,
    )
  )
  seconds = time.perf_counter() - t0
  trained = np.concatenate([p.model_indices for p in parts]).tolist()

  def score(x, y):
    got = []
    for p in parts:
      logits = miajax.predict(
        config, p.variables, x, num_classes=ds.num_classes
      )
      got.append(np.asarray(miajax.logit_scaled(logits[:, :, 0], y)))
    got = np.concatenate(got)
    return got[[trained.index(t) for t in targets]]

  return (
    score(ds.x_train, ds.y_train),
    score(ds.x_test, ds.y_test),
    seconds,
    len(trained),
  )


def _train_qmia(ds, x, y, s, alphas):
  return miajax.qmia_train(
    x,
    s,
    labels=y,
    num_classes=ds.num_classes,
    alphas=alphas,
    seeds=FLAGS.seeds,
    widths=tuple(int(w) for w in FLAGS.widths),
    epochs=FLAGS.epochs,
    batch_size=FLAGS.batch_size,
    learning_rate=FLAGS.learning_rate,
    weight_decay=FLAGS.weight_decay,
    seed=FLAGS.seed,
  )


def _holdout_nll(ds, s_test, alphas) -> dict | None:
  """Held-out Gaussian NLL of the regressors and of the marginal Gaussian (standardised units)."""
  if not FLAGS.holdout or alphas is not None:
    return None
  n = len(ds.y_test)
  perm = np.random.default_rng(FLAGS.seed).permutation(n)
  cut = int(round(n * (1 - FLAGS.holdout)))
  tr, va = perm[:cut], perm[cut:]
  models = _train_qmia(ds, ds.x_test[tr], ds.y_test[tr], s_test[:, tr], None)
  pred = miajax.qmia_predict(models, ds.x_test[va], ds.y_test[va])
  # Standardised by the training part's moments: comparable across targets.
  mu = s_test[:, tr].mean(1, keepdims=True)
  sd = s_test[:, tr].std(1, keepdims=True)
  pred_std = np.stack([(pred[..., 0] - mu) / sd, pred[..., 1] - np.log(sd)], -1)
  y = (s_test[:, va] - mu) / sd
  model = np.asarray(miajax.gaussian_nll(pred_std, y)).mean()
  # The marginal N(0, 1) of the standardised scores: (mean, log_std) = (0, 0).
  zero = np.zeros(y.shape + (2,))
  marginal = np.asarray(miajax.gaussian_nll(zero, y)).mean()
  return {
    "train_examples": int(cut),
    "heldout_examples": int(n - cut),
    "regressor_nll": float(model),
    "marginal_nll": float(marginal),
  }


def _summary(scores, is_member) -> dict:
  # 1e-5 is unresolvable with these pools' non-members (at most 240,000).
  full = report.attack_summary(scores, is_member, fpr_levels=FPR_LEVELS)
  return {
    "auc": full["auc"],
    "auc_ci": full["auc_ci"],
    "tpr_at_fpr": full["tpr_at_fpr"],
    "tpr_at_fpr_ci": full["tpr_at_fpr_ci"],
  }


def main(argv):
  harness.start(argv)
  run_dir = pathlib.Path(FLAGS.run_dir)
  if not (run_dir / "config.json").exists():
    raise app.UsageError(f"--run_dir {str(run_dir)!r} holds no finished run")
  if not 0 <= FLAGS.holdout < 1:
    raise app.UsageError(f"--holdout must lie in [0, 1), got {FLAGS.holdout}")
  config, low, per_step, dataset = _run_recipe(run_dir)
  if dataset not in DATASETS:
    raise app.UsageError(
      f"--run_dir: the run's dataset must be one of {DATASETS}, got {dataset!r}"
    )
  models = json.loads((run_dir / "config.json").read_text())["num_models"]
  k = FLAGS.targets
  if not 1 <= k < models:
    raise app.UsageError(f"--targets must lie in [1, {models}), got {k}")
  out = harness.make_output_dir()
  t_start = time.perf_counter()
  run = miajax.runs.load_run(run_dir, log=logging.info)
  ds = miajax.load(dataset)
  targets = list(range(k))
  alphas = [float(a) for a in FLAGS.alphas] or None

  s_pool, s_test, retrain_s, retrained = _retrain_targets(
    run, config, low, ds, targets, per_step
  )
  stored = np.asarray(miajax.logit_scaled(run.logits[:k, :, 0], run.labels))
  drift = float(np.abs(s_pool - stored).max())
  logging.info(
    "retrained %d models (%d targets) in %.1f s; max |score - run's| %.3g",
    retrained,
    k,
    retrain_s,
    drift,
  )

  t0 = time.perf_counter()
  qm = _train_qmia(ds, ds.x_test, ds.y_test, s_test, alphas)
  qmia_scores = miajax.qmia_attack(qm, ds.x_train, s_pool, ds.y_train)
  qmia_s = time.perf_counter() - t0
  keep = run.keep[:k]

  lira_scores = np.asarray(
    miajax.logit_scaled(run.logits, run.labels[None, :, None])
  )
  loo = {
    name: np.asarray(attacks.leave_one_out(lira_scores, run.keep, attack=name))[
      :k
    ]
    for name in ("lira_online", "lira_offline")
  }
  results = {
    "qmia": _summary(qmia_scores, keep),
    "lira_online": _summary(loo["lira_online"], keep),
    "lira_offline": _summary(loo["lira_offline"], keep),
    "global_threshold": _summary(s_pool, keep),
  }
  null = np.stack(
    [
      miajax.lira_keep(k, keep.shape[1], seed=FLAGS.seed + 1 + i)
      for i in range(FLAGS.null_masks)
    ]
  )
  null_auc = float(
    miajax.auc(np.broadcast_to(qmia_scores, null.shape).ravel(), null.ravel())
  )
  rep = {
    "config": {
      name: FLAGS[name].value
      for name in (
        "run_dir",
        "targets",
        "seeds",
        "widths",
        "epochs",
        "batch_size",
        "learning_rate",
        "weight_decay",
        "alphas",
        "null_masks",
        "holdout",
        "seed",
      )
    },
    "dataset": dataset,
    "regressor": "gaussian" if alphas is None else "quantiles",
    "signal": "logit_scaled",
    "protocol": {
      "targets": targets,
      "pool_examples": int(keep.shape[1]),
      "public_examples": int(len(ds.y_test)),
      "pooled_scores": int(keep.size),
      "run_models": int(models),
    },
    "models_needed": {
      "qmia": {
        "regressors_per_target": FLAGS.seeds,
        "regressors": int(k * FLAGS.seeds),
        "shadow_models": 0,
      },
      "lira": {"shadow_models_per_target": int(models - 1)},
    },
    "retrained_targets": {
      "models_retrained": retrained,
      "seconds": retrain_s,
      "max_abs_score_difference_to_run": drift,
      "test_accuracy": run.test_accuracy[:k].tolist(),
    },
    "qmia_seconds": {"train": qm.train_seconds, "train_and_score": qmia_s},
    "qmia_diverged": int(qm.diverged.sum()),
    "attacks": results,
    "null_check": {"masks": FLAGS.null_masks, "qmia_auc": null_auc},
    "holdout_nll": _holdout_nll(ds, s_test, alphas),
  }
  lines = [
    f"{dataset}: {k} targets, pool {keep.shape[1]}, public {len(ds.y_test)}",
    "| attack | models per target | AUC | TPR@1%FPR | TPR@0.1%FPR |",
    "|---|---:|---:|---:|---:|",
  ]
  need = {
    "qmia": f"{FLAGS.seeds} regressor(s)",
    "lira_online": f"{models - 1} shadows",
    "lira_offline": f"{models - 1} shadows",
    "global_threshold": "0",
  }
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
  for name, r in results.items():
    tpr = r["tpr_at_fpr"]
    lines.append(
      f"| {name} | {need[name]} | {r['auc']:.4f} | "
      f"{fmt(tpr[report.level_key(0.01)])} | {fmt(tpr[report.level_key(0.001)])} |"
    )
  lines.append(
    f"null check (QMIA, {FLAGS.null_masks} independent masks): AUC {null_auc:.4f}"
  )
  if rep["holdout_nll"]:
    h = rep["holdout_nll"]
    lines.append(
      f"held-out NLL: regressor {h['regressor_nll']:.3f}, marginal {h['marginal_nll']:.3f}"
    )
  harness.finish(
    out, rep, "\n".join(lines), wall_s=time.perf_counter() - t_start
  )


if __name__ == "__main__":
  define_flags()
  harness.run(main)
