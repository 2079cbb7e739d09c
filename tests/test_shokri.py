"""Shokri et al. shadow-model attack: known-answer synthetic cases, routing, inputs, the script end to end."""

import json
import pathlib

import numpy as np
import pytest
from started import Started
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from miajax.attacks import shokri

ROOT = pathlib.Path(__file__).resolve().parents[1]
C = 10


def _posteriors(n, mu_in, mu_out, seed, classes=C):
  """Synthetic softmax outputs: members' true-class logit is raised by mu_in, non-members' by mu_out.

  Returns (probs float64[n, classes], is_member bool[n], labels int[n], reference float64[n]) where the
  reference score log(p_y / (1 - p_y)), computed from the posterior alone, is the natural yardstick for an
  attack that only sees the posterior (the hidden true-class logit would rank better, but the softmax
  discards its offset).
  """
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  is_member = rng.random(n) < 0.5
  z = rng.normal(size=(n, classes))
  z[np.arange(n), labels] += np.where(is_member, mu_in, mu_out)
  p = np.exp(z - z.max(1, keepdims=True))
  p = p / p.sum(1, keepdims=True)
  p_y = p[np.arange(n), labels]
  return p, is_member, labels, np.log(p_y) - np.log1p(-p_y)


@pytest.mark.slow
@pytest.mark.parametrize("model", shokri.MODELS)
def test_leaky_signal_is_found(model):
  # 4 classes keep the SVM's per-class 5-fold grid search (4 x 60 fits) fast.
  train = _posteriors(1500, 4.0, 2.0, seed=1, classes=4)
  p, m, y, reference = _posteriors(4000, 4.0, 2.0, seed=2, classes=4)
  fitted = shokri.fit_attack(*train[:3], model=model)
  scores = shokri.attack_scores(fitted, p, y)
  auc, best = roc_auc_score(m, scores), roc_auc_score(m, reference)
  print(f"{model}: AUC {auc:.3f}, reference {best:.3f}")
  # Learnt from 375 rows per class, the attack must match the hand-made posterior statistic.
  assert auc > 0.8 and auc > best - 0.02
  assert fitted.fallback_classes == () and sorted(fitted.class_models) == list(
    range(4)
  )
  # The model's own decision must be informative too: members predicted IN far more often.
  decided = scores >= fitted.threshold
  assert decided[m].mean() - decided[~m].mean() > 0.4


@pytest.mark.slow
@pytest.mark.parametrize("model", shokri.MODELS)
def test_null_gives_chance(model):
  # Members and non-members from one distribution: no attack model can rank them.
  train = _posteriors(1000, 3.0, 3.0, seed=3, classes=4)
  p, m, y, _ = _posteriors(20000, 3.0, 3.0, seed=4, classes=4)
  fitted = shokri.fit_attack(*train[:3], model=model)
  auc = roc_auc_score(m, shokri.attack_scores(fitted, p, y))
  print(f"{model}: null AUC {auc:.4f}")
  assert abs(auc - 0.5) < 0.02


def test_per_class_models_are_chosen_by_true_label():
  # Members are more confident in their true class, so for class 0 members have high p_0 and for class 1
  # members have LOW p_0: a single linear model on the unsorted posterior cannot rank both, one per class can.
  train = _posteriors(3000, 4.0, 1.0, seed=5, classes=2)
  p, m, y, _ = _posteriors(4000, 4.0, 1.0, seed=6, classes=2)
  per = shokri.fit_attack(*train[:3], model="logreg", per_class=True)
  one = shokri.fit_attack(*train[:3], model="logreg", per_class=False)
  auc_per = roc_auc_score(m, shokri.attack_scores(per, p, y))
  auc_one = roc_auc_score(m, shokri.attack_scores(one, p, y))
  assert auc_per > 0.85 and auc_one < 0.6, (auc_per, auc_one)
  assert per.global_model is None and set(per.class_models) == {0, 1}
  assert one.class_models == {} and one.global_model is not None

  # Routing: each example is scored by exactly its class's model; a reference logistic regression
  # fitted on that class's standardised rows gives the same probabilities.
  s = shokri.attack_scores(per, p, y)
  for c in (0, 1):
    rows_tr = train[2] == c
    x_tr = train[0][rows_tr]
    mu, sd = x_tr.mean(0), x_tr.std(0)
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(
      (x_tr - mu) / sd, train[1][rows_tr]
    )
    np.testing.assert_allclose(
      s[y == c], ref.predict_proba((p[y == c] - mu) / sd)[:, 1], atol=1e-4
    )
  # Swapping the labels routes to the wrong model and the signal flips.
  assert roc_auc_score(m, shokri.attack_scores(per, p, 1 - y)) < 0.3


