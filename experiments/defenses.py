"""The defense tables: training, model and output defenses against LiRA and threshold attacks.

  python experiments/defenses.py --output_dir=runs/defenses_digits

Rows (``--rows`` picks a subset, comma separated):

* the eight ML-Leaks-style combinations of dropout (0 or ``--dropout``),
  label smoothing (0 or ``--label_smoothing``) and top-k masking of the
  released probabilities (none or ``top_k(--top_k)``): ``none``, ``topk``,
  ``ls``, ``ls+topk``, ``dropout``, ``dropout+topk``, ``dropout+ls``,
  ``dropout+ls+topk``. The default k = 1 is the strongest masking (only the
  predicted class's probability is released); k = 3 would keep all the
  features of ML-Leaks' attack, so it could not change that attack at all.
  With the residual view of :func:`miajax.defenses.apply_output`, top-k keeps
  ``p_y`` and ``1 - p_y`` of every example whose label is among the k largest,
  so LiRA only loses information on misclassified examples.
* ``rounding``, ``temperature``, ``label_only``: output transforms on the
  undefended models (same training run as ``none``): probabilities rounded to
  ``--rounding_decimals`` decimals, the softmax at temperature
  ``--temperature``, or only the predicted label (a one-hot vector). None of
  them changes the top-1 label, so the label-only attacks score the same on
  them as on ``none``: the table shows which attacks each one stops and which
  it leaves untouched.
* ``hamp``: HAMP training (``hamp(--hamp_gamma, --hamp_alpha)``; alpha in
  miajax's per-example convention, ``C`` times the released code's: the
  released CIFAR-10 setting 0.001 is 0.01 here) plus HAMP's output
  modification at query time, with one fresh uniform random input per
  example and query (range of the training inputs), the same inputs for
  every model.
* ``dp_eps<e>`` for every ``e`` in ``--dp_epsilons``: DP-SGD, clip
  ``--dp_clip``, noise multiplier from :func:`miajax.defenses.
  dp_noise_multiplier` for ``sample_rate = batch_size / (fewest members of
  any model)`` and ``steps = dp_epochs * ceil(most members / batch_size)``
  (both from :func:`miajax.engine.dp_sampling`, the engine's own step
  count), ``delta = --dp_delta``. The engine draws
  shuffled fixed-size batches; the accountant treats them as Poisson sampled
  at that rate (see :mod:`miajax.defenses.privacy`), the usual convention.
  ``--dp_epochs`` (default 15) is smaller than ``--epochs``: per-example
  gradients make DP-SGD about 25x slower here, and at fixed epsilon fewer
  steps also mean less noise per step. ``--dp_learning_rate`` (default 0.03)
  replaces the common learning rate: the noisy gradient's norm is many times
  the clipped signal's (sigma 5.3 x clip / batch 64 on ~50k parameters), and
  0.1 gave about 0.46 test accuracy at epsilon 1 where 0.02-0.03 gave about
  0.62-0.66 (4-model probe on digits over learning rates 0.01-0.5 and batch
  sizes 64-512, all worse at larger batches; a choice made on test accuracy,
  so mildly optimistic for utility).
* ``l2``: L2 regularisation, as weight decay ``--weight_decay + --l2``
  (with SGD, the same as an extra loss penalty ``0.5 l2 ||params||^2`` on
  top of the common weight decay; see :mod:`miajax.engine.recipe`).

Rows that differ only in their output transform share one training run:
each distinct run lives in ``<output_dir>/runs/<short_name>`` and is reused by
reruns (a changed recipe in the same directory is refused, not mixed).

Attacker. ``--shadow_defense=same`` (default, defense-aware): the shadows are
trained with the target's recipe and see the same output transform, so
every model is attacked in turn with all the others as its shadows
(:func:`miajax.attacks.leave_one_out`). ``--shadow_defense=none``: the
attacker trains undefended shadows (one run with seed ``--seed + 1``, so its
models share neither design nor initialisation with the targets) and reads
their raw outputs; every defended model is attacked by
``attacks.lira_online/lira_offline(shadow_scores, shadow_keep, target_scores)``.

Attacks per row: ``lira_online``, ``lira_offline`` (on logit-scaled
confidences of the attacker's view), ``global_threshold`` (the logit-scaled
score itself), ``max_confidence`` (threshold on the top released
probability, ML-Leaks' adversary 3) and, with ``--label_only`` (default), the
label-only attacks of :mod:`miajax.attacks.label_only` (augmentation and noise
robustness, thresholded and with the binomial shadow test; computed from the
top-1 labels of perturbed queries, which the output rows all keep). All
targets' scores are pooled into one ROC per attack.

Empirical epsilon. Each attack's ``epsilon_lower_bound`` (delta =
``--dp_delta``, 95 %) is in its summary; the row's ``empirical_epsilon`` is
the largest over the row's k attacks, each computed at confidence
``1 - 0.05 / k`` so that the maximum holds at 95 % (Bonferroni), and is
printed beside the accountant's epsilon for DP rows. The pooled scores of
leave-one-out are not independent trials of one training run, so this is an
empirical indication, not a formal audit (see
:func:`miajax.metrics.epsilon_lower_bound`).

Outputs: ``report.json`` (``rows``, ``dropout_sweep``, and the undefended row
as the top-level ``target``/``attacks`` of the common schema), ``table.md``
(also printed), ``privacy_utility.png`` (test accuracy vs TPR@1%FPR of
lira_online and of the best label-only attack, one legend entry per row, TPRs
of 0 drawn on a marked floor) and ``dropout_sweep.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging as py_logging
import math
import os
import time
import warnings
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

import common
import harness
from configs import defenses as defenses_config
from miajax import attacks, engine, metrics, report, runs, scores, usability
from miajax import defenses as D
from miajax.attacks import label_only

FLAGS = flags.FLAGS
CONFIG = defenses_config.get_config()
common.define_training_flags(CONFIG)
flags.DEFINE_string(
  "rows",
  CONFIG["rows"],
  "Comma-separated subset of rows to run (default: all; see module docstring).",
)
flags.DEFINE_enum(
  "shadow_defense",
  CONFIG["shadow_defense"],
  ["same", "none"],
  "same: shadows trained and queried like the targets (defense-aware attacker); "
  "none: undefended shadows.",
)
flags.DEFINE_float(
  "dropout", CONFIG["dropout"], "Dropout rate of the dropout rows."
)
flags.DEFINE_float(
  "label_smoothing",
  CONFIG["label_smoothing"],
  "Label smoothing of the ls rows.",
)
flags.DEFINE_integer("top_k", CONFIG["top_k"], "k of the top-k masking rows.")
flags.DEFINE_integer(
  "rounding_decimals",
  CONFIG["rounding_decimals"],
  "Decimals of the rounding row's released probabilities.",
)
flags.DEFINE_float(
  "temperature",
  CONFIG["temperature"],
  "Temperature of the temperature row's released softmax.",
)
flags.DEFINE_float(
  "hamp_gamma",
  CONFIG["hamp_gamma"],
  "HAMP entropy threshold (fraction of ln C).",
)
flags.DEFINE_float(
  "hamp_alpha",
  CONFIG["hamp_alpha"],
  "HAMP entropy weight, per-example convention (C x the released code's).",
)
flags.DEFINE_list(
  "dp_epsilons",
  common.list_default(CONFIG["dp_epsilons"]),
  "Target epsilons of the DP-SGD rows.",
)
flags.DEFINE_float(
  "dp_delta",
  CONFIG["dp_delta"],
  "DP delta (also the delta of the empirical epsilon bounds).",
)
flags.DEFINE_float(
  "dp_clip", CONFIG["dp_clip"], "DP-SGD per-example L2 clipping norm."
)
flags.DEFINE_integer(
  "dp_epochs",
  CONFIG["dp_epochs"],
  "Epochs of the DP-SGD rows (their steps enter the accounting).",
)
flags.DEFINE_float(
  "dp_learning_rate",
  CONFIG["dp_learning_rate"],
  "Peak learning rate of the DP-SGD rows.",
)
flags.DEFINE_float(
  "l2",
  CONFIG["l2"],
  "Extra weight decay of the l2 row, added to --weight_decay (with SGD: a "
  "penalty 0.5 l2 ||params||^2).",
)
flags.DEFINE_list(
  "dropout_sweep",
  common.list_default(CONFIG["dropout_sweep"]),
  "Dropout rates of the sweep (empty to skip).",
)

ATTACK_NAMES = (
  "lira_online",
  "lira_offline",
  "global_threshold",
  "max_confidence",
)
# The label-only attacks read only the top-1 label, which every output row keeps (rounding: ties aside),
# so they are scored on the run's raw view labels.
LABEL_ATTACKS = (
  "label_aug",
  "label_aug_lira",
  "label_noise",
  "label_noise_lira",
)
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Row:
  """One table row: a training recipe (``defense``, ``epochs``) and a query-time ``output`` transform."""

  name: str
  defense: Any
  output: Any = None
  epochs: int | None = None  # None: the common --epochs
  learning_rate: float | None = None  # None: the common --learning_rate
  weight_decay: float | None = None  # None: the common --weight_decay
  dp_target_epsilon: float | None = None


def build_rows(keep: np.ndarray, batch_size: int) -> list[Row]:
  """Every row of the table, in print order."""
  rows = []
  for use_dropout in (False, True):
    for use_ls in (False, True):
      for use_topk in (False, True):
        tags = [
          t
          for t, on in (
            ("dropout", use_dropout),
            ("ls", use_ls),
            ("topk", use_topk),
          )
          if on
        ]
        defense = D.chain(
          D.dropout(FLAGS.dropout) if use_dropout else None,
          D.label_smoothing(FLAGS.label_smoothing) if use_ls else None,
        )
        rows.append(
          Row(
            "+".join(tags) or "none",
            defense,
            D.top_k(FLAGS.top_k) if use_topk else None,
          )
        )
  rows.append(Row("rounding", D.none(), D.rounding(FLAGS.rounding_decimals)))
  rows.append(Row("temperature", D.none(), D.temperature(FLAGS.temperature)))
  rows.append(Row("label_only", D.none(), D.label_only()))
  rows.append(
    Row("hamp", D.hamp(FLAGS.hamp_gamma, FLAGS.hamp_alpha), D.hamp_output())
  )
  for text in FLAGS.dp_epsilons:
    eps = float(text)
    rate, steps = engine.dp_sampling(keep, batch_size, FLAGS.dp_epochs)
    sigma = D.dp_noise_multiplier(
      target_epsilon=eps, sample_rate=rate, steps=steps, delta=FLAGS.dp_delta
    )
    rows.append(
      Row(
        f"dp_eps{eps:g}",
        D.dp_sgd(FLAGS.dp_clip, sigma),
        None,
        epochs=FLAGS.dp_epochs,
        learning_rate=FLAGS.dp_learning_rate,
        dp_target_epsilon=eps,
      )
    )
  rows.append(Row("l2", D.none(), weight_decay=FLAGS.weight_decay + FLAGS.l2))
  return rows


def sweep_rows() -> list[Row]:
  rates = [float(r) for r in FLAGS.dropout_sweep]
  return [Row(f"dropout_{r:g}", D.dropout(r) if r else D.none()) for r in rates]


def run_name(row: Row) -> str:
  """Directory name of a row's training run (rows differing only in output share it)."""
  name = D.short_name(row.defense).replace(" ", "")
  if row.weight_decay is not None:
    name += f"_wd{row.weight_decay:g}"
  if row.epochs is not None:
    name += f"_e{row.epochs}"
  if row.learning_rate is not None:
    name += f"_lr{row.learning_rate:g}"
  return name


