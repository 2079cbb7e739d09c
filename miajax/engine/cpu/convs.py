"""The CPU forms of a 2-D convolution (NHWC, HWIO kernels), passed to registry models as ``conv_impl``.

Why they exist: under ``vmap`` with per-model weights a convolution becomes
one grouped convolution, which XLA:CPU runs slowly; the im2col form
(``"patches"``: slices, then a matmul) turns the model axis into a batched
matmul instead. Unrolled models (one program per model) use ``"winograd"``
(F(4x4, 3x3) minimal filtering, :mod:`miajax.engine.cpu.winograd`; 3x3,
stride 1, SAME, at least 16 input channels, float32), which falls back to
``"hybrid"`` (XLA's convolution forward and for the input gradient,
patches^T @ dY for the weight gradient) elsewhere. GPU/TPU use XLA's own
convolution (``"xla"``).

Each is ``conv(x [batch, H, W, C], kernel [kh, kw, C, F], strides,
padding) -> [batch, H', W', F]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from miajax.engine.cpu import winograd

__all__ = ["CONVS", "conv_function"]


def _xla_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(
    x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _hybrid_conv(x, kernel, strides, padding):
  """XLA's convolution, with the weight gradient computed as patches^T @ dY.

  On XLA:CPU the forward convolution and its input gradient (itself a
  convolution) are fast, but the weight gradient, a convolution that
  contracts over the batch, is several times slower than the same
  contraction written as a matmul over im2col patches.
  """
  return _xla_conv(x, kernel, strides, padding)


def _hybrid_fwd(x, kernel, strides, padding):
  return _xla_conv(x, kernel, strides, padding), (x, kernel)


def _hybrid_bwd(strides, padding, residuals, g):
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  patches = _patches(x, kh, kw, strides, padding)
  dkernel = (
    jnp.einsum(
      "...k,...f->kf",
      patches.reshape(-1, kh * kw * cin),
      g.reshape(-1, cout),
      preferred_element_type=jnp.float32,
    )
    .astype(kernel.dtype)
    .reshape(kernel.shape)
  )
  dx = jax.vjp(lambda x_: _xla_conv(x_, kernel, strides, padding), x)[1](g)[0]
  return dx, dkernel


_hybrid_conv.defvjp(_hybrid_fwd, _hybrid_bwd)


def _patches(x, kh: int, kw: int, strides, padding: str):
  """im2col by slicing: ``[batch, H', W', kh*kw*C]`` in (kh, kw, C) order.

  Built from pads and strided slices rather than a convolution, so that under
  ``vmap`` and ``grad`` XLA sees only data movement plus one batched matmul
  (the transpose of a slice is a pad, not a grouped convolution).
  """
  sh, sw = strides
  h, w = x.shape[-3:-1]
  if padding == "SAME":
    out_h, out_w = -(-h // sh), -(-w // sw)
    pad_h = max((out_h - 1) * sh + kh - h, 0)
    pad_w = max((out_w - 1) * sw + kw - w, 0)
    x = jnp.pad(
      x,
      ((0, 0),) * (x.ndim - 3)
      + (
        (pad_h // 2, pad_h - pad_h // 2),
        (pad_w // 2, pad_w - pad_w // 2),
        (0, 0),
      ),
    )
  elif padding == "VALID":
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
  else:
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  cols = [
    x[
      ...,
      i : i + (out_h - 1) * sh + 1 : sh,
      j : j + (out_w - 1) * sw + 1 : sw,
      :,
    ]
    for i in range(kh)
    for j in range(kw)
  ]
  return jnp.concatenate(cols, axis=-1)


def patches_conv(x, kernel, strides, padding):
  """im2col patches times the kernel as a matrix."""
  kh, kw, cin, features = kernel.shape
  return _patches(x, kh, kw, strides, padding) @ kernel.reshape(
    kh * kw * cin, features
  )


def xla_patches_conv(x, kernel, strides, padding):
  """XLA's own patch extraction times the kernel as a matrix."""
  kh, kw, cin, features = kernel.shape
  patches = lax.conv_general_dilated_patches(
    x, (kh, kw), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  # Patch features come out channel-major: (cin, kh, kw).
  w = kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, features)
  return patches @ w


def winograd_conv(x, kernel, strides, padding):
  """Winograd F(4x4, 3x3) where it applies, else :func:`hybrid_conv`."""
  if not winograd.supported(x.shape, kernel.shape, strides, padding, x.dtype):
    return hybrid_conv(x, kernel, strides, padding)
  return winograd.conv3x3(x, kernel)


hybrid_conv = _hybrid_conv

CONVS = {
  "winograd": winograd_conv,
  "hybrid": hybrid_conv,
  "patches": patches_conv,
  "xla_patches": xla_patches_conv,
}


def conv_function(name):
  """``"xla"`` as is, a CPU form's name as its function, a function as is."""
  if name is None or name == "xla" or callable(name):
    return name
  if name not in CONVS:
    raise ValueError(
      f"conv_impl must be one of {['xla', *CONVS]} or a function, got {name!r}"
    )
  return CONVS[name]
