"""Your own model, optimizer and loss through the engine, and the accelerator lowering run on the CPU.

Every engine result is compared with the same model trained alone by a plain optax loop on its own
members (the LiRA reference's way: one model, one Python loop), drawing the same keys: init from
fold_in(key_m, 0), epoch orders from fold_in(fold_in(key_m, 1), epoch), step keys from
fold_in(fold_in(key_m, 2), step).
"""

import functools
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from miajax import data, defenses, engine, models, runs
from miajax.engine import lowering

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def cheap_random_bits():
  """The test under ``jax.threefry_partitionable(False)`` (JAX's default before 0.5).

  Engine and reference draw the same keys through the same ``jax.random``
  calls, so they agree under either threefry form, and no miajax code
  depends on which one is on; but on XLA:CPU the (default) partitionable form
  compiles every initialiser shape 3-4x longer and the engine's vmapped init
  ~15x longer (tens of seconds against ~3 s for cnn_small), most of these
  tests' time.
  ``test_plain_jax_init_apply_pair_and_custom_loss_equal_one_model_loops``
  keeps JAX's default, so engine and reference are still compared there.
  Scoped: other tests keep JAX's default.
  """
  with jax.threefry_partitionable(False):
    yield


class TinyCNN(nn.Module):
  """A user model that is not in the registry: conv, batch-free, dense head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10)(nn.tanh(nn.Dense(16)(x)))


def mlp_init(key, x):
  k1, k2 = jax.random.split(key)
  d = int(np.prod(x.shape[1:]))
  return {
    "params": {
      "w1": jax.random.normal(k1, (d, 32)) / np.sqrt(d),
      "b1": jnp.zeros(32),
      "w2": jax.random.normal(k2, (32, 10)) / np.sqrt(32),
      "b2": jnp.zeros(10),
    }
  }


def mlp_apply(variables, x, *, train, rngs):
  p = variables["params"]
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
  return h @ p["w2"] + p["b2"]


def _data(n=96, shape=(8, 8, 1), seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(
    0, 10, n
  ).astype(np.int32)


def reference_train(
  init,
  apply,
  tx,
  x,
  y,
  keep,
  keys,
  *,
  epochs,
  batch,
  steps,
  mutable=(),
  dtype=jnp.float32,
  dp=None,
  loss=None,
):
  """Each model alone, a plain optax loop over its own members; returns their final variables.

  ``keep[m]``/``keys[m]``: model ``m``'s members and key. One model at a time,
  one Python step at a time; the step is one ``jax.jit`` program (compiled
  once for all the models, with the key an argument), the same arithmetic as
  running its ops one by one, which compiled each op separately (most of
  these tests' time).
  """
  loss = loss or optax.softmax_cross_entropy_with_integer_labels

  def forward(p, s, xb, k):
    v = jax.tree_util.tree_map(lambda a: a.astype(dtype), {"params": p, **s})
    if mutable:
      logits, new = apply(
        v,
        xb.astype(dtype),
        train=True,
        rngs={"dropout": k},
        mutable=list(mutable),
      )
      return logits.astype(jnp.float32), {**s, **new}
    return apply(v, xb.astype(dtype), train=True, rngs={"dropout": k}).astype(
      jnp.float32
    ), s

  @jax.jit
  def step(params, state, opt_state, xb, yb, skey):
    if dp is None:

      def mean_loss(p):
        logits, new = forward(p, state, xb, skey)
        return loss(logits, yb).mean(), new

      (_, state), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
    else:
      one = lambda p, xi, yi, i: loss(
        forward(p, state, xi[None], jax.random.fold_in(skey, i))[0], yi[None]
      ).sum()
      per = jax.vmap(jax.grad(one), in_axes=(None, 0, 0, 0))(
        params, xb, yb, jnp.arange(batch)
      )
      grads = defenses.clip_and_noise(
        per,
        jax.random.fold_in(skey, 7),
        l2_norm_clip=dp[0],
        noise_multiplier=dp[1],
      )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state

  # Compiled once for all the models too: op by op, a deep net's
  # initialiser compiles each of its primitives on its own.
  init = jax.jit(init)
  out = []
  for keep_row, key in zip(keep, keys):
    variables = dict(
      init(
        jax.random.fold_in(key, 0), jnp.zeros((1,) + x.shape[1:], jnp.float32)
      )
    )
    params = variables.pop("params")
    state = variables
    opt_state = tx.init(params)
    members = int(keep_row.sum())
    for epoch in range(epochs):
      u = jax.random.uniform(
        jax.random.fold_in(jax.random.fold_in(key, 1), epoch), keep_row.shape
      )
      order = np.asarray(jnp.argsort(jnp.where(keep_row, u, 2.0)))[
        np.arange(steps * batch) % members
      ]
      for s in range(steps):
        idx = order[s * batch : (s + 1) * batch]
        skey = jax.random.fold_in(jax.random.fold_in(key, 2), epoch * steps + s)
        params, state, opt_state = step(
          params,
          state,
          opt_state,
          jnp.asarray(x[idx]),
          jnp.asarray(y[idx]),
          skey,
        )
    out.append({"params": params, **state})
  return out


def _compare(result, keep, seed, ref_fn, rtol, atol):
  """Every model of ``result`` against ``ref_fn(keep, keys)``, its own one-model loop."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(
    jnp.arange(keep.shape[0], dtype=jnp.uint32)
  )
  wants = ref_fn(keep, keys)
  assert len(wants) == keep.shape[0]
  for m, want in enumerate(wants):
    got = jax.tree_util.tree_map(lambda a: np.asarray(a[m]), result.variables)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(
      want
    )
    for a, b in zip(
      jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    ):
      np.testing.assert_allclose(
        a, np.asarray(b, np.float32), rtol=rtol, atol=atol
      )