def defense_label(row: Row) -> str:
  """The training recipe's change for tables: the defense, and a changed weight decay."""
  parts = [] if row.defense == D.none() else [D.short_name(row.defense)]
  if row.weight_decay is not None:
    parts.append(f"weight_decay({row.weight_decay:g})")
  return "+".join(parts) or "none"


def _spec(
  defense,
  *,
  epochs=None,
  learning_rate=None,
  weight_decay=None,
  seed_offset=0,
) -> runs.RunSpec:
  spec = common.run_spec(defense=None if defense == D.none() else defense)
  cfg = spec.train
  if weight_decay is not None:
    cfg = dataclasses.replace(cfg, weight_decay=float(weight_decay))
  if epochs is not None:
    cfg = dataclasses.replace(cfg, epochs=int(epochs))
  if learning_rate is not None:
    cfg = dataclasses.replace(cfg, learning_rate=float(learning_rate))
  if seed_offset:
    cfg = dataclasses.replace(cfg, seed=cfg.seed + seed_offset)
  return dataclasses.replace(spec, train=cfg)


# ---------------------------------------------------------------------------
# HAMP's output modification needs the model's logits on random inputs


def random_queries(spec: runs.RunSpec) -> dict:
  """``run_training``'s extra queries for HAMP: one random input per example and query.

  Uniform over the training inputs' range, shared by all models, drawn from
  the run's seed; the description enters the run's ``config.json``.
  """
  ds = runs.load_dataset(spec)
  x = ds.x_train
  num_queries = int(engine.query_views(x[:1], spec.queries).shape[0])
  low, high = float(x.min()), float(x.max())
  seed = spec.train.seed + 20_011
  rand = np.asarray(
    D.random_inputs(
      jax.random.PRNGKey(seed),
      (num_queries * x.shape[0],) + x.shape[1:],
      low=low,
      high=high,
    )
  )
  return {
    "random": (
      rand,
      {
        "distribution": "uniform",
        "low": low,
        "high": high,
        "seed": seed,
        "per_query": True,
        "queries": num_queries,
      },
    )
  }


