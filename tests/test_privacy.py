"""DP-SGD accounting against dp_accounting called directly, and per-example clipping on a real batch."""

import math

import dp_accounting
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miajax import defenses as P


def direct_rdp(noise, q, steps, delta):
  event = dp_accounting.SelfComposedDpEvent(
    dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(noise)
    ),
    steps,
  )
  return dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta)


@pytest.mark.parametrize(
  "noise,q,steps,delta",
  [(1.0, 0.01, 1000, 1e-5), (0.6, 0.256, 140, 1e-3), (4.0, 1.0, 10, 1e-6)],
)
def test_epsilon_equals_accountant(noise, q, steps, delta):
  assert P.dp_epsilon(
    noise_multiplier=noise, sample_rate=q, steps=steps, delta=delta
  ) == direct_rdp(noise, q, steps, delta)


def test_pld_epsilon_equals_accountant_and_is_tighter():
  event = dp_accounting.SelfComposedDpEvent(
    dp_accounting.PoissonSampledDpEvent(
      0.05, dp_accounting.GaussianDpEvent(1.2)
    ),
    50,
  )
  want = dp_accounting.pld.PLDAccountant().compose(event).get_epsilon(1e-5)
  got = P.dp_epsilon(
    noise_multiplier=1.2,
    sample_rate=0.05,
    steps=50,
    delta=1e-5,
    accountant="pld",
  )
  assert got == want
  assert got < P.dp_epsilon(
    noise_multiplier=1.2, sample_rate=0.05, steps=50, delta=1e-5
  )


def test_no_noise_is_infinite_epsilon():
  assert (
    P.dp_epsilon(noise_multiplier=0.0, sample_rate=0.1, steps=10, delta=1e-5)
    == math.inf
  )


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_noise_multiplier_is_smallest_meeting_target(target):
  kw = dict(sample_rate=0.02, steps=2000, delta=1e-5)
  sigma = P.dp_noise_multiplier(target_epsilon=target, **kw)
  assert direct_rdp(sigma, 0.02, 2000, 1e-5) <= target
  # rtol=1e-5 bracket: anything 2e-5 smaller misses the target
  assert direct_rdp(sigma * (1 - 2e-5), 0.02, 2000, 1e-5) > target
  assert direct_rdp(sigma * 0.99, 0.02, 2000, 1e-5) > target


def test_accounting_validation():
  ok = dict(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=1e-5)
  for key, bad, err in [
    ("noise_multiplier", -0.1, ValueError),
    ("noise_multiplier", float("nan"), ValueError),
    ("sample_rate", 0.0, ValueError),
    ("sample_rate", 1.5, ValueError),
    ("steps", 0, ValueError),
    ("steps", 2.5, TypeError),
    ("delta", 0.0, ValueError),
    ("delta", 1.0, ValueError),
    ("noise_multiplier", "1", TypeError),
  ]:
    with pytest.raises(err, match=key):
      P.dp_epsilon(**{**ok, key: bad})
  with pytest.raises(ValueError, match="accountant"):
    P.dp_epsilon(**ok, accountant="gdp")
  with pytest.raises(ValueError, match="target_epsilon"):
    P.dp_noise_multiplier(
      target_epsilon=0.0, sample_rate=0.1, steps=10, delta=1e-5
    )
  with pytest.raises(ValueError, match="sample_rate"):
    P.dp_noise_multiplier(
      target_epsilon=1.0, sample_rate=-1, steps=10, delta=1e-5
    )
  with pytest.raises(TypeError):
    P.dp_epsilon(1.0, 0.1, 10, 1e-5)  # keyword-only


class TinyMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(16)(x))
    return nn.Dense(4)(x)


@pytest.fixture(scope="module")
def real_batch_grads():
  """Per-example gradients of a small tanh MLP on a random batch (one compilation: eager ops are slow here)."""
  model = TinyMLP()

  @jax.jit
  def make(key):
    x = (
      jax.random.normal(key, (32, 6)) * jnp.linspace(0.1, 5.0, 32)[:, None]
    )  # spread of gradient norms
    y = jax.random.randint(jax.random.fold_in(key, 1), (32,), 0, 4)
    params = model.init(key, x[:1])["params"]

    def loss(p, xi, yi):
      logits = model.apply({"params": p}, xi[None])
      return -jax.nn.log_softmax(logits)[0, yi]

    return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, y)

  return make(jax.random.PRNGKey(0))


