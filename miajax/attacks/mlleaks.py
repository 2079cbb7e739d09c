"""ML-Leaks (Salem et al., NDSS 2019): membership inference from the largest posteriors.

Three adversaries, weakest assumptions last:

* **Adversary 1**: one shadow model trained on data from the target's
  distribution (disjoint from it). Its outputs on its own members (label 1)
  and on held-out data (label 0) train an attack model on the **sorted top-3
  posteriors**; the attack model then scores the target's outputs.
* **Adversary 2**: the same, but the shadow is trained on *another* dataset
  (e.g. Fashion-MNIST for a target on digits). Because the attack only sees
  sorted top-3 posteriors, input shapes and class meanings need not match;
  only the feature count does (datasets with fewer than 3 classes are padded
  with zeros).
* **Adversary 3**: no shadow model. The top posterior itself is the score
  (threshold-free AUC); to turn it into decisions, the threshold is a high
  percentile of the target's top posterior on random inputs
  (:func:`threshold_from_random_inputs`).

Attack model. The paper's attack is an MLP with one 64-unit hidden layer
(``model="mlp"``, scikit-learn ``MLPClassifier``); the released code fits a
single softmax layer, i.e. a logistic regression (``model="logreg"``). Both
see standardised features (a per-feature affine map fitted on the shadow
features only): an overfit model's top posteriors crowd within ~1e-2 of 1,
too narrow a range for the MLP's optimiser to resolve unscaled.

Output defenses. The paper's masking defense releases only the top-k
posteriors. :func:`attack_features` takes the model's logits and an output
transform from :mod:`miajax.defenses` and applies it to every row in the same
way, so members, non-members, random inputs and the adversary's shadow
outputs all pass through one identical function (the adversary knows the
defense). A transform applied to one group only would itself be a membership
signal (the ML-Leaks masking lesson, tested in ``tests/test_mlleaks.py``).

All scores here are higher = more likely member.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from typing import Any

import numpy as np

from miajax import metrics as _metrics
from miajax import defenses as _defenses

__all__ = [
  "ATTACK_MODELS",
  "DEFAULT_RANDOM_PERCENTILE",
  "FittedAttack",
  "top_posteriors",
  "attack_features",
  "fit_attack",
  "attack_scores",
  "top_posterior_score",
  "threshold_from_random_inputs",
  "evaluate_attack",
]

ATTACK_MODELS = ("mlp", "logreg")

# ML-Leaks (Section on Adversary 3) takes the "top t percentile" of the maximal
# posteriors of random inputs as threshold, i.e. the (100 - t)-th percentile,
# and reports that small t (around 10) works; random inputs stand in for
# non-members, so t is about the false-positive rate one accepts on them.
# Real non-members are closer to the training data than uniform noise and
# usually get higher confidences, so their false-positive rate is higher.
DEFAULT_RANDOM_PERCENTILE = 90.0


def _probabilities(name: str, probs) -> np.ndarray:
  probs = np.asarray(probs)
  if probs.dtype == object or not np.issubdtype(probs.dtype, np.floating):
    raise TypeError(
      f"{name} must be floating-point probabilities float[..., classes], got dtype {probs.dtype}"
    )
  if probs.ndim < 1 or probs.shape[-1] < 1:
    raise ValueError(
      f"{name} must have shape [..., classes] with classes >= 1, got {probs.shape}"
    )
  if not np.isfinite(probs).all():
    raise ValueError(f"{name} holds non-finite values")
  # a little slack for float32 rounding of exp(log_softmax)
  if probs.size and (probs.min() < 0.0 or probs.max() > 1.0 + 1e-6):
    raise ValueError(
      f"{name} must be probabilities in [0, 1], got values in "
      f"[{probs.min():.3g}, {probs.max():.3g}] (logits? use attack_features)"
    )
  return probs


def _check_k(k) -> int:
  if isinstance(k, bool) or not isinstance(k, numbers.Integral):
    raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  return int(k)


def top_posteriors(probs, k: int = 3) -> np.ndarray:
  """The ``k`` largest posteriors of each output, sorted descending (ML-Leaks' features).

  Args:
    probs: ``float[..., classes]`` probabilities in [0, 1] (a released
      vector may hold zeros and need not sum to 1).
    k: number of features, >= 1. With ``classes < k`` the features are
      padded with zeros (a class that does not exist has posterior 0).

  Returns:
    ``float[..., k]`` in the dtype of ``probs``.
  """
  probs = _probabilities("probs", probs)
  k = _check_k(k)
  classes = probs.shape[-1]
  top = -np.sort(-probs, axis=-1)[..., :k]
  if classes < k:
    pad = np.zeros(probs.shape[:-1] + (k - classes,), probs.dtype)
    top = np.concatenate([top, pad], axis=-1)
  return top


def attack_features(logits, *, transform=None, k: int = 3) -> np.ndarray:
  """Sorted top-``k`` posteriors of what a (possibly defended) model releases.

  Every output row goes through the same transform, independently of the
  others and of membership; pass members, non-members and shadow outputs
  through this one function.

  Args:
    logits: ``float[..., classes]`` model logits.
    transform: an output transform from :mod:`miajax.defenses` (e.g.
      ``top_k(1)``, the ML-Leaks masking defense), or ``None`` for the raw
      softmax. Transforms that need random logits (``hamp_output``) are not
      accepted here.
    k: number of features.

  Returns:
    ``float32[..., k]``, the top-``k`` of
    :func:`miajax.defenses.released_probabilities`, descending.
  """
  k = _check_k(k)
  if _defenses.needs_random_logits(transform):
    raise ValueError(
      "attack_features: transform needs random_logits (hamp_output); compute "
      "miajax.defenses.released_probabilities yourself and call top_posteriors"
    )
  released = np.asarray(
    _defenses.released_probabilities(transform, logits), np.float32
  )
  # float32 exp can overshoot 1 by an ulp
  return top_posteriors(np.clip(released, 0.0, 1.0), k)


@dataclasses.dataclass(frozen=True)
class FittedAttack:
  """An attack model fitted on shadow features.

  ``pipeline``: the scikit-learn pipeline (scaler + classifier);
  ``num_features``: the feature count it expects; ``model``: "mlp" or "logreg".
  """

  pipeline: Any
  num_features: int
  model: str


def _features(name: str, features) -> np.ndarray:
  features = np.asarray(features)
  if features.dtype == object or not (
    np.issubdtype(features.dtype, np.floating)
    or np.issubdtype(features.dtype, np.integer)
  ):
    raise TypeError(
      f"{name} must be a real array float[examples, features], got dtype {features.dtype}"
    )
  if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1:
    raise ValueError(
      f"{name} must have shape [examples, features] (both >= 1), got {features.shape}"
    )
  if not np.isfinite(features).all():
    raise ValueError(f"{name} holds non-finite values")
  return features.astype(np.float64)


def fit_attack(
  shadow_features, shadow_is_member, *, model: str = "mlp", seed: int = 0
) -> FittedAttack:
  """Fit the ML-Leaks attack model on a shadow model's labelled outputs.

  Args:
    shadow_features: ``float[examples, features]``, e.g. :func:`attack_features`
      of the shadow model on its members and its held-out examples.
    shadow_is_member: ``bool[examples]``, True for the shadow's members;
      both classes must be present.
    model: ``"mlp"`` (the paper: one hidden layer of 64 ReLU units, Adam,
      up to 500 iterations) or ``"logreg"`` (the released code's single
      softmax layer: L2-regularised logistic regression).
    seed: integer seed of the MLP's initialisation and shuffling.

  Returns:
    A :class:`FittedAttack` for :func:`attack_scores`.
  """
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.linear_model import LogisticRegression
  from sklearn.neural_network import MLPClassifier
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  if model not in ATTACK_MODELS:
    raise ValueError(f"model must be one of {ATTACK_MODELS}, got {model!r}")
  if (
    isinstance(seed, bool)
    or not isinstance(seed, numbers.Integral)
    or not 0 <= seed < 2**32
  ):
    raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
  x = _features("shadow_features", shadow_features)
  y = np.asarray(shadow_is_member)
  if y.dtype != np.bool_:
    raise TypeError(
      f"shadow_is_member must be a bool array, got dtype {y.dtype}"
    )
  if y.shape != (x.shape[0],):
    raise ValueError(
      f"shadow_is_member must have shape ({x.shape[0]},) to match shadow_features "
      f"{x.shape}, got {y.shape}"
    )
  if y.all() or not y.any():
    raise ValueError(
      "shadow_is_member must contain both members (True) and non-members (False)"
    )
  if model == "mlp":
    clf = MLPClassifier(
      hidden_layer_sizes=(64,), max_iter=500, random_state=int(seed)
    )
  else:
    clf = LogisticRegression(max_iter=1000)
  pipeline = make_pipeline(StandardScaler(), clf)
  with warnings.catch_warnings():
    # An unconverged attack model is still a valid (if weaker) attack; its
    # quality is judged by its AUC on the target, not by the optimiser.
    warnings.simplefilter("ignore", ConvergenceWarning)
    pipeline.fit(x, y)
  return FittedAttack(pipeline, int(x.shape[1]), model)


def attack_scores(fitted: FittedAttack, features) -> np.ndarray:
  """Membership scores of the fitted attack model: ``P(member | features)``.

  Args:
    fitted: from :func:`fit_attack`.
    features: ``float[examples, features]`` with the feature count used in fitting.

  Returns:
    ``float64[examples]`` in [0, 1], higher = member; the attack model's own
    decision is ``score >= 0.5``.
  """
  if not isinstance(fitted, FittedAttack):
    raise TypeError(
      f"fitted must be a FittedAttack from fit_attack, got {type(fitted).__name__}"
    )
  x = _features("features", features)
  if x.shape[1] != fitted.num_features:
    raise ValueError(
      f"features must have {fitted.num_features} columns (as in fit_attack), "
      f"got shape {x.shape}"
    )
  proba = fitted.pipeline.predict_proba(x)
  return proba[:, list(fitted.pipeline.classes_).index(True)]


def top_posterior_score(probs) -> np.ndarray:
  """Adversary 3's score: the largest posterior ``max_c p_c``.

  Args:
    probs: ``float[..., classes]`` probabilities (released vectors allowed).

  Returns:
    ``float[...]``, higher = member.
  """
  probs = _probabilities("probs", probs)
  return probs.max(axis=-1)


def threshold_from_random_inputs(
  random_probs, percentile: float = DEFAULT_RANDOM_PERCENTILE
) -> float:
  """Adversary 3's threshold: a percentile of the top posterior on random inputs.

  The adversary queries the target model on random inputs (e.g. uniform
  pixels, :func:`miajax.defenses.random_inputs`), which are almost surely
  non-members, and predicts member where ``top_posterior_score >= threshold``.
  With the default 90th percentile (ML-Leaks' "top 10 percentile") about 10 %
  of random inputs would be called members.

  Args:
    random_probs: ``float[..., classes]``, the target's (released)
      probabilities on random inputs, at least one output.
    percentile: in [0, 100].

  Returns:
    The threshold, a float in [0, 1] (linear interpolation between order
    statistics, ``numpy.percentile``'s default).
  """
  if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real):
    raise TypeError(
      f"percentile must be a real number, got {type(percentile).__name__} {percentile!r}"
    )
  if not (math.isfinite(percentile) and 0.0 <= percentile <= 100.0):
    raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}")
  top = top_posterior_score(random_probs)
  if top.size == 0:
    raise ValueError("random_probs must hold at least one output")
  return float(np.percentile(top.astype(np.float64), float(percentile)))


def evaluate_attack(scores, is_member, threshold: float) -> dict:
  """The seed's report for one attack: per-class precision/recall at a threshold, plus ROC numbers.

  Args:
    scores: ``float[examples]``, higher = member.
    is_member: ``bool[examples]``.
    threshold: predict member where ``score >= threshold`` (0.5 for an
      attack model's own decision, :func:`threshold_from_random_inputs` for
      Adversary 3).

  Returns:
    ``{"threshold", "member": {"precision", "recall", "f1", "support"},
    "non_member": {...}, "accuracy", "balanced_accuracy_at_threshold"
    (mean of the two recalls), "balanced_accuracy" (best over thresholds),
    "auc"}``.
  """
  pr = _metrics.precision_recall_f1(scores, is_member, threshold)
  return {
    "threshold": float(threshold),
    "member": pr["member"],
    "non_member": pr["non_member"],
    "accuracy": pr["accuracy"],
    "balanced_accuracy_at_threshold": 0.5
    * (pr["member"]["recall"] + pr["non_member"]["recall"]),
    "balanced_accuracy": _metrics.balanced_accuracy(scores, is_member),
    "auc": _metrics.auc(scores, is_member),
  }