def random_logits(run: runs.RunResult) -> np.ndarray:
  """``float32[models, examples, queries, classes]`` from the run's ``extra_logits["random"]``."""
  models, examples, queries, _ = run.logits.shape
  rl = run.extra_logits["random"]
  return rl.reshape(models, queries, examples, -1).transpose(0, 2, 1, 3)


# ---------------------------------------------------------------------------
# attacks


def attacker_signals(logits, labels, output=None, random_logits=None):
  """(logit-scaled, max-confidence) scores ``float[models, examples, queries]`` of the attacker's view."""
  view = (
    logits
    if output is None
    else D.apply_output(output, logits, random_logits=random_logits)
  )
  lab = np.asarray(labels)[None, :, None]
  return np.asarray(scores.logit_scaled(view, lab)), np.asarray(
    scores.max_confidence(view)
  )


def attack_scores(target, keep, shadow=None) -> dict[str, np.ndarray]:
  """Membership scores ``float[targets, examples]`` of every attack, NaN
  where an example had too few shadows.

  Args:
    target: (logit-scaled, max-confidence) scores of the targets.
    keep: ``bool[targets, examples]``, the targets' membership.
    shadow: ``None`` (leave-one-out among the targets) or
      ``(logit-scaled scores, keep)`` of a separate shadow run.
  """
  lira_t, maxc_t = target
  out = {}
  for name in ("lira_online", "lira_offline"):
    if shadow is None:
      out[name] = attacks.leave_one_out(
        lira_t, keep, attack=name, too_few_shadows="nan"
      )
    else:
      out[name] = getattr(attacks, name)(
        shadow[0], shadow[1], lira_t, too_few_shadows="nan"
      )
  out["global_threshold"] = attacks.global_threshold(lira_t)
  out["max_confidence"] = attacks.global_threshold(maxc_t)
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def label_scores(
  run: runs.RunResult, ok: np.ndarray, shadow_views=None
) -> dict[str, np.ndarray]:
  """The label-only attacks (``LABEL_ATTACKS``) on a run's view labels; ``{}`` if the run has none.

  Args:
    run: the targets' run; ``ok`` selects its non-diverged models.
    shadow_views: ``None`` (leave-one-out among the targets) or
      ``(view labels int[shadows, examples, views], keep)`` of a separate shadow run.
  """
  if run.label_views is None or run.label_only is None:
    return {}
  views, keep = run.label_views[ok], run.keep[ok]
  if shadow_views is None:
    out = label_only.attack_scores(views, run.labels, keep, run.label_only)
  else:
    sv, sk = shadow_views
    out = label_only.attack_scores(
      np.concatenate([sv, views]),
      run.labels,
      np.concatenate([sk, keep]),
      run.label_only,
      num_references=sv.shape[0],
    )
  return {
    name: np.asarray(out[name], np.float64)
    for name in LABEL_ATTACKS
    if name in out
  }


