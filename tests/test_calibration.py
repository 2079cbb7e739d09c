"""Shadow-recipe calibration and the match diagnostic, against independent references."""

import numpy as np
import pytest
import scipy.stats

import miajax
from miajax import calibration, data, match
from miajax.engine import compiled


@pytest.mark.parametrize("n, m", [(1, 1), (7, 13), (200, 50), (1000, 1000)])
def test_wasserstein1_equals_scipy(n, m):
  rng = np.random.default_rng(n * 31 + m)
  a = rng.normal(size=n) * 3
  b = rng.standard_t(3, size=m) + 1
  assert match.wasserstein1(a, b) == pytest.approx(
    scipy.stats.wasserstein_distance(a, b), rel=1e-12, abs=1e-12
  )
  assert match.wasserstein1(a, a) == 0.0


def test_wasserstein1_refuses_an_empty_sample():
  with pytest.raises(ValueError, match="two non-empty samples"):
    match.wasserstein1([], [1.0])


def test_sides_split_and_score_like_float64_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 40, 5)).astype(np.float32) * 4
  labels = rng.integers(0, 5, 40)
  keep = rng.random((3, 40)) < 0.5
  s = match.sides(logits, labels, keep)
  z = logits.astype(np.float64)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  lp = np.take_along_axis(logp, labels[None, :, None], -1)[..., 0]
  phi = lp - np.log1p(-np.exp(lp))
  np.testing.assert_allclose(s.member_phi, phi[keep], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(s.nonmember_loss, -lp[~keep], rtol=1e-5, atol=1e-5)
  assert s.member_correct.mean() == (z.argmax(-1) == labels)[keep].mean()


def test_match_report_flags_a_mismatch_beyond_the_threshold():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, 300)
  keep = np.tile(rng.random(300) < 0.5, (4, 1))
  keep[1::2] = ~keep[0]

  def confident(scale, member):
    # The true class ahead by `scale` on members, by half of it on the rest.
    z = rng.normal(size=member.shape + (4,))
    margin = np.where(member, scale, scale / 2)[..., None]
    return (z + np.eye(4)[labels] * margin).astype(np.float32)

  is_member = keep[0]
  target = confident(6.0, is_member)
  same = match.match_report(
    target, is_member, confident(6.0, keep), keep, labels
  )
  far = match.match_report(
    target, is_member, confident(20.0, keep), keep, labels
  )
  assert not same["mismatch"] and same["w1"] < match.MISMATCH_W1
  assert far["mismatch"] and far["w1"] > match.MISMATCH_W1
  assert far["verdict"].startswith("shadows do not match the target")
  assert [r["models"] for r in far["table"]] == ["target", "shadows (IN / OUT)"]


def test_grid_parsing_names_the_bad_part():
  assert calibration.parse_grid(
    "epochs=10,30; weight_decay=0,5e-4;schedule=constant"
  ) == {
    "epochs": [10, 30],
    "weight_decay": [0.0, 5e-4],
    "schedule": ["constant"],
  }
  for text, msg in [
    ("epochs", "must be name=v1,v2"),
    ("epoch=3", "'epoch' is not one of"),
    ("epochs=3.5", "values must be integers"),
    ("weight_decay=a", "values must be numbers"),
    (" ; ", "grid is empty"),
  ]:
    with pytest.raises(ValueError, match=msg):
      calibration.parse_grid(text)


def test_candidates_are_the_grid_product_over_the_base():
  base = miajax.TrainConfig(epochs=30, weight_decay=5e-4, learning_rate=0.1)
  grid = calibration.default_grid(base)
  assert grid == {
    "epochs": [10, 30, 90, 210],
    "weight_decay": [0.0, 5e-4],
    "schedule": ["cosine", "constant"],
  }
  cands = calibration.candidates(base, grid)
  assert len(cands) == 16
  assert all(
    c["learning_rate"] == 0.1 and c["batch_size"] == 128 for c in cands
  )
  assert {(c["epochs"], c["weight_decay"], c["schedule"]) for c in cands} == {
    (e, w, s)
    for e in grid["epochs"]
    for w in grid["weight_decay"]
    for s in grid["schedule"]
  }
  with pytest.raises(ValueError, match="unknown fields"):
    calibration.candidates(base, {"depth": [1]})


@pytest.mark.slow
def test_calibrate_finds_the_targets_recipe_in_one_program_per_schedule():
  ds = data.load("digits")
  x, y = ds.x_train[:400], ds.y_train[:400]
  base = miajax.TrainConfig(
    model_kwargs={"widths": (64,), "activation": "relu"},
    epochs=20,
    batch_size=32,
    weight_decay=5e-4,
  )
  # The target: the engine's own model at 40 epochs without weight decay,
  # constant rate, on a half the candidates never see as such.
  members = np.zeros(400, bool)
  members[np.random.default_rng(5).permutation(400)[:200]] = True
  target_cfg = calibration.pick_config(
    base,
    {
      **calibration.candidates(base, {"epochs": [40]})[0],
      "weight_decay": 0.0,
      "schedule": "constant",
    },
  )
  res = miajax.train_models(
    miajax.TrainConfig(**{**target_cfg.__dict__, "seed": 99}),
    x,
    y,
    members[None],
    num_classes=10,
  )
  target = miajax.predict(target_cfg, res.variables, x, num_classes=10)[0]
  grid = {
    "epochs": [2, 40],
    "weight_decay": [0.0, 5e-3],
    "schedule": ["cosine", "constant"],
  }
  before = compiled.compile_program.cache_info().misses
  lines = []
  cal = calibration.calibrate(
    x,
    y,
    target,
    members,
    base=base,
    num_classes=10,
    grid=grid,
    log=lines.append,
  )
  # Per-model learning rate, decay and epochs: one program per schedule.
  assert cal.programs == 2
  assert compiled.compile_program.cache_info().misses - before <= 2
  assert sum("in one compiled program" in line for line in lines) == 2
  assert len(cal.table) == 8 and cal.models == 16
  chosen = cal.table[cal.best]
  assert chosen["chosen"] and sum(r["chosen"] for r in cal.table) == 1
  assert chosen["epochs"] == 40 and chosen["weight_decay"] == 0.0
  assert chosen["w1"] == min(r["w1"] for r in cal.table)
  # The 2-epoch candidates are far from a 40-epoch target.
  short = [r["w1"] for r in cal.table if r["epochs"] == 2]
  assert min(short) > 2 * chosen["w1"]
  assert cal.config.epochs == 40 and cal.config.weight_decay == 0.0
