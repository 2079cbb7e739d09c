"""The engine: each model fits only its own members; determinism; chunk independence; bad input."""

import jax
import numpy as np
import pytest

from miajax import data, defenses, engine
from miajax.engine import lowering
from miajax.engine.cpu import microbatch as cpu_engine

MLP = (("activation", "relu"), ("widths", (256, 128)))
# Every MLP here trains without weight decay (the random-label test needs none
# to memorise): one optimizer state, hence one compiled initialisation of the
# MLP on 8x8x1 inputs for all of them.
NO_DECAY = dict(weight_decay=0.0)


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


@pytest.fixture(scope="module")
def four_models(digits):
  # Four models (paired_keep's first four rows are those of eight): each one
  # is checked on its own, and half the models halve the 30 epochs' run time.
  keep = data.paired_keep(4, len(digits.x_train), seed=0)
  cfg = engine.TrainConfig(
    model="mlp",
    model_kwargs=MLP,
    epochs=30,
    batch_size=64,
    learning_rate=0.1,
    **NO_DECAY,
  )
  result = engine.train_models(
    cfg, digits.x_train, digits.y_train, keep, num_classes=10
  )
  logits = engine.predict(cfg, result.variables, digits.x_train, num_classes=10)
  return keep, cfg, result, logits


def _cross_entropy(logits, y):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  y = np.broadcast_to(y, logp.shape[:-1])
  return -np.take_along_axis(logp, y[..., None], -1)[..., 0]


@pytest.mark.slow
def test_each_model_fits_its_members_and_not_the_others(digits, four_models):
  keep, _, result, logits = four_models
  assert logits.shape == (4, len(digits.x_train), 1, 10)
  assert not result.diverged.any()
  correct = logits[:, :, 0].argmax(-1) == digits.y_train
  loss = _cross_entropy(logits[:, :, 0].astype(np.float64), digits.y_train)
  for m in range(4):
    assert correct[m, keep[m]].mean() >= 0.99
    assert correct[m, ~keep[m]].mean() < correct[m, keep[m]].mean() - 0.01
    # Members are fitted far more tightly than non-members: the membership signal exists.
    assert loss[m, ~keep[m]].mean() > 10 * loss[m, keep[m]].mean()


def test_random_labels_are_memorised_only_by_the_models_that_saw_them(digits):
  rng = np.random.RandomState(0)
  y = rng.randint(0, 10, len(digits.y_train)).astype(np.int32)
  keep = data.paired_keep(2, len(y), seed=1)
  cfg = engine.TrainConfig(
    model="mlp",
    model_kwargs=MLP,
    epochs=60,
    batch_size=64,
    learning_rate=0.1,
    **NO_DECAY,
  )
  result = engine.train_models(cfg, digits.x_train, y, keep, num_classes=10)
  correct = (
    engine.predict(cfg, result.variables, digits.x_train, num_classes=10)[
      :, :, 0
    ].argmax(-1)
    == y
  )
  for m in range(2):
    assert correct[m, keep[m]].mean() >= 0.95  # memorised its own random labels
    assert (
      correct[m, ~keep[m]].mean() < 0.2
    )  # chance (0.1) on labels it never saw


# 400 examples, 4 models, 7 steps an epoch: the next two tests' recipe, whose
# compiled steps (chunks of 3 and 1) they share.
SMALL = dict(
  model="mlp",
  model_kwargs=MLP,
  epochs=3,
  batch_size=32,
  learning_rate=0.05,
  **NO_DECAY,
)