def summarise(
  all_scores: dict, keep: np.ndarray, *, delta: float, seed: int
) -> tuple[dict, dict]:
  """(``{attack: attack_summary}``, the row's Bonferroni-combined empirical epsilon),
  both over each attack's scored entries (``usability.summarise_scored``)."""
  summaries, bounds = {}, {}
  per_attack = 1.0 - (1.0 - CONFIDENCE) / len(all_scores)

  def summary(s, k):
    return report.attack_summary(
      s, k, confidence=CONFIDENCE, seed=seed, delta=delta
    )

  for name, s in all_scores.items():
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=".*unresolvable.*")
      summaries[name] = usability.summarise_scored(s, keep, summary)
    if summaries[name]["auc"] is not None:
      bounds[name] = metrics.epsilon_lower_bound(
        *usability.scored(s, keep),
        delta=delta,
        confidence=per_attack,
        seed=seed,
      )
  # An attack that scored nothing bounds nothing: 0, the trivial bound.
  best = max(bounds, key=bounds.get, default=None)
  return summaries, {
    "epsilon": 0.0 if best is None else bounds[best],
    "attack": best,
    "confidence": CONFIDENCE,
    "per_attack_confidence": per_attack,
    "delta": delta,
    "per_attack": bounds,
  }


# ---------------------------------------------------------------------------
# tables and plots


def _f(x, spec=".3f"):
  return (
    "n/a"
    if x is None or (isinstance(x, float) and math.isnan(x))
    else format(x, spec)
  )


def _best(attacks_: dict, names) -> str | None:
  """The attack among ``names`` with the highest TPR at 1 % FPR (None if none is in the row)."""
  present = [n for n in names if n in attacks_]
  return (
    max(present, key=lambda a: attacks_[a]["tpr_at_fpr"]["0.01"] or 0.0)
    if present
    else None
  )


