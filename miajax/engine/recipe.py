"""What to train: :class:`TrainConfig`, and the user's model, optimizer and loss as plain functions.

A model is a registry name (:data:`miajax.models.MODEL_NAMES`), any
``flax.linen.Module`` instance, or a pair of pure functions
``init(key, x) -> variables`` and ``apply(variables, x, *, train, rngs) ->
logits`` (Flax NNX through ``nnx.split``/``nnx.merge``, Haiku's ``transform``
or hand-written JAX all fit). :func:`model_fns` turns each into a
:class:`ModelFns`, the only form the engine sees.

An optimizer is ``"sgd"`` (momentum, weight decay, cosine schedule),
``"adam"``, any ``optax.GradientTransformation``, or a function
``steps_per_epoch -> GradientTransformation`` (for schedules measured in
epochs); :mod:`miajax.engine.optimizers` builds them. A user transformation
is the whole recipe: it owns the learning rate, schedule and weight decay,
so ``learning_rate``, ``momentum``, ``nesterov``, ``weight_decay``,
``schedule`` and ``warmup_epochs`` are not used with it; its per-model
values go through ``hyperparams`` (``optax.inject_hyperparams``).

A loss ``loss(logits float32[batch, classes], labels int[batch]) ->
float32[batch]`` replaces the cross-entropy; defenses that add terms to it
(confidence penalty, HAMP's entropy term, DP-SGD, dropout) still compose
with it, defenses that change the targets (label smoothing, HAMP's soft
labels) are refused with it.

Weight decay (``weight_decay``) is the one way to get L2 regularisation; the
built-in optimizers apply it as ``optax.add_decayed_weights(weight_decay)``:

* ``"sgd"``: the decay joins the gradient before momentum, so it equals a
  loss penalty ``0.5 * weight_decay * ||params||^2`` over every parameter
  leaf, biases included (gradient ``weight_decay * params``), i.e. PyTorch's
  ``SGD(weight_decay=...)``. Keras' ``l2(w)`` penalises ``w ||params||^2``:
  that is ``weight_decay = 2 w``. It is not part of the reported loss.
* ``"adam"``: decoupled decay after Adam's scaling, times the learning rate
  schedule (AdamW, Loshchilov & Hutter 2019); not an L2 penalty.
* With DP-SGD the decay is data-independent and applied by the optimizer,
  after clipping and noise: it costs no privacy.

A recipe's identity is :func:`fingerprint` (run directories, the shadow
store and checkpoints); :func:`program_key` is the part a compiled program
depends on.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from miajax import defenses as defenses_lib
from miajax import hyperparams as hyperparams_lib
from miajax import models as models_lib
from miajax.engine.cpu import convs
from miajax.hyperparams import PerModel

__all__ = [
  "TrainConfig",
  "ModelFns",
  "model_fns",
  "example_loss",
  "state_collections",
  "PER_MODEL_FIELDS",
]

OPTIMIZERS = ("sgd", "adam")
# The built-in optimizers' hyperparameters that may take one value per model.
PER_MODEL_FIELDS = ("learning_rate", "momentum", "weight_decay")


def _positive(name, v):
  if isinstance(v, bool) or not isinstance(v, numbers.Real):
    raise ValueError(f"{name} must be a real number, got {v!r}")
  if not (v > 0 and math.isfinite(v)):
    raise ValueError(f"{name} must be positive and finite, got {v!r}")
  return float(v)


def _nonnegative(name, v):
  v = hyperparams_lib.real_scalar(name, v)
  if v < 0:
    raise ValueError(f"{name} must be >= 0, got {v!r}")
  return v


def _momentum(name, v):
  v = hyperparams_lib.real_scalar(name, v)
  if not 0 <= v < 1:
    raise ValueError(f"{name} must lie in [0, 1), got {v!r}")
  return v


def _scalar_or_per_model(value):
  # Hashable either way: a recipe is a key of the engine's caches.
  if isinstance(value, PerModel):
    return value
  if np.ndim(value):
    return hyperparams_lib.per_model(value)
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    return value.item()
  return value


class ModelFns(NamedTuple):
  """A model as pure functions.

  ``init(key, x) -> variables`` (a dict with ``"params"`` and any other
  collections); ``apply(variables, x, *, train, rngs, mutable=())`` returns
  logits ``[batch, classes]``, or ``(logits, updated collections)`` when
  ``mutable`` names collections (only Flax modules update state, e.g.
  ``batch_stats``).
  """

  init: Callable
  apply: Callable
  is_module: bool
  # (first, rest) where the module offers ``affine_split()`` (see
  # miajax.models.MLP.affine_split), else None.
  affine_split: Any = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How every model is trained.  Plain values: usable without flags.

  ``model``: a registry name, a ``flax.linen.Module`` or an ``(init, apply)``
  pair (module docstring); ``model_kwargs`` (a dict or ``(name, value)``
  pairs) go to registry models only.
  ``optimizer``: ``"sgd"``, ``"adam"``, an ``optax.GradientTransformation`` or
  ``steps_per_epoch -> GradientTransformation``. ``loss``: optional
  per-example loss. ``model_name`` names a user model in a run directory's
  fingerprint (default: its class or function name).

  ``learning_rate`` (the built-in optimizers' peak rate), ``momentum`` and
  ``weight_decay`` are scalars or one value per model (a list or array
  ``[models]``, kept as :class:`miajax.hyperparams.PerModel`); so are the
  strengths of the built-in defenses. ``hyperparams`` gives a user optimizer
  built with ``optax.inject_hyperparams`` its values by name, scalar or per
  model. ``epochs`` may be per model too (built-in optimizers): model ``m``
  stops after its own ``epochs[m]``, its schedule scaled to them, in a
  program of ``max(epochs)``. How the recipe runs (model axis, models per step, micro-batch,
  steps per call, compute dtype) is a :class:`miajax.Lowering`, not part of
  the recipe.
  """

  model: Any = "mlp"
  model_kwargs: tuple[tuple[str, Any], ...] | Mapping[str, Any] = ()
  optimizer: Any = "sgd"
  learning_rate: float | PerModel = 0.1
  momentum: float | PerModel = 0.9
  nesterov: bool = False
  weight_decay: float | PerModel = 5e-4  # the one L2 mechanism (docstring)
  epochs: int | PerModel = 20
  batch_size: int = 128
  schedule: str = "cosine"  # "cosine" or "constant"
  warmup_epochs: float = 0.0
  augment: bool = False  # random flip + reflect-pad-4 crop (images only)
  seed: int = 0
  defense: Any = None  # a miajax.defenses.Defense (built-in or your own)
  loss: Callable | None = None
  model_name: str | None = None
  # Values for the optax.inject_hyperparams state of a user optimizer.
  hyperparams: tuple[tuple[str, Any], ...] | Mapping[str, Any] = ()

  def __post_init__(self):
    # A dict is the natural spelling; the configuration is a hashable key of
    # the engine's caches, so it is kept as (name, value) pairs sorted by
    # name, with lists as tuples, and per-model arrays as PerModel tuples.
    if isinstance(self.model_kwargs, Mapping):
      object.__setattr__(
        self,
        "model_kwargs",
        tuple(
          (k, tuple(v) if isinstance(v, list) else v)
          for k, v in sorted(self.model_kwargs.items())
        ),
      )
    for name in PER_MODEL_FIELDS + ("epochs",):
      object.__setattr__(self, name, _scalar_or_per_model(getattr(self, name)))
    if isinstance(self.hyperparams, Mapping):
      object.__setattr__(
        self,
        "hyperparams",
        tuple(
          (k, _scalar_or_per_model(v))
          for k, v in sorted(self.hyperparams.items())
        ),
      )

  @property
  def per_model_epochs(self) -> bool:
    """Whether each model trains its own number of epochs (``epochs`` per model)."""
    return isinstance(self.epochs, PerModel)

  @property
  def max_epochs(self) -> int:
    """The epochs the longest-trained model runs: what a program of every model steps through."""
    if isinstance(self.epochs, PerModel):
      return int(max(self.epochs.values))
    return int(self.epochs)

  @property
  def builtin_model(self) -> bool:
    return isinstance(self.model, str)

  @property
  def builtin_optimizer(self) -> bool:
    return isinstance(self.optimizer, str)

  def model_kwargs_dict(self) -> dict:
    """Registry-model keyword arguments: ``model_kwargs`` and the defense's."""
    kwargs = dict(self.model_kwargs)
    kwargs.update(defenses_lib.model_kwargs(self._defense()))
    return kwargs

  def _defense(self):
    return defenses_lib.none() if self.defense is None else self.defense

  def uses_batch_norm(self) -> bool:
    """Known before tracing for registry models; user modules say so through their state (see engine)."""
    return self.builtin_model and models_lib.uses_batch_norm(self.model)

  def describe_model(self) -> str:
    if self.builtin_model:
      return self.model
    if self.model_name:
      return self.model_name
    obj = self.model if isinstance(self.model, nn.Module) else self.model[0]
    return (
      type(obj).__name__
      if isinstance(obj, nn.Module)
      else getattr(obj, "__qualname__", repr(obj))
    )

  def describe_optimizer(self) -> str:
    if self.builtin_optimizer:
      return self.optimizer
    return getattr(
      self.optimizer, "__qualname__", type(self.optimizer).__name__
    )

  def validate(self) -> None:
    _check_model(self)
    if self.builtin_optimizer:
      if self.optimizer not in OPTIMIZERS:
        raise ValueError(
          f"optimizer must be one of {OPTIMIZERS}, an optax.GradientTransformation or a "
          f"function steps_per_epoch -> GradientTransformation, got {self.optimizer!r}"
        )
    elif not (
      isinstance(self.optimizer, optax.GradientTransformation)
      or callable(self.optimizer)
    ):
      raise ValueError(
        f"optimizer must be one of {OPTIMIZERS}, an optax.GradientTransformation or a function "
        f"steps_per_epoch -> GradientTransformation, got {type(self.optimizer).__name__}"
      )
    if self.loss is not None and not callable(self.loss):
      raise ValueError(
        f"loss must be a function loss(logits, labels) -> float[batch] or None, got {self.loss!r}"
      )
    if self.defense is not None and not isinstance(
      self.defense, defenses_lib.Defense
    ):
      raise ValueError(
        "defense must be a miajax.defenses.Defense (e.g. chain(...), or your "
        f"own subclass) or None, got {self.defense!r}"
      )
    if self.loss is not None and defenses_lib.maps_targets(self._defense()):
      raise ValueError(
        "loss: a custom loss takes integer labels, so it cannot be combined "
        "with a defense that changes the targets "
        f"({defenses_lib.short_name(self._defense())}); fold the soft "
        "targets into your loss instead"
      )
    if "dropout_rate" in dict(self.model_kwargs):
      raise ValueError(
        "model_kwargs: set dropout with defense=miajax.defenses.dropout(rate),"
        " not model_kwargs['dropout_rate']"
      )
    owned = set(dict(self.model_kwargs)) & set(
      defenses_lib.model_kwargs(self._defense())
    )
    if owned:
      raise ValueError(
        f"model_kwargs {sorted(owned)} are also set by the defense "
        f"{defenses_lib.short_name(self._defense())}; set them once"
      )
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(
        f"schedule must be 'cosine' or 'constant', got {self.schedule!r}"
      )
    for name in ("epochs", "batch_size"):
      value = getattr(self, name)
      if name == "epochs" and isinstance(value, PerModel):
        _check_epochs(self, value)
        continue
      if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < 1
      ):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    self._check_hyperparams()

  def _check_hyperparams(self) -> None:
    """The optimizer's values, scalar or per model."""
    # A zero rate is allowed within a sweep (an untrained reference model).
    lr_check = (
      _nonnegative if isinstance(self.learning_rate, PerModel) else _positive
    )
    hyperparams_lib.check_values("learning_rate", self.learning_rate, lr_check)
    hyperparams_lib.check_values(
      "weight_decay", self.weight_decay, _nonnegative
    )
    hyperparams_lib.check_values("momentum", self.momentum, _momentum)
    if not self.builtin_optimizer:
      for name in PER_MODEL_FIELDS:
        if isinstance(getattr(self, name), PerModel):
          raise ValueError(
            f"per-model {name} needs a built-in optimizer ('sgd', 'adam'); a "
            "user optax transformation owns its hyperparameters: build it "
            "with optax.inject_hyperparams and give per-model values as "
            "hyperparams={name: [...]}"
          )
    if self.hyperparams and self.builtin_optimizer:
      raise ValueError(
        "hyperparams: name the values of a user optimizer built with "
        "optax.inject_hyperparams; the built-in optimizers take "
        "learning_rate, momentum and weight_decay (scalars or per model)"
      )
    for name, value in self.hyperparams:
      hyperparams_lib.check_values(
        f"hyperparams[{name!r}]", value, hyperparams_lib.real_scalar
      )

  def num_models(self) -> int | None:
    """The number of models the per-model values fix (None: any)."""
    values = [getattr(self, name) for name in PER_MODEL_FIELDS + ("epochs",)]
    values += [v for _, v in self.hyperparams]
    sizes = {len(v) for v in values if isinstance(v, PerModel)}
    sizes |= {len(v) for v in hyperparams_lib.collect(self.defense).values()}
    if len(sizes) > 1:
      raise ValueError(
        f"per-model values must all have one length [models], got lengths "
        f"{sorted(sizes)}"
      )
    return sizes.pop() if sizes else None


