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
epochs). A user transformation is the whole recipe: it owns the learning
rate, schedule and weight decay, so ``learning_rate``, ``momentum``,
``nesterov``, ``weight_decay``, ``schedule`` and ``warmup_epochs`` are not
used with it (nor per-model learning rates).

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

A user optax transformation owns its weight decay.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from miajax import defenses as defenses_lib
from miajax import models as models_lib

__all__ = [
  "TrainConfig",
  "ModelFns",
  "model_fns",
  "make_optimizer",
  "example_loss",
  "state_collections",
  "model_fingerprint",
]

OPTIMIZERS = ("sgd", "adam")


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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How every model is trained.  Plain values: usable without flags.

  ``model``: a registry name, a ``flax.linen.Module`` or an ``(init, apply)``
  pair (module docstring); ``model_kwargs`` (a dict or ``(name, value)``
  pairs) go to registry models only.
  ``optimizer``: ``"sgd"``, ``"adam"``, an ``optax.GradientTransformation`` or
  ``steps_per_epoch -> GradientTransformation``. ``loss``: optional
  per-example loss. ``model_name`` names a user model in a run directory's
  fingerprint (default: its class or function name). ``learning_rate`` is
  the built-in optimizers' peak rate; a per-model vector can be given to
  ``train_models(..., learning_rates=...)``.
  """

  model: Any = "mlp"
  model_kwargs: tuple[tuple[str, Any], ...] | Mapping[str, Any] = ()
  optimizer: Any = "sgd"
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 5e-4  # the one L2 mechanism (module docstring)
  epochs: int = 20
  batch_size: int = 128
  schedule: str = "cosine"  # "cosine" or "constant"
  warmup_epochs: float = 0.0
  augment: bool = False  # random flip + reflect-pad-4 crop (images only)
  models_per_step: int | None = None  # None: the memory planner picks
  steps_per_call: int | None = None  # None: one epoch per call
  microbatch_size: int | None = (
    None  # gradient accumulation inside a step; None: the lowering decides
  )
  compute_dtype: str = "float32"  # or "bfloat16" (float32 master weights)
  model_axis: str | None = (
    None  # "vmap", "unroll" or "loop"; None: the lowering decides
  )
  seed: int = 0
  defense: Any = None  # a miajax.defenses.Defense (built-in or your own)
  loss: Callable | None = None
  model_name: str | None = None

  def __post_init__(self):
    # A dict is the natural spelling; the configuration is a hashable key of
    # the engine's caches, so it is kept as (name, value) pairs sorted by
    # name, with lists as tuples.
    if isinstance(self.model_kwargs, Mapping):
      object.__setattr__(
        self,
        "model_kwargs",
        tuple(
          (k, tuple(v) if isinstance(v, list) else v)
          for k, v in sorted(self.model_kwargs.items())
        ),
      )

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
    if self.compute_dtype != "float32":
      kwargs["dtype"] = jnp.dtype(self.compute_dtype)
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
      if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < 1
      ):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(
        f"learning_rate must be positive and finite, got {self.learning_rate!r}"
      )
    if self.weight_decay < 0:
      raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
    if self.models_per_step is not None and self.models_per_step < 1:
      raise ValueError(
        f"models_per_step must be >= 1 or None, got {self.models_per_step!r}"
      )
    if self.steps_per_call is not None and self.steps_per_call < 1:
      raise ValueError(
        f"steps_per_call must be >= 1 or None, got {self.steps_per_call!r}"
      )
    if self.microbatch_size is not None:
      m = self.microbatch_size
      if (
        isinstance(m, bool)
        or not isinstance(m, (int, np.integer))
        or m < 1
        or self.batch_size % m
      ):
        raise ValueError(
          f"microbatch_size must be a positive divisor of batch_size ({self.batch_size}) "
          f"or None, got {m!r}"
        )
      if m != self.batch_size and self.uses_batch_norm():
        raise ValueError(
          f"microbatch_size must be None or batch_size for {self.model!r}: its batch "
          "norm statistics would be computed per micro-batch"
        )
    if self.model_axis not in (None, "vmap", "unroll", "loop"):
      raise ValueError(
        f"model_axis must be 'vmap', 'unroll', 'loop' or None, got {self.model_axis!r}"
      )
    if self.compute_dtype not in ("float32", "bfloat16"):
      raise ValueError(
        f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}"
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

  return ModelFns(init, apply, True)


@functools.lru_cache(maxsize=64)
def model_fns(
  config: TrainConfig, num_classes: int, *, conv_impl: str | None = None
) -> ModelFns:
  """The config's model as a :class:`ModelFns` (cached: the same functions, hence compilations, per config).

  ``conv_impl`` picks the convolution lowering of registry models (see
  :mod:`miajax.lowering`); user models are used as given.
  """
  if config.builtin_model:
    kwargs = config.model_kwargs_dict()
    if conv_impl is not None and config.model != "mlp":
      kwargs.setdefault("conv_impl", conv_impl)
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


def make_optimizer(
  config: TrainConfig, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, bool]:
  """``(transformation, scaled)``.

  Built-in optimizers come with a *unit* peak learning rate and ``scaled=True``:
  the engine multiplies their updates by ``-learning_rate`` of each model. A
  user transformation is applied as optax applies it (``scaled=False``).
  """
  if not config.builtin_optimizer:
    if isinstance(config.optimizer, optax.GradientTransformation):
      return config.optimizer, False
    tx = config.optimizer(steps_per_epoch)
    if not isinstance(tx, optax.GradientTransformation):
      raise ValueError(
        f"optimizer({steps_per_epoch}) must return an optax.GradientTransformation, got "
        f"{type(tx).__name__}"
      )
    return tx, False
  total = config.epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.schedule == "cosine":
    if warmup:
      sched = optax.warmup_cosine_decay_schedule(
        0.0, 1.0, warmup, max(total, warmup + 1), 0.0
      )
    else:  # optax warns about a zero-step warm-up; a plain cosine is the same schedule
      sched = optax.cosine_decay_schedule(1.0, max(total, 1), 0.0)
  else:
    sched = (
      optax.join_schedules(
        [optax.linear_schedule(0.0, 1.0, warmup), optax.constant_schedule(1.0)],
        [warmup],
      )
      if warmup
      else optax.constant_schedule(1.0)
    )
  if config.optimizer == "sgd":
    parts = (
      [optax.add_decayed_weights(config.weight_decay)]
      if config.weight_decay
      else []
    )
    if config.momentum:
      parts.append(optax.trace(decay=config.momentum, nesterov=config.nesterov))
  else:
    parts = [optax.scale_by_adam()]
    if config.weight_decay:
      parts.append(optax.add_decayed_weights(config.weight_decay))
  parts.append(optax.scale_by_schedule(sched))
  return optax.chain(*parts), True


def example_loss(config: TrainConfig, logits, labels):
  """Per-example training loss ``float32[batch]``: the defense's, on the user's loss if one is given."""
  return defenses_lib.per_example_loss(
    config._defense(), logits, labels, loss=config.loss
  )


def model_fingerprint(
  config: TrainConfig, input_shape: tuple, num_classes: int
) -> dict:
  """JSON identity of a user model for run directories: its name and parameter tree shapes and dtypes."""
  fns = model_fns(config, num_classes)
  shapes = jax.eval_shape(
    fns.init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32),
  )
  leaves = jax.tree_util.tree_leaves_with_path(shapes)
  return {
    "name": config.describe_model(),
    "variables": {
      jax.tree_util.keystr(p): [list(a.shape), str(a.dtype)] for p, a in leaves
    },
  }