def summary_table(rows: list[dict]) -> str:
  head = [
    "row",
    "training defense",
    "output",
    "epochs",
    "train acc",
    "test acc",
    "gap",
    "lira_online AUC",
    "lira_online TPR@1%FPR",
    "lira_online TPR@0.1%FPR",
    "label-only AUC (best)",
    "label-only TPR@1%FPR",
    "max TPR@1%FPR (attack)",
    "DP eps (accountant)",
    "emp. eps (attack)",
  ]
  lines = [
    "| " + " | ".join(head) + " |",
    "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|",
  ]
  for r in rows:
    # A row whose models were all unusable has no attacks: n/a cells.
    lo = r["attacks"].get("lira_online") or {}
    tpr = lo.get("tpr_at_fpr") or {}
    ci = (lo.get("tpr_at_fpr_ci") or {}).get("0.01")
    tpr1 = _f(tpr.get("0.01")) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")
    best = _best(r["attacks"], list(r["attacks"]))
    lbest = _best(r["attacks"], LABEL_ATTACKS)
    if lbest is None:
      label_cells = ["n/a", "n/a"]
    else:
      la = r["attacks"][lbest]
      label_cells = [f"{_f(la['auc'])} ({lbest})", _f(la["tpr_at_fpr"]["0.01"])]
    dp = r["dp"]
    emp = r["empirical_epsilon"]
    lines.append(
      "| "
      + " | ".join(
        [
          r["name"],
          r["defense_short"],
          r["output_short"],
          str(r["epochs"]),
          _f(r["train_accuracy"]),
          _f(r["test_accuracy"]),
          _f(r["train_test_gap"]),
          _f(lo.get("auc")),
          tpr1,
          _f(tpr.get("0.001"), ".4f"),
          *label_cells,
          "n/a"
          if best is None
          else f"{_f(r['attacks'][best]['tpr_at_fpr']['0.01'])} ({best})",
          "-"
          if dp is None
          else f"{dp['epsilon']:.2f} (sigma {dp['noise_multiplier']:.3f})",
          "n/a" if emp is None else f"{emp['epsilon']:.2f} ({emp['attack']})",
        ]
      )
      + " |"
    )
  return "\n".join(lines)


def detail_table(rows: list[dict]) -> str:
  return report.format_table(
    {f"{r['name']} / {a}": s for r in rows for a, s in r["attacks"].items()},
    fpr_levels=(0.01, 0.001),
  )


def _figure(size):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=size)
  FigureCanvasAgg(fig)
  return fig


# Where a TPR of 0 is drawn on the log axes (said in the legend): below every resolvable rate here.
PLOT_FLOOR = 1e-4
_MARKERS = "osD^v<>pPX*hH8d"


def _on_log_axis(value) -> tuple[float, bool]:
  """(y to draw, whether it is a 0 or unresolvable value moved to ``PLOT_FLOOR``)."""
  if value is None or not value > 0:
    return PLOT_FLOOR, True
  return float(value), False