def test_classes_without_both_groups_fall_back_to_global():
  x, m, y, _ = _posteriors(2000, 4.0, 2.0, seed=7)
  m = m.copy()
  m[y == 3] = True  # class 3: members only
  keep = ~((y == 5) & ~m) | (
    np.cumsum((y == 5) & ~m) <= 4
  )  # class 5: 4 non-members only (< 5)
  x, m, y = x[keep], m[keep], y[keep]
  fitted = shokri.fit_attack(x, m, y, model="logreg")
  assert fitted.fallback_classes == (3, 5) and set(fitted.class_models) == set(
    range(C)
  ) - {3, 5}
  assert fitted.global_model is not None
  p, pm, py, _ = _posteriors(1000, 4.0, 2.0, seed=8)
  s = shokri.attack_scores(fitted, p, py)
  for c in (3, 5):
    np.testing.assert_allclose(
      s[py == c], fitted.global_model.predict_proba(p[py == c])[:, 1]
    )
  np.testing.assert_allclose(
    s[py == 0], fitted.class_models[0].predict_proba(p[py == 0])[:, 1]
  )


def test_svm_grid_search_picks_from_the_grid():
  x, m, y, _ = _posteriors(600, 4.0, 2.0, seed=9)
  fitted = shokri.fit_attack(x, m, y, model="svm", per_class=False)
  params = fitted.svm_params["global"]
  assert params["C"] in shokri.SVM_C_GRID
  assert any(np.isclose(params["gamma"], g / C) for g in shokri.SVM_GAMMA_GRID)
  assert fitted.threshold == 0.0
  # The SVM score is its margin: the decision (>= 0) agrees with the pipeline's predict.
  s = shokri.attack_scores(fitted, x, y)
  np.testing.assert_array_equal(s > 0, fitted.global_model.predict(x))


def test_attack_dataset_rows_and_balance():
  rng = np.random.default_rng(0)
  shadows, examples = 3, 40
  z = rng.normal(size=(shadows, examples, 4))
  probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  labels = rng.integers(0, 4, examples)
  keep = np.zeros((shadows, examples), bool)
  keep[0, :10] = True  # 10 in, 30 out -> 10 + 10
  keep[1, :25] = True  # 25 in, 15 out -> 15 + 15
  keep[2, ::2] = True
  include = np.ones_like(keep)
  include[2, 30:] = False  # 15 in, 15 out among the first 30
  d = shokri.attack_dataset(probs, keep, labels, include=include, seed=1)
  for s, n in zip(range(shadows), (10, 15, 15)):
    rows = d.shadow == s
    assert d.is_member[rows].sum() == n and (~d.is_member[rows]).sum() == n
  assert not np.any((d.shadow == 2) & (d.example >= 30))
  np.testing.assert_array_equal(d.features, probs[d.shadow, d.example])
  np.testing.assert_array_equal(d.is_member, keep[d.shadow, d.example])
  np.testing.assert_array_equal(d.labels, labels[d.example])
  # Without balancing every included pair enters.
  full = shokri.attack_dataset(
    probs, keep, labels, include=include, balance=False
  )
  assert full.features.shape[0] == include.sum()
  assert not np.array_equal(
    shokri.attack_dataset(probs, keep, labels, seed=2).example, d.example
  )


