"""The shadow-model attack of Shokri et al. (S&P 2017).

Shadow models imitate the target on data disjoint from the target's; their
output posteriors on their own members (IN) and on an equally large set of
non-members (OUT) form a labelled attack dataset; a binary classifier (the
attack model) learns IN vs OUT from the posterior vector and is then applied
to the target's outputs.

Three steps, all host-side (numpy in, numpy out; the classifiers are
scikit-learn's):

1. :func:`attack_dataset`: shadow posteriors ``float[shadows, examples,
   classes]`` + membership ``bool[shadows, examples]`` -> rows of features
   (the full, unsorted posterior vector, as in the paper), IN/OUT labels and
   the example's true class.  Each shadow contributes as many OUT rows as IN
   rows (the paper's balanced shadow sets).
2. :func:`fit_attack`: one attack model per true class (the paper's
   choice: the posterior of a class-c example is judged by a model that only
   saw class-c examples) or a single one for all rows.
3. :func:`attack_scores`: ``float[examples]``, higher = member; the attack
   model's own decision is ``score >= fitted.threshold``.

Attack models (every one behind a ``StandardScaler``, which makes posterior
coordinates of very different spread comparable for the RBF kernel and the
MLP's initialisation; for logistic regression it only conditions the solver):

* ``"mlp"`` (default): ``MLPClassifier`` with one hidden layer of 64 ReLU
  units (the ML-Leaks attack network), Adam, L2 1e-4, ``random_state=seed``.
  Score: ``predict_proba[:, 1]``, threshold 0.5.
* ``"svm"``: ``SVC`` with an RBF kernel, ``C`` and ``gamma`` picked by
  5-fold stratified cross-validation (ROC AUC) over :data:`SVM_C_GRID` x
  :data:`SVM_GAMMA_GRID`; gamma values are multiples of ``1 / features``,
  scikit-learn's ``"scale"`` for standardised inputs.  Score: the decision
  function (no Platt scaling), threshold 0.
* ``"logreg"``: ``LogisticRegression`` (L2, ``C = 1``).  Score:
  ``predict_proba[:, 1]``, threshold 0.5.

Fallback: a class whose attack rows hold fewer than :data:`MIN_PER_GROUP` IN
or fewer than :data:`MIN_PER_GROUP` OUT examples (including a class with no
rows at all) cannot be given a model of its own (5-fold cross-validation
needs 5 of each), so its examples are scored by a global model fitted on all
rows; ``fitted.fallback_classes`` lists those classes.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import Any, NamedTuple

import numpy as np

__all__ = [
  "MODELS",
  "MIN_PER_GROUP",
  "SVM_C_GRID",
  "SVM_GAMMA_GRID",
  "AttackData",
  "ShokriAttack",
  "attack_dataset",
  "fit_attack",
  "attack_scores",
]

MODELS = ("mlp", "svm", "logreg")
# 5-fold stratified cross-validation (svm) needs 5 examples of each label;
# the same minimum for every model keeps per-class/fallback choices identical.
MIN_PER_GROUP = 5
SVM_C_GRID = (0.1, 1.0, 10.0, 100.0)
SVM_GAMMA_GRID = (0.1, 1.0, 10.0)  # times 1 / num_features
# Posterior rows are accepted when they sum to 1 within this tolerance; it
# catches logits passed by mistake, not float32 rounding.
_SUM_TOL = 1e-3


class AttackData(NamedTuple):
  """Rows of the attack dataset.

  features: ``float64[rows, classes]`` shadow posterior vectors.
  is_member: ``bool[rows]``, True for the shadow's IN examples.
  labels: ``int64[rows]`` the example's true class.
  shadow: ``int64[rows]`` which shadow model produced the row.
  example: ``int64[rows]`` the example's index on the ``examples`` axis.
  """

  features: np.ndarray
  is_member: np.ndarray
  labels: np.ndarray
  shadow: np.ndarray
  example: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class ShokriAttack:
  """A fitted attack.

  Attributes:
    model: ``"mlp"``, ``"svm"`` or ``"logreg"``.
    per_class: whether examples are routed to a model by true class.
    num_classes: labels are in ``[0, num_classes)``.
    num_features: feature dimension the models were fitted on.
    threshold: the attack model's own decision, member iff ``score >= threshold``.
    class_models: ``{class: estimator}`` (empty when ``per_class`` is False).
    global_model: the estimator for all rows; None when every class has its own.
    fallback_classes: classes scored by ``global_model`` although ``per_class``.
    svm_params: ``{class or "global": {"C", "gamma"}}`` picked by cross-validation
      (empty unless ``model == "svm"``).
  """

  model: str
  per_class: bool
  num_classes: int
  num_features: int
  threshold: float
  class_models: dict[int, Any]
  global_model: Any
  fallback_classes: tuple[int, ...]
  svm_params: dict[Any, dict[str, float]]


# ---------------------------------------------------------------- validation


def _real_array(x, name: str, ndim: int, what: str) -> np.ndarray:
  x = np.asarray(x)
  if (
    x.dtype == object
    or x.dtype == np.bool_
    or not np.issubdtype(x.dtype, np.number)
    or np.issubdtype(x.dtype, np.complexfloating)
  ):
    raise TypeError(
      f"{name} must hold real numbers {what}, got dtype {x.dtype}"
    )
  if x.ndim != ndim:
    raise ValueError(f"{name} must be {ndim}-D {what}, got shape {x.shape}")
  x = x.astype(np.float64, copy=False)
  if not np.all(np.isfinite(x)):
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    raise ValueError(f"{name} must be finite; found {bad} nan/inf values")
  return x


def _bool_array(x, name: str, shape: tuple[int, ...], what: str) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype != np.bool_:
    raise TypeError(f"{name} must be a bool array {what}, got dtype {x.dtype}")
  if x.shape != shape:
    raise ValueError(f"{name} must have shape {shape} {what}, got {x.shape}")
  return x


def _label_array(
  x, name: str, shape: tuple[int, ...], num_classes: int
) -> np.ndarray:
  x = np.asarray(x)
  if not np.issubdtype(x.dtype, np.integer):
    raise TypeError(f"{name} must be integer class ids, got dtype {x.dtype}")
  if x.shape != shape:
    raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
  if x.size and (x.min() < 0 or x.max() >= num_classes):
    raise ValueError(
      f"{name} must be in [0, {num_classes}), got range "
      f"[{int(x.min())}, {int(x.max())}]"
    )
  return x.astype(np.int64)


def _int(value, name: str, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
      f"{name} must be an int, got {type(value).__name__} {value!r}"
    )
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


# ---------------------------------------------------------------- attack data


def attack_dataset(
  probs, keep, labels, *, include=None, balance: bool = True, seed: int = 0
) -> AttackData:
  """The labelled attack dataset from shadow models' posteriors.

  Args:
    probs: ``float[shadows, examples, classes]`` posterior probabilities
      (softmax outputs, each row summing to 1) of every shadow on every example.
    keep: ``bool[shadows, examples]``, True where the example is IN the shadow's
      training set.
    labels: ``int[examples]`` true classes in ``[0, classes)``.
    include: optional ``bool[shadows, examples]``: which (shadow, example) pairs
      enter the dataset (default: all). OUT rows are the included pairs with
      ``keep`` False; an IN pair must be included to count.
    balance: if True, a shadow with more included IN than OUT pairs (or the
      reverse) contributes a random subset of the larger group, of the smaller
      group's size, so every shadow gives equally many IN and OUT rows.
    seed: seed of that subsampling.

  Returns:
    :class:`AttackData` with ``rows`` = number of selected pairs, ordered by
    shadow then example.
  """
  probs = _real_array(probs, "probs", 3, "[shadows, examples, classes]")
  shadows, examples, classes = probs.shape
  if shadows < 1 or examples < 1 or classes < 2:
    raise ValueError(
      f"probs needs >= 1 shadow, >= 1 example and >= 2 classes, got shape {probs.shape}"
    )
  if probs.min() < 0.0 or probs.max() > 1.0:
    raise ValueError(
      "probs must be probabilities in [0, 1] (softmax of the logits), got range "
      f"[{probs.min():.3g}, {probs.max():.3g}]"
    )
  sums = probs.sum(-1)
  if np.max(np.abs(sums - 1.0)) > _SUM_TOL:
    raise ValueError(
      "probs rows must sum to 1 over the classes axis (pass softmax(logits), not "
      f"logits); row sums range over [{sums.min():.4g}, {sums.max():.4g}]"
    )
  keep = _bool_array(
    keep, "keep", (shadows, examples), "[shadows, examples] matching probs"
  )
  labels = _label_array(labels, "labels", (examples,), classes)
  if include is None:
    include = np.ones((shadows, examples), bool)
  include = _bool_array(
    include,
    "include",
    (shadows, examples),
    "[shadows, examples] matching probs",
  )
  if not isinstance(balance, bool):
    raise TypeError(f"balance must be a bool, got {type(balance).__name__}")
  rng = np.random.default_rng(_int(seed, "seed", 0))

  chosen = np.zeros((shadows, examples), bool)
  for s in range(shadows):
    ins = np.flatnonzero(include[s] & keep[s])
    outs = np.flatnonzero(include[s] & ~keep[s])
    if balance:
      n = min(ins.size, outs.size)
      ins = rng.choice(ins, n, replace=False) if ins.size > n else ins
      outs = rng.choice(outs, n, replace=False) if outs.size > n else outs
    chosen[s, ins] = True
    chosen[s, outs] = True
  shadow_idx, example_idx = np.nonzero(chosen)
  if shadow_idx.size == 0:
    raise ValueError(
      "the attack dataset is empty: no shadow has both included IN and OUT "
      "examples (check keep and include)"
    )
  return AttackData(
    features=probs[shadow_idx, example_idx],
    is_member=keep[shadow_idx, example_idx].copy(),
    labels=labels[example_idx],
    shadow=shadow_idx.astype(np.int64),
    example=example_idx.astype(np.int64),
  )


# ---------------------------------------------------------------- fitting


def _estimator(model: str, num_features: int, seed: int):
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import GridSearchCV, StratifiedKFold
  from sklearn.neural_network import MLPClassifier
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  from sklearn.svm import SVC

  if model == "mlp":
    return make_pipeline(
      StandardScaler(),
      MLPClassifier(
        hidden_layer_sizes=(64,), alpha=1e-4, max_iter=300, random_state=seed
      ),
    )
  if model == "logreg":
    return make_pipeline(
      StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)
    )
  grid = {
    "svc__C": list(SVM_C_GRID),
    "svc__gamma": [g / num_features for g in SVM_GAMMA_GRID],
  }
  return GridSearchCV(
    make_pipeline(StandardScaler(), SVC(kernel="rbf")),
    grid,
    scoring="roc_auc",
    cv=StratifiedKFold(5, shuffle=True, random_state=seed),
  )


def _fit_one(model: str, x: np.ndarray, y: np.ndarray, seed: int):
  from sklearn.exceptions import ConvergenceWarning

  est = _estimator(model, x.shape[1], seed)
  with warnings.catch_warnings():
    # max_iter bounds the cost; a not-quite-converged attack model is still a valid attack.
    warnings.simplefilter("ignore", ConvergenceWarning)
    est.fit(x, y)
  return est


def _score_one(model: str, est, x: np.ndarray) -> np.ndarray:
  # The SVM has no calibrated probabilities (no Platt scaling): its margin is the score.
  if model == "svm":
    return est.decision_function(x)
  return est.predict_proba(x)[:, 1]


def _svm_choice(est) -> dict[str, float]:
  return {
    "C": float(est.best_params_["svc__C"]),
    "gamma": float(est.best_params_["svc__gamma"]),
  }


def fit_attack(
  features,
  is_member,
  labels,
  *,
  model: str = "mlp",
  per_class: bool = True,
  num_classes: int | None = None,
  seed: int = 0,
) -> ShokriAttack:
  """Fits the attack model(s) on an attack dataset.

  Args:
    features: ``float[rows, features]`` (shadow posterior vectors, see
      :func:`attack_dataset`).
    is_member: ``bool[rows]`` IN/OUT labels.
    labels: ``int[rows]`` true classes, selecting the per-class model.
    model: one of :data:`MODELS` (see the module docstring).
    per_class: one model per true class (the paper) if True, else a single one.
    num_classes: labels must be in ``[0, num_classes)``; default
      ``features.shape[1]`` (the length of a posterior vector).
    seed: ``random_state`` of the MLP and of the SVM's cross-validation folds.

  Returns:
    A :class:`ShokriAttack`. Classes with fewer than :data:`MIN_PER_GROUP`
    IN or OUT rows fall back to a global model (listed in ``fallback_classes``).
  """
  if not isinstance(model, str) or model not in MODELS:
    raise ValueError(f"model must be one of {list(MODELS)}, got {model!r}")
  if not isinstance(per_class, bool):
    raise TypeError(f"per_class must be a bool, got {type(per_class).__name__}")
  seed = _int(seed, "seed", 0)
  features = _real_array(features, "features", 2, "[rows, features]")
  rows, dims = features.shape
  if dims < 1:
    raise ValueError(
      f"features must have at least one column, got shape {features.shape}"
    )
  is_member = _bool_array(
    is_member, "is_member", (rows,), "[rows] matching features"
  )
  num_classes = (
    dims if num_classes is None else _int(num_classes, "num_classes", 1)
  )
  labels = _label_array(labels, "labels", (rows,), num_classes)
  n_in, n_out = int(is_member.sum()), int((~is_member).sum())
  if min(n_in, n_out) < MIN_PER_GROUP:
    raise ValueError(
      f"is_member needs at least {MIN_PER_GROUP} members and {MIN_PER_GROUP} "
      f"non-members to fit an attack model, got {n_in} and {n_out}"
    )

  class_models, svm_params = {}, {}
  fallback = []
  if per_class:
    for c in range(num_classes):
      rows_c = labels == c
      m_in = int(np.count_nonzero(is_member[rows_c]))
      m_out = int(np.count_nonzero(rows_c)) - m_in
      if min(m_in, m_out) < MIN_PER_GROUP:
        fallback.append(c)
        continue
      class_models[c] = _fit_one(
        model, features[rows_c], is_member[rows_c], seed
      )
      if model == "svm":
        svm_params[c] = _svm_choice(class_models[c])
  global_model = None
  if not per_class or fallback:
    global_model = _fit_one(model, features, is_member, seed)
    if model == "svm":
      svm_params["global"] = _svm_choice(global_model)
  return ShokriAttack(
    model=model,
    per_class=per_class,
    num_classes=num_classes,
    num_features=dims,
    threshold=0.0 if model == "svm" else 0.5,
    class_models=class_models,
    global_model=global_model,
    fallback_classes=tuple(fallback),
    svm_params=svm_params,
  )


def attack_scores(fitted: ShokriAttack, features, labels) -> np.ndarray:
  """Membership scores of the target's outputs.

  Args:
    fitted: from :func:`fit_attack`.
    features: ``float[examples, features]``, built like the training rows (the
      target's posterior vectors).
    labels: ``int[examples]`` true classes; with ``per_class`` each example is
      scored by its class's model (or the global fallback).

  Returns:
    ``float64[examples]``, higher = member; ``score >= fitted.threshold`` is the
    attack model's own IN decision.
  """
  if not isinstance(fitted, ShokriAttack):
    raise TypeError(
      f"fitted must be a ShokriAttack from fit_attack, got {type(fitted).__name__}"
    )
  features = _real_array(features, "features", 2, "[examples, features]")
  if features.shape[1] != fitted.num_features:
    raise ValueError(
      f"features must have {fitted.num_features} columns like the attack's "
      f"training rows, got shape {features.shape}"
    )
  labels = _label_array(
    labels, "labels", (features.shape[0],), fitted.num_classes
  )
  out = np.empty(features.shape[0], np.float64)
  if not fitted.per_class:
    if out.size:
      out[:] = _score_one(fitted.model, fitted.global_model, features)
    return out
  routed = np.zeros(features.shape[0], bool)
  for c, est in fitted.class_models.items():
    rows = labels == c
    if rows.any():
      out[rows] = _score_one(fitted.model, est, features[rows])
      routed |= rows
  if not routed.all():
    out[~routed] = _score_one(
      fitted.model, fitted.global_model, features[~routed]
    )
  return out