def plot_privacy_utility(rows: list[dict], path) -> None:
  """Test accuracy vs TPR at 1 % FPR: LiRA online (left) and the best label-only attack (right).

  Every row is its own series (colour + marker, same in both panels) named in
  one legend, so no text is drawn over points; a TPR of 0 sits on the floor
  line with a hollow marker and the legend says so.
  """
  fig = _figure((12.0, 5.5))
  panels = [
    ("lira_online", fig.add_subplot(1, 2, 1)),
    ("label-only (best)", fig.add_subplot(1, 2, 2)),
  ]
  cmap = __import__("matplotlib").colormaps["tab20"]
  handles = []
  for i, r in enumerate(rows):
    color, marker = cmap(i % 20), _MARKERS[i % len(_MARKERS)]
    zero_any, h = False, None
    for title, ax in panels:
      attack = (
        "lira_online"
        if title == "lira_online"
        else _best(r["attacks"], LABEL_ATTACKS)
      )
      # Rows without usable models have no attack (nor accuracy) to draw.
      if attack not in r["attacks"] or r["test_accuracy"] is None:
        continue
      a = r["attacks"][attack]
      y, floored = _on_log_axis(a["tpr_at_fpr"]["0.01"])
      zero_any |= floored
      ci = (a.get("tpr_at_fpr_ci") or {}).get("0.01")
      err = (
        None
        if (floored or not ci)
        else [[max(y - max(ci[0], PLOT_FLOOR), 0.0)], [max(ci[1] - y, 0.0)]]
      )
      h = ax.errorbar(
        [r["test_accuracy"]],
        [y],
        yerr=err,
        fmt=marker,
        color=color,
        capsize=3,
        markersize=7,
        markerfacecolor="none" if floored else color,
      )
    if h is None:
      continue
    label = r["name"] + (
      " (TPR 0 in a panel: drawn on the floor, hollow)" if zero_any else ""
    )
    handles.append((h, label))
  for title, ax in panels:
    ax.axhline(0.01, color="gray", linestyle="--", linewidth=1)
    ax.axhline(PLOT_FLOOR, color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("test accuracy")
    ax.set_ylabel(f"{title} TPR at 1% FPR (95% interval)")
    ax.set_yscale("log")
    ax.set_ylim(PLOT_FLOOR / 2, 1.0)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
  from matplotlib.lines import Line2D

  extra = [
    (Line2D([], [], color="gray", linestyle="--"), "chance (TPR = FPR = 1%)"),
    (
      Line2D([], [], color="black", linestyle=":"),
      f"floor: TPR 0 drawn at {PLOT_FLOOR:g}",
    ),
  ]
  fig.legend(
    [h for h, _ in handles + extra],
    [t for _, t in handles + extra],
    loc="center right",
    fontsize=8,
    frameon=False,
  )
  fig.suptitle(
    f"{FLAGS.dataset}: utility vs privacy ({FLAGS.shadow_defense} shadows)"
  )
  fig.tight_layout(rect=(0, 0, 0.72, 0.95))
  fig.savefig(os.fspath(path), dpi=150, format="png")


def plot_dropout_sweep(sweep: list[dict], path) -> None:
  fig = _figure((11.0, 4.5))
  rates = [s["dropout_rate"] for s in sweep]

  def accuracy(key):
    # None (no usable model) is a gap in the line.
    return [np.nan if s[key] is None else s[key] for s in sweep]

  ax = fig.add_subplot(1, 2, 1)
  ax.plot(rates, accuracy("test_accuracy"), "o-", label="test accuracy")
  ax.plot(rates, accuracy("train_accuracy"), "s--", label="train accuracy")
  ax.set_xlabel("dropout rate")
  ax.set_ylabel("accuracy")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  ax = fig.add_subplot(1, 2, 2)
  names = [
    n
    for n in ATTACK_NAMES + LABEL_ATTACKS
    if all(n in s["attacks"] for s in sweep)
  ]
  for i, name in enumerate(names):
    drawn = [
      _on_log_axis(s["attacks"][name]["tpr_at_fpr"]["0.01"]) for s in sweep
    ]
    floored = [f for _, f in drawn]
    label = name + (
      " (all 0: on the floor)"
      if all(floored)
      else " (some 0: on the floor)"
      if any(floored)
      else ""
    )
    ax.plot(
      rates,
      [y for y, _ in drawn],
      marker=_MARKERS[i % len(_MARKERS)],
      linestyle="-",
      label=label,
    )
  ax.axhline(
    0.01,
    color="gray",
    linestyle="--",
    linewidth=1,
    label="chance (TPR = FPR = 1%)",
  )
  ax.axhline(
    PLOT_FLOOR,
    color="black",
    linestyle=":",
    linewidth=1,
    label=f"floor: TPR 0 drawn at {PLOT_FLOOR:g}",
  )
  ax.set_xlabel("dropout rate")
  ax.set_ylabel("TPR at 1% FPR")
  ax.set_yscale("log")
  ax.set_ylim(PLOT_FLOOR / 2, 1.0)
  ax.grid(True, alpha=0.3)
  ax.legend(
    fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False
  )
  fig.suptitle(
    f"{FLAGS.dataset}: dropout sweep ({FLAGS.shadow_defense} shadows)"
  )
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=150, format="png")


# ---------------------------------------------------------------------------


class _DropRdpNoise(py_logging.Filter):
  """dp_accounting logs one warning per RDP order it cannot evaluate (hundreds per bisection)."""

  def filter(self, record):
    return "failed to converge" not in record.getMessage()