def test_bad_inputs_are_named():
  p, m, y, _ = _posteriors(200, 4.0, 2.0, seed=10)
  probs, keep = p.reshape(2, 100, C), m.reshape(2, 100)
  with pytest.raises(ValueError, match="probs.*sum to 1"):
    shokri.attack_dataset(0.5 * probs, keep, y[:100])
  with pytest.raises(
    ValueError, match=r"probs must be probabilities in \[0, 1\]"
  ):
    shokri.attack_dataset(
      np.log(probs), keep, y[:100]
    )  # log-probabilities passed by mistake
  with pytest.raises(ValueError, match="probs.*finite"):
    bad = probs.copy()
    bad[0, 0, 0] = np.nan
    shokri.attack_dataset(bad, keep, y[:100])
  with pytest.raises(ValueError, match="keep.*shape"):
    shokri.attack_dataset(probs, keep[:, :50], y[:100])
  with pytest.raises(TypeError, match="keep"):
    shokri.attack_dataset(probs, keep.astype(int), y[:100])
  with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
    shokri.attack_dataset(probs, keep, np.full(100, 10))
  with pytest.raises(ValueError, match="model must be one of"):
    shokri.fit_attack(p, m, y, model="forest")
  with pytest.raises(ValueError, match="is_member.*shape"):
    shokri.fit_attack(p, m[:10], y)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
    shokri.fit_attack(p, m, y - 1)
  with pytest.raises(ValueError, match="features must be finite"):
    shokri.fit_attack(np.where(p > 0.5, np.inf, p), m, y)
  with pytest.raises(ValueError, match="at least 5 members"):
    shokri.fit_attack(p, np.arange(200) < 3, y)
  with pytest.raises(TypeError, match="per_class"):
    shokri.fit_attack(p, m, y, per_class="yes")
  fitted = shokri.fit_attack(p, m, y, model="logreg", per_class=False)
  with pytest.raises(ValueError, match="features must have 10 columns"):
    shokri.attack_scores(fitted, p[:, :5], y)
  with pytest.raises(ValueError, match="labels must have shape"):
    shokri.attack_scores(fitted, p, y[:5])
  with pytest.raises(TypeError, match="fitted"):
    shokri.attack_scores("model", p, y)


@pytest.fixture(scope="module", autouse=True)
def script_run(request, tmp_path_factory):
  """experiments/shokri.py for test_script_on_digits, started with this module's first test:
  it runs beside the in-process tests above (one core each) and test_script_on_digits
  collects it.  Not started when that test is not selected."""
  if not any(
    item.module is request.module
    and item.originalname == "test_script_on_digits"
    for item in request.session.items
  ):
    yield None
    return
  tmp = tmp_path_factory.mktemp("shokri_script")
  started = Started(
    [
      str(ROOT / "experiments" / "shokri.py"),
      f"--output_dir={tmp}",
      # Two sizes with the same 2 steps per epoch (batch 32): the second size reuses the
      # first one's compiled training programs.
      "--sizes=40,64",
      "--num_shadows=4",
      "--epochs=20",
      "--widths=64",
      "--batch_size=32",
    ],
    tmp,
  )
  yield started, tmp
  started.stop()


def test_script_on_digits(script_run):
  started, tmp_path = script_run
  returncode, stdout, stderr = started.collect()
  assert returncode == 0, stderr[-3000:]
  rep = json.loads((tmp_path / "report.json").read_text())
  assert set(rep) >= {"sizes", "config", "timing_s"} and list(rep["sizes"]) == [
    "40",
    "64",
  ]
  assert (
    rep["config"]["num_shadows"] == 4 and rep["config"]["attack_model"] == "mlp"
  )
  for key, r in rep["sizes"].items():
    a = r["attack"]
    for name in ("precision", "recall", "f1", "balanced_accuracy", "auc"):
      assert 0.0 <= a[name] <= 1.0, (key, name, a[name])
    assert a["balanced_accuracy"] >= 0.5
    assert (
      0.0
      <= r["target"]["test_accuracy"]
      <= r["target"]["train_accuracy"]
      <= 1.0
    )
    assert r["target"]["test_accuracy"] > 0.5  # a real classifier was trained
    assert r["evaluation"] == {"members": int(key), "non_members": int(key)}
    assert r["shadows"]["attack_rows"] == 4 * 2 * int(key)
    assert f"| {key} | {r['target']['train_accuracy']:.3f} |" in stdout
    assert f"{a['auc']:.3f} [" in stdout