@pytest.mark.usefixtures("cheap_random_bits")
@pytest.mark.slow
def test_user_flax_module_with_adamw_schedule_equals_one_model_optax_loops():
  x, y = _data()
  keep = data.paired_keep(8, len(x), seed=2)
  epochs, batch = 3, 16
  steps = int(np.ceil(keep.sum(1).max() / batch))
  make_tx = lambda spe: optax.adamw(
    optax.warmup_cosine_decay_schedule(0.0, 3e-3, spe, epochs * spe),
    weight_decay=1e-4,
  )
  cfg = engine.TrainConfig(
    model=TinyCNN(), optimizer=make_tx, epochs=epochs, batch_size=batch, seed=5
  )
  res = engine.train_models(cfg, x, y, keep, num_classes=10)
  assert np.all(res.loss[:, -1] < res.loss[:, 0])  # it trained
  module = TinyCNN()
  ref = lambda rows, keys: reference_train(
    module.init,
    module.apply,
    make_tx(steps),
    x,
    y,
    rows,
    keys,
    epochs=epochs,
    batch=batch,
    steps=steps,
  )
  _compare(res, keep, 5, ref, rtol=2e-4, atol=2e-5)
  # predict runs the user module too.
  logits = engine.predict(cfg, res.variables, x[:7], num_classes=10)
  direct = module.apply(
    jax.tree_util.tree_map(lambda a: a[3], res.variables), x[:7]
  )
  np.testing.assert_allclose(logits[3, :, 0], direct, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_plain_jax_init_apply_pair_and_custom_loss_equal_one_model_loops():
  x, y = _data(seed=1)
  keep = data.paired_keep(8, len(x), seed=3)
  epochs, batch = 2, 16
  steps = int(np.ceil(keep.sum(1).max() / batch))
  tx = optax.sgd(0.1, momentum=0.9)

  def focal(logits, labels):  # a user loss: focal loss with gamma 2
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1)[
      :, 0
    ]
    return -((1 - jnp.exp(logp)) ** 2) * logp

  cfg = engine.TrainConfig(
    model=(mlp_init, mlp_apply),
    optimizer=tx,
    loss=focal,
    epochs=epochs,
    batch_size=batch,
    seed=1,
    model_name="tanh_mlp",
  )
  res = engine.train_models(cfg, x, y, keep, num_classes=10)
  pair_apply = lambda v, xb, *, train, rngs, mutable=(): mlp_apply(
    v, xb, train=train, rngs=rngs
  )
  ref = lambda rows, keys: reference_train(
    mlp_init,
    pair_apply,
    tx,
    x,
    y,
    rows,
    keys,
    epochs=epochs,
    batch=batch,
    steps=steps,
    loss=focal,
  )
  _compare(res, keep, 1, ref, rtol=1e-4, atol=1e-5)
  logits = engine.predict(cfg, res.variables, x, num_classes=10)
  np.testing.assert_allclose(
    logits[0, :, 0],
    mlp_apply(
      jax.tree_util.tree_map(lambda a: a[0], res.variables),
      x,
      train=False,
      rngs=None,
    ),
    rtol=1e-5,
    atol=1e-5,
  )