def np_norms(tree):
  leaves = [
    np.asarray(v, np.float64).reshape(v.shape[0], -1)
    for v in jax.tree_util.tree_leaves(tree)
  ]
  return np.sqrt(sum((v**2).sum(1) for v in leaves))


def test_clipped_norms_never_exceed_bound(real_batch_grads):
  raw = np_norms(real_batch_grads)
  bound = float(np.median(raw))
  clipped, norms = jax.jit(P.clip_per_example)(real_batch_grads, bound)
  np.testing.assert_allclose(norms, raw, rtol=1e-5)
  after = np_norms(clipped)
  assert (raw > bound).sum() >= 10 and (raw < bound).sum() >= 10
  assert np.all(after <= bound * (1 + 1e-6))  # float32 rounding only
  np.testing.assert_allclose(after, np.minimum(raw, bound), rtol=1e-5)
  # below the bound nothing changes; above it only the length changes
  for g, c in zip(
    jax.tree_util.tree_leaves(real_batch_grads),
    jax.tree_util.tree_leaves(clipped),
  ):
    g, c = np.asarray(g, np.float64), np.asarray(c, np.float64)
    scale = np.minimum(1.0, bound / raw).reshape((-1,) + (1,) * (g.ndim - 1))
    np.testing.assert_allclose(c, g * scale, rtol=1e-5, atol=1e-7)


def test_clip_and_noise(real_batch_grads):
  bound, sigma, batch = 0.5, 2.0, 32

  @jax.jit
  def run(g, key):
    clipped, _ = P.clip_per_example(g, bound)
    plain = P.clip_and_noise(g, key, l2_norm_clip=bound, noise_multiplier=0.0)
    # explicit normaliser: the expected batch size under Poisson sampling
    halved = P.clip_and_noise(
      g, key, l2_norm_clip=bound, noise_multiplier=0.0, normalize_by=2.0 * batch
    )
    noisy = P.clip_and_noise(g, key, l2_norm_clip=bound, noise_multiplier=sigma)
    return clipped, plain, halved, noisy

  leaves = jax.tree_util.tree_leaves
  clipped, plain, halved, noisy = run(real_batch_grads, jax.random.PRNGKey(3))
  mean = [np.asarray(c, np.float64).mean(0) for c in leaves(clipped)]
  for a, b, want in zip(leaves(plain), leaves(halved), mean):
    np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b, want / 2, rtol=1e-5, atol=1e-7)
  # noise: std noise_multiplier * clip / batch on every coordinate, a deterministic function of the key
  resid = np.concatenate(
    [
      (np.asarray(n, np.float64) - m).ravel()
      for n, m in zip(leaves(noisy), mean)
    ]
  )
  assert resid.size > 150
  want = sigma * bound / batch
  assert abs(resid.std() / want - 1) < 4 / math.sqrt(
    2 * resid.size
  )  # 4 standard errors
  assert abs(resid.mean()) < 4 * want / math.sqrt(resid.size)
  again = run(real_batch_grads, jax.random.PRNGKey(3))[3]
  other = run(real_batch_grads, jax.random.PRNGKey(4))[3]
  for a, b, c in zip(leaves(noisy), leaves(again), leaves(other)):
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_clip_validation():
  with pytest.raises(ValueError, match="l2_norm_clip"):
    P.clip_per_example({"w": jnp.ones((2, 3))}, 0.0)
  with pytest.raises(ValueError, match="noise_multiplier"):
    P.clip_and_noise(
      {"w": jnp.ones((2, 3))},
      jax.random.PRNGKey(0),
      l2_norm_clip=1.0,
      noise_multiplier=-1.0,
    )
  with pytest.raises(ValueError, match="batch"):
    P.clip_per_example({"w": jnp.ones((2, 3)), "b": jnp.ones((3,))}, 1.0)
  with pytest.raises(ValueError, match="leaf"):
    P.clip_per_example({}, 1.0)
