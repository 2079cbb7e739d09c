"""Training-dynamics signals on digits: trajectory LiRA and the LT-IQR vulnerability ranking.

  python experiments/trajectory.py --num_models=64 --output_dir=runs/trajectory_digits

Trains --num_models models of the digits recipe (paired design) recording
every model's logits on the pool after --record_epochs, and once more without
recording (the overhead).  Then, with models [0, M/2) as references and
[M/2, M) as targets: LiRA online on the last epoch against trajectory LiRA
(diagonal and full covariance) on every recorded epoch.  And the per-example
ranking of LT-IQR (Pollock et al., arXiv 2411.05743) against the ground truth
of leave-one-out LiRA over all M models (each example's mean score in the
models that trained on it): precision at the top 1 % and 5 %, beside the
final-epoch loss as a baseline ranking.  Writes report.json.
"""

from __future__ import annotations

import time

import numpy as np
from absl import flags, logging

import harness
import miajax
from miajax.runs import io

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_integer("num_models", 64, "Models (even).")
  flags.DEFINE_list(
    "record_epochs",
    ["6", "12", "18", "24", "30"],
    "Epochs to record (1-based).",
  )
  flags.DEFINE_string("output_dir", None, "Where report.json goes.")
  flags.DEFINE_integer("seed", 0, "Design and training seed.")


def _train(cfg, ds, keep, record=None):
  t0 = time.perf_counter()
  res = miajax.train_models(
    cfg, ds.x_train, ds.y_train, keep, num_classes=10, record=record
  )
  return res, time.perf_counter() - t0


def _summary(scores, is_member) -> dict:
  ok = np.isfinite(scores)
  return {
    "auc": float(miajax.auc(scores[ok], is_member[ok])),
    "tpr_at_1pct_fpr": float(
      miajax.tpr_at_fpr(scores[ok], is_member[ok], 0.01)
    ),
    "unscored": int((~ok).sum()),
  }


def main(argv):
  harness.start(argv)
  m = FLAGS.num_models
  if m < 8 or m % 2:
    from absl import app

    raise app.UsageError(f"--num_models must be even and >= 8, got {m}")
  epochs = [int(e) for e in FLAGS.record_epochs]
  out = harness.make_output_dir()
  ds = miajax.load("digits")
  keep = miajax.paired_keep(m, len(ds.y_train), seed=FLAGS.seed)
  cfg = miajax.TrainConfig(
    model_kwargs={"widths": (256, 128), "activation": "relu"},
    epochs=30,
    batch_size=64,
    seed=FLAGS.seed,
  )
  _train(cfg, ds, keep[:2])  # compile both programs before timing
  _train(cfg, ds, keep[:2], miajax.engine.Record(epochs=epochs))
  # Alternated, medians of 5: a loaded machine's noise is the size of the effect.
  times_plain, times_rec = [], []
  for _ in range(5):
    times_plain.append(_train(cfg, ds, keep)[1])
    res, t = _train(cfg, ds, keep, miajax.engine.Record(epochs=epochs))
    times_rec.append(t)
  t_plain, t_rec = float(np.median(times_plain)), float(np.median(times_rec))
  logging.info(
    "training %.1f s, with %d epochs recorded %.1f s",
    t_plain,
    len(epochs),
    t_rec,
  )
  y = ds.y_train
  traj = np.asarray(
    miajax.logit_scaled(res.recorded, y)
  )  # [models, epochs, examples]
  loss = np.asarray(miajax.cross_entropy(res.recorded, y))
  half = m // 2
  refs, targets = slice(0, half), slice(half, m)
  member = keep[targets]
  attacks = {
    "lira_online_last_epoch": miajax.lira_online(
      traj[refs, -1:].transpose(0, 2, 1),
      keep[refs],
      traj[targets, -1:].transpose(0, 2, 1),
    ),
    "trajectory_lira_diagonal": miajax.trajectory_lira(
      traj[refs], keep[refs], traj[targets]
    ),
    "trajectory_lira_full": miajax.trajectory_lira(
      traj[refs], keep[refs], traj[targets], covariance="full"
    ),
  }
  summaries = {k: _summary(np.asarray(v), member) for k, v in attacks.items()}
  # Ground truth: leave-one-out LiRA over every model, each example's mean over the models that trained on it.
  last = traj[:, -1][..., None]
  loo = np.asarray(miajax.leave_one_out(last, keep, attack="lira_online"))
  truth = np.where(keep, loo, np.nan)
  truth = np.nanmean(truth, 0)
  rankings = {
    "lt_iqr": np.asarray(miajax.lt_iqr(loss, keep)),
    "final_loss": np.nanmean(np.where(keep, loss[:, -1], np.nan), 0),
  }
  n = truth.size
  precision = {
    name: {
      f"top_{pct}pct": float(
        miajax.precision_at_k(r, truth, max(1, n * pct // 100))
      )
      for pct in (1, 5)
    }
    for name, r in rankings.items()
  }
  rep = {
    "config": {"num_models": m, "record_epochs": epochs, "seed": FLAGS.seed},
    "timing_s": {
      "train": t_plain,
      "train_recording": t_rec,
      "overhead": t_rec / t_plain - 1,
    },
    "attacks": summaries,
    "precision_vs_lira_leave_one_out": precision,
  }
  io.write_json_atomic(out / "report.json", rep)
  lines = [
    f"{k}: AUC {v['auc']:.4f}, TPR@1%FPR {v['tpr_at_1pct_fpr']:.4f}"
    for k, v in summaries.items()
  ]
  lines += [
    f"{k} precision vs leave-one-out LiRA: {v}" for k, v in precision.items()
  ]
  lines.append(
    f"recording overhead {100 * rep['timing_s']['overhead']:.1f} % ({t_plain:.1f} s vs {t_rec:.1f} s)"
  )
  print("\n".join(lines))


if __name__ == "__main__":
  define_flags()
  harness.run(main)