def _gpu_lowering(cfg, shape, dtype="float32"):
  low = lowering.resolve_lowering(
    cfg,
    shape,
    10,
    backend="gpu",
    lowering=engine.Lowering(compute_dtype=dtype),
  )
  assert (
    low.model_axis,
    low.conv_impl,
    low.microbatch,
    low.steps_per_call,
  ) == ("vmap", "xla", cfg.batch_size, None)
  return low


@pytest.mark.usefixtures("cheap_random_bits")
@pytest.mark.slow
@pytest.mark.parametrize("case", ["cnn_small", "bfloat16", "dp_sgd"])
def test_accelerator_lowering_forced_on_cpu_equals_one_model_loops(case):
  x, y = _data(n=64, shape=(8, 8, 3), seed=4)
  keep = data.paired_keep(4, len(x), seed=4)
  epochs, batch = 2, 8
  steps = int(np.ceil(keep.sum(1).max() / batch))
  tx = optax.sgd(0.05, momentum=0.9)
  kwargs = dict(
    model="cnn_small",
    model_kwargs=(("width", 4),),
    optimizer=tx,
    epochs=epochs,
    batch_size=batch,
    seed=3,
  )
  dp, dtype, tol = None, jnp.float32, dict(rtol=2e-4, atol=2e-5)
  if case == "bfloat16":
    dtype = jnp.bfloat16
    tol = dict(
      rtol=0.05, atol=5e-3
    )  # stated: bfloat16 forward/backward, float32 parameters
  if case == "dp_sgd":
    dp = (1.0, 0.5)
    kwargs["defense"] = defenses.dp_sgd(*dp)
  cfg = engine.TrainConfig(**kwargs)
  low = _gpu_lowering(cfg, x.shape[1:], jnp.dtype(dtype).name)
  res = engine.train_models(cfg, x, y, keep, num_classes=10, lowering=low)
  module = models.get_model(
    "cnn_small",
    10,
    width=4,
    **({"dtype": jnp.bfloat16} if case == "bfloat16" else {}),
  )
  assert module.conv_impl == "xla"  # a user's get_model is plain XLA
  ref = lambda rows, keys: reference_train(
    module.init,
    module.apply,
    tx,
    x,
    y,
    rows,
    keys,
    epochs=epochs,
    batch=batch,
    steps=steps,
    dtype=dtype,
    dp=dp,
  )
  _compare(res, keep, 3, ref, **tol)


