"""How a recipe runs on a backend: one :class:`Lowering` value, decided in one place.

The recipe (:class:`miajax.TrainConfig`) says what is trained; a
:class:`Lowering` says how: the model axis, models per step, steps per
compiled call, the gradient micro-batch, the compute dtype and the
convolution form. A user may pass one (any field left ``None`` is decided);
:func:`resolve_lowering` fills in the rest from (recipe, input shape,
classes, backend), and is the only place of miajax that asks JAX for the
default backend. Tests resolve another backend's lowering
(``backend="gpu"``) and run it on the CPU.

On GPU and TPU the lowering is the plain one users run: every model of a
step under one ``jax.vmap``, an epoch of steps in one ``lax.scan``, XLA's
convolutions, whole batches.

On CPU (:mod:`miajax.engine.cpu`): small steps stay vmapped but vmapped
convolutions use the im2col ``"patches"`` form (XLA:CPU runs grouped
convolutions slowly); above :data:`miajax.engine.cpu.microbatch.
UNROLL_MIN_FLOPS` per step MLPs run one model per call (``"loop"``) and
convolutional nets one program per model in a call (``"unroll"``) with
Winograd 3x3 convolutions, and their gradients are summed over
micro-batches whose size is measured
(:func:`miajax.engine.cpu.microbatch.measure_microbatch`).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import numpy as np

from miajax.engine import identity
from miajax.engine import recipe
from miajax.engine.cpu import convs
from miajax.engine.cpu import microbatch as cpu

__all__ = ["Lowering", "resolve_lowering", "BACKENDS", "MODEL_AXES"]

BACKENDS = ("cpu", "gpu", "tpu")
MODEL_AXES = ("vmap", "unroll", "loop")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Lowering:
  """How one recipe runs; ``None`` fields are decided by :func:`resolve_lowering`.

  ``model_axis``: ``"vmap"`` (batched ops over the models of a step),
  ``"unroll"`` (one program per model inside a call) or ``"loop"`` (one
  model per call and device). ``models_per_step``: models trained at once
  (None: the memory planner picks). ``steps_per_call``: steps per compiled
  call (None: one epoch, in a ``lax.scan``). ``microbatch``: examples per
  gradient micro-batch (the batch size: whole batches). ``compute_dtype``:
  dtype of the forward and backward pass (parameters stay float32).
  ``conv_impl``: convolution form of registry models (``"xla"``,
  ``"patches"``, ``"winograd"``, ...; user models keep theirs).
  ``backend``: ``"cpu"``, ``"gpu"`` or ``"tpu"``.
  """

  model_axis: str | None = None
  models_per_step: int | None = None
  steps_per_call: int | None = None
  microbatch: int | None = None
  compute_dtype: str = "float32"
  conv_impl: str | None = None
  backend: str | None = None

  def validate(self, batch_size: int | None = None) -> None:
    """Raises ValueError naming the field that is out of range."""
    if self.model_axis not in (None, *MODEL_AXES):
      raise ValueError(
        f"model_axis must be one of {MODEL_AXES} or None, got "
        f"{self.model_axis!r}"
      )
    for name in ("models_per_step", "steps_per_call", "microbatch"):
      value = getattr(self, name)
      if value is not None and (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < 1
      ):
        raise ValueError(
          f"{name} must be a positive integer or None, got {value!r}"
        )
    if (
      self.microbatch is not None
      and batch_size is not None
      and batch_size % self.microbatch
    ):
      raise ValueError(
        f"microbatch must be a positive divisor of batch_size ({batch_size}) "
        f"or None, got {self.microbatch!r}"
      )
    if self.compute_dtype not in DTYPES:
      raise ValueError(
        f"compute_dtype must be one of {DTYPES}, got {self.compute_dtype!r}"
      )
    if self.backend not in (None, *BACKENDS):
      raise ValueError(
        f"backend must be one of {BACKENDS}, got {self.backend!r}"
      )
    convs.conv_function(self.conv_impl)

  @property
  def per_model_programs(self) -> bool:
    """Each model its own program (``"unroll"``, ``"loop"``) rather than one batched one."""
    return self.model_axis in ("unroll", "loop")

  @property
  def call_per_model(self) -> bool:
    """One compiled call per model, on its own device (``"loop"``)."""
    return self.model_axis == "loop"

  def conv_function(self):
    """The convolution registry models get (``"xla"`` or a CPU form's function)."""
    return convs.conv_function(self.conv_impl)


def resolve_lowering(
  config: recipe.TrainConfig,
  input_shape,
  num_classes: int,
  *,
  lowering: Lowering | None = None,
  backend: str | None = None,
  steps: int | None = None,
) -> Lowering:
  """The complete :class:`Lowering` of ``config`` for inputs of ``input_shape``.

  Args:
    config: a :class:`miajax.TrainConfig`.
    input_shape: one example's shape, e.g. ``(32, 32, 3)``.
    num_classes: number of classes.
    lowering: the user's choices; its non-``None`` fields win over every rule.
    backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default: ``lowering.backend``,
      else JAX's default backend.
    steps: one-model gradient steps that will run with this lowering (all
      models of the run, so that every process and resume of a run decides
      alike), or 0 for queries only. On CPU the micro-batch candidates are
      then timed only if that can pay back
      (:func:`miajax.engine.cpu.microbatch.measurement_pays`); None always
      times them.

  ``models_per_step`` stays ``None`` unless given: the planner decides it
  from the number of models (:func:`miajax.engine.planner.plan_models_per_step`).
  """
  lowering = lowering or Lowering()
  if not isinstance(lowering, Lowering):
    raise ValueError(
      f"lowering must be a miajax.Lowering or None, got {lowering!r}"
    )
  backend = backend or lowering.backend or jax.default_backend()
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
  if steps is not None:
    if (
      isinstance(steps, bool)
      or not isinstance(steps, numbers.Integral)
      or steps < 0
    ):
      raise ValueError(f"steps must be None or an integer >= 0, got {steps!r}")
    steps = int(steps)
  lowering.validate(config.batch_size)
  return _resolve(
    identity.program_key(config),
    tuple(int(d) for d in input_shape),
    int(num_classes),
    dataclasses.replace(lowering, backend=backend),
    steps,
  )


@functools.lru_cache(maxsize=64)
def _resolve(config, input_shape, num_classes, low: Lowering, steps):
  batch = config.batch_size
  if low.backend != "cpu":
    return dataclasses.replace(
      low,
      model_axis=low.model_axis or "vmap",
      conv_impl=low.conv_impl or "xla",
      microbatch=low.microbatch or batch,
    )
  axis = low.model_axis or cpu.model_axis(config, input_shape, num_classes)
  conv = low.conv_impl or ("patches" if axis == "vmap" else "winograd")
  micro = low.microbatch
  if micro is None:
    micro = (
      cpu.measure_microbatch(
        config,
        input_shape,
        num_classes,
        conv,
        steps=steps,
        compute_dtype=low.compute_dtype,
      )
      if cpu.microbatch_eligible(config, axis)
      else batch
    )
  return dataclasses.replace(
    low, model_axis=axis, conv_impl=conv, microbatch=int(micro)
  )
