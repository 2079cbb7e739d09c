"""F(4x4, 3x3) Winograd convolution against a float64 numpy direct convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miajax import models, winograd


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


@pytest.mark.parametrize(
  "shape",
  [
    dict(),
    dict(h=4, w=4, cin=17, cout=1),
    dict(n=1, h=16, w=8, cin=32, cout=9),
  ],
)
def test_forward_and_gradients_match_float64_direct_convolution(shape):
  x, k, r = _data(0, **shape)
  y = winograd.conv3x3(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32))
  assert y.shape == x.shape[:3] + (k.shape[3],)
  assert _rel(y, _direct(x, k)) < 1e-4
  dx, dk = jax.grad(
    lambda a, b: (winograd.conv3x3(a, b) * r.astype(np.float32)).sum(),
    argnums=(0, 1),
  )(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32))
  ref_dx, ref_dk = _direct_grads(x, k, r)
  assert _rel(dx, ref_dx) < 1e-4
  assert _rel(dk, ref_dk) < 1e-4


def test_float32_error_is_near_a_direct_float32_convolution():
  # F(4,3) multiplies by transform constants up to 8, so it loses a little more than XLA's
  # direct convolution; it must stay within ~30x of it, far below what training notices.
  x, k, _ = _data(1, n=4, h=16, w=16, cin=64, cout=32)
  ref = _direct(x, k)
  wino = _rel(
    winograd.conv3x3(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)),
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
  batched = jax.vmap(jax.grad(loss))(jnp.asarray(ks))
  for m in range(3):
    np.testing.assert_allclose(
      batched[m], jax.grad(loss)(jnp.asarray(ks[m])), rtol=1e-5, atol=1e-5
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


def test_cnn_small_logits_and_gradients_agree_across_conv_impls():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 4))
  ref_model = models.get_model("cnn_small", 10, conv_impl="xla")
  variables = ref_model.init(jax.random.PRNGKey(0), x[:1])

  def loss_and_grads(impl):
    model = models.get_model("cnn_small", 10, conv_impl=impl)

    def loss(v):
      logits = model.apply(v, x)
      return -jnp.take_along_axis(
        jax.nn.log_softmax(logits), y[:, None], 1
      ).mean(), logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables)
    return logits, grads

  ref_logits, ref_grads = loss_and_grads("xla")
  logits, grads = loss_and_grads("winograd")
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
  for g, rg in zip(
    jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)
  ):
    assert _rel(g, np.asarray(rg, np.float64)) < 1e-3
