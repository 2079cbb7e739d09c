"""Flax linen models, looked up by name with :func:`get_model`.

Every model is called as ``model.apply(variables, x, train=...)`` with
``x: float[batch, height, width, channels]`` (or ``[batch, features]`` for the
MLP) and returns ``float32[batch, classes]`` logits.  Every model takes a
``dropout_rate``; dropout draws from the ``'dropout'`` RNG stream.

The training engine vmaps ``init`` and ``apply`` over a leading model axis, so
each model keeps its own parameters *and* its own batch-norm statistics (the
``batch_stats`` collection is simply another stacked pytree), without
``nn.vmap``.

Convolutions: ``conv_impl`` is ``"xla"`` (XLA's own convolution, what
:func:`get_model` gives and what GPU/TPU runs) or a convolution function. On
CPU the engine passes its own forms (im2col patches for vmapped models,
Winograd F(4x4, 3x3) for unrolled ones: :mod:`miajax.engine.cpu.convs`):
the model stays a plain Flax module that never imports the engine.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
  "Conv",
  "MLP",
  "LeNet5",
  "MLLeaksCNN",
  "CNNSmall",
  "WideResNet",
  "get_model",
  "MODEL_NAMES",
]


def _xla_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(
    x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


class Conv(nn.Module):
  """A 2-D convolution, NHWC, with the same parameters as ``nn.Conv``.

  ``impl``: ``"xla"`` (``lax.conv_general_dilated``) or a function
  ``conv(x [batch, H, W, C], kernel [kh, kw, C, F], strides, padding) ->
  [batch, H', W', F]``; the engine passes its CPU forms
  (:mod:`miajax.engine.cpu.convs`) this way, so models never import it.
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: str = "SAME"
  use_bias: bool = True
  impl: Any = "xla"
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    cin = x.shape[-1]
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (kh, kw, cin, self.features)
    )
    dtype = self.dtype or x.dtype
    kernel = kernel.astype(dtype)
    x = x.astype(dtype)
    if callable(self.impl):
      y = self.impl(x, kernel, tuple(self.strides), self.padding)
    elif self.impl == "xla":
      y = _xla_conv(x, kernel, tuple(self.strides), self.padding)
    else:
      raise ValueError(
        "conv_impl must be 'xla' or a function conv(x, kernel, strides, "
        f"padding) -> y, got {self.impl!r}"
      )
    if self.use_bias:
      y = y + self.param(
        "bias", nn.initializers.zeros, (self.features,)
      ).astype(dtype)
    return y


def _activation(name: str) -> Callable:
  table = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "leaky_relu": nn.leaky_relu,
    "gelu": nn.gelu,
  }
  if name not in table:
    raise ValueError(f"activation must be one of {sorted(table)}, got {name!r}")
  return table[name]


