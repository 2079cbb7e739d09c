"""Do the shadows match the target? Their output distributions on members and non-members, compared.

LiRA's online test models each example's score under IN and OUT shadows: it
is only as good as the shadows' resemblance to the target (Carlini et al.
2022, "Membership inference attacks from first principles", Sec. 6 on
mismatched architectures and training). The comparison here is on the
logit-scaled confidence ``phi = log p_y - log(1 - p_y)`` (the score LiRA
fits): the 1-Wasserstein distance between the target's ``phi`` on its
members and the shadows' on their IN examples, plus the same between the
non-members and OUT examples. Accuracy and cross-entropy of each side are
reported beside it, as a person would first check them.

``MISMATCH_W1`` is the distance above which a mismatch is flagged, set from
ten audits in ``docs/audit.md`` (targets trained by a hand-written JAX
loop, 16 shadows, digits and Fashion-MNIST): where lira_online lost under
0.01 AUC against the best shadows found, the distance lay at 0.83-1.73, and
5.66 for Fashion-MNIST shadows trained with the target's own recipe (more
over-fitted than the target: member accuracy 0.995 vs 0.978); where it lost
0.09-0.10 AUC (a 200-epoch digits target and a 60-epoch Fashion-MNIST one
audited with the default 30- and 15-epoch shadows), at 9.64 and 15.65. 7.5
sits between the largest harmless and the smallest harmful distance: a
heuristic from two datasets, not a bound.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from miajax import scores

__all__ = ["MISMATCH_W1", "Sides", "sides", "wasserstein1", "match_report"]

MISMATCH_W1 = 7.5


def wasserstein1(a, b) -> float:
  """The 1-Wasserstein distance between two empirical distributions (float64, exact).

  ``a [n]``, ``b [m]``: the area between their quantile functions.
  """
  a = np.sort(np.asarray(a, np.float64).ravel())
  b = np.sort(np.asarray(b, np.float64).ravel())
  if a.size == 0 or b.size == 0:
    raise ValueError(
      f"wasserstein1 needs two non-empty samples, got {a.size}, {b.size}"
    )
  # Both quantile functions are steps on the union of their breakpoints.
  cuts = np.union1d(
    np.arange(1, a.size) / a.size, np.arange(1, b.size) / b.size
  )
  edges = np.concatenate([[0.0], cuts, [1.0]])
  mid = (edges[:-1] + edges[1:]) / 2
  qa = a[np.minimum((mid * a.size).astype(np.int64), a.size - 1)]
  qb = b[np.minimum((mid * b.size).astype(np.int64), b.size - 1)]
  return float(np.sum(np.abs(qa - qb) * np.diff(edges)))


class Sides(NamedTuple):
  """One model set's outputs split into members and non-members (pooled over models).

  Each field is ``float64[n]`` over every (model, example) pair of its side.
  """

  member_phi: np.ndarray
  nonmember_phi: np.ndarray
  member_correct: np.ndarray
  nonmember_correct: np.ndarray
  member_loss: np.ndarray
  nonmember_loss: np.ndarray


def sides(logits, labels, is_member) -> Sides:
  """:class:`Sides` of models' outputs.

  ``logits``: ``float[models, examples, classes]`` (query 0 of
  ``[models, examples, queries, classes]`` is used); ``labels``:
  ``int[examples]``; ``is_member``: ``bool[models, examples]``. Non-finite
  outputs (a diverged model) are dropped.
  """
  logits = np.asarray(logits, np.float32)
  if logits.ndim == 4:
    logits = logits[:, :, 0]
  if logits.ndim != 3:
    raise ValueError(
      f"logits must be [models, examples, classes] or [models, examples, "
      f"queries, classes], got shape {logits.shape}"
    )
  is_member = np.broadcast_to(np.asarray(is_member, bool), logits.shape[:2])
  lab = np.broadcast_to(np.asarray(labels), logits.shape[:2])
  phi = np.asarray(scores.logit_scaled(logits, lab), np.float64)
  loss = np.asarray(scores.cross_entropy(logits, lab), np.float64)
  correct = (logits.argmax(-1) == lab).astype(np.float64)
  ok = np.isfinite(phi) & np.isfinite(loss)
  m, n = is_member & ok, ~is_member & ok
  return Sides(phi[m], phi[n], correct[m], correct[n], loss[m], loss[n])


def _row(who: str, s: Sides) -> dict:
  return {
    "models": who,
    "member_accuracy": float(s.member_correct.mean()),
    "nonmember_accuracy": float(s.nonmember_correct.mean()),
    "member_loss": float(s.member_loss.mean()),
    "nonmember_loss": float(s.nonmember_loss.mean()),
    "member_phi_median": float(np.median(s.member_phi)),
    "nonmember_phi_median": float(np.median(s.nonmember_phi)),
  }


def distance(target: Sides, shadows: Sides) -> dict:
  """``{"w1_members", "w1_nonmembers", "w1"}``: how far the shadows' IN/OUT scores lie from the target's."""
  w_in = wasserstein1(target.member_phi, shadows.member_phi)
  w_out = wasserstein1(target.nonmember_phi, shadows.nonmember_phi)
  return {"w1_members": w_in, "w1_nonmembers": w_out, "w1": w_in + w_out}


def match_report(
  target_logits,
  target_is_member,
  shadow_logits,
  shadow_keep,
  labels,
  *,
  threshold: float = MISMATCH_W1,
) -> dict:
  """The match diagnostic of an audit: a table, the distances, a verdict and a warning flag.

  ``target_logits``: ``float[examples, classes]`` (or ``[examples, queries,
  classes]``); ``target_is_member``: ``bool[examples]``; ``shadow_logits``:
  ``float[models, examples, classes]`` (or with queries); ``shadow_keep``:
  ``bool[models, examples]``; ``labels``: ``int[examples]``.
  """
  t = sides(np.asarray(target_logits)[None], labels, target_is_member)
  s = sides(shadow_logits, labels, shadow_keep)
  d = distance(t, s)
  mismatch = d["w1"] > threshold
  gap = lambda side: _row("", side)
  tr, sr = gap(t), gap(s)
  verdict = (
    f"shadows {'do not match' if mismatch else 'match'} the target: W1 "
    f"{d['w1']:.2f} ({'>' if mismatch else '<='} {threshold:g}); member "
    f"accuracy {tr['member_accuracy']:.3f} vs {sr['member_accuracy']:.3f}, "
    f"non-member {tr['nonmember_accuracy']:.3f} vs "
    f"{sr['nonmember_accuracy']:.3f}"
  )
  return {
    "table": [_row("target", t), _row("shadows (IN / OUT)", s)],
    **d,
    "threshold": threshold,
    "mismatch": bool(mismatch),
    "verdict": verdict,
  }
