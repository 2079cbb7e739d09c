"""How the engine runs a configuration on a backend: one value, decided in one place.

:func:`resolve_lowering` maps (config, input shape, classes, backend) to a
:class:`Lowering`; the engine reads nothing else, and this is the only
module of miajax that asks JAX for the default backend. Tests resolve the
lowering of another backend (``backend="gpu"``) and run it on the CPU.

On GPU and TPU the lowering is the plain one users run: every model of a
step under one ``jax.vmap``, an epoch of steps in one ``lax.scan``, XLA's
convolutions, whole batches, ``config.compute_dtype``.

On CPU (:mod:`miajax.cpu_engine` holds the machinery): small steps stay
vmapped but vmapped convolutions use the im2col ``"patches"`` form (XLA:CPU
runs grouped convolutions slowly); above :data:`miajax.cpu_engine.
UNROLL_MIN_FLOPS` per step MLPs run one model per call (``"loop"``) and
convolutional nets one program per model in a call (``"unroll"``) with
Winograd 3x3 convolutions, and their gradients are summed over micro-batches
whose size is *measured* (:func:`miajax.cpu_engine.measure_microbatch`).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax

from miajax import config as config_lib
from miajax import cpu_engine

__all__ = ["Lowering", "resolve_lowering"]

BACKENDS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Lowering:
  """How one configuration runs.

  ``model_axis``: ``"vmap"`` (batched ops over the models of a step),
  ``"unroll"`` (one program per model inside a call) or ``"loop"`` (one
  model per call and device). ``conv_impl``: convolution form of registry
  models (``"xla"``, ``"patches"``, ``"winograd"``; user models keep
  theirs). ``microbatch``: examples per gradient micro-batch (the batch size:
  whole batches). ``steps_per_call``: steps per compiled call (None: one
  epoch, in a ``lax.scan``). ``compute_dtype``: dtype of the forward and
  backward pass (parameters stay float32).
  """

  backend: str
  model_axis: str
  conv_impl: str
  microbatch: int
  steps_per_call: int | None
  compute_dtype: str


def _key(config: config_lib.TrainConfig) -> config_lib.TrainConfig:
  # Seed, learning rate and chunking do not change the lowering: share one decision across them.
  return dataclasses.replace(
    config, seed=0, learning_rate=1.0, models_per_step=None
  )


def resolve_lowering(
  config: config_lib.TrainConfig,
  input_shape,
  num_classes: int,
  *,
  backend: str | None = None,
  steps: int | None = None,
) -> Lowering:
  """The :class:`Lowering` of ``config`` for inputs of ``input_shape`` on ``backend``.

  Args:
    config: a :class:`miajax.TrainConfig`; its explicit ``model_axis``,
      ``microbatch_size``, ``steps_per_call`` and ``model_kwargs["conv_impl"]``
      win over every rule.
    input_shape: one example's shape, e.g. ``(32, 32, 3)``.
    num_classes: number of classes.
    backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default: JAX's default backend.
    steps: one-model gradient steps that will run with this lowering (all
      models of the run, so that every process and resume of a run decides
      alike), or 0 for queries only. On CPU the micro-batch candidates are
      then timed only if that can pay back
      (:func:`miajax.cpu_engine.measurement_pays`); None always times them.
  """
  if backend is None:
    backend = jax.default_backend()
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
  return _resolve(
    _key(config),
    tuple(int(d) for d in input_shape),
    int(num_classes),
    backend,
    steps,
  )


@functools.lru_cache(maxsize=64)
def _resolve(config, input_shape, num_classes, backend, steps=None) -> Lowering:
  batch = config.batch_size
  if backend != "cpu":
    return Lowering(
      backend,
      config.model_axis or "vmap",
      "xla",
      config.microbatch_size or batch,
      config.steps_per_call,
      config.compute_dtype,
    )
  axis = config.model_axis or cpu_engine.model_axis(
    config, input_shape, num_classes
  )
  conv = "patches" if axis == "vmap" else "winograd"
  micro = config.microbatch_size
  if micro is None:
    micro = (
      cpu_engine.measure_microbatch(
        config, input_shape, num_classes, conv, steps=steps
      )
      if cpu_engine.microbatch_eligible(config, axis)
      else batch
    )
  return Lowering(
    backend, axis, conv, int(micro), config.steps_per_call, config.compute_dtype
  )