class MLP(nn.Module):
  """Fully connected net; inputs of any shape are flattened per example."""

  num_classes: int
  widths: Sequence[int] = (1024, 512, 256, 128)
  activation: str = "tanh"
  dropout_rate: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = _activation(self.activation)
    x = x.reshape((x.shape[0], -1))
    for width in self.widths:
      x = act(nn.Dense(width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)

  def affine_split(self):
    """``(first, rest)``: inference as an affine first layer and the rest.

    ``first(variables, x)``: the first hidden layer's pre-activation
    ``[batch, widths[0]]``, affine in ``x``; ``rest(variables, h)``: the
    logits from it; ``rest(v, first(v, x))`` is ``apply(v, x, train=False)``
    bit for bit. An extension point: any module with this method lets the
    label-only noise views map each shared noise draw through the first
    layer once (:mod:`miajax.engine.labels`).
    """
    act = _activation(self.activation)
    dense = lambda width: nn.Dense(width, dtype=self.dtype)
    widths = tuple(self.widths)

    def first(variables, x):
      p = variables["params"]["Dense_0"]
      return dense(widths[0]).apply({"params": p}, x.reshape((x.shape[0], -1)))

    def rest(variables, h):
      p = variables["params"]
      x = act(h)
      for i, width in enumerate(widths[1:], 1):
        x = act(dense(width).apply({"params": p[f"Dense_{i}"]}, x))
      out = dense(self.num_classes).apply(
        {"params": p[f"Dense_{len(widths)}"]}, x
      )
      return out.astype(jnp.float32)

    return (first, rest) if widths else None


def _pool_padding(x, window: int) -> str:
  # Tiny inputs (8x8 digits) would shrink to nothing under VALID conv/pool.
  return "VALID" if min(x.shape[1:3]) >= window else "SAME"


class LeNet5(nn.Module):
  """LeNet-5: conv6 5x5 -> pool -> conv16 5x5 -> pool -> 120 -> 84 -> classes.

  Both convolutions use SAME padding so the net also runs on 8x8 digits.
  """

  num_classes: int
  dropout_rate: float = 0.0
  conv_impl: Any = "xla"
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features in (6, 16):
      x = nn.relu(
        Conv(features, (5, 5), impl=self.conv_impl, dtype=self.dtype)(x)
      )
      x = nn.max_pool(x, (2, 2), (2, 2), padding=_pool_padding(x, 2))
    x = x.reshape((x.shape[0], -1))
    for width in (120, 84):
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class MLLeaksCNN(nn.Module):
  """The ML-Leaks CIFAR CNN: conv32 5x5 same, pool, conv32 5x5 valid, pool, dense 128 tanh.

  On inputs smaller than 12x12 the second convolution uses SAME padding, since a
  VALID 5x5 convolution would leave nothing of an 8x8 image after pooling.
  """

  num_classes: int
  dropout_rate: float = 0.0
  conv_impl: Any = "xla"
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(
      Conv(32, (5, 5), padding="SAME", impl=self.conv_impl, dtype=self.dtype)(x)
    )
    x = nn.max_pool(x, (2, 2), (2, 2), padding=_pool_padding(x, 2))
    padding = "VALID" if min(x.shape[1:3]) >= 6 else "SAME"
    x = nn.relu(
      Conv(32, (5, 5), padding=padding, impl=self.conv_impl, dtype=self.dtype)(
        x
      )
    )
    x = nn.max_pool(x, (2, 2), (2, 2), padding=_pool_padding(x, 2))
    x = x.reshape((x.shape[0], -1))
    x = jnp.tanh(nn.Dense(128, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def _avg_pool2(x):
  """2x2 mean pooling, stride 2; a reshape + mean where the size is even (XLA:CPU runs the
  reduce_window form and its gradient slower), else ``nn.avg_pool`` (SAME on tiny inputs)."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    return nn.avg_pool(x, (2, 2), (2, 2), padding=_pool_padding(x, 2))
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class CNNSmall(nn.Module):
  """The LiRA reference's small CNN: 3 blocks of conv3x3 + leaky ReLU + mean pooling.

  Widths double per block from ``width`` (32 -> 64 -> 128), then a global mean
  and a dense classifier.
  """

  num_classes: int
  width: int = 32
  dropout_rate: float = 0.0
  conv_impl: Any = "xla"
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for block in range(3):
      x = nn.leaky_relu(
        Conv(
          self.width * 2**block, (3, 3), impl=self.conv_impl, dtype=self.dtype
        )(x)
      )
      x = _avg_pool2(x)
    x = x.mean(axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class _WideBlock(nn.Module):
  features: int
  strides: int
  dropout_rate: float
  conv_impl: Any
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(
      use_running_average=not train, momentum=0.9, dtype=self.dtype
    )
    y = nn.relu(norm()(x))
    shortcut = x
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = Conv(
        self.features,
        (1, 1),
        (self.strides, self.strides),
        use_bias=False,
        impl=self.conv_impl,
        dtype=self.dtype,
      )(y)
    y = Conv(
      self.features,
      (3, 3),
      (self.strides, self.strides),
      use_bias=False,
      impl=self.conv_impl,
      dtype=self.dtype,
    )(y)
    y = nn.relu(norm()(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = Conv(
      self.features,
      (3, 3),
      use_bias=False,
      impl=self.conv_impl,
      dtype=self.dtype,
    )(y)
    return shortcut + y


class WideResNet(nn.Module):
  """WideResNet-depth-width (Zagoruyko & Komodakis 2016) with batch norm."""

  num_classes: int
  depth: int = 16
  width: int = 4
  dropout_rate: float = 0.0
  conv_impl: Any = "xla"
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}")
    blocks = (self.depth - 4) // 6
    x = Conv(16, (3, 3), use_bias=False, impl=self.conv_impl, dtype=self.dtype)(
      x
    )
    for stage, features in enumerate(
      (16 * self.width, 32 * self.width, 64 * self.width)
    ):
      for i in range(blocks):
        strides = 2 if (stage > 0 and i == 0) else 1
        x = _WideBlock(
          features, strides, self.dropout_rate, self.conv_impl, self.dtype
        )(x, train)
    x = nn.relu(
      nn.BatchNorm(
        use_running_average=not train, momentum=0.9, dtype=self.dtype
      )(x)
    )
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
  "mlp": MLP,
  "lenet5": LeNet5,
  "mlleaks_cnn": MLLeaksCNN,
  "cnn_small": CNNSmall,
  "wrn": WideResNet,
  "wrn16-4": lambda **kw: WideResNet(depth=16, width=4, **kw),
  "wrn28-2": lambda **kw: WideResNet(depth=28, width=2, **kw),
}
MODEL_NAMES = tuple(sorted(_REGISTRY))


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """Builds a registered model: ``get_model("mlp", 10, widths=(256, 128))``.

  Keyword arguments go to the module (e.g. ``dropout_rate``, ``activation``,
  ``widths``, ``conv_impl``, ``dtype``).
  """
  if name not in _REGISTRY:
    raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {name!r}")
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
  try:
    return _REGISTRY[name](num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise ValueError(f"bad keyword arguments for model {name!r}: {e}") from None


def uses_batch_norm(name: str) -> bool:
  return name.startswith("wrn")


def count_params(params) -> int:
  return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
