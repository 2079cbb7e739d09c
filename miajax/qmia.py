"""QMIA's regressors, trained through the engine: many targets and seeds in one program.

M. Bertran, S. Tang, M. Kearns, J. Morgenstern, A. Roth, Z. S. Wu,
"Scalable Membership Inference Attacks via Quantile Regression", NeurIPS
2023 (arXiv:2307.03694). For each target model, a regressor learns from
public data the target never trained on how the target scores such
non-members, example by example; an example the target scores above that
is called a member. No shadow model of the target's architecture is
trained. The cores (losses, score) are in :mod:`miajax.attacks` and need
no Flax; this module trains and queries the regressors.

How the engine, which trains classifiers on integer labels, trains
regressors of float scores: every training row is a (target, public
example) pair; its "label" is the row's index into a float table of the
targets' scores, which the loss (``TrainConfig.loss``) closes over. The
public inputs are tiled once per target (``rows = targets x public``) and
model ``m`` of the program, the ``m % seeds``-th seed of target ``m //
seeds``, keeps only its target's block. So ``targets x seeds`` regressors
are one compiled program, each on its own target's scores, each its own
initialisation (the engine's ``fold_in(seed, m)``).

The default is the Gaussian regressor (``alphas=None``): the released code's
sample script trains it (``--use_gaussian``), two outputs give the whole
ROC (``(s - mean) / std`` thresholds at every level), and it does not
extrapolate past its highest quantile level. ``alphas`` trains the pinball
head instead, one output per level. The scores of each target are
standardised over its public examples before training (the regressor then
fits the same scale for every target; predictions are returned in score
units). As in the released code (``--use_target_inputs``), the example's
label, when given, is appended one-hot to its flattened input.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from miajax import engine
from miajax.attacks import gaussian_nll, pinball_loss, qmia_score

__all__ = [
  "QmiaModels",
  "QmiaRegressor",
  "qmia_attack",
  "qmia_predict",
  "qmia_train",
]


class QmiaRegressor(nn.Module):
  """The default regressor: an MLP on the flattened input (label one-hot appended), ``outputs`` linear outputs."""

  outputs: int
  widths: tuple[int, ...] = (256, 128)

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for width in self.widths:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.outputs)(x)


@dataclasses.dataclass(frozen=True)
class QmiaModels:
  """Trained QMIA regressors (:func:`qmia_train`), stacked ``[models]``, ``models = targets x seeds``.

  Attributes:
    config: the :class:`miajax.TrainConfig` that trained them (its loss
      closes over the score table).
    variables: the regressors' variables, leading axis ``[models]``.
    targets: int[models], the target each regressor fits (``m // seeds``).
    seeds: regressors per target.
    alphas: None (Gaussian: outputs ``(mean, log_std)``) or float64[levels].
    shift: float64[targets], scale: float64[targets]: each target's public
      scores were standardised as ``(s - shift) / scale`` for training.
    num_classes: the label count of the one-hot inputs, or None (no labels).
    loss: float[models, epochs], each regressor's mean training loss per
      epoch (standardised units).
    diverged: bool[models].
    train_seconds: wall time of the training.
  """

  config: engine.TrainConfig
  variables: Any
  targets: np.ndarray
  seeds: int
  alphas: np.ndarray | None
  shift: np.ndarray
  scale: np.ndarray
  num_classes: int | None
  loss: np.ndarray
  diverged: np.ndarray
  train_seconds: float

  @property
  def outputs(self) -> int:
    return 2 if self.alphas is None else len(self.alphas)


def _positive_int(name, value) -> int:
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Integral)
    or value < 1
  ):
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def _check_alphas(alphas):
  if alphas is None:
    return None
  a = np.asarray(alphas, np.float64)
  if a.ndim != 1 or a.size < 1:
    raise ValueError(
      f"alphas must be a 1-D list of quantile levels, got shape {a.shape}"
    )
  if not (np.all(a > 0) and np.all(a < 1)) or np.any(np.diff(a) <= 0):
    raise ValueError(
      f"alphas must be increasing levels in (0, 1), got {a.tolist()}"
    )
  return a


def _inputs(x, labels, num_classes, name="x"):
  """``float32[n, features]``: ``x`` flattened, the labels one-hot appended (or ``x`` as is without labels)."""
  x = np.asarray(x)
  if x.ndim < 2 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.floating):
    raise ValueError(
      f"{name} must be float[examples, ...] with at least one example, got "
      f"{x.dtype}{list(x.shape)}"
    )
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains non-finite values (nan or inf)")
  if num_classes is None:
    if labels is not None:
      raise ValueError(
        "labels were given but the regressors were trained without labels "
        "(num_classes None)"
      )
    return x.astype(np.float32)
  if labels is None:
    raise ValueError(
      f"labels: the regressors take the labels one-hot (num_classes="
      f"{num_classes}); give int[{x.shape[0]}] labels"
    )
  y = np.asarray(labels)
  if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(
      f"labels must be int[{x.shape[0]}], got {y.dtype}{list(y.shape)}"
    )
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(
      f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]"
    )
  flat = x.reshape(x.shape[0], -1).astype(np.float32)
  return np.concatenate([flat, np.eye(num_classes, dtype=np.float32)[y]], 1)


def _scores_2d(public_scores, n: int) -> np.ndarray:
  s = np.asarray(public_scores)
  if s.ndim == 1:
    s = s[None]
  if s.ndim != 2 or s.shape[1] != n or not np.issubdtype(s.dtype, np.floating):
    raise ValueError(
      f"public_scores must be float[targets, {n}] (or float[{n}] for one "
      f"target), one score per public example, got {s.dtype}{list(s.shape)}"
    )
  if not np.all(np.isfinite(s)):
    raise ValueError("public_scores contains non-finite values (nan or inf)")
  return s.astype(np.float64)


def _loss_fn(table, alphas) -> Callable:
  """``loss(outputs [batch, outputs], rows int[batch]) -> float32[batch]`` against the table's rows."""
  table = jnp.asarray(table, jnp.float32)
  if alphas is None:

    def qmia_gaussian_nll(out, rows):
      return gaussian_nll(out, table[rows])

    return qmia_gaussian_nll
  levels = jnp.asarray(alphas, jnp.float32)

  def qmia_pinball_loss(out, rows):
    return pinball_loss(out, table[rows], levels)

  return qmia_pinball_loss


def qmia_train(
  x_public,
  public_scores,
  *,
  labels=None,
  num_classes: int | None = None,
  alphas: Sequence[float] | None = None,
  seeds: int = 1,
  module: nn.Module | None = None,
  widths: tuple[int, ...] = (256, 128),
  epochs: int = 10,
  batch_size: int = 64,
  learning_rate: float = 1e-3,
  weight_decay: float = 0.0,
  seed: int = 0,
  lowering: engine.Lowering | None = None,
  progress: Callable[[dict], None] | None = None,
) -> QmiaModels:
  """Trains ``targets x seeds`` QMIA regressors in one engine program.

  Bertran et al., NeurIPS 2023 (module docstring). Regressor ``m`` fits
  target ``m // seeds``'s scores on the public examples: Gaussian NLL of
  ``(mean, log_std)`` by default, the pinball loss of ``len(alphas)``
  quantiles with ``alphas``. Adam, cosine schedule, decoupled weight decay
  (the released code's AdamW, and its sample script's 10 epochs: on
  digits and Fashion-MNIST longer training lowers the training NLL and
  raises the held-out one). The inputs are tiled once per target: memory
  ``targets x public x features`` floats.

  Args:
    x_public: float[public, ...], examples none of the targets trained on.
    public_scores: float[targets, public] (or float[public]), each target's
      score on them (e.g. ``miajax.logit_scaled(target_logits, labels)``).
    labels: int[public], appended one-hot to the flattened inputs (with
      ``num_classes``); None: the regressor sees ``x`` only.
    num_classes: the label count (needed with ``labels``).
    alphas: None (Gaussian regressor) or increasing quantile levels in (0, 1).
    seeds: regressors per target (ensembled by :func:`qmia_predict`).
    module: a ``flax.linen.Module`` mapping ``[batch, features]`` (or ``x``'s
      own shape without labels) to ``[batch, outputs]``, outputs 2 or
      ``len(alphas)``; default :class:`QmiaRegressor` with ``widths``.
    epochs, batch_size, learning_rate, weight_decay, seed: the recipe.
    lowering, progress: as :func:`miajax.train_models`.

  Returns:
    :class:`QmiaModels`.
  """
  a = _check_alphas(alphas)
  seeds = _positive_int("seeds", seeds)
  if (labels is None) != (num_classes is None):
    raise ValueError("labels and num_classes go together: give both or neither")
  if num_classes is not None:
    num_classes = _positive_int("num_classes", num_classes)
  x = _inputs(x_public, labels, num_classes, "x_public")
  n = x.shape[0]
  s = _scores_2d(public_scores, n)
  targets = s.shape[0]
  shift = s.mean(1)
  scale = np.maximum(s.std(1), 1e-6 * (1 + np.abs(shift)))
  table = ((s - shift[:, None]) / scale[:, None]).ravel()
  rows = targets * n
  outputs = 2 if a is None else len(a)
  config = engine.TrainConfig(
    model=QmiaRegressor(outputs, tuple(widths)) if module is None else module,
    optimizer="adam",
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    epochs=_positive_int("epochs", epochs),
    batch_size=_positive_int("batch_size", batch_size),
    seed=seed,
    loss=_loss_fn(table, a),
    model_name="qmia_regressor",
  )
  owner = np.repeat(np.arange(targets), seeds)  # target of each model
  keep = np.arange(rows)[None, :] // n == owner[:, None]
  result = engine.train_models(
    config,
    np.tile(x, (targets,) + (1,) * (x.ndim - 1)),
    np.arange(rows, dtype=np.int32),
    keep,
    num_classes=max(rows, 2),
    lowering=lowering,
    progress=progress,
  )
  return QmiaModels(
    config=config,
    variables=result.variables,
    targets=owner,
    seeds=seeds,
    alphas=a,
    shift=shift,
    scale=scale,
    num_classes=num_classes,
    loss=np.asarray(result.loss),
    diverged=np.asarray(result.diverged),
    train_seconds=float(result.train_seconds),
  )


def qmia_predict(
  models: QmiaModels,
  x,
  labels=None,
  *,
  per_model: bool = False,
  batch_size: int = 1024,
  lowering: engine.Lowering | None = None,
) -> np.ndarray:
  """The regressors' predictions on ``x``, in the targets' score units.

  Args:
    models: from :func:`qmia_train`.
    x: float[examples, ...]; labels: int[examples] when trained with labels.
    per_model: return every regressor's prediction ``[models, ...]``
      instead of each target's mean over its seeds.

  Returns:
    float32[targets, examples, outputs] (``[models, ...]`` with
    ``per_model``): ``(mean, log_std)`` of the non-member score (Gaussian) or
    its quantiles at ``models.alphas``. Seeds are averaged output by output
    (means, log-stds, quantiles).
  """
  if not isinstance(models, QmiaModels):
    raise ValueError(
      f"models must be the QmiaModels of qmia_train, got {type(models).__name__}"
    )
  inputs = _inputs(x, labels, models.num_classes)
  out = engine.predict(
    models.config,
    models.variables,
    inputs,
    num_classes=models.outputs,
    batch_size=batch_size,
    lowering=lowering,
  )[:, :, 0].astype(np.float64)
  shift = models.shift[models.targets][:, None]
  scale = models.scale[models.targets][:, None]
  if models.alphas is None:
    out = np.stack(
      [out[..., 0] * scale + shift, out[..., 1] + np.log(scale)], -1
    )
  else:
    out = out * scale[..., None] + shift[..., None]
  if not per_model:
    out = out.reshape(-1, models.seeds, *out.shape[1:]).mean(1)
  return out.astype(np.float32)


def qmia_attack(models: QmiaModels, x, target_scores, labels=None, **kw):
  """QMIA scores of the targets on ``x``: :func:`qmia_predict`, then :func:`miajax.attacks.qmia_score`.

  Args:
    models: from :func:`qmia_train`.
    x: float[examples, ...], the examples to decide (labels: int[examples]
      when the regressors were trained with labels).
    target_scores: float[targets, examples], each target's score on them
      (the same signal as ``public_scores``).
    **kw: passed to :func:`qmia_predict` (``batch_size``, ``lowering``).

  Returns:
    float32[targets, examples]; higher = member.
  """
  pred = qmia_predict(models, x, labels, **kw)
  s = np.asarray(target_scores)
  if s.shape != pred.shape[:2] or not np.issubdtype(s.dtype, np.floating):
    raise ValueError(
      f"target_scores must be float[{pred.shape[0]}, {pred.shape[1]}] "
      f"[targets, examples], got {s.dtype}{list(s.shape)}"
    )
  if not np.all(np.isfinite(s)):
    raise ValueError("target_scores contains non-finite values (nan or inf)")
  return np.asarray(
    qmia_score(s.astype(np.float32), pred, models.alphas), np.float32
  )
