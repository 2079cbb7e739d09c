"""lira.py --budgets: every reference-based attack with the first k references, for each k; no retraining.

Which attack should a user with k reference models run?  Each model of the
run is a target in turn; its references at budget k are the first k usable
models of the run other than itself and, in a paired design, its partner
(the model trained on the complement of its half, whose membership would
reveal the target's).  A budget above what a target has left is capped and
the table says so.  Targets sharing a reference set are scored in one call.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from miajax import attacks, metrics, runs, scores
from miajax.runs import io

# name -> (signal, attack(shadow, shadow_keep, target) -> float[targets, examples])
few = dict(too_few_shadows="nan")
ATTACKS = {
  "lira_online": (
    "logit_scaled",
    lambda s, k, t: attacks.lira_online(s, k, t, **few),
  ),
  "lira_online_fixed": (
    "logit_scaled",
    lambda s, k, t: attacks.lira_online(s, k, t, fix_variance=True, **few),
  ),
  "lira_offline": (
    "logit_scaled",
    lambda s, k, t: attacks.lira_offline(s, k, t, **few),
  ),
  "lira_offline_fixed": (
    "logit_scaled",
    lambda s, k, t: attacks.lira_offline(s, k, t, fix_variance=True, **few),
  ),
  "rmia": ("confidence", lambda s, k, t: attacks.rmia(s, k, t, **few)),
  "rmia_offline": (
    "confidence",
    lambda s, k, t: attacks.rmia(s, k, t, offline=True, **few),
  ),
  "base": ("log_confidence", lambda s, k, t: attacks.base(s, k, t, **few)),
  "base_offline": (
    "log_confidence",
    lambda s, k, t: attacks.base(s, k, t, offline=True, **few),
  ),
  # BaVarIA's priors carry examples with no IN (or OUT) reference.
  "bavaria_t": ("logit_scaled", lambda s, k, t: attacks.bavaria(s, k, t)),
  "bavaria_n": (
    "logit_scaled",
    lambda s, k, t: attacks.bavaria(s, k, t, kind="n"),
  ),
  "bavaria_t_offline": (
    "logit_scaled",
    lambda s, k, t: attacks.bavaria(s, k, t, offline=True),
  ),
  "bavaria_n_offline": (
    "logit_scaled",
    lambda s, k, t: attacks.bavaria(s, k, t, kind="n", offline=True),
  ),
}
TPR_LEVEL = 0.001


def parse(text: str) -> list[int]:
  """``"1,2,4"`` as sorted distinct positive budgets (ValueError naming the bad value)."""
  out = set()
  for part in filter(None, (p.strip() for p in text.split(","))):
    try:
      k = int(part)
    except ValueError:
      raise ValueError(f"budget {part!r} is not an integer") from None
    if k < 1:
      raise ValueError(f"budgets must be >= 1, got {k}")
    out.add(k)
  if not out:
    raise ValueError("no budget given: e.g. 1,2,4,8")
  return sorted(out)


def is_paired(keep: np.ndarray) -> bool:
  """Whether models ``2i`` and ``2i+1`` trained on complementary halves (``bool[models, examples]``)."""
  m = keep.shape[0]
  return m % 2 == 0 and bool(np.all(keep[0::2] ^ keep[1::2]))


def reference_groups(usable, k: int, paired: bool) -> dict[tuple, list[int]]:
  """``{references: targets}`` at budget ``k``: each usable target's first ``k`` usable others."""
  groups: dict[tuple, list[int]] = {}
  ok = np.flatnonzero(usable)
  for t in ok:
    others = [m for m in ok if m != t and not (paired and m == t ^ 1)]
    groups.setdefault(tuple(others[:k]), []).append(int(t))
  return groups


def budget_scores(signals: dict, keep, usable, k: int, paired: bool) -> dict:
  """``{attack: float[models, examples]}`` at budget ``k`` (NaN: not a target, or unscored).

  ``signals``: ``{"logit_scaled" | "confidence": float[models, examples, queries]}``.
  """
  out = {name: np.full(keep.shape, np.nan) for name in ATTACKS}
  for refs, targets in reference_groups(usable, k, paired).items():
    refs = list(refs)
    for name, (signal, fn) in ATTACKS.items():
      values = signals[signal]
      try:
        out[name][targets] = np.asarray(
          fn(values[refs], keep[refs], values[targets]), np.float64
        )
      except ValueError:
        # An attack that cannot fit at this budget (e.g. no IN score in all
        # k references) leaves these targets unscored, and the table says so.
        pass
  return out


def _summary(values, is_member) -> dict:
  ok = np.isfinite(values)
  v, m = values[ok], is_member[ok]
  row = {"scored": int(ok.sum()), "unscored": int((~ok).sum())}
  if not (m.any() and (~m).any()):
    return {**row, "auc": None, "auc_ci": None, "tpr": None, "tpr_ci": None}
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*unresolvable.*")
    tpr = float(metrics.tpr_at_fpr(v, m, TPR_LEVEL))
    tpr_ci = metrics.tpr_at_fpr_interval(v, m, TPR_LEVEL)
  return {
    **row,
    "auc": float(metrics.auc(v, m)),
    "auc_ci": [float(c) for c in metrics.auc_interval(v, m)],
    "tpr": None if np.isnan(tpr) else tpr,
    "tpr_ci": None if np.isnan(tpr) else [float(c) for c in tpr_ci],
  }


