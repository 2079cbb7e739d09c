"""Audits of DP-SGD on digits (miajax.dp_audit): many runs, one run, white box, or a sweep of all three.

  python experiments/dp_audit.py --mode=white_box --num_models=1024 --target_epsilon=2 --output_dir=runs/dp_white_box
  python experiments/dp_audit.py --mode=sweep --output_dir=runs/dp_audit_sweep

Each mode trains its models of one DP-SGD recipe (noise multiplier from
--accountant for --target_epsilon at --delta) in one train_models call:

* many_run: --num_models models, each with the canary set (--canary) with
  probability 1/2; black box, final model; Clopper-Pearson bound.
* one_run: one model with --one_run_canaries canaries, each included with
  probability 1/2; the --one_run_guesses most and least confident guessed
  (Steinke et al. 2023).
* white_box: --num_models full-batch models (--white_box_steps steps), a
  Dirac gradient canary in each with probability 1/2; the final parameter
  at the canary coordinate is the score; Clopper-Pearson and GDP (Nasr et
  al. 2023) bounds, and the cap: what that many trials certify at best.
* sweep: all three at each of --sweep_epsilons, --seeds seeds each; writes
  sweep.json, sweep.md and sweep.png (lower bound against accountant epsilon).

report.json holds the lower bounds next to the accountant's epsilon.
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
MODES = ("many_run", "one_run", "white_box", "sweep")


def define_flags() -> None:
  flags.DEFINE_enum("mode", "many_run", list(MODES), "Which audit.")
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
  flags.DEFINE_float("target_epsilon", 4.0, "Accountant epsilon.")
  flags.DEFINE_enum("accountant", "pld", ["rdp", "pld"], "dp-accounting's.")
  flags.DEFINE_float("delta", 1e-5, "Delta of the recipe and the bound.")
  flags.DEFINE_float("l2_norm_clip", 1.0, "DP-SGD clipping norm.")
  flags.DEFINE_integer("epochs", 2, "Epochs (many_run, one_run).")
  flags.DEFINE_integer("batch_size", 64, "Batch size (many_run, one_run).")
  flags.DEFINE_integer("white_box_steps", 10, "Full-batch steps (white_box).")
  flags.DEFINE_integer("one_run_canaries", 500, "Canaries of one_run.")
  flags.DEFINE_integer(
    "one_run_guesses", 25, "one_run guesses this many 'in' and 'out'."
  )
  flags.DEFINE_float("learning_rate", 1.0, "Constant SGD learning rate.")
  flags.DEFINE_integer(
    "hidden", 16, "Hidden units of the fixed-init MLP (0: softmax regression)."
  )
  flags.DEFINE_enum(
    "threshold_strategy", "bonferroni", ["bonferroni", "split"], "many_run."
  )
  flags.DEFINE_float("confidence", 0.95, "Confidence of the bounds.")
  flags.DEFINE_list("sweep_epsilons", ["1", "2", "4", "8"], "sweep's targets.")
  flags.DEFINE_integer("seeds", 3, "sweep: seeds per target epsilon.")
  flags.DEFINE_string("output_dir", None, "Where report.json goes.")
  flags.DEFINE_integer("seed", 0, "Canary, inclusion and training seed.")


def _config(sigma, *, epochs, batch_size, seed):
  return miajax.TrainConfig(
    model=dp_audit.fixed_init_mlp(FLAGS.hidden, 10, seed=seed),
    epochs=epochs,
    batch_size=batch_size,
    learning_rate=FLAGS.learning_rate,
    momentum=0.0,
    weight_decay=0.0,
    schedule="constant",
    seed=seed,
    defense=D.dp_sgd(FLAGS.l2_norm_clip, sigma),
  )


def _sigma(eps, rate, steps):
  return D.dp_noise_multiplier(
    target_epsilon=eps,
    sample_rate=rate,
    steps=steps,
    delta=FLAGS.delta,
    accountant=FLAGS.accountant,
  )


def many_run(ds, eps, seed, num_models):
  k = FLAGS.num_canaries
  if FLAGS.canary == "noise":
    cx, cy = dp_audit.noise_canaries(
      ds.x_train.shape[1:], k, label=0, high=FLAGS.noise_high, seed=seed
    )
  else:
    cx, cy = dp_audit.mislabeled_canaries(
      ds.x_test, ds.y_test, k, num_classes=10, seed=seed
    )
  keep = np.ones((2, len(ds.y_train) + k), bool)
  keep[1, -k:] = False  # the smallest training set: the largest sample rate
  rate, steps = batches.dp_sampling(keep, FLAGS.batch_size, FLAGS.epochs)
  sigma = _sigma(eps, rate, steps)
  cfg = _config(
    sigma, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, seed=seed
  )
  res = dp_audit.canary_audit(
    cfg,
    ds.x_train,
    ds.y_train,
    cx,
    cy,
    num_models=num_models,
    num_classes=10,
    delta=FLAGS.delta,
    confidence=FLAGS.confidence,
    threshold_strategy=FLAGS.threshold_strategy,
    accountant=FLAGS.accountant,
    seed=seed,
  )
  s, inc = res.pop("scores"), res.pop("include")
  res["score_mean"] = {"in": float(s[inc].mean()), "out": float(s[~inc].mean())}
  res["sigma"] = sigma
  return res


def one_run(ds, eps, seed):
  m, g = FLAGS.one_run_canaries, FLAGS.one_run_guesses
  # zero-mean noise inputs with random labels: each canary's gradient points
  # its own way, so canaries barely interfere
  cx, _ = dp_audit.noise_canaries(
    ds.x_train.shape[1:], m, low=-10.0, high=10.0, seed=seed + 1
  )
  cy = np.random.default_rng(seed + 2).integers(0, 10, m).astype(np.int32)
  keep = np.ones((1, len(ds.y_train) + m), bool)
  keep[0, len(ds.y_train) :] = False
  rate, steps = batches.dp_sampling(keep, FLAGS.batch_size, FLAGS.epochs)
  sigma = _sigma(eps, rate, steps)
  cfg = _config(
    sigma, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, seed=seed
  )
  res = dp_audit.one_run_audit(
    cfg,
    ds.x_train,
    ds.y_train,
    cx,
    cy,
    num_classes=10,
    k_pos=g,
    k_neg=g,
    delta=FLAGS.delta,
    confidence=FLAGS.confidence,
    accountant=FLAGS.accountant,
    seed=seed,
  )
  res.pop("scores"), res.pop("include")
  res["sigma"] = sigma
  return res


def white_box(ds, eps, seed, num_models):
  n, steps = len(ds.y_train), FLAGS.white_box_steps
  sigma = _sigma(eps, 1.0, steps)
  cfg = _config(sigma, epochs=steps, batch_size=n, seed=seed)
  res = dp_audit.gradient_canary_audit(
    cfg,
    ds.x_train,
    ds.y_train,
    num_models=num_models,
    num_classes=10,
    delta=FLAGS.delta,
    confidence=FLAGS.confidence,
    accountant=FLAGS.accountant,
    seed=seed,
  )
  s, inc = res.pop("scores"), res.pop("include")
  # Full batch: the canary's mechanism is the Gaussian one with mu =
  # sqrt(steps) / sigma, so the cap is exact for this recipe.
  res["cap"] = dp_audit.gaussian_audit_cap(
    np.sqrt(steps) / sigma,
    int(inc.sum()),
    int((~inc).sum()),
    delta=FLAGS.delta,
    confidence=FLAGS.confidence,
    seed=seed,
  )
  res["score_mean"] = {"in": float(s[inc].mean()), "out": float(s[~inc].mean())}
  res["sigma"] = sigma
  return res


def _bounds(mode, res) -> dict:
  if mode == "white_box":
    return {
      "white_box_cp": res["clopper_pearson"]["epsilon"],
      "white_box_gdp": res["gdp"]["epsilon"],
    }
  return {mode: res["bound"]["epsilon"]}


def sweep(ds):
  rows = []
  for eps in [float(e) for e in FLAGS.sweep_epsilons]:
    for seed in range(FLAGS.seeds):
      for mode in ("white_box", "many_run", "one_run"):
        t = time.perf_counter()
        if mode == "one_run":
          res = one_run(ds, eps, seed)
        else:
          res = globals()[mode](ds, eps, seed, FLAGS.num_models)
        for audit, bound in _bounds(mode, res).items():
          rows.append(
            {
              "target_epsilon": eps,
              "claimed_epsilon": res["claimed_epsilon"],
              "sigma": res["sigma"],
              "seed": seed,
              "audit": audit,
              "lower_bound": bound,
              "wall_s": time.perf_counter() - t,
            }
          )
        print(
          f"eps {eps:g} seed {seed} {mode}: "
          + ", ".join(f"{a} {b:.3f}" for a, b in _bounds(mode, res).items())
          + f" (claimed {res['claimed_epsilon']:.3f})",
          flush=True,
        )
  return rows


def _sweep_outputs(out, rows):
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  audits = list(dict.fromkeys(r["audit"] for r in rows))
  lines = ["| accountant eps | " + " | ".join(audits) + " |"]
  lines.append("|---" * (len(audits) + 1) + "|")
  fig, ax = plt.subplots(figsize=(5, 4))
  targets = sorted({r["target_epsilon"] for r in rows})
  for audit in audits:
    mine = [r for r in rows if r["audit"] == audit]
    ax.scatter(
      [r["claimed_epsilon"] for r in mine],
      [r["lower_bound"] for r in mine],
      label=audit,
      s=14,
    )
  for eps in targets:
    cells = []
    for audit in audits:
      v = [
        r["lower_bound"]
        for r in rows
        if r["audit"] == audit and r["target_epsilon"] == eps
      ]
      cells.append(f"{max(v):.3f} (max of {len(v)})")
    lines.append(f"| {eps:g} | " + " | ".join(cells) + " |")
  top = max(targets) * 1.05
  ax.plot([0, top], [0, top], "k--", lw=1, label="lower bound = claim")
  ax.set_xlabel(f"accountant epsilon ({FLAGS.accountant})")
  ax.set_ylabel(f"lower bound ({FLAGS.confidence:.0%})")
  ax.set_title("DP-SGD audits on digits")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "sweep.png", dpi=120)
  plt.close(fig)
  table = "\n".join(lines) + "\n"
  (out / "sweep.md").write_text(table)
  return table


def main(argv):
  harness.start(argv)
  if FLAGS.num_models < 4:
    harness.usage_error(f"--num_models must be >= 4, got {FLAGS.num_models}")
  if FLAGS.num_canaries < 1:
    harness.usage_error(
      f"--num_canaries must be >= 1, got {FLAGS.num_canaries}"
    )
  if not 0 < 2 * FLAGS.one_run_guesses <= FLAGS.one_run_canaries:
    harness.usage_error(
      "--one_run_guesses must be in [1, --one_run_canaries / 2], got "
      f"{FLAGS.one_run_guesses}"
    )
  try:
    eps_list = [float(e) for e in FLAGS.sweep_epsilons]
  except ValueError:
    harness.usage_error(
      f"--sweep_epsilons must be numbers: {FLAGS.sweep_epsilons}"
    )
  if min(eps_list + [FLAGS.target_epsilon]) <= 0:
    harness.usage_error("target epsilons must be > 0")
  out = harness.make_output_dir()
  t0 = time.perf_counter()
  ds = miajax.load("digits")
  mode, eps, seed = FLAGS.mode, FLAGS.target_epsilon, FLAGS.seed
  config = {
    name: getattr(FLAGS, name)
    for name in (
      "mode num_models canary num_canaries noise_high target_epsilon "
      "accountant delta l2_norm_clip epochs batch_size white_box_steps "
      "one_run_canaries one_run_guesses learning_rate hidden "
      "threshold_strategy confidence sweep_epsilons seeds seed"
    ).split()
  }
  if mode == "sweep":
    rows = sweep(ds)
    table = _sweep_outputs(out, rows)
    harness.write_report(out, {"config": config, "rows": rows})
    print(table, end="")
    print(
      f"wrote sweep.json/md/png to {out} in {time.perf_counter() - t0:.0f} s"
    )
    (out / "sweep.json").write_text((out / "report.json").read_text())
    return
  if mode == "one_run":
    res = one_run(ds, eps, seed)
  else:
    res = globals()[mode](ds, eps, seed, FLAGS.num_models)
  rep = {
    "config": config,
    "sampling": (
      "full batch (every step sees every example)"
      if mode == "white_box"
      else "shuffled fixed-size batches, accounted as Poisson"
    ),
    **{k: v for k, v in res.items() if k not in ("bound",)},
    "lower_bound": res.get("bound", res.get("gdp")),
    "timing_s": {"train": res["train_s"], "total": time.perf_counter() - t0},
  }
  harness.write_report(out, rep)
  print(
    f"{'mode':>9} {'models':>6} {'sigma':>7} {'accountant eps':>15}  lower bounds"
  )
  bounds = ", ".join(f"{a} {b:.3f}" for a, b in _bounds(mode, res).items())
  models = 1 if mode == "one_run" else FLAGS.num_models
  print(
    f"{mode:>9} {models:>6} {res['sigma']:>7.3f} "
    f"{res['claimed_epsilon']:>15.3f}  {bounds}"
  )
  if mode == "white_box":
    cap = res["cap"]
    print(
      f"cap of {models} trials (median of {cap['draws']} ideal audits): "
      f"gdp {cap['gdp']['median']:.3f}, clopper_pearson "
      f"{cap['clopper_pearson']['median']:.3f}"
    )
  print(
    f"delta {FLAGS.delta:g}, {FLAGS.confidence:.0%} confidence, accountant "
    f"{FLAGS.accountant}; train {res['train_s']:.1f} s"
  )


if __name__ == "__main__":
  define_flags()
  harness.run(main)
