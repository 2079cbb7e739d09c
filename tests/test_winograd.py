"""F(4x4, 3x3) Winograd convolution against a float64 numpy direct convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miajax import models
from miajax.engine.cpu import convs, winograd


def _direct(x, k):
  """float64 stride-1 SAME cross-correlation, NHWC x HWIO."""
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = np.zeros((n, h, w, k.shape[3]))
  for i in range(3):
    for j in range(3):
      y += np.einsum("nhwc,cd->nhwd", xp[:, i : i + h, j : j + w], k[i, j])
  return y


def _direct_grads(x, k, r):
  """float64 gradients of sum(conv(x, k) * r) with respect to x and k."""
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dk = np.zeros_like(k)
  dxp = np.zeros_like(xp)
  for i in range(3):
    for j in range(3):
      dk[i, j] = np.einsum("nhwc,nhwd->cd", xp[:, i : i + h, j : j + w], r)
      dxp[:, i : i + h, j : j + w] += np.einsum("nhwd,cd->nhwc", r, k[i, j])
  return dxp[:, 1:-1, 1:-1], dk


def _data(seed, n=3, h=8, w=12, cin=16, cout=5):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, h, w, cin))
  k = rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)
  r = rng.standard_normal((n, h, w, cout))
  return x, k, r


def _rel(a, b):
  return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


# The tests run the Winograd code under jax.jit, as training does: op by op,
# the transforms' hundreds of small ops each compile their own program
# (seconds per shape), and jit changes no arithmetic that the tolerances
# below measure.
@jax.jit
def _conv_and_grads(x, k, r):
  """conv3x3(x, k) and the gradients of sum(conv3x3(x, k) * r) w.r.t. x and k."""
  dx, dk = jax.grad(
    lambda a, b: (winograd.conv3x3(a, b) * r).sum(), argnums=(0, 1)
  )(x, k)
  return winograd.conv3x3(x, k), dx, dk


@pytest.mark.parametrize(
  "shape",
  [
    # Several tiles along both sides (W > H), a batch, even channel counts.
    dict(),
    # Every singleton and odd size in one shape (one compilation each costs
    # seconds): one example, one output channel, a single tile along W, H > W
    # (H and W must not be swapped), an odd input channel count.
    dict(n=1, h=8, w=4, cin=17, cout=1),
  ],
)
def test_forward_and_gradients_match_float64_direct_convolution(shape):
  x, k, r = _data(0, **shape)
  y, dx, dk = _conv_and_grads(
    jnp.asarray(x, jnp.float32),
    jnp.asarray(k, jnp.float32),
    jnp.asarray(r, jnp.float32),
  )
  assert y.shape == x.shape[:3] + (k.shape[3],)
  assert _rel(y, _direct(x, k)) < 1e-4
  ref_dx, ref_dk = _direct_grads(x, k, r)
  assert _rel(dx, ref_dx) < 1e-4
  assert _rel(dk, ref_dk) < 1e-4


def test_float32_error_is_near_a_direct_float32_convolution():
  # F(4,3) multiplies by transform constants up to 8, so it loses a little more than XLA's
  # direct convolution; it must stay within ~30x of it, far below what training notices.
  x, k, _ = _data(1, n=4, h=16, w=16, cin=64, cout=32)
  ref = _direct(x, k)
  wino = _rel(
    jax.jit(winograd.conv3x3)(
      jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)
    ),
    ref,
  )
  xla = _rel(
    models._xla_conv(
      jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32), (1, 1), "SAME"
    ),
    ref,
  )
  assert wino < 1e-5
  assert wino < 30 * max(xla, 1e-7)


def test_vmapped_over_models_equals_one_model_at_a_time():
  x, k, r = _data(2, n=2, cin=16, cout=4)
  ks = np.stack([k, -0.5 * k, k[::-1]]).astype(np.float32)
  xf = jnp.asarray(x, jnp.float32)
  loss = lambda kk: (winograd.conv3x3(xf, kk) * r.astype(np.float32)).sum()
  batched = jax.jit(jax.vmap(jax.grad(loss)))(jnp.asarray(ks))
  one = jax.jit(jax.grad(loss))
  for m in range(3):
    np.testing.assert_allclose(
      batched[m], one(jnp.asarray(ks[m])), rtol=1e-5, atol=1e-5
    )


def test_supported_only_for_shapes_it_computes_and_that_pay_off():
  ok = dict(
    x_shape=(8, 16, 16, 32),
    kernel_shape=(3, 3, 32, 64),
    strides=(1, 1),
    padding="SAME",
    dtype=jnp.float32,
  )
  assert winograd.supported(**ok)
  for change in [
    dict(x_shape=(8, 18, 16, 32)),
    dict(x_shape=(8, 16, 16, 3)),
    dict(strides=(2, 2)),
    dict(padding="VALID"),
    dict(kernel_shape=(1, 1, 32, 64)),
    dict(dtype=jnp.bfloat16),
  ]:
    assert not winograd.supported(**{**ok, **change}), change
  with pytest.raises(ValueError, match="multiples of 4"):
    winograd.conv3x3(jnp.zeros((1, 6, 8, 16)), jnp.zeros((3, 3, 16, 2)))


@pytest.mark.slow
def test_cnn_small_logits_and_gradients_agree_across_conv_impls():
  rng = np.random.default_rng(3)
  # 16x16: the second and third convolutions (8x8 and 4x4, 16 and 32 input
  # channels) are Winograd's, the first (3 channels) falls back to hybrid.
  x = jnp.asarray(rng.standard_normal((4, 16, 16, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 4))
  ref_model = models.get_model("cnn_small", 10, conv_impl="xla")
  # LeCun-normal kernels and small non-zero biases drawn by numpy: flax's own
  # init (threefry bits, op by op) took longer to compile than both models.
  shapes = jax.eval_shape(ref_model.init, jax.random.PRNGKey(0), x[:1])
  variables = jax.tree_util.tree_map(
    lambda s: jnp.asarray(
      rng.standard_normal(s.shape)
      * (np.prod(s.shape[:-1]) ** -0.5 if len(s.shape) > 1 else 0.1),
      jnp.float32,
    ),
    shapes,
  )

  def loss_and_grads(impl):
    model = models.get_model(
      "cnn_small", 10, conv_impl=convs.conv_function(impl)
    )

    def loss(v):
      logits = model.apply(v, x)
      return -jnp.take_along_axis(
        jax.nn.log_softmax(logits), y[:, None], 1
      ).mean(), logits

    # Compiled, as in training (op by op it took tens of seconds).
    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      variables
    )
    return logits, grads

  ref_logits, ref_grads = loss_and_grads("xla")
  logits, grads = loss_and_grads("winograd")
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
  for g, rg in zip(
    jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)
  ):
    assert _rel(g, np.asarray(rg, np.float64)) < 1e-3
