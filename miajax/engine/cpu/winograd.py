"""3x3 stride-1 SAME convolutions by Winograd's minimal filtering, F(4x4, 3x3).

Each 6x6 input tile (stride 4) and each 3x3 kernel are mapped to a 6x6
"Winograd domain", where the convolution becomes 36 independent matmuls
``[tiles, C_in] @ [C_in, C_out]``; an output transform maps the products back
to 4x4 output tiles.  That is 36 multiplies per output tile and channel pair
instead of 144: 4x fewer FLOPs in the matmuls (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", 2016).

The backward pass stays in the Winograd domain too: the kernel gradient is 36
matmuls ``V^T @ dM`` over the saved input transform ``V``, and the input
gradient is the same fast convolution of the output gradient with the kernel
rotated by 180 degrees and its channels swapped.  Autodiff through the
forward transforms would instead scatter overlapping tiles back, which is
slower.

Why it exists: XLA:CPU's own convolutions (and their weight gradients) run far
below the matmul peak, so on CPU this form trains a convolutional step ~2x
faster (see ``experiments/benchmark.py``).  On GPU/TPU the native convolution
is used.  F(4x4, 3x3) rounds differently from a direct convolution: relative
errors are ~1e-5 in float32 (measured in ``tests/test_winograd.py``); it is
only used for float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["conv3x3", "supported"]

TILE = 4  # output tile side m
SPAN = TILE + 2  # input tile side m + r - 1

# F(4, 3) transforms (cross-correlation form, as in convolutional nets).
_BT = np.array(
  [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
  ],
  np.float32,
)
_G = np.array(
  [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
  ],
  np.float32,
)
_AT = np.array(
  [
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1],
  ],
  np.float32,
)

MIN_CHANNELS = (
  16  # below it the [tiles, C_in] matmuls are too thin to beat im2col
)


def supported(x_shape, kernel_shape, strides, padding, dtype) -> bool:
  """Whether :func:`conv3x3` computes this convolution (and is worth it)."""
  if (
    len(x_shape) != 4
    or tuple(kernel_shape[:2]) != (3, 3)
    or tuple(strides) != (1, 1)
  ):
    return False
  _, h, w, cin = x_shape
  return (
    padding == "SAME"
    and h % TILE == 0
    and w % TILE == 0
    and cin >= MIN_CHANNELS
    and jnp.dtype(dtype) == jnp.float32
  )


def _combine(parts, coeffs):
  """``sum(c * p)`` over the non-zero constant coefficients, as elementwise ops.

  The input transform and the output transform's adjoint are written this way
  rather than as einsums with the small transform matrices: XLA fuses the sums
  with the strided slices around them into a few loop passes, where a [6, 6]
  contraction becomes a thin matmul (2-3x slower on XLA:CPU).
  """
  out = None
  for c, part in zip(coeffs, parts):
    if c == 0:
      continue
    term = part if c == 1 else (-part if c == -1 else float(c) * part)
    out = term if out is None else out + term
  return out


def _input_transform(x):
  """``float[N, H, W, C]`` -> ``float[36, N * H/4 * W/4, C]`` (B^T d B of every 6x6 tile)."""
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = [
    xp[:, r : r + h : TILE] for r in range(SPAN)
  ]  # [N, H/4, W+2, C]: row r of every tile
  mixed = jnp.stack(
    [_combine(rows, _BT[p]) for p in range(SPAN)]
  )  # [6, N, H/4, W+2, C]
  cols = [
    mixed[:, :, :, s : s + w : TILE] for s in range(SPAN)
  ]  # [6, N, H/4, W/4, C]
  return jnp.stack([_combine(cols, _BT[q]) for q in range(SPAN)], 1).reshape(
    SPAN * SPAN, -1, c
  )


def _kernel_transform(kernel):
  """``float[3, 3, C_in, C_out]`` -> ``float[36, C_in, C_out]`` (G g G^T)."""
  u = jnp.einsum("pi,qj,ijco->pqco", _G, _G, kernel)
  return u.reshape(SPAN * SPAN, kernel.shape[2], kernel.shape[3])


def _output_transform(m, n, h, w):
  """``float[36, N * H/4 * W/4, C]`` -> ``float[N, H, W, C]`` (A^T M A of every tile).

  Contractions, unlike the input transform: as elementwise sums XLA fuses them
  into the consumers (bias, activation, pooling and their gradients), which
  then recompute the sums for every element they read (measured 1.2x slower).
  """
  m = m.reshape(SPAN, SPAN, n, h // TILE, w // TILE, -1)
  y = jnp.einsum("ip,pqntud->iqntud", _AT, m)
  y = jnp.einsum("jq,iqntud->ijntud", _AT, y)  # [4, 4, N, H/4, W/4, C]
  return y.transpose(2, 3, 0, 4, 1, 5).reshape(n, h, w, -1)


def _output_transform_adjoint(g):
  """The transpose of :func:`_output_transform`: ``float[N, H, W, C]`` -> ``float[36, tiles, C]``."""
  n, h, w, d = g.shape
  rows = [g[:, i::TILE] for i in range(TILE)]  # [N, H/4, W, C]
  mixed = [_combine(rows, _AT[:, p]) for p in range(SPAN)]
  cols = [
    [mixed[p][:, :, j::TILE] for j in range(TILE)] for p in range(SPAN)
  ]  # [N, H/4, W/4, C]
  return jnp.stack(
    [_combine(cols[p], _AT[:, q]) for p in range(SPAN) for q in range(SPAN)]
  ).reshape(SPAN * SPAN, -1, d)


def _forward(x, kernel):
  v = _input_transform(x)
  m = jnp.einsum("ptc,pcd->ptd", v, _kernel_transform(kernel))
  return _output_transform(m, *x.shape[:3]), v


@jax.custom_vjp
def conv3x3(x, kernel):
  """``lax.conv_general_dilated(x, kernel, (1, 1), "SAME")`` in NHWC/HWIO, by F(4x4, 3x3).

  Args:
    x: ``float32[batch, H, W, C_in]`` with ``H`` and ``W`` multiples of 4.
    kernel: ``float32[3, 3, C_in, C_out]``.

  Returns:
    ``float32[batch, H, W, C_out]``.
  """
  _check(x, kernel)
  return _forward(x, kernel)[0]


def _check(x, kernel):
  # Also called from the VJP's forward rule, which is what runs under jax.grad.
  if (
    x.ndim != 4
    or x.shape[1] % TILE
    or x.shape[2] % TILE
    or kernel.shape[:2] != (3, 3)
  ):
    raise ValueError(
      f"conv3x3 needs x [N, H, W, C] with H, W multiples of {TILE} and a 3x3 kernel, "
      f"got x {x.shape} and kernel {kernel.shape}"
    )


def _conv3x3_fwd(x, kernel):
  _check(x, kernel)
  y, v = _forward(x, kernel)
  return y, (v, kernel)


def _conv3x3_bwd(residuals, g):
  v, kernel = residuals
  dm = _output_transform_adjoint(g)
  du = jnp.einsum("ptc,ptd->pcd", v, dm).reshape(SPAN, SPAN, *kernel.shape[2:])
  dkernel = jnp.einsum("pi,qj,pqcd->ijcd", _G, _G, du)
  # A stride-1 SAME correlation's input gradient is the correlation of g with the kernel rotated
  # by 180 degrees, input and output channels swapped.
  dx = _forward(g, kernel[::-1, ::-1].transpose(0, 1, 3, 2))[0]
  return dx, dkernel


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)
