"""ML-Leaks attacks on synthetic posteriors with a known answer, and the script end to end."""

import json
import pathlib

import numpy as np
import pytest
from started import Started
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from miajax.attacks import mlleaks
from miajax import defenses as O

ROOT = pathlib.Path(__file__).resolve().parents[1]


def synth_logits(rng, n, boost, *, classes=10, noise=1.0, boost_sd=1.5):
  """``n`` outputs: Gaussian logits, class 0 raised by ``N(boost, boost_sd)``; members get a larger boost."""
  z = rng.normal(size=(n, classes)) * noise
  z[:, 0] += rng.normal(boost, boost_sd, size=n)
  return z.astype(np.float32)


def labelled(rng, n, boost_in, boost_out, **kw):
  z = np.concatenate(
    [
      synth_logits(rng, n, boost_in, **kw),
      synth_logits(rng, n, boost_out, **kw),
    ]
  )
  return z, np.arange(2 * n) < n


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------ features


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_posteriors_matches_numpy_sort(k):
  p = np_softmax(np.random.default_rng(0).normal(size=(4, 5, 10)) * 3).astype(
    np.float32
  )
  expected = np.sort(p, axis=-1)[..., ::-1][..., :k]
  got = mlleaks.top_posteriors(p, k)
  assert got.shape == (4, 5, k) and got.dtype == np.float32
  np.testing.assert_array_equal(got, expected)


def test_top_posteriors_pads_missing_classes_with_zeros():
  p = np.array([[0.3, 0.7], [0.9, 0.1]], np.float32)
  np.testing.assert_array_equal(
    mlleaks.top_posteriors(p, 3), np.float32([[0.7, 0.3, 0.0], [0.9, 0.1, 0.0]])
  )


def test_attack_features_under_masking():
  z = synth_logits(np.random.default_rng(1), 50, 3.0)
  p = np_softmax(z)
  raw = mlleaks.attack_features(z)
  np.testing.assert_allclose(
    raw, np.sort(p, -1)[:, ::-1][:, :3], rtol=1e-5, atol=1e-7
  )
  # top-1 masking releases only the largest posterior: the two lower features become 0
  top1 = mlleaks.attack_features(z, transform=O.top_k(1))
  np.testing.assert_allclose(top1[:, 0], p.max(-1), rtol=1e-5)
  assert np.all(top1[:, 1:] == 0)
  # top-3 masking keeps exactly the features the attack reads: nothing changes
  np.testing.assert_array_equal(
    mlleaks.attack_features(z, transform=O.top_k(3)), raw
  )


# ------------------------------------------------------------- known answers


@pytest.mark.slow
def test_adversary1_finds_a_leak():
  rng = np.random.default_rng(2)
  shadow_z, shadow_m = labelled(rng, 1000, 6.0, 3.0)
  target_z, target_m = labelled(rng, 3000, 6.0, 3.0)
  oracle = roc_auc_score(
    target_m, np_softmax(target_z).max(-1)
  )  # top posterior: near-sufficient here
  for model in mlleaks.ATTACK_MODELS:
    fitted = mlleaks.fit_attack(
      mlleaks.attack_features(shadow_z), shadow_m, model=model, seed=0
    )
    scores = mlleaks.attack_scores(fitted, mlleaks.attack_features(target_z))
    assert scores.shape == (6000,) and np.all((scores >= 0) & (scores <= 1))
    auc = roc_auc_score(target_m, scores)
    print(
      f"adversary 1 ({model}) on a leaky synthetic target: AUC {auc:.3f} (top posterior {oracle:.3f})"
    )
    assert auc > 0.8 and abs(auc - oracle) < 0.02