def main(argv):
  harness.start(argv)
  if FLAGS.dropout_rate:
    raise app.UsageError(
      "--dropout_rate does not apply here: the rows set dropout (--dropout, --dropout_sweep)"
    )
  py_logging.getLogger("absl").addFilter(_DropRdpNoise())
  t_start = time.perf_counter()
  out = harness.make_output_dir()

  base = _spec(None)
  ds = runs.load_dataset(base)
  keep_design = runs.make_keep(base, ds.x_train.shape[0])
  batch = base.train.batch_size
  all_rows = build_rows(keep_design, batch)
  names = [r.name for r in all_rows]
  if FLAGS.rows:
    wanted = [w.strip() for w in FLAGS.rows.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
      raise app.UsageError(f"--rows: unknown {unknown}; choose from {names}")
    rows = [r for r in all_rows if r.name in wanted]
  else:
    rows = all_rows
  sweep = sweep_rows()

  timing = {"train": {}, "attacks": {}}
  trained: dict[str, tuple] = {}

  def get_run(row: Row, *, seed_offset=0):
    """(RunResult, random logits or None) of a row's training run, trained once per process."""
    name = run_name(row) + (
      f"_seed{FLAGS.seed + seed_offset}" if seed_offset else ""
    )
    if name not in trained:
      t0 = time.perf_counter()
      spec = _spec(
        row.defense,
        epochs=row.epochs,
        learning_rate=row.learning_rate,
        weight_decay=row.weight_decay,
        seed_offset=seed_offset,
      )
      logging.info(
        "run %s: %s", name, json.dumps(spec.to_json()["train"]["defense"])
      )
      if row.output is not None and D.needs_random_logits(row.output):
        run = common.train_run(
          spec,
          out / "runs" / name,
          log=logging.info,
          extra_queries=random_queries(spec),
        )
        trained[name] = (run, random_logits(run))
      else:
        trained[name] = (
          common.train_run(spec, out / "runs" / name, log=logging.info),
          None,
        )
      timing["train"][name] = time.perf_counter() - t0
      logging.info("run %s ready in %.1f s", name, timing["train"][name])
    return name, trained[name]

  verdicts: dict[str, usability.Usability] = {}

  def usable_models(name: str, run: runs.RunResult) -> np.ndarray:
    """``bool[models]``: the run's usable models, its exclusions logged once."""
    if name not in verdicts:
      # No chance test: a defense that leaves its models at chance (strong
      # DP, say) is a row to report, its attacks at chance too, not a
      # failure; only broken models (diverged, blown up) are dropped.
      verdicts[name] = common.judge_models(
        run.logits,
        run.labels,
        run.keep,
        run.train_accuracy,
        run.diverged,
        what=f"run {name}'s model",
        chance_sds=None,
      )
    return verdicts[name].usable

  shadow = shadow_views = shadow_name = None
  if FLAGS.shadow_defense == "none":
    shadow_name, (srun, _) = get_run(
      Row("shadows_none", D.none()), seed_offset=1
    )
    ok = usable_models(shadow_name, srun)
    shadow = (attacker_signals(srun.logits[ok], srun.labels)[0], srun.keep[ok])
    if srun.label_views is not None:
      shadow_views = (srun.label_views[ok], srun.keep[ok])

  def evaluate(row: Row) -> dict:
    name, (run, random_logits) = get_run(row)
    t0 = time.perf_counter()
    ok = usable_models(name, run)
    # Leave-one-out needs 3 models (the binomial label-only test drops two per target).
    if shadow is None and ok.sum() < 3:
      skipped = f"{ok.sum()} usable models; leave-one-out needs at least 3"
    elif shadow is not None and not (ok.any() and shadow[1].shape[0]):
      skipped = (
        f"{ok.sum()} usable targets and {shadow[1].shape[0]} usable "
        "shadows; the attacks need at least one of each"
      )
    else:
      skipped = None
    summaries, emp = {}, None
    if skipped:
      logging.error("%s: no attack run: %s", row.name, skipped)
    else:
      keep = run.keep[ok]
      target = attacker_signals(
        run.logits[ok],
        run.labels,
        row.output,
        None if random_logits is None else random_logits[ok],
      )
      all_scores = {
        **attack_scores(target, keep, shadow),
        **label_scores(run, ok, shadow_views),
      }
      summaries, emp = summarise(
        all_scores, keep, delta=FLAGS.dp_delta, seed=FLAGS.seed
      )
    epochs = row.epochs if row.epochs is not None else base.train.epochs
    rate, steps = engine.dp_sampling(run.keep, batch, epochs)
    dp = D.dp_summary(
      row.defense, sample_rate=rate, steps=steps, delta=FLAGS.dp_delta
    )
    if dp is not None:
      dp["target_epsilon"] = row.dp_target_epsilon
      dp["empirical_epsilon_below_accountant"] = (
        None if emp is None else bool(emp["epsilon"] <= dp["epsilon"])
      )
    timing["attacks"][row.name] = time.perf_counter() - t0
    # Over the usable models only.
    train_acc, test_acc = (
      (
        float(run.train_accuracy[ok].mean()),
        float(run.test_accuracy[ok].mean()),
      )
      if ok.any()
      else (None, None)
    )
    lo = summaries.get("lira_online", {})
    logging.info(
      "%s: test acc %s, lira_online AUC %s TPR@1%%FPR %s (%.1f s)",
      row.name,
      _f(test_acc),
      _f(lo.get("auc")),
      (lo.get("tpr_at_fpr") or {}).get("0.01"),
      timing["attacks"][row.name],
    )
    return {
      "name": row.name,
      "run": name,
      "epochs": int(epochs),
      "learning_rate": float(
        row.learning_rate
        if row.learning_rate is not None
        else base.train.learning_rate
      ),
      "weight_decay": float(
        row.weight_decay
        if row.weight_decay is not None
        else base.train.weight_decay
      ),
      "defense": D.describe(row.defense),
      "defense_short": defense_label(row),
      "output": None if row.output is None else D.describe(row.output),
      "output_short": "-" if row.output is None else D.short_name(row.output),
      "models": int(ok.sum()),
      "diverged_models": np.flatnonzero(run.diverged).tolist(),
      "excluded_models": verdicts[name].excluded(),
      "train_accuracy": train_acc,
      "test_accuracy": test_acc,
      "train_test_gap": None if train_acc is None else train_acc - test_acc,
      "attacks_skipped": skipped,
      "attacks": summaries,
      "dp": dp,
      "empirical_epsilon": emp,
    }

  results = [evaluate(r) for r in rows]
  sweep_results = []
  for r in sweep:
    res = evaluate(r)
    res["dropout_rate"] = D.model_kwargs(r.defense).get("dropout_rate", 0.0)
    sweep_results.append(res)

  t_plots = time.perf_counter()
  if results:
    plot_privacy_utility(results, out / "privacy_utility.png")
  if sweep_results:
    plot_dropout_sweep(sweep_results, out / "dropout_sweep.png")
  timing["plots"] = time.perf_counter() - t_plots

  protocol = (
    "leave_one_out: every model attacked with the others (same recipe, same output transform) "
    "as shadows"
    if shadow is None
    else f"undefended shadows: {shadow[1].shape[0]} models trained without defense (seed {FLAGS.seed + 1}), "
    "raw outputs; every defended model attacked with all of them"
  )
  text = [
    f"# Defenses on {FLAGS.dataset}: {FLAGS.num_models} models per run, {FLAGS.shadow_defense} shadows",
    "",
    f"Protocol: {protocol}. Scores of all targets pooled into one ROC per attack; intervals 95 %.",
    f"DP-SGD rows: {FLAGS.dp_epochs} epochs, learning rate {FLAGS.dp_learning_rate:g}, clip {FLAGS.dp_clip}, "
    f"delta {FLAGS.dp_delta:g}, RDP "
    "accountant; emp. eps = largest empirical lower bound over the row's attacks (95 % jointly).",
    "",
  ]
  if results:
    text += [
      "## Rows",
      "",
      summary_table(results),
      "",
      "## Every attack",
      "",
      detail_table(results),
      "",
    ]
  if sweep_results:
    text += ["## Dropout sweep", "", summary_table(sweep_results), ""]
  timing["total"] = time.perf_counter() - t_start
  text += [f"Wall time {timing['total']:.1f} s."]
  table = "\n".join(text) + "\n"
  (out / "table.md").write_text(table)

  baseline = next(
    (
      r
      for r in results + sweep_results
      if r["defense"] == {"name": "none"} and r["output"] is None
    ),
    None,
  )
  rep = {
    "config": common.flag_values(),
    "protocol": {
      "shadow_defense": FLAGS.shadow_defense,
      "description": protocol,
      "examples": int(keep_design.shape[1]),
      "attacks": list(ATTACK_NAMES) + list(LABEL_ATTACKS),
      # The undefended shadows' own exclusions (--shadow_defense=none).
      "shadow_excluded_models": None
      if shadow_name is None
      else verdicts[shadow_name].excluded(),
    },
    "baseline_row": None if baseline is None else baseline["name"],
    "target": None
    if baseline is None
    else {
      "train_accuracy": baseline["train_accuracy"],
      "test_accuracy": baseline["test_accuracy"],
    },
    "attacks": None if baseline is None else baseline["attacks"],
    "rows": results,
    "dropout_sweep": sweep_results,
    "timing_s": timing,
  }
  harness.write_report(out, rep)
  print(table)
  print(
    f"wrote {out / 'report.json'}, {out / 'table.md'}"
    + (f", {out / 'privacy_utility.png'}" if results else "")
    + (f", {out / 'dropout_sweep.png'}" if sweep_results else "")
  )


if __name__ == "__main__":
  harness.run(main)