def _check_epochs(config: TrainConfig, epochs: PerModel) -> None:
  bad = [(i, v) for i, v in enumerate(epochs.values) if v < 1 or v != int(v)]
  if bad:
    i, v = bad[0]
    raise ValueError(f"epochs[{i}] must be a positive integer, got {v!r}")
  if not config.builtin_optimizer:
    # The gate stops a model, but only a built-in schedule can be scaled to its own length.
    raise ValueError(
      "per-model epochs need a built-in optimizer ('sgd', 'adam'): a user "
      "optax transformation's schedule cannot be scaled to each model's "
      "epochs; train each epoch count as its own run"
    )


def _check_model(config: TrainConfig) -> None:
  m = config.model
  if isinstance(m, str):
    if m not in models_lib.MODEL_NAMES:
      raise ValueError(
        f"model must be one of {list(models_lib.MODEL_NAMES)}, a flax.linen.Module or a pair "
        f"(init, apply), got {m!r}"
      )
    return
  if isinstance(m, nn.Module):
    pass
  elif (
    isinstance(m, (tuple, list)) and len(m) == 2 and all(callable(f) for f in m)
  ):
    pass
  else:
    raise ValueError(
      f"model must be one of {list(models_lib.MODEL_NAMES)}, a flax.linen.Module or a pair "
      f"(init, apply) of functions, got {type(m).__name__}"
    )
  if config.model_kwargs:
    raise ValueError(
      "model_kwargs apply to registry models only; configure your own model before passing it"
    )
  settings = defenses_lib.model_kwargs(config._defense())
  if settings:
    raise ValueError(
      f"the defense {defenses_lib.short_name(config._defense())} sets "
      f"{sorted(settings)} of registry models only; configure your own model "
      "instead (for dropout: put dropout in your own model; it gets the "
      "'dropout' RNG stream when train=True)"
    )