def test_adversary3_threshold_from_random_inputs():
  rng = np.random.default_rng(3)
  target_z, target_m = labelled(rng, 3000, 6.0, 3.0)
  random_p = np_softmax(
    synth_logits(rng, 5000, 0.0)
  )  # random inputs: no confident class
  scores = mlleaks.top_posterior_score(np_softmax(target_z))
  np.testing.assert_array_equal(scores, np_softmax(target_z).max(-1))
  threshold = mlleaks.threshold_from_random_inputs(random_p, 90.0)
  assert threshold == pytest.approx(np.percentile(random_p.max(-1), 90))
  assert np.mean(random_p.max(-1) >= threshold) == pytest.approx(
    0.10, abs=0.002
  )
  result = mlleaks.evaluate_attack(scores, target_m, threshold)
  precision, recall, _, support = precision_recall_fscore_support(
    target_m, scores >= threshold, labels=[True, False], zero_division=0
  )
  assert result["member"]["precision"] == pytest.approx(precision[0])
  assert result["member"]["recall"] == pytest.approx(recall[0])
  assert result["non_member"]["precision"] == pytest.approx(precision[1])
  assert result["non_member"]["recall"] == pytest.approx(recall[1])
  assert result["balanced_accuracy_at_threshold"] == pytest.approx(
    recall.mean()
  )
  assert result["auc"] == pytest.approx(roc_auc_score(target_m, scores))
  print(
    f"adversary 3: AUC {result['auc']:.3f}, threshold {threshold:.3f}, member P/R "
    f"{precision[0]:.3f}/{recall[0]:.3f}"
  )
  assert result["auc"] > 0.8
  # members are far more confident than random inputs: almost all are caught
  assert (
    result["member"]["recall"] > 0.9 and result["member"]["precision"] > 0.55
  )


def test_null_gives_auc_one_half():
  rng = np.random.default_rng(4)
  shadow_z, shadow_m = labelled(rng, 1000, 4.0, 4.0)
  target_z, target_m = labelled(
    rng, 10_000, 4.0, 4.0
  )  # AUC sd under the null: 0.004
  features = mlleaks.attack_features(target_z)
  aucs = {
    "adversary3": roc_auc_score(target_m, mlleaks.top_posterior_score(features))
  }
  for model in mlleaks.ATTACK_MODELS:
    fitted = mlleaks.fit_attack(
      mlleaks.attack_features(shadow_z), shadow_m, model=model
    )
    aucs[model] = roc_auc_score(
      target_m, mlleaks.attack_scores(fitted, features)
    )
  print("null AUCs:", {k: round(v, 4) for k, v in aucs.items()})
  assert all(abs(v - 0.5) < 0.02 for v in aucs.values())


@pytest.mark.slow
def test_attack_transfers_across_distributions():
  # Adversary 2: the shadow's "dataset" differs (10 classes, noise 1) from the target's
  # (100 classes, noise 2, other confidence levels); the leak (members more confident) is shared.
  rng = np.random.default_rng(5)
  shadow_z, shadow_m = labelled(rng, 1000, 6.0, 3.0)
  target_z, target_m = labelled(rng, 3000, 9.0, 6.0, classes=100, noise=2.0)
  oracle = roc_auc_score(target_m, np_softmax(target_z).max(-1))
  fitted = mlleaks.fit_attack(mlleaks.attack_features(shadow_z), shadow_m)
  auc = roc_auc_score(
    target_m, mlleaks.attack_scores(fitted, mlleaks.attack_features(target_z))
  )
  print(f"transfer: AUC {auc:.3f} (top posterior on the target {oracle:.3f})")
  assert auc > 0.75 and auc > oracle - 0.03