@pytest.mark.usefixtures("cheap_random_bits")
@pytest.mark.slow
def test_accelerator_lowering_trains_batch_norm_with_per_model_statistics():
  x, y = _data(n=48, shape=(8, 8, 3), seed=5)
  keep = data.paired_keep(2, len(x), seed=5)
  epochs, batch = 2, 8
  steps = int(np.ceil(keep.sum(1).max() / batch))
  tx = optax.sgd(0.05, momentum=0.9)
  cfg = engine.TrainConfig(
    model="wrn",
    model_kwargs=(("depth", 10), ("width", 1)),
    optimizer=tx,
    epochs=epochs,
    batch_size=batch,
    seed=2,
  )
  low = _gpu_lowering(cfg, x.shape[1:])
  res = engine.train_models(cfg, x, y, keep, num_classes=10, lowering=low)
  assert "batch_stats" in res.variables
  module = models.get_model("wrn", 10, depth=10, width=1)
  ref = lambda rows, keys: reference_train(
    module.init,
    module.apply,
    tx,
    x,
    y,
    rows,
    keys,
    epochs=epochs,
    batch=batch,
    steps=steps,
    mutable=("batch_stats",),
  )
  _compare(res, keep, 2, ref, rtol=5e-4, atol=5e-5)
  # Inference uses each model's own running statistics.
  logits = engine.predict(
    cfg, res.variables, x[:5], num_classes=10, lowering=low
  )
  own_apply = jax.jit(functools.partial(module.apply, train=False))
  for m in range(2):
    own = own_apply(
      jax.tree_util.tree_map(lambda a: a[m], res.variables), x[:5]
    )
    np.testing.assert_allclose(logits[m, :, 0], own, rtol=1e-4, atol=1e-4)
  assert not np.allclose(
    res.variables["batch_stats"]
    and jax.tree_util.tree_leaves(res.variables["batch_stats"])[0][0],
    jax.tree_util.tree_leaves(res.variables["batch_stats"])[0][1],
  )


def test_user_model_configuration_errors_are_named():
  cases = [
    (
      dict(model=TinyCNN(), model_kwargs=(("width", 3),)),
      "model_kwargs apply to registry models only",
    ),
    (
      dict(model=TinyCNN(), defense=defenses.dropout(0.2)),
      "put dropout in your own model",
    ),
    (dict(model=object()), "model must be one of"),
    (dict(optimizer=3), "optimizer must be one of"),
    (
      dict(loss=lambda l, y: l[:, 0], defense=defenses.label_smoothing(0.1)),
      "cannot be combined",
    ),
    (dict(loss="ce"), "loss must be a function"),
  ]
  for kwargs, match in cases:
    with pytest.raises(ValueError, match=match):
      engine.TrainConfig(**kwargs).validate()
  x, y = _data(n=32)
  cfg = engine.TrainConfig(
    model=TinyCNN(),
    optimizer=optax.sgd(0.1),
    batch_size=8,
    epochs=1,
    learning_rate=[1.0, 0.5],
  )
  with pytest.raises(
    ValueError, match="per-model learning_rate needs a built-in optimizer"
  ):
    engine.train_models(cfg, x, y, data.paired_keep(2, 32), num_classes=10)
  with pytest.raises(ValueError, match="backend must be one of"):
    lowering.resolve_lowering(cfg, (8, 8, 1), 10, backend="ipu")


@pytest.mark.usefixtures("cheap_random_bits")
@pytest.mark.slow
def test_run_directory_fingerprints_a_user_model_and_refuses_another(tmp_path):
  cfg = engine.TrainConfig(
    model=(mlp_init, mlp_apply),
    optimizer=optax.sgd(0.1),
    epochs=1,
    batch_size=32,
    model_name="tanh_mlp",
  )
  spec = runs.RunSpec(
    dataset="digits", num_examples=100, num_models=2, train=cfg
  )
  runs.run_training(spec, tmp_path, log=lambda s: None)
  saved = (tmp_path / "config.json").read_text()
  assert '"tanh_mlp"' in saved and "['w1']" in saved
  other = runs.RunSpec(
    dataset="digits",
    num_examples=100,
    num_models=2,
    train=engine.TrainConfig(
      model=TinyCNN(),
      optimizer=optax.sgd(0.1),
      epochs=1,
      batch_size=32,
      model_name="tanh_mlp",
    ),
  )
  with pytest.raises(ValueError, match="differs in: train.model"):
    runs.run_training(other, tmp_path, log=lambda s: None)


def test_one_place_reads_the_default_backend():
  hits = [
    (p.name, i)
    for p in (ROOT / "miajax").rglob("*.py")
    for i, line in enumerate(p.read_text().splitlines())
    if re.search(r"default_backend\(", line)
  ]
  assert [name for name, _ in hits] == ["lowering.py"]