def budget_table(
  run: runs.RunResult, usable, budgets, *, log=print
) -> list[dict]:
  """One row per (budget, attack): ``budget``, ``references`` (the largest set used), AUC and TPR at 0.1 % FPR with 95 % intervals."""
  lab = run.labels[None, :, None]
  signals = {
    "logit_scaled": np.asarray(scores.logit_scaled(run.logits, lab)),
    "confidence": np.asarray(scores.confidence(run.logits, lab)),
    "log_confidence": np.asarray(attacks.base_signal(run.logits, lab)),
  }
  paired = is_paired(run.keep)
  most = int(usable.sum()) - (2 if paired else 1)
  rows = []
  for k in budgets:
    got = budget_scores(signals, run.keep, usable, k, paired)
    for name, values in got.items():
      rows.append(
        {
          "budget": k,
          "references": min(k, most),
          "attack": name,
          **_summary(values[usable], run.keep[usable]),
        }
      )
    best = max(
      (r for r in rows[-len(got) :] if r["auc"] is not None),
      key=lambda r: r["auc"],
      default=None,
    )
    log(
      f"budget {k} ({min(k, most)} references): "
      + (
        f"best AUC {best['attack']} {best['auc']:.4f}"
        if best
        else "no attack scored"
      )
    )
  return rows


def _fmt(value, ci) -> str:
  if value is None:
    return "n/a"
  spec = ".4f" if value < 0.01 else ".3f"
  return (
    f"{value:{spec}} [{ci[0]:{spec}}, {ci[1]:{spec}}]"
    if ci
    else f"{value:{spec}}"
  )


def format_table(rows) -> str:
  """Markdown: one row per budget, AUC and TPR@0.1%FPR of every attack in columns."""
  names = list(dict.fromkeys(r["attack"] for r in rows))
  budgets = list(dict.fromkeys(r["budget"] for r in rows))
  by = {(r["budget"], r["attack"]): r for r in rows}
  head = "| k | " + " | ".join(names) + " |"
  lines = [
    "AUC [95 % interval] by number of references k:",
    "",
    head,
    "|---:|" + "---:|" * len(names),
  ]
  used = {r["budget"]: r["references"] for r in rows}
  label = lambda k: f"{k}" if used[k] == k else f"{k} (all: {used[k]})"
  for k in budgets:
    lines.append(
      f"| {label(k)} | "
      + " | ".join(_fmt(by[k, n]["auc"], by[k, n]["auc_ci"]) for n in names)
      + " |"
    )
  lines += ["", "TPR at 0.1 % FPR [95 % interval]:", "", head, lines[3]]
  for k in budgets:
    lines.append(
      f"| {label(k)} | "
      + " | ".join(_fmt(by[k, n]["tpr"], by[k, n]["tpr_ci"]) for n in names)
      + " |"
    )
  return "\n".join(lines)


def plot(rows, path: pathlib.Path, title: str) -> pathlib.Path:
  """AUC and TPR@0.1%FPR against k (log2 axis), one line per attack, with intervals."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  names = list(dict.fromkeys(r["attack"] for r in rows))
  # More attacks than the default cycle's ten colours.
  colors = plt.get_cmap("tab20")(np.arange(len(names)) % 20)
  for name, color in zip(names, colors):
    mine = [r for r in rows if r["attack"] == name]
    for ax, key in zip(axes, ("auc", "tpr")):
      pts = [
        (r["budget"], r[key], r[f"{key}_ci"])
        for r in mine
        if r[key] is not None
      ]
      if not pts:
        continue
      k, v, ci = zip(*pts)
      lo = [a - c[0] if c else 0 for a, c in zip(v, ci)]
      hi = [c[1] - a if c else 0 for a, c in zip(v, ci)]
      style = "--" if "offline" in name else "-"
      ax.errorbar(
        k,
        v,
        yerr=[lo, hi],
        label=name,
        ls=style,
        color=color,
        marker="o",
        ms=3,
        capsize=2,
      )
  ks = sorted({r["budget"] for r in rows})
  for ax, label in zip(axes, ("AUC", "TPR at 0.1% FPR")):
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("reference models k")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7, ncol=2)
  fig.suptitle(title)
  fig.tight_layout()
  tmp = path.with_name(f".{path.name}.tmp.png")
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  tmp.replace(path)
  return path


def write(out: pathlib.Path, rows, title: str) -> list[pathlib.Path]:
  """budgets.json, budgets.md and budgets.png under ``out``."""
  io.write_json_atomic(
    out / "budgets.json", {"tpr_fpr_level": TPR_LEVEL, "rows": rows}
  )
  io.write_bytes_atomic(
    out / "budgets.md", (format_table(rows) + "\n").encode()
  )
  return [
    out / "budgets.json",
    out / "budgets.md",
    plot(rows, out / "budgets.png", title),
  ]