@pytest.mark.slow
def test_masking_defense_must_treat_both_groups_alike():
  rng = np.random.default_rng(6)
  # null outputs: masking both groups leaves nothing to find
  shadow_z, shadow_m = labelled(rng, 500, 4.0, 4.0)
  target_z, target_m = labelled(rng, 5000, 4.0, 4.0)
  mask = O.top_k(1)
  fitted = mlleaks.fit_attack(
    mlleaks.attack_features(shadow_z, transform=mask), shadow_m
  )
  fair = roc_auc_score(
    target_m,
    mlleaks.attack_scores(
      fitted, mlleaks.attack_features(target_z, transform=mask)
    ),
  )
  assert abs(fair - 0.5) < 0.02

  def one_sided(
    z, m
  ):  # the mistake ML-Leaks warns of: only members' outputs are masked
    return np.where(
      m[:, None],
      mlleaks.attack_features(z, transform=mask),
      mlleaks.attack_features(z),
    )

  fitted = mlleaks.fit_attack(one_sided(shadow_z, shadow_m), shadow_m)
  leaked = roc_auc_score(
    target_m, mlleaks.attack_scores(fitted, one_sided(target_z, target_m))
  )
  print(
    f"null outputs: AUC {fair:.3f} with masking on both groups, {leaked:.3f} with members only"
  )
  assert leaked > 0.99

  # on a leaky target, top-1 masking leaves adversary 1 with the top posterior only
  shadow_z, shadow_m = labelled(rng, 1000, 6.0, 3.0, noise=2.0)
  target_z, target_m = labelled(rng, 3000, 6.0, 3.0, noise=2.0)
  fitted = mlleaks.fit_attack(
    mlleaks.attack_features(shadow_z, transform=mask), shadow_m
  )
  masked = roc_auc_score(
    target_m,
    mlleaks.attack_scores(
      fitted, mlleaks.attack_features(target_z, transform=mask)
    ),
  )
  top1 = roc_auc_score(target_m, np_softmax(target_z).max(-1))
  assert abs(masked - top1) < 0.01


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
  "call, error, match",
  [
    (
      lambda: mlleaks.top_posteriors(np.ones((3, 4), np.int32)),
      TypeError,
      "probs",
    ),
    (
      lambda: mlleaks.top_posteriors(np.full((3, 4), np.nan)),
      ValueError,
      "non-finite",
    ),
    (
      lambda: mlleaks.top_posteriors(np.full((3, 4), 2.0)),
      ValueError,
      r"\[0, 1\]",
    ),
    (
      lambda: mlleaks.top_posteriors(np.full((3, 4), 0.25), 0),
      ValueError,
      "k must be >= 1",
    ),
    (
      lambda: mlleaks.top_posteriors(np.full((3, 4), 0.25), True),
      TypeError,
      "k must be an int",
    ),
    (lambda: mlleaks.top_posteriors(np.float32(0.5)), ValueError, "classes"),
    (
      lambda: mlleaks.attack_features(
        np.zeros((2, 4), np.float32), transform=O.hamp_output()
      ),
      ValueError,
      "random_logits",
    ),
    (
      lambda: mlleaks.fit_attack(np.zeros((4, 3)), np.array([True] * 4)),
      ValueError,
      "both members",
    ),
    (
      lambda: mlleaks.fit_attack(np.zeros((4, 3)), np.array([1, 0, 1, 0])),
      TypeError,
      "bool",
    ),
    (
      lambda: mlleaks.fit_attack(
        np.zeros((4, 3)), np.array([True, False, True])
      ),
      ValueError,
      "shape",
    ),
    (
      lambda: mlleaks.fit_attack(np.zeros(4), np.array([True, False] * 2)),
      ValueError,
      "shadow_features",
    ),
    (
      lambda: mlleaks.fit_attack(
        np.zeros((4, 3)), np.array([True, False] * 2), model="svm"
      ),
      ValueError,
      "model must be one of",
    ),
    (
      lambda: mlleaks.attack_scores("fit", np.zeros((4, 3))),
      TypeError,
      "FittedAttack",
    ),
    (
      lambda: mlleaks.threshold_from_random_inputs(np.full((3, 4), 0.25), 101),
      ValueError,
      "percentile",
    ),
    (
      lambda: mlleaks.threshold_from_random_inputs(np.full((3, 4), 0.25), "90"),
      TypeError,
      "percentile",
    ),
    (
      lambda: mlleaks.threshold_from_random_inputs(
        np.zeros((0, 4), np.float32)
      ),
      ValueError,
      "at least one",
    ),
    (
      lambda: mlleaks.top_posterior_score(np.array([[0.5, -0.1]])),
      ValueError,
      r"\[0, 1\]",
    ),
  ],
)
def test_bad_inputs(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_attack_scores_checks_feature_count():
  x = np.random.default_rng(7).random((20, 3))
  fitted = mlleaks.fit_attack(x, np.arange(20) < 10, model="logreg")
  with pytest.raises(ValueError, match="3 columns"):
    mlleaks.attack_scores(fitted, x[:, :2])


# ------------------------------------------------------------------ the script


def _write_idx(path, array):
  dims = array.shape
  header = (0x0800 | len(dims)).to_bytes(4, "big") + b"".join(
    d.to_bytes(4, "big") for d in dims
  )
  path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_fashion(directory, n_train=400, n_test=100):
  """A tiny learnable stand-in for Fashion-MNIST's IDX files: one bright bar per class plus noise."""
  rng = np.random.default_rng(0)
  for stem, n in (("train", n_train), ("t10k", n_test)):
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 80, (n, 28, 28))
    for i, c in enumerate(y):
      x[i, 2 * c + 4 : 2 * c + 7, :] += 150
    _write_idx(directory / f"{stem}-images-idx3-ubyte", x)
    _write_idx(directory / f"{stem}-labels-idx1-ubyte", y)


