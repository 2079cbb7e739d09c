"""Models: shapes, the im2col convolution against XLA's, per-model batch-norm statistics.

Compile time, not arithmetic, is what these tests spend: the convolution
tests therefore draw their inputs and parameters with NumPy (no JAX random
program to compile; the parameters go through ``apply``, which checks their
names and shapes against the module's own initialisers), and model
initialisation runs with JAX's non-partitionable threefry (see
``_cheap_random_bits``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from miajax import models
from miajax.engine.cpu import convs


@pytest.fixture(autouse=True)
def _cheap_random_bits():
  """Every test here under ``jax.threefry_partitionable(False)``.

  These tests check shapes, finiteness, dropout and batch-norm bookkeeping,
  which no property of the random bits can change; on XLA:CPU the
  (default) partitionable threefry makes every initialiser shape compile
  3-4x longer (a vmapped init 5x and more), and initialisation was most of
  this file's time. Scoped: other test files keep JAX's default.
  """
  with jax.threefry_partitionable(False):
    yield


def _conv_variables(rng, kernel, cin, features):
  """Parameters of a ``models.Conv`` in ``nn.Conv``'s layout, drawn with NumPy; a nonzero bias."""
  return {
    "params": {
      "kernel": rng.standard_normal(kernel + (cin, features)).astype(np.float32)
      / np.sqrt(kernel[0] * kernel[1] * cin),
      "bias": rng.standard_normal(features).astype(np.float32),
    }
  }


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (1, 1)])
def test_patch_conv_equals_xla_conv(padding, strides, kernel):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 9, 10, 3)), jnp.float32)
  conv = models.Conv(4, kernel, strides, padding, impl=convs.CONVS["patches"])
  variables = _conv_variables(rng, kernel, 3, 4)
  got = conv.apply(variables, x)
  w, b = variables["params"]["kernel"], variables["params"]["bias"]
  want = (
    lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    + b
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  both = models.Conv(
    4, kernel, strides, padding, impl=convs.CONVS["xla_patches"]
  ).apply(variables, x)
  np.testing.assert_allclose(both, want, rtol=1e-5, atol=1e-5)


def test_patch_conv_gradient_matches_xla():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  a = models.Conv(5, (3, 3), impl=convs.CONVS["patches"])
  b = models.Conv(5, (3, 3), impl="xla")
  variables = _conv_variables(rng, (3, 3), 3, 5)
  loss = lambda m: lambda v, x: (m.apply(v, x) ** 2).sum()
  ga = jax.grad(loss(a), argnums=(0, 1))(variables, x)
  gb = jax.grad(loss(b), argnums=(0, 1))(variables, x)
  for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  "name,shape",
  [
    ("mlp", (3, 600)),
    ("mlp", (3, 8, 8, 1)),
    ("lenet5", (3, 8, 8, 1)),
    ("lenet5", (3, 28, 28, 1)),
    ("mlleaks_cnn", (3, 32, 32, 3)),
    ("mlleaks_cnn", (3, 8, 8, 1)),
    ("cnn_small", (3, 32, 32, 3)),
    ("wrn16-4", (2, 8, 8, 3)),
    ("wrn28-2", (2, 8, 8, 3)),
  ],
)
@pytest.mark.slow
def test_every_model_maps_inputs_to_logits(name, shape):
  model = models.get_model(name, 7, dropout_rate=0.25)
  x = jnp.ones(shape)
  # Compiled whole, as the engine runs them (op by op, a wide ResNet compiles
  # hundreds of small programs: 23 s against 14 s for wrn28-2).
  init = jax.jit(model.init, static_argnames="train")
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  variables = init({"params": jax.random.PRNGKey(0)}, x, train=False)
  out = apply(variables, x, train=False)
  assert out.shape == (shape[0], 7) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  # Dropout is active only with train=True, and it draws from the 'dropout' stream.
  mutable = ("batch_stats",) if models.uses_batch_norm(name) else False
  a = apply(
    variables,
    x,
    train=True,
    rngs={"dropout": jax.random.PRNGKey(1)},
    mutable=mutable,
  )
  a = a[0] if mutable else a
  assert not np.allclose(a, out)


def test_mlp_default_widths_are_the_purchase_recipe():
  model = models.get_model("mlp", 100)
  # Shapes only: the abstract init traces the same code and compiles nothing.
  variables = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.ones((1, 600))
  )
  kernels = [v["kernel"].shape for v in variables["params"].values()]
  assert kernels == [
    (600, 1024),
    (1024, 512),
    (512, 256),
    (256, 128),
    (128, 100),
  ]


@pytest.mark.slow
def test_batch_norm_statistics_stay_per_model_under_vmap():
  model = models.get_model("wrn", 10, depth=10, width=1)
  xs = jnp.stack(
    [jnp.zeros((4, 8, 8, 3)), 3.0 + jnp.ones((4, 8, 8, 3))]
  )  # different data per model
  # Compiled (one program each instead of an eager op-by-op vmap); the keys are
  # an argument, so XLA does not constant-fold the initialiser's random bits.
  init = jax.jit(jax.vmap(lambda k: model.init(k, xs[0], train=False)))
  variables = init(jax.random.split(jax.random.PRNGKey(0), 2))

  def step(v, x):
    return model.apply(v, x, train=True, mutable=["batch_stats"])[1]

  new = jax.jit(jax.vmap(step))(variables, xs)
  mean = jax.tree_util.tree_leaves(new["batch_stats"])[0]
  assert mean.shape[0] == 2
  assert not np.allclose(mean[0], mean[1])


def test_unknown_model_and_bad_arguments_are_rejected():
  with pytest.raises(ValueError, match="model must be one of"):
    models.get_model("resnet9000", 10)
  with pytest.raises(ValueError, match="num_classes"):
    models.get_model("mlp", 1)
  with pytest.raises(ValueError, match="bad keyword arguments"):
    models.get_model("mlp", 10, kernel_size=3)


def test_reshape_pooling_equals_avg_pool():
  import flax.linen as nn
  from miajax.models import _avg_pool2

  rng = np.random.default_rng(0)
  for shape in [(2, 8, 8, 3), (2, 4, 6, 1), (1, 2, 2, 5)]:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    np.testing.assert_allclose(
      _avg_pool2(x), nn.avg_pool(x, (2, 2), (2, 2)), rtol=1e-6, atol=1e-6
    )
  x = jnp.asarray(
    rng.normal(size=(2, 1, 1, 3)), jnp.float32
  )  # odd size: SAME pooling as before
  np.testing.assert_allclose(
    _avg_pool2(x), nn.avg_pool(x, (2, 2), (2, 2), padding="SAME"), rtol=1e-6
  )


def test_hybrid_conv_gradients_equal_xla_conv():
  from miajax.engine.cpu.convs import _xla_conv
  from miajax.engine.cpu.convs import hybrid_conv as _hybrid_conv

  rng = np.random.default_rng(1)
  for strides, padding, shape in [
    ((1, 1), "SAME", (2, 9, 9, 3)),
    ((2, 2), "SAME", (2, 8, 8, 4)),
    ((1, 1), "VALID", (1, 7, 7, 2)),
  ]:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 5)), jnp.float32)
    f = lambda conv: lambda x, w: (conv(x, w, strides, padding) ** 2).sum()
    np.testing.assert_allclose(
      _hybrid_conv(x, w, strides, padding),
      _xla_conv(x, w, strides, padding),
      rtol=1e-5,
    )
    for a, b in zip(
      jax.grad(f(_hybrid_conv), (0, 1))(x, w),
      jax.grad(f(_xla_conv), (0, 1))(x, w),
    ):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