@pytest.mark.slow
def test_same_seed_same_logits_and_chunking_does_not_matter(digits):
  x, y = digits.x_train[:400], digits.y_train[:400]
  keep = data.lira_keep(4, 400, seed=3)
  base = dict(SMALL, seed=5)
  outs = []
  # Chunks of 3 leave a ragged last chunk of 1; chunks of 1 put every model
  # alone, at position 0 of its chunk (models 1 and 2 move, model 3's ragged
  # chunk is checked against a plain one). Two chunk sizes, 3 and 1: each
  # size compiles its own step.
  cfg = engine.TrainConfig(**base)
  for per_step in (3, 3, 1):
    low = engine.Lowering(models_per_step=per_step)
    r = engine.train_models(cfg, x, y, keep, num_classes=10, lowering=low)
    outs.append(engine.predict(cfg, r.variables, x, num_classes=10))
  np.testing.assert_array_equal(outs[0], outs[1])
  np.testing.assert_allclose(outs[2], outs[0], atol=1e-4, rtol=0)
  other = engine.TrainConfig(**{**base, "seed": 6})
  r = engine.train_models(
    other,
    x,
    y,
    keep,
    num_classes=10,
    lowering=engine.Lowering(models_per_step=3),
  )
  assert (
    np.abs(
      engine.predict(other, r.variables, x, num_classes=10) - outs[0]
    ).max()
    > 1e-2
  )


def test_a_diverging_model_is_stopped_and_flagged_without_harming_the_others(
  digits,
):
  x, y = digits.x_train[:400], digits.y_train[:400]
  keep = data.paired_keep(4, 400, seed=0)
  # Model 1 diverges in a chunk with models 0 and 2; model 3 has its own.
  cfg = engine.TrainConfig(**SMALL)
  low = engine.Lowering(models_per_step=3)
  lrs = engine.TrainConfig(
    **{**SMALL, "learning_rate": [0.05, 1e9, 0.05, 0.05]}
  )
  r = engine.train_models(lrs, x, y, keep, num_classes=10, lowering=low)
  np.testing.assert_array_equal(r.diverged, [False, True, False, False])
  assert np.isnan(r.loss[1, -1]) and np.isfinite(r.loss[[0, 2, 3]]).all()
  ref = engine.train_models(cfg, x, y, keep, num_classes=10, lowering=low)
  got = engine.predict(cfg, r.variables, x, num_classes=10)
  want = engine.predict(cfg, ref.variables, x, num_classes=10)
  np.testing.assert_allclose(got[[0, 2, 3]], want[[0, 2, 3]], atol=1e-5)
  assert np.isfinite(got[[0, 2, 3]]).all()


@pytest.fixture(scope="module")
def lenet5_vmapped(digits):
  """Four LeNet-5s trained with augmentation, vmapped: the models that the
  query test reads and the reference of the unrolled and looped steps (one
  compiled training program for both)."""
  x, y = digits.x_train[:256], digits.y_train[:256]
  keep = data.paired_keep(4, 256, seed=3)
  base = dict(model="lenet5", epochs=2, batch_size=32, augment=True)
  cfg = engine.TrainConfig(**base)
  low = engine.Lowering(models_per_step=4, model_axis="vmap")
  res = engine.train_models(cfg, x, y, keep, num_classes=10, lowering=low)
  return x, y, keep, base, res