SCRIPT_TEST = "test_script_on_digits_with_a_tiny_second_dataset"


@pytest.fixture(scope="module", autouse=True)
def script_run(request, tmp_path_factory):
  """experiments/mlleaks.py for SCRIPT_TEST, started with this module's first test: it runs
  beside the in-process tests above (one core each) and SCRIPT_TEST collects it.  Not started
  when SCRIPT_TEST is not selected."""
  if not any(
    item.module is request.module and item.originalname == SCRIPT_TEST
    for item in request.session.items
  ):
    yield None
    return
  tmp = tmp_path_factory.mktemp("mlleaks_script")
  fake = tmp / "fashion"
  fake.mkdir()
  _fake_fashion(fake)
  out = tmp / "out"
  started = Started(
    [
      str(ROOT / "experiments" / "mlleaks.py"),
      f"--output_dir={out}",
      f"--adv2_data_dir={fake}",
      "--adv2_block_size=100",
      "--widths=32",
      "--epochs=5",
      "--adv2_epochs=5",
      "--num_random=100",
      "--attack_model=logreg",
    ],
    tmp,
  )
  yield started, out
  started.stop()


def test_script_on_digits_with_a_tiny_second_dataset(script_run):
  started, out = script_run
  returncode, stdout, stderr = started.collect()
  assert returncode == 0, stderr[-3000:]
  rep = json.loads((out / "report.json").read_text())
  assert set(rep) >= {
    "adversaries",
    "target",
    "config",
    "timing_s",
    "reverse",
    "attacks",
  }
  assert (
    rep["config"]["adv2_dataset"] == "fashion_mnist"
    and rep["config"]["top_k"] == 1
  )
  assert rep["config"]["attack_model"] == "logreg"
  assert (
    rep["models"]["fashion_mnist"]["block_size"] == 100
    and rep["models"]["digits"]["block_size"] == 324
  )
  for block in (rep, rep["reverse"]):
    assert set(block["adversaries"]) == {
      "adversary1",
      "adversary2",
      "adversary3",
    }
    assert (
      0 <= block["target"]["test_accuracy"] <= 1
      and 0 <= block["target"]["train_accuracy"] <= 1
    )
    for entry in block["adversaries"].values():
      for defense in ("none", "top_k"):
        s = entry[defense]
        values = [
          s["auc"],
          s["balanced_accuracy"],
          s["balanced_accuracy_at_threshold"],
          s["accuracy"],
        ]
        values += [
          s[c][m]
          for c in ("member", "non_member")
          for m in ("precision", "recall")
        ]
        assert all(0.0 <= v <= 1.0 for v in values), s
        assert s["member"]["support"] == s["non_member"]["support"]
  assert rep["adversaries"]["adversary2"]["shadow_dataset"] == "fashion_mnist"
  assert (
    rep["reverse"]["adversaries"]["adversary2"]["shadow_dataset"] == "digits"
  )
  # top-1 masking never changes the top posterior: adversary 3 is the same with and without it
  adv3 = rep["adversaries"]["adversary3"]
  assert adv3["none"]["auc"] == adv3["top_k"]["auc"]
  assert "| digits | adversary2 | fashion_mnist | none |" in stdout
  assert "| fashion_mnist | adversary2 | digits | top_k |" in stdout


# A missing --adv2_dataset is refused before any training (and names --adv2_dataset=none):
# test_bad_inputs.py's script case mlleaks_missing_second_dataset.
