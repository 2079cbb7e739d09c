"""Label-only membership inference: the adversary sees only the predicted label.

Two attacks from Choquette-Choo, Tramer, Carlini, Papernot, "Label-Only
Membership Inference Attacks" (ICML 2021) and Li & Zhang, "Membership Leakage
in Label-Only Exposures" (CCS 2021), on top of one primitive: whether the
model labels a perturbed copy of an example correctly.

* **Augmentation attack.** Query the flips and small translations of ``x``
  (:func:`augmentation_views`); training on an example makes its label robust
  to the augmentations the model saw, so members get more views right.
* **Noise robustness (boundary distance).** Query copies ``x + N(0, s^2)`` at
  several noise levels ``s`` (:func:`noise_views`); the fraction still labelled
  correctly grows with the distance to the decision boundary, and members sit
  further from it. (HopSkipJump estimates that distance with many more
  queries; random noise at a few levels is the cheap version.)

Each attack scores a model's views in two ways:

* **threshold** (:func:`correct_fraction`): the fraction of views labelled
  correctly, one global threshold, no shadow models;
* **shadow test** (:func:`binomial_lira`, :func:`binomial_lira_leave_one_out`):
  LiRA's likelihood ratio on the *count* of correct views. Per example, the
  count is modelled as Binomial(Q, p_IN) for models that trained on it and
  Binomial(Q, p_OUT) for the others, the rates fitted on shadow models with a
  Jeffreys-style half-count (``(sum + 1/2) / (n Q + 1)``) so that shadows that
  get every view right (or wrong) give a finite ratio; the score is
  ``log Binom(k; Q, p_IN) - log Binom(k; Q, p_OUT)``. The views of one example
  are correlated, so the binomial is an approximation (it overstates the
  evidence of each view equally for every example); a Gaussian on the count,
  as LiRA fits to its scores, degenerates instead whenever the shadows agree on
  every view, which is the common case.

Every function here works on integer labels only, so output defenses that
keep the top-1 label (top-k, temperature, HAMP's output modification,
``label_only``, rounding up to ties) cannot change these scores: the table of
:mod:`miajax.defenses.outputs` says so, and the defense table measures it.

Shapes: ``pred float/int[models, examples, views]`` predicted labels,
``labels int[examples]``, ``keep bool[models, examples]``; scores are
``float[models or targets, examples]``, higher = member.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The partners are the LiRA leave-one-out's, for the same null behaviour.
from miajax.attacks._leave_one_out import leave_one_out_partners

__all__ = [
  "ATTACKS",
  "LabelOnlyQueries",
  "attack_scores",
  "augmentation_views",
  "noise_views",
  "noise_draws",
  "correct_views",
  "correct_fraction",
  "binomial_lira",
  "binomial_lira_leave_one_out",
]


def augmentation_views(x, *, shift: int = 1):
  """The flips and translations of images ``x: float[examples, H, W, C]``.

  Returns ``float[18, examples, H, W, C]``: {original, horizontal flip} x
  translations by ``{0, -shift, shift}`` pixels in each direction, edges
  filled by reflection (the LiRA paper's query set, with ``shift`` instead of
  4 so that small images keep their content). View 0 is ``x`` itself.
  """
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(
      f"augmentation_views needs images [examples, H, W, C], got shape {x.shape}"
    )
  if (
    isinstance(shift, bool)
    or not isinstance(shift, (int, np.integer))
    or not 1 <= shift < min(x.shape[1:3])
  ):
    raise ValueError(
      f"shift must be an integer in [1, {min(x.shape[1:3]) - 1}] for {x.shape[1]}x{x.shape[2]} "
      f"images, got {shift!r}"
    )
  h, w = x.shape[1:3]
  views = []
  for img in (x, x[:, :, ::-1]):
    padded = jnp.pad(
      img, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect"
    )
    for dy in (0, -shift, shift):
      for dx in (0, -shift, shift):
        views.append(
          padded[:, shift + dy : shift + dy + h, shift + dx : shift + dx + w]
        )
  return jnp.stack(views)


def noise_draws(key, group_ids, shape, *, levels: int, copies: int, dtype):
  """``float[len(group_ids), levels, copies, *shape]``: the standard normal draws of noise groups.

  Group ``g``'s draws come from ``fold_in(key, g)`` alone.
  """
  return jax.vmap(
    lambda g: jax.random.normal(
      jax.random.fold_in(key, g), (levels, copies) + tuple(shape), dtype
    )
  )(group_ids)


def noise_views(key, x, *, sigmas, copies: int, start: int = 0, group: int = 1):
  """Gaussian-noise copies ``float[len(sigmas) * copies, examples, ...]`` of ``x``.

  View ``l * copies + c`` is ``x + sigmas[l] * eps``. The noise of example
  ``i`` comes from ``fold_in(key, (start + i) // group)``, so it does not
  depend on how the examples are batched (pass the batch's offset as
  ``start``). ``group = 1``: every example its own draws; ``group = G``:
  examples ``G q .. G q + G - 1`` share theirs (each example's views are
  distributed exactly as with ``group = 1``; only examples of one group are
  correlated), which lets a model with an affine first layer ``f1`` map each
  draw once: ``f1(x + s eps) = f1(x) + s (f1(eps) - f1(0))``.
  """
  x = jnp.asarray(x)
  sig = jnp.asarray(sigmas, x.dtype)
  n = x.shape[0]
  eps = noise_draws(
    key,
    (start + jnp.arange(n)) // group,
    x.shape[1:],
    levels=sig.size,
    copies=copies,
    dtype=x.dtype,
  )
  eps = jnp.moveaxis(eps, 0, 2)  # [levels, copies, examples, ...]
  noisy = x[None, None] + sig.reshape((-1, 1) + (1,) * x.ndim) * eps
  return noisy.reshape((sig.size * copies,) + x.shape)


@dataclasses.dataclass(frozen=True)
class LabelOnlyQueries:
  """Which perturbed copies of every candidate example a run labels.

  ``shift``: translation of the augmentation views (None: none; inputs
  that are not images ``[H, W, C]`` get none either); ``sigmas`` / ``copies``: noise levels (in input units) and
  copies per level of the noise views; ``seed``: the noise's seed;
  ``noise_group``: examples that share their noise draws (1: none share;
  see :func:`noise_views`).
  """

  shift: int | None = 1
  sigmas: tuple[float, ...] = (0.1, 0.25, 0.5)
  copies: int = 8
  seed: int = 0
  noise_group: int = 1

  def __post_init__(self):
    if self.shift is not None and (
      isinstance(self.shift, bool)
      or not isinstance(self.shift, int)
      or self.shift < 1
    ):
      raise ValueError(
        f"shift must be None or a positive integer, got {self.shift!r}"
      )
    sig = tuple(float(s) for s in self.sigmas)
    if any(not math.isfinite(s) or s <= 0 for s in sig):
      raise ValueError(
        f"sigmas must be positive finite floats, got {self.sigmas!r}"
      )
    object.__setattr__(self, "sigmas", sig)
    if (
      isinstance(self.copies, bool)
      or not isinstance(self.copies, int)
      or self.copies < (1 if sig else 0)
    ):
      raise ValueError(
        f"copies must be a positive integer, got {self.copies!r}"
      )
    if (
      isinstance(self.noise_group, bool)
      or not isinstance(self.noise_group, int)
      or self.noise_group < 1
    ):
      raise ValueError(
        f"noise_group must be a positive integer, got {self.noise_group!r}"
      )
    if not sig:  # no noise views, no noise groups: one design, one fingerprint
      object.__setattr__(self, "noise_group", 1)
    if self.shift is None and not sig:
      raise ValueError(
        "LabelOnlyQueries needs augmentation (shift) or noise views (sigmas), got neither"
      )

  def num_augmentation_views(self, input_shape) -> int:
    return 18 if self.shift is not None and len(input_shape) == 3 else 0

  def num_views(self, input_shape) -> int:
    return (
      self.num_augmentation_views(input_shape) + len(self.sigmas) * self.copies
    )

  def check(self, input_shape) -> None:
    """Raise before any training if the views do not apply to inputs of ``input_shape``."""
    if not self.num_views(input_shape):
      raise ValueError(
        f"label-only queries make no views of inputs of shape {tuple(input_shape)}: "
        "augmentation views need images [H, W, C]; give noise sigmas"
      )
    if self.num_augmentation_views(input_shape):
      if self.shift >= min(input_shape[:2]):
        raise ValueError(
          f"label-only shift {self.shift} must be below the image size "
          f"{input_shape[0]}x{input_shape[1]}"
        )

  def views(self, x, start: int = 0):
    """``float[views, examples, ...]``: the augmentation views, then the noise views."""
    parts = []
    if self.num_augmentation_views(x.shape[1:]):
      parts.append(augmentation_views(x, shift=self.shift))
    if self.sigmas:
      parts.append(
        noise_views(
          jax.random.key(self.seed),
          x,
          sigmas=self.sigmas,
          copies=self.copies,
          start=start,
          group=self.noise_group,
        )
      )
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]

  def augmentation_only(self, x, start: int = 0):
    """``float[A, examples, ...]``: the augmentation views alone (``start`` unused)."""
    del start
    return augmentation_views(x, shift=self.shift)

  def group_draws(self, group_ids, shape):
    """``float32[groups, levels * copies, *shape]``: the draws :func:`noise_views` adds for these noise groups."""
    eps = noise_draws(
      jax.random.key(self.seed),
      group_ids,
      shape,
      levels=len(self.sigmas),
      copies=self.copies,
      dtype=jnp.float32,
    )
    return eps.reshape((eps.shape[0], -1) + tuple(shape))

  def view_sigmas(self) -> tuple[float, ...]:
    """The noise level of each noise view, in view order."""
    return tuple(s for s in self.sigmas for _ in range(self.copies))

  def to_json(self) -> dict[str, Any]:
    return {
      "shift": self.shift,
      "sigmas": list(self.sigmas),
      "copies": self.copies,
      "seed": self.seed,
      # Left out at its old default: run directories written before it existed keep their fingerprint.
      **({"noise_group": self.noise_group} if self.noise_group != 1 else {}),
    }


# ------------------------------------------------------------------ scores


def _labels_array(pred, labels):
  pred = np.asarray(pred)
  if pred.ndim != 3 or not np.issubdtype(pred.dtype, np.integer):
    raise ValueError(
      f"pred must be integer predicted labels [models, examples, views], got "
      f"{pred.dtype} array of shape {pred.shape}"
    )
  labels = np.asarray(labels)
  if (
    labels.ndim != 1
    or labels.shape[0] != pred.shape[1]
    or not np.issubdtype(labels.dtype, np.integer)
  ):
    raise ValueError(
      f"labels must be integer [examples] with examples = {pred.shape[1]}, got "
      f"{labels.dtype} array of shape {labels.shape}"
    )
  return pred, labels


def correct_views(pred, labels) -> np.ndarray:
  """``bool[models, examples, views]``: which views got the true label."""
  pred, labels = _labels_array(pred, labels)
  return pred == labels[None, :, None]


def _as_correct(correct, name: str) -> np.ndarray:
  c = np.asarray(correct)
  if c.dtype != np.bool_ or c.ndim != 3 or c.shape[2] < 1:
    raise ValueError(
      f"{name} must be bool [models, examples, views] (see correct_views), got "
      f"{c.dtype} array of shape {c.shape}"
    )
  return c


def correct_fraction(correct) -> np.ndarray:
  """Threshold-attack score ``float[models, examples]``: the fraction of views labelled correctly."""
  return _as_correct(correct, "correct").mean(-1)


def _rates(counts, mask, views):
  """Smoothed per-example rate of correct views over the masked models: float[examples]."""
  s = np.where(mask, counts, 0).sum(0)
  n = mask.sum(0)
  return (s + 0.5) / (n * views + 1.0)


def _binomial_llr(k, views, p_in, p_out):
  return k * (np.log(p_in) - np.log(p_out)) + (views - k) * (
    np.log1p(-p_in) - np.log1p(-p_out)
  )


def binomial_lira(shadow_correct, shadow_keep, target_correct) -> np.ndarray:
  """LiRA-style likelihood ratio on the count of correct views.

  Args:
    shadow_correct: bool[models, examples, views], the shadow models' views.
    shadow_keep: bool[models, examples], which shadow trained on which example.
    target_correct: bool[targets, examples, views].

  Returns:
    float64[targets, examples], ``log Binom(k; Q, p_IN) - log Binom(k; Q, p_OUT)``
    with the rates fitted per example on the shadows (module docstring); higher = member.
  """
  sc = _as_correct(shadow_correct, "shadow_correct")
  tc = _as_correct(target_correct, "target_correct")
  keep = np.asarray(shadow_keep)
  if keep.dtype != np.bool_ or keep.shape != sc.shape[:2]:
    raise ValueError(
      f"shadow_keep must be bool {sc.shape[:2]} [models, examples], got {keep.dtype} "
      f"{keep.shape}"
    )
  if tc.shape[1:] != sc.shape[1:]:
    raise ValueError(
      f"target_correct must have shape [targets, {sc.shape[1]}, {sc.shape[2]}], got {tc.shape}"
    )
  views = sc.shape[2]
  counts = sc.sum(-1)
  p_in, p_out = _rates(counts, keep, views), _rates(counts, ~keep, views)
  return _binomial_llr(tc.sum(-1), views, p_in[None], p_out[None])


def binomial_lira_leave_one_out(
  correct, keep, *, balanced: bool = True, seed: int = 0
) -> np.ndarray:
  """:func:`binomial_lira` with every model in turn the target and the others its shadows.

  Args:
    correct: bool[models, examples, views].
    keep: bool[models, examples]; also the labels of the pooled ROC.
    balanced: as in :func:`miajax.attacks.leave_one_out`: each example's other
      group (the one the target is not in) also leaves out one model
      (:func:`miajax.attacks.leave_one_out_partners`), so both fits lose a model
      and a null check stays at chance.
    seed: draws the partners, as in :func:`miajax.attacks.leave_one_out`.

  Returns:
    float64[models, examples], row t = the attack on model t; higher = member.
  """
  c = _as_correct(correct, "correct")
  keep = np.asarray(keep)
  if keep.dtype != np.bool_ or keep.shape != c.shape[:2]:
    raise ValueError(
      f"keep must be bool {c.shape[:2]} [models, examples], got {keep.dtype} {keep.shape}"
    )
  models, examples, views = c.shape
  if models < 3:
    raise ValueError(
      f"binomial_lira_leave_one_out needs at least 3 models, got {models}"
    )
  counts = c.sum(-1).astype(np.float64)
  s_in = np.where(keep, counts, 0).sum(0)
  s_out = np.where(keep, 0, counts).sum(0)
  n_in, n_out = (
    keep.sum(0).astype(np.float64),
    (~keep).sum(0).astype(np.float64),
  )
  # Remove the target from its own group (and, balanced, its partner from the other group).
  own = counts
  s_in_t = s_in[None] - np.where(keep, own, 0)
  s_out_t = s_out[None] - np.where(keep, 0, own)
  n_in_t = n_in[None] - keep
  n_out_t = n_out[None] - ~keep
  if balanced:
    partners = np.asarray(leave_one_out_partners(keep, seed=seed))
    other = np.take_along_axis(counts, partners, 0)
    has_other = np.where(keep, n_out[None], n_in[None]) > 0
    s_out_t = s_out_t - np.where(keep & has_other, other, 0)
    s_in_t = s_in_t - np.where(~keep & has_other, other, 0)
    n_out_t = n_out_t - (keep & has_other)
    n_in_t = n_in_t - (~keep & has_other)
  p_in = (s_in_t + 0.5) / (n_in_t * views + 1.0)
  p_out = (s_out_t + 0.5) / (n_out_t * views + 1.0)
  return _binomial_llr(counts, views, p_in, p_out)


ATTACKS = (
  "label_gap",
  "label_aug",
  "label_aug_lira",
  "label_noise",
  "label_noise_lira",
)


def attack_scores(
  pred,
  labels,
  keep,
  queries: LabelOnlyQueries,
  *,
  num_references: int | None = None,
) -> dict[str, np.ndarray]:
  """Every label-only attack on a run's view labels, ``{name: float[targets, examples]}``.

  ``label_gap``: the unperturbed query's correctness (Yeom et al.'s gap
  attack, the label-only baseline; view 0 of the augmentation views, else
  the first noise view's clean input is not queried and it is left out);
  ``label_aug`` / ``label_noise``: the threshold attacks on the fraction of
  correct augmentation / noise views; ``*_lira``: the binomial likelihood
  ratio with shadow models (names in :data:`ATTACKS`; attacks whose views
  the run lacks are left out).

  Args:
    pred: int[models, examples, views] predicted labels of ``queries``' views.
    labels: int[examples].
    keep: bool[models, examples].
    queries: the :class:`LabelOnlyQueries` that made the views (the
      augmentation views come first; inputs that were not images have none).
    num_references: None: leave-one-out over all models; R: models [0, R)
      are the shadows and the targets are models [R, M).
  """
  correct = correct_views(pred, labels)
  noise = len(queries.sigmas) * queries.copies
  a = correct.shape[2] - noise
  if a not in ((0, 18) if queries.shift is not None else (0,)):
    raise ValueError(
      f"pred has {correct.shape[2]} views per example; the label-only queries make "
      f"{noise} noise views plus {'0 or 18' if queries.shift is not None else 0} "
      "augmentation views"
    )
  keep = np.asarray(keep)
  r = num_references
  groups = {}
  if a:
    groups["label_gap"] = correct[:, :, :1]
    groups["label_aug"] = correct[:, :, :a]
  if correct.shape[2] > a:
    groups["label_noise"] = correct[:, :, a:]
  out = {}
  for name, c in groups.items():
    out[name] = correct_fraction(c[r:] if r else c)
    if name == "label_gap":
      continue
    if r:
      out[name + "_lira"] = binomial_lira(c[:r], keep[:r], c[r:])
    else:
      out[name + "_lira"] = binomial_lira_leave_one_out(c, keep)
  return out