@pytest.mark.slow
def test_queries_and_augmented_training(lenet5_vmapped):
  # Augmented training ran in the fixture; queries through the resolved
  # lowering (no explicit model axis), as the models' users predict.
  x, _, _, base, r = lenet5_vmapped
  cfg = engine.TrainConfig(**base)
  plain = engine.predict(cfg, r.variables, x[:10], num_classes=10)
  mirror = engine.predict(
    cfg, r.variables, x[:10], num_classes=10, queries="mirror"
  )
  shifts = engine.predict(
    cfg, r.variables, x[:10], num_classes=10, queries="shifts"
  )
  assert (
    plain.shape == (4, 10, 1, 10)
    and mirror.shape == (4, 10, 2, 10)
    and shifts.shape == (4, 10, 18, 10)
  )
  np.testing.assert_allclose(mirror[:, :, 0], plain[:, :, 0], atol=1e-5)
  np.testing.assert_allclose(shifts[:, :, 0], plain[:, :, 0], atol=1e-5)
  flipped = engine.predict(cfg, r.variables, x[:10, :, ::-1], num_classes=10)
  np.testing.assert_allclose(mirror[:, :, 1], flipped[:, :, 0], atol=1e-5)
  # Query views: query 0 is the input; the shifts are reflect-padded translations.
  views = np.asarray(engine.query_views(x[:3], "shifts"))
  np.testing.assert_array_equal(views[0], x[:3])
  padded = np.pad(x[:3], ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
  np.testing.assert_array_equal(views[2], padded[:, 4:12, 8:16])  # dy=0, dx=+4


def test_epoch_order_uses_only_members_and_covers_them():
  keep = np.zeros((3, 50), bool)
  keep[0, :10] = True
  keep[1, 5:40] = True
  keep[2, ::2] = True
  keys = engine.model_keys(0, np.arange(3))
  steps = -(-35 // 8)
  order = np.asarray(engine.epoch_order(keep, keys, 0, steps, 8))
  assert order.shape == (3, steps, 8)
  for m in range(3):
    assert keep[m, order[m].ravel()].all()
    assert set(order[m].ravel()) == set(np.flatnonzero(keep[m]))


@pytest.mark.parametrize(
  "mutate,match",
  [
    (
      lambda k, x, y, c: (k.astype(int), x, y, c),
      "keep must be a bool array",
    ),
    (
      lambda k, x, y, c: (k[:, :-1], x, y, c),
      "keep has 199 columns but x has 200",
    ),
    (
      lambda k, x, y, c: (k, x, y, engine.TrainConfig(model="nope")),
      "model must be one of",
    ),
    (
      lambda k, x, y, c: (k, x, y, engine.TrainConfig(batch_size=150)),
      "batch_size=150 is larger",
    ),
    (
      lambda k, x, y, c: (
        k,
        np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x),
        y,
        c,
      ),
      "non-finite",
    ),
    (lambda k, x, y, c: (k, x, y.astype(np.float32), c), "integer labels"),
    (lambda k, x, y, c: (k, x, y + 10, c), r"y must be in \[0, 10\)"),
    (
      lambda k, x, y, c: (k, x, y, engine.TrainConfig(epochs=0)),
      "epochs must be a positive integer",
    ),
    (
      lambda k, x, y, c: (k, x, y, engine.TrainConfig(optimizer="lbfgs")),
      "optimizer",
    ),
    (lambda k, x, y, c: (k[0], x, y, c), "keep must be 2-D"),
    (lambda k, x, y, c: (k.astype(int), x, y, c), "keep must be a bool"),
    (
      lambda k, x, y, c: (k, x, y, engine.TrainConfig(momentum=1.5)),
      r"momentum must lie in \[0, 1\)",
    ),
  ],
)
def test_bad_inputs_fail_before_training(digits, mutate, match):
  x, y = digits.x_train[:200], digits.y_train[:200]
  keep = data.paired_keep(2, 200, seed=0)
  k, x, y, cfg = mutate(keep, x, y, engine.TrainConfig(batch_size=32))
  with pytest.raises(ValueError, match=match):
    engine.train_models(cfg, x, y, k, num_classes=10)


@pytest.mark.parametrize(
  "model,low,match",
  [
    (
      "mlp",
      dict(microbatch=5),
      r"microbatch must be a positive divisor of batch_size \(32\)",
    ),
    ("wrn16-4", dict(microbatch=8), "batch norm"),
    ("mlp", dict(model_axis="pmap"), "model_axis must be one of"),
    ("mlp", dict(compute_dtype="float16"), "compute_dtype must be one of"),
    ("mlp", dict(models_per_step=0), "models_per_step must be a positive"),
  ],
)
def test_bad_lowerings_fail_before_training(digits, model, low, match):
  x, y = digits.x_train[:200], digits.y_train[:200]
  keep = data.paired_keep(2, 200, seed=0)
  cfg = engine.TrainConfig(model=model, batch_size=32)
  with pytest.raises(ValueError, match=match):
    engine.train_models(
      cfg, x, y, keep, num_classes=10, lowering=engine.Lowering(**low)
    )


def test_train_models_takes_the_recipe_first_and_jax_keep(digits):
  x, y = digits.x_train[:200], digits.y_train[:200]
  keep = data.paired_keep(2, 200, seed=0)
  with pytest.raises(ValueError, match=r"train_models\(config, x, y, keep"):
    engine.train_models(x, y, keep, engine.TrainConfig(), num_classes=10)
  cfg = engine.TrainConfig(
    model_kwargs={"widths": (16,)}, epochs=1, batch_size=32
  )
  a = engine.train_models(cfg, x, y, jax.numpy.asarray(keep), num_classes=10)
  b = engine.train_models(cfg, x, y, keep, num_classes=10)
  np.testing.assert_array_equal(a.loss, b.loss)
  # A pytree: jax.tree_util maps over its arrays.
  assert len(jax.tree_util.tree_leaves(a)) > len(
    jax.tree_util.tree_leaves(a.variables)
  )


def test_model_kwargs_may_be_a_dict():
  pairs = engine.TrainConfig(
    model_kwargs=(("activation", "relu"), ("widths", (32,)))
  )
  spelled = engine.TrainConfig(
    model_kwargs={"widths": [32], "activation": "relu"}
  )
  assert spelled == pairs and hash(spelled) == hash(pairs)
  assert spelled.model_kwargs_dict() == {"activation": "relu", "widths": (32,)}


def test_memory_planner_chunks_by_free_memory():
  cfg = engine.TrainConfig(model="mlp", batch_size=128)
  vmap = engine.resolve_lowering(
    cfg, (600,), 100, lowering=engine.Lowering(model_axis="vmap")
  )
  many = engine.plan_models_per_step(
    cfg, 100, (600,), 256, bytes_available=64 << 30, lowering=vmap
  )
  few = engine.plan_models_per_step(
    cfg, 100, (600,), 256, bytes_available=1 << 30, lowering=vmap
  )
  assert many == 256 and 1 <= few < 64
  override = engine.Lowering(models_per_step=7)
  assert (
    engine.plan_models_per_step(cfg, 100, (600,), 256, lowering=override) == 7
  )


def _axis(cfg, shape, num_classes):
  return engine.resolve_lowering(cfg, shape, num_classes, steps=0).model_axis


def test_model_axis_is_picked_per_backend_and_step_size(monkeypatch):
  # The axis is what is tested here; the micro-batch timing has its own test.
  monkeypatch.setattr(
    cpu_engine,
    "microbatch_timings",
    lambda cfg, *a, **k: {8: 1.0, cfg.batch_size: 1.0},  # whole batch timed
  )
  lowering._resolve.cache_clear()
  big_mlp = engine.TrainConfig(
    model="mlp", batch_size=128
  )  # Purchase-shaped: ~1e9 FLOPs per step
  small_mlp = engine.TrainConfig(
    model="mlp", model_kwargs=(("widths", (64,)),), batch_size=64
  )
  cnn = engine.TrainConfig(model="cnn_small", batch_size=128)
  assert _axis(small_mlp, (8, 8, 1), 10) == "vmap"
  if jax.default_backend() == "cpu":
    assert _axis(big_mlp, (600,), 100) == "loop"
    assert (
      engine.plan_models_per_step(big_mlp, 100, (600,), 256)
      <= engine.UNROLL_MAX_MODELS * jax.local_device_count()
    )
    assert _axis(cnn, (32, 32, 3), 10) == "unroll"
    assert (
      engine.plan_models_per_step(cnn, 10, (32, 32, 3), 256)
      <= engine.UNROLL_MAX_MODELS
    )
  else:
    assert _axis(big_mlp, (600,), 100) == "vmap"
  with pytest.raises(ValueError, match="model_axis must be"):
    engine.Lowering(model_axis="pmap").validate()


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["unroll", "loop"])
def test_unrolled_and_looped_steps_equal_the_vmapped_one(lenet5_vmapped, axis):
  # Each model of the unrolled and looped steps must take the vmapped step:
  # its own parameters, members, augmentation and keys. Explicit micro-batch
  # sizes, so that no micro-batch timing run (its own test) compiles three
  # more programs: the unrolled steps (2 models each, 2 chunks: an unrolled
  # program's compile time grows with its models) sum their gradients over 2
  # micro-batches, as the CPU lowering makes them do, against the vmapped
  # whole batch; the looped ones take whole batches.
  x, y, keep, base, ref = lenet5_vmapped
  if axis == "unroll":
    low = engine.Lowering(model_axis=axis, models_per_step=2, microbatch=16)
  else:
    low = engine.Lowering(model_axis=axis, microbatch=base["batch_size"])
  got = engine.train_models(
    engine.TrainConfig(**base), x, y, keep, num_classes=10, lowering=low
  )
  np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-4, atol=1e-5)
  for a, b in zip(
    jax.tree_util.tree_leaves(got.variables),
    jax.tree_util.tree_leaves(ref.variables),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
  "model,axis,defense",
  [
    ("cnn_small", "unroll", "smoothing+penalty"),
    ("mlp", "unroll", None),
    ("mlp", "vmap", "smoothing+penalty"),
  ],
)
@pytest.mark.slow
def test_microbatched_steps_equal_the_whole_batch(model, axis, defense):
  # Gradient accumulation over micro-batches is the same SGD step: cnn_small
  # (Winograd layers on CPU) unrolled, MLPs unrolled and vmapped, with and
  # without a target map and a loss term. The plain loss runs unrolled on the
  # MLP, not on cnn_small: the model and the loss are separate code, and each
  # cnn_small configuration compiles for many seconds (Winograd's transforms,
  # twice in a micro-batched step).
  from miajax import defenses

  rng = np.random.default_rng(0)
  # 8x8x1 images: the second convolution (4x4, 16 input channels) is
  # Winograd's, the first (1 channel) and the third (2x2) fall back to hybrid;
  # 16x16 images (two Winograd layers) took twice as long to compile. The MLP
  # is the other tests' (its initialisation is compiled once).
  x = rng.standard_normal((96, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 10, 96)
  keep = data.paired_keep(2, 96, seed=1)
  d = (
    None
    if defense is None
    else defenses.chain(
      defenses.label_smoothing(0.1), defenses.confidence_penalty(0.05)
    )
  )
  kwargs = (("width", 16),) if model == "cnn_small" else MLP
  base = dict(
    model=model,
    model_kwargs=kwargs,
    epochs=2,
    batch_size=16,
    learning_rate=0.05,
    # One model per unrolled step (two chunks): an unrolled program's compile
    # time grows with its models, and several models in one unrolled,
    # micro-batched step are test_unrolled_and_looped_steps_equal_the_vmapped_one's.
    defense=d,
    **NO_DECAY,
  )
  per_step = 1 if axis == "unroll" else 2
  cfg = engine.TrainConfig(**base)
  whole, micro = (
    engine.train_models(
      cfg,
      x,
      y,
      keep,
      num_classes=10,
      lowering=engine.Lowering(
        model_axis=axis, models_per_step=per_step, microbatch=m
      ),
    )
    for m in (16, 4)
  )
  assert not np.allclose(whole.loss[:, 0], whole.loss[:, 1])  # it trained
  np.testing.assert_allclose(micro.loss, whole.loss, rtol=1e-5)
  for a, b in zip(
    jax.tree_util.tree_leaves(micro.variables),
    jax.tree_util.tree_leaves(whole.variables),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_auto_microbatch_is_the_fastest_measured_size(monkeypatch):
  cnn = engine.TrainConfig(model="cnn_small", batch_size=128)
  shape = (32, 32, 3)
  fake = {8: 3.0, 16: 1.0, 32: 2.0, 64: 1.5, 128: 4.0}
  monkeypatch.setattr(cpu_engine, "microbatch_timings", lambda *a, **k: fake)
  lowering._resolve.cache_clear()
  try:
    assert (
      lowering.resolve_lowering(cnn, shape, 10, backend="cpu").microbatch == 16
    )
    assert (
      lowering.resolve_lowering(cnn, shape, 10, backend="gpu").microbatch == 128
    )  # whole batches
    # Never with dropout, batch norm, vmapped small models; an explicit size wins.
    dropout = engine.TrainConfig(
      model="cnn_small", batch_size=128, defense=defenses.dropout(0.1)
    )
    assert (
      lowering.resolve_lowering(dropout, shape, 10, backend="cpu").microbatch
      == 128
    )
    wrn = engine.TrainConfig(model="wrn16-4", batch_size=128)
    assert (
      lowering.resolve_lowering(wrn, shape, 10, backend="cpu").microbatch == 128
    )
    small = engine.TrainConfig(
      model="mlp", model_kwargs=(("widths", (64,)),), batch_size=64
    )
    assert (
      lowering.resolve_lowering(small, (8, 8, 1), 10, backend="cpu").microbatch
      == 64
    )
    # Near-equal timings keep the whole batch (the same seed then gives the
    # same models from run to run); a clearly faster micro-batch wins.
    monkeypatch.setattr(
      cpu_engine,
      "microbatch_timings",
      lambda *a, **k: {8: 1.2, 16: 0.95, 32: 0.92, 64: 1.0},
    )
    lowering._resolve.cache_clear()
    near = engine.TrainConfig(model="cnn_small", batch_size=64)
    assert (
      lowering.resolve_lowering(near, shape, 10, backend="cpu").microbatch == 64
    )
    monkeypatch.setattr(
      cpu_engine,
      "microbatch_timings",
      lambda *a, **k: {8: 1.2, 16: 0.95, 32: 0.89, 64: 1.0},
    )
    lowering._resolve.cache_clear()
    assert (
      lowering.resolve_lowering(near, shape, 10, backend="cpu").microbatch == 32
    )
    fixed = engine.Lowering(microbatch=32)
    cnn = engine.TrainConfig(model="cnn_small")
    assert (
      lowering.resolve_lowering(
        cnn, shape, 10, backend="cpu", lowering=fixed
      ).microbatch
      == 32
    )
  finally:
    lowering._resolve.cache_clear()


def test_runs_that_differ_outside_the_gradient_share_one_measurement(
  monkeypatch,
):
  # The timed program is one gradient of the loss: optimizer, schedule,
  # epochs, seed and chunking do not enter it, while the model, the batch
  # size, the dtype and the defense do.
  seen = []
  monkeypatch.setattr(
    cpu_engine,
    "microbatch_timings",
    lambda c, *a, compute_dtype: (
      seen.append((c, compute_dtype)) or {8: 1.0, c.batch_size: 1.0}
    ),
  )
  base = dict(model="cnn_small", batch_size=64)
  a = engine.TrainConfig(**base, epochs=3, seed=1)
  b = engine.TrainConfig(
    **base,
    epochs=30,
    seed=7,
    optimizer="adam",
    learning_rate=1e-3,
    weight_decay=0.0,
    schedule="constant",
    warmup_epochs=1.0,
    augment=True,
  )
  others = [
    engine.TrainConfig(**{**base, "batch_size": 32}),
    engine.TrainConfig(**base, defense=defenses.label_smoothing(0.1)),
    engine.TrainConfig(**base, model_kwargs=(("width", 16),)),
  ]
  for cfg in (a, b, *others):
    cpu_engine.measure_microbatch(cfg, (32, 32, 3), 10, "winograd")
  # The dtype is the lowering's: it enters the measurement too.
  cpu_engine.measure_microbatch(
    a, (32, 32, 3), 10, "winograd", compute_dtype="bfloat16"
  )
  assert seen[0] == seen[1] and hash(seen[0]) == hash(seen[1])
  assert all(seen[0] != other for other in seen[2:])


def test_the_candidates_are_timed_only_when_the_run_can_repay_them(monkeypatch):
  # The whole batch: 1 s to compile, 10 ms per step. cnn_small at batch 64 has
  # 3 more candidates (8, 16, 32): ~3 x (1 + 4 x 0.01) = 3.12 s to time them,
  # and a micro-batch saves at most half a step: 0.005 s per step.
  monkeypatch.setattr(
    cpu_engine, "whole_batch_timing", lambda *a, **k: (1.0, 0.01)
  )
  timed = []
  monkeypatch.setattr(
    cpu_engine,
    "microbatch_timings",
    lambda c, *a, **k: timed.append(c) or {8: 0.001, 16: 1.0, 32: 1.0, 64: 1.0},
  )
  cfg = engine.TrainConfig(model="cnn_small", batch_size=64)
  args = (cfg, (32, 32, 3), 10, "winograd")
  assert cpu_engine.measure_microbatch(*args, steps=600) == 64 and not timed
  assert (
    cpu_engine.measure_microbatch(*args, steps=650) == 8 and len(timed) == 1
  )
  assert (
    cpu_engine.measure_microbatch(*args) == 8
  )  # no step count: always timed
  assert not cpu_engine.measurement_pays(*args, 0)  # queries only
  assert cpu_engine.measurement_pays(*args, 10**6)
  with pytest.raises(ValueError, match="steps must be None or an integer >= 0"):
    lowering.resolve_lowering(cfg, (32, 32, 3), 10, backend="cpu", steps=-1)

  # The engine passes the whole run's steps (every model of keep, whichever
  # chunks this call trains); plans and queries time nothing.
  seen = []

  def pays(config, shape, num_classes, conv, steps, **kw):
    seen.append(steps)
    return False

  monkeypatch.setattr(cpu_engine, "measurement_pays", pays)
  lowering._resolve.cache_clear()
  try:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(40, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    keep = data.paired_keep(4, 40, seed=0)  # 20 members each: 2 steps of 16
    small = engine.TrainConfig(
      model="mlp", model_kwargs=(("widths", (8,)),), batch_size=16, epochs=3
    )
    loop = engine.Lowering(model_axis="loop")
    (res,) = engine.train_chunks(
      small, x, y, keep, num_classes=3, chunks=[[1]], lowering=loop
    )
    engine.predict(small, res.variables, x, num_classes=3, lowering=loop)
    # Training asks with all 4 models x 3 epochs x 2 steps, though it trains
    # model 1 only; the query with 0 (it takes no gradient step).
    assert seen == [4 * 3 * 2, 0]
  finally:
    lowering._resolve.cache_clear()


@pytest.mark.slow
def test_microbatch_timings_time_every_divisor_and_the_pick_follows_them():
  # Batch 24: the divisors from 8 up are 8, 12 and 24, one of them no power of
  # two. A convolutional net given the Winograd lowering, as the unrolled CPU
  # step times it; 12x12 images leave no layer Winograd's shapes (6x6 and 3x3
  # after pooling), so every convolution is the hybrid one, which compiles
  # faster (Winograd layers under micro-batches are
  # test_microbatched_steps_equal_the_whole_batch's).
  cfg = engine.TrainConfig(
    model="cnn_small", model_kwargs=(("width", 16),), batch_size=24
  )
  timings = cpu_engine.microbatch_timings(cfg, (12, 12, 3), 10, "winograd")
  assert sorted(timings) == [8, 12, 24] and all(t > 0 for t in timings.values())
  fastest = min(timings, key=timings.get)
  clearly = timings[24] > (1 + cpu_engine.MICROBATCH_MARGIN) * timings[fastest]
  assert cpu_engine.measure_microbatch(cfg, (12, 12, 3), 10, "winograd") == (
    fastest if clearly else 24
  )