def _takes(fn, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _module_fns(module: nn.Module) -> ModelFns:
  takes_train = _takes(module.__call__, "train")

  def init(key, x):
    kw = {"train": False} if takes_train else {}
    return dict(
      module.init(
        {"params": key, "dropout": jax.random.fold_in(key, 1)}, x, **kw
      )
    )

  def apply(variables, x, *, train, rngs=None, mutable=()):
    kw = {"train": train} if takes_train else {}
    if mutable:
      return module.apply(variables, x, rngs=rngs, mutable=list(mutable), **kw)
    return module.apply(variables, x, rngs=rngs, **kw)

  split = getattr(module, "affine_split", None)
  return ModelFns(init, apply, True, split() if callable(split) else None)


@functools.lru_cache(maxsize=64)
def model_fns(
  config: TrainConfig,
  num_classes: int,
  *,
  conv_impl: Any = None,
  compute_dtype: str = "float32",
) -> ModelFns:
  """The config's model as a :class:`ModelFns` (cached: the same functions, hence compilations, per config).

  ``conv_impl`` (``"xla"`` or a convolution function, see
  :class:`miajax.models.Conv`) and ``compute_dtype`` are the lowering's
  choices for registry models; user models are used as given.
  """
  if config.builtin_model:
    kwargs = config.model_kwargs_dict()
    if config.model != "mlp":
      # A conv_impl in model_kwargs wins over the lowering's.
      kwargs["conv_impl"] = convs.conv_function(
        kwargs.get("conv_impl", conv_impl)
      )
      if kwargs["conv_impl"] is None:
        del kwargs["conv_impl"]
    if compute_dtype != "float32":
      kwargs["dtype"] = jnp.dtype(compute_dtype)
    return _module_fns(
      models_lib.get_model(config.model, num_classes, **kwargs)
    )
  if isinstance(config.model, nn.Module):
    return _module_fns(config.model)
  init, apply = config.model

  def apply_pair(variables, x, *, train, rngs=None, mutable=()):
    if mutable:
      raise ValueError(
        "a plain (init, apply) model cannot update state during training; use a Flax module"
      )
    return apply(variables, x, train=train, rngs=rngs)

  return ModelFns(lambda key, x: dict(init(key, x)), apply_pair, False)


def state_collections(fns: ModelFns, input_shape: tuple) -> tuple[str, ...]:
  """Collections a training step updates: a Flax module's non-parameter collections (traced, not run)."""
  if not fns.is_module:
    return ()
  shapes = jax.eval_shape(
    fns.init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32),
  )
  return tuple(sorted(k for k in shapes if k != "params"))


def example_loss(config: TrainConfig, logits, labels, defense=None):
  """Per-example training loss ``float32[batch]``: the defense's, on the user's loss if one is given.

  ``defense``: the config's defense with one model's per-model values bound
  (default: the config's own).
  """
  defense = config._defense() if defense is None else defense
  return defenses_lib.per_example_loss(
    defense, logits, labels, loss=config.loss
  )
