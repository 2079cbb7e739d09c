"""Bad input catalogue.

Every case feeds one bad input to a public function or script and checks that
it fails with ValueError/TypeError (scripts: a usage error, exit status 2,
two lines and no help text; or, for a refusal from inside the library, a
nonzero exit) whose message names the offending argument, before any
training, and that scripts leave no partial output behind.

Unwritable places that fail for root too (the tests may run as root, which
chmod does not stop): a directory under /proc (procfs creates no files) or
/sys (sysfs: permission denied, or a read-only filesystem where /sys is
mounted read-only), a regular file in the way, and a read-only filesystem
simulated by the probe's own error.  The chmod case runs only as non-root.
"""

import dataclasses
import errno
import gzip
import json
import os
import pathlib
import re
import subprocess
import sys
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import app

from miajax import (
  attacks,
  data,
  defenses,
  engine,
  hyperparams,
  metrics,
  runs,
  scores,
)
from miajax.attacks import label_only
from miajax.engine import identity, loop, recipe, step

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import audit  # noqa: E402  (defines no flags on import)
import harness  # noqa: E402

# ---------------------------------------------------------------- tiny inputs

M, N, Q = 4, 6, 1
_rng = np.random.default_rng(0)
SHADOW = _rng.normal(size=(M, N, Q)).astype(np.float32)
KEEP = np.array(
  [[True, False] * 3, [False, True] * 3] * 2
)  # 2 IN / 2 OUT per example
TARGET = _rng.normal(size=(2, N, Q)).astype(np.float32)
PROBS = _rng.uniform(0.05, 0.95, size=(M, N, Q)).astype(np.float32)
PROBS_T = _rng.uniform(0.05, 0.95, size=(2, N, Q)).astype(np.float32)

S = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
MEMB = np.array([False, False, True, True, False, True])

LOGITS = _rng.normal(size=(2, 3)).astype(np.float32)
LABELS = np.array([0, 2])

X40 = _rng.normal(size=(40, 5)).astype(np.float32)
Y40 = np.arange(40) % 3
KEEP40 = np.zeros((2, 40), bool)
KEEP40[0, :20] = True
KEEP40[1, 20:] = True
CFG = engine.TrainConfig(
  model_kwargs=(("widths", (8,)),), epochs=1, batch_size=8
)


def _with(arr, idx, value):
  out = np.array(arr, copy=True)
  out[idx] = value
  return out


def _train(x=X40, y=Y40, keep=KEEP40, config=CFG, **kw):
  kw.setdefault("num_classes", 3)
  return lambda: engine.train_models(config, x, y, keep, **kw)


def _predict(x=X40, config=CFG, variables=None, **kw):
  """predict on zero variables of ``config``'s model, made for examples of shape
  ``trained_on`` and ``trained_classes`` classes (or on ``variables()``)."""
  shape = kw.pop("trained_on", (5,))
  classes = kw.pop("trained_classes", 3)
  kw.setdefault("num_classes", 3)

  def call():
    v = variables() if callable(variables) else variables
    if v is None:
      v = _stacked(config, shape, classes)
    return engine.predict(config, v, x, **kw)

  return call


def _stacked(config, input_shape, num_classes, models=2):
  """Zero variables ``[models, ...]`` of the config's model: traced, nothing compiled."""
  fns = recipe.model_fns(identity.program_key(config), num_classes)
  shapes = jax.eval_shape(
    fns.init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1, *input_shape), jnp.float32),
  )
  return jax.tree.map(lambda s: np.zeros((models, *s.shape), s.dtype), shapes)


def _ragged():
  """Stacked variables whose last layer holds one model fewer."""
  v = _stacked(CFG, (5,), 3)
  v["params"]["Dense_1"] = jax.tree.map(lambda a: a[:1], v["params"]["Dense_1"])
  return v


class _Head(nn.Module):
  """A user's Flax model with its own class count (3)."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def _pair_init(key, x):
  return {"params": {"w": jax.random.normal(key, (x.shape[-1], 3))}}


def _pair_apply(variables, x, train=False, rngs=None):
  return x @ variables["params"]["w"]


MODULE_CFG = engine.TrainConfig(model=_Head(), epochs=1, batch_size=8)
PAIR_CFG = engine.TrainConfig(
  model=(_pair_init, _pair_apply), epochs=1, batch_size=8
)
CNN_CFG = engine.TrainConfig(model="lenet5", epochs=1, batch_size=8)
IMAGES = np.zeros((2, 28, 28, 1), np.float32)


def _spec(**kw):
  """A small digits RunSpec; each case sets one field wrong."""
  train = kw.pop("train", dataclasses.replace(CFG, batch_size=8))
  kw = dict(dataset="digits", num_examples=40, num_models=2, train=train) | kw
  return runs.RunSpec(**kw)


def _run(spec=None, **kw):
  """run_training into tmp/'run' (which must not appear: the test checks)."""

  def build(tmp):
    return lambda: runs.run_training(spec or _spec(), tmp / "run", **kw)

  return build


def _writable(kind):
  """A file-case builder: ``harness.check_writable`` on an unwritable place."""

  def build(tmp):
    if kind == "proc":
      path = "/proc/miajax-bad-inputs/out"
    elif kind == "file_in_the_way":
      (tmp / "afile").write_text("not a directory")
      path = tmp / "afile" / "out"
    elif kind == "is_a_file":
      path = tmp / "afile"
      path.write_text("not a directory")
    elif kind == "chmod":
      if os.geteuid() == 0:
        pytest.skip("root writes through permission bits")
      path = tmp / "ro"
      path.mkdir(mode=0o555)
    else:  # the probe's own error: a read-only filesystem or permissions
      code = {"erofs": errno.EROFS, "eacces": errno.EACCES}[kind]
      fail = mock.patch.object(
        harness.tempfile,
        "NamedTemporaryFile",
        side_effect=OSError(code, os.strerror(code)),
      )

      def call():
        with fail:
          harness.check_writable(tmp, "--output_dir")

      return call
    return lambda: harness.check_writable(path, "--output_dir")

  return build


def _target(outputs, kind="auto", members=np.arange(0, 6, 2)):
  return lambda: audit.check_target(
    outputs, members, kind=kind, pool_size=6, num_classes=3, num_queries=1
  )


SOFTMAX = np.exp(LOGITS[[0, 1, 0, 1, 0, 1]]) / np.exp(
  LOGITS[[0, 1, 0, 1, 0, 1]]
).sum(-1, keepdims=True)


def _keep_col(value):
  # Example 0 IN for every model (value=True) or for none (value=False).
  return _with(KEEP, (slice(None), 0), value)


# ------------------------------------------------------------ file fixtures


def _write_idx(path, arr, *, magic=None):
  arr = np.asarray(arr, np.uint8)
  magic = 0x0800 | arr.ndim if magic is None else magic
  header = magic.to_bytes(4, "big") + b"".join(
    int(d).to_bytes(4, "big") for d in arr.shape
  )
  with gzip.open(path, "wb") as f:
    f.write(header + arr.tobytes())


def _fashion_dir(tmp, *, corrupt):
  """A fashion_mnist data_dir whose train images file is corrupt: 'magic' or 'truncated'."""
  d = tmp / "fmnist"
  d.mkdir()
  imgs, labels = np.zeros((3, 28, 28)), np.array([0, 1, 2])
  _write_idx(d / "train-labels-idx1-ubyte.gz", labels)
  _write_idx(d / "t10k-images-idx3-ubyte.gz", imgs)
  _write_idx(d / "t10k-labels-idx1-ubyte.gz", labels)
  bad = d / "train-images-idx3-ubyte.gz"
  if corrupt == "magic":
    _write_idx(bad, imgs, magic=0x0801)
  else:
    raw = (0x0803).to_bytes(4, "big") + b"".join(
      int(v).to_bytes(4, "big") for v in (3, 28, 28)
    )
    with gzip.open(bad, "wb") as f:
      f.write(raw + b"\0" * 100)  # header promises 3*28*28 bytes
  return d


def _file_case(kind):
  """Returns a function tmp_path -> callable raising the expected error."""

  def build(tmp):
    if kind == "npz_missing":
      (tmp / "empty").mkdir()
      return lambda: data.load("purchase100", data_dir=tmp / "empty")
    if kind == "npz_no_dir":
      return lambda: data.load("purchase100")
    if kind == "npz_corrupt":
      (tmp / "purchase100.npz").write_bytes(b"this is not a zip archive")
      return lambda: data.load("purchase100", data_dir=tmp)
    if kind == "npz_wrong_keys":
      np.savez(tmp / "texas100.npz", features=np.zeros((4, 3), np.float32))
      return lambda: data.load("texas100", data_dir=tmp)
    if kind in ("idx_magic", "idx_truncated"):
      d = _fashion_dir(tmp, corrupt=kind[4:])
      return lambda: data.load("fashion_mnist", data_dir=d)
    if kind == "idx_incomplete":
      d = tmp / "half"
      d.mkdir()
      _write_idx(d / "train-labels-idx1-ubyte.gz", np.array([0, 1]))
      return lambda: data.load("fashion_mnist", data_dir=d)
    raise AssertionError(kind)

  return build


# ---------------------------------------------------------------- the table
# (id, callable or file-case builder, exception type, regex naming the argument)

CASES = [
  # data: unknown names, designs
  (
    "load_unknown_name",
    lambda: data.load("imagenet"),
    ValueError,
    r"unknown dataset 'imagenet'",
  ),
  ("load_name_not_str", lambda: data.load(7), ValueError, r"unknown dataset 7"),
  (
    "lira_keep_pkeep_above_1",
    lambda: data.lira_keep(4, 10, pkeep=1.5),
    ValueError,
    r"pkeep must be in \(0, 1\)",
  ),
  (
    "lira_keep_float_models",
    lambda: data.lira_keep(4.0, 10),
    TypeError,
    r"num_models must be an int",
  ),
  (
    "lira_keep_zero_examples",
    lambda: data.lira_keep(4, 0),
    ValueError,
    r"num_examples must be >= 1",
  ),
  (
    "paired_keep_odd_models",
    lambda: data.paired_keep(3, 10),
    ValueError,
    r"num_models must be even",
  ),
  (
    "disjoint_split_bad_sum",
    lambda: data.disjoint_split(10, sizes=(5, 5, 5, 5)),
    ValueError,
    r"sizes .* sum to 20",
  ),
  (
    "disjoint_split_bad_keys",
    lambda: data.disjoint_split(10, sizes={"train": 10}),
    ValueError,
    r"sizes must have exactly the keys",
  ),
  # data: missing / corrupt files
  (
    "load_npz_missing_file",
    _file_case("npz_missing"),
    ValueError,
    r"purchase100\.npz not found",
  ),
  (
    "load_npz_no_data_dir",
    _file_case("npz_no_dir"),
    ValueError,
    r"pass data_dir",
  ),
  (
    "load_npz_corrupt",
    _file_case("npz_corrupt"),
    ValueError,
    r"purchase100\.npz: not a readable npz",
  ),
  (
    "load_npz_wrong_keys",
    _file_case("npz_wrong_keys"),
    ValueError,
    r"texas100\.npz: needs arrays 'x' and 'y'",
  ),
  (
    "load_idx_bad_magic",
    _file_case("idx_magic"),
    ValueError,
    r"train-images-idx3-ubyte\.gz: IDX magic",
  ),
  (
    "load_idx_truncated",
    _file_case("idx_truncated"),
    ValueError,
    r"train-images-idx3-ubyte\.gz: .*(truncated or corrupt)",
  ),
  (
    "load_idx_incomplete_dir",
    _file_case("idx_incomplete"),
    ValueError,
    r"lacks .*train-images-idx3-ubyte",
  ),
  # train: config, dtypes, shapes, mismatched label counts, keep rows
  (
    "train_unknown_optimizer",
    _train(config=engine.TrainConfig(optimizer="rmsprop")),
    ValueError,
    r"optimizer must be one of \('sgd', 'adam'\), an optax",
  ),
  (
    "train_unknown_model",
    _train(config=engine.TrainConfig(model="resnet9000", batch_size=8)),
    ValueError,
    r"model must be one of",
  ),
  (
    "train_nan_learning_rate",
    _train(config=engine.TrainConfig(learning_rate=float("nan"), batch_size=8)),
    ValueError,
    r"learning_rate must be positive and finite",
  ),
  (
    "train_zero_epochs",
    _train(config=engine.TrainConfig(epochs=0, batch_size=8)),
    ValueError,
    r"epochs must be a positive integer",
  ),
  (
    "train_keep_int_dtype",
    _train(keep=KEEP40.astype(np.int8)),
    ValueError,
    r"keep must be a bool array",
  ),
  ("train_keep_1d", _train(keep=KEEP40[0]), ValueError, r"keep must be 2-D"),
  (
    "train_keep_wrong_columns",
    _train(keep=KEEP40[:, :39]),
    ValueError,
    r"keep has 39 columns but x has 40",
  ),
  (
    "train_keep_model_without_members",
    _train(keep=_with(KEEP40, 1, False)),
    ValueError,
    r"keep: model 1 has no members",
  ),
  (
    "train_keep_no_models",
    _train(keep=KEEP40[:0]),
    ValueError,
    r"keep must hold at least one model row",
  ),
  (
    "train_labels_count_mismatch",
    _train(y=Y40[:39]),
    ValueError,
    r"y must have shape \(40,\)",
  ),
  (
    "train_labels_float",
    _train(y=Y40.astype(np.float32)),
    ValueError,
    r"y must hold integer labels",
  ),
  (
    "train_labels_out_of_range",
    _train(y=_with(Y40, 0, 3)),
    ValueError,
    r"y must be in \[0, 3\)",
  ),
  (
    "train_x_int_dtype",
    _train(x=X40.astype(np.int32)),
    ValueError,
    r"x must be floating point",
  ),
  (
    "train_x_nan",
    _train(x=_with(X40, (3, 1), np.nan)),
    ValueError,
    r"x contains non-finite",
  ),
  (
    "train_batch_above_members",
    _train(
      config=engine.TrainConfig(
        model_kwargs=(("widths", (8,)),), epochs=1, batch_size=32
      )
    ),
    ValueError,
    r"batch_size=32 is larger",
  ),
  (
    "train_learning_rates_shape",
    _train(config=dataclasses.replace(CFG, learning_rate=[0.1, 0.1, 0.1])),
    ValueError,
    r"per-model values have 3 entries but keep has 2 models",
  ),
  (
    "train_num_classes_zero",
    _train(num_classes=0),
    ValueError,
    r"num_classes must be",
  ),
  (
    "predict_empty_x",
    lambda: engine.predict(CFG, None, X40[:0], num_classes=3),
    ValueError,
    r"x must contain at least one example",
  ),
  (
    "predict_unknown_queries",
    lambda: engine.predict(CFG, None, X40, num_classes=3, queries="rot90"),
    ValueError,
    r"queries must be one of",
  ),
  (
    "predict_mirror_needs_images",
    lambda: engine.predict(CFG, None, X40, num_classes=3, queries="mirror"),
    ValueError,
    r"queries='mirror' needs images",
  ),
  (
    "predict_zero_batch_size",
    lambda: engine.predict(CFG, None, X40, num_classes=3, batch_size=0),
    ValueError,
    r"batch_size must be",
  ),
  # scores
  (
    "scores_labels_float",
    lambda: scores.logit_scaled(LOGITS, LABELS.astype(np.float32)),
    TypeError,
    r"labels must be integers",
  ),
  (
    "scores_labels_shape",
    lambda: scores.cross_entropy(LOGITS, np.array([0, 1, 2])),
    ValueError,
    r"labels of shape \(3,\) do not broadcast",
  ),
  (
    "scores_labels_out_of_range",
    lambda: scores.confidence(LOGITS, np.array([0, 3])),
    ValueError,
    r"labels must be in \[0, 3\)",
  ),
  (
    "scores_one_class",
    lambda: scores.modified_entropy(LOGITS[:, :1], np.zeros(2, int)),
    ValueError,
    r"logits need at least 2 classes",
  ),
  (
    "scores_bool_logits",
    lambda: scores.entropy(LOGITS > 0),
    TypeError,
    r"logits must be real floats",
  ),
  (
    "scores_unknown_signal",
    lambda: scores.membership_signal("loss", LOGITS, LABELS),
    ValueError,
    r"name must be one of",
  ),
  # attacks: keep IN for all / none, nan/inf, shapes, dtypes, names
  (
    "lira_online_example_in_for_every_model",
    lambda: attacks.lira_online(SHADOW, _keep_col(True), TARGET),
    ValueError,
    r"2 OUT shadow score.*shadow_keep",
  ),
  (
    "lira_online_example_in_for_no_model",
    lambda: attacks.lira_online(SHADOW, _keep_col(False), TARGET),
    ValueError,
    r"2 IN shadow score.*shadow_keep",
  ),
  (
    "lira_offline_example_in_for_every_model",
    lambda: attacks.lira_offline(SHADOW, _keep_col(True), TARGET),
    ValueError,
    r"OUT shadow score.*shadow_keep",
  ),
  (
    "rmia_offline_example_in_for_every_model",
    lambda: attacks.rmia(PROBS, _keep_col(True), PROBS_T, offline=True),
    ValueError,
    r"OUT .*shadow_keep",
  ),
  (
    "loo_example_in_for_every_model",
    lambda: attacks.leave_one_out(
      SHADOW, _keep_col(True), attack="lira_offline", fix_variance=True
    ),
    ValueError,
    r"1 OUT shadow score.* in keep \(first: example 0 has 0\)",
  ),
  (
    "lira_nan_shadow",
    lambda: attacks.lira_online(_with(SHADOW, (1, 2, 0), np.nan), KEEP, TARGET),
    ValueError,
    r"shadow_scores must be finite",
  ),
  (
    "lira_inf_target",
    lambda: attacks.lira_offline(
      SHADOW, KEEP, _with(TARGET, (0, 0, 0), np.inf)
    ),
    ValueError,
    r"target_scores must be finite",
  ),
  (
    "lira_keep_int",
    lambda: attacks.lira_online(SHADOW, KEEP.astype(int), TARGET),
    ValueError,
    r"shadow_keep must be a bool array",
  ),
  (
    "lira_keep_shape",
    lambda: attacks.lira_online(SHADOW, KEEP[:, :5], TARGET),
    ValueError,
    r"shadow_keep must have shape \(4, 6\)",
  ),
  (
    "lira_target_shape",
    lambda: attacks.lira_online(SHADOW, KEEP, TARGET[:, :5]),
    ValueError,
    r"target_scores must have shape \[targets, 6, 1\]",
  ),
  (
    "lira_scores_2d",
    lambda: attacks.lira_online(SHADOW[..., 0], KEEP, TARGET),
    ValueError,
    r"shadow_scores must have 3 axes",
  ),
  (
    "lira_scores_str",
    lambda: attacks.lira_online(SHADOW.astype(str), KEEP, TARGET),
    ValueError,
    r"shadow_scores must be a real-valued",
  ),
  (
    "lira_empty_shadow",
    lambda: attacks.lira_online(SHADOW[:0], KEEP[:0], TARGET),
    ValueError,
    r"shadow_scores must be non-empty",
  ),
  (
    "lira_unknown_variant",
    lambda: attacks.lira_online(SHADOW, KEEP, TARGET, variant="paper"),
    ValueError,
    r"variant must be one of",
  ),
  (
    "global_threshold_2d",
    lambda: attacks.global_threshold(TARGET[..., 0]),
    ValueError,
    r"target_scores must have 3 axes",
  ),
  (
    "rmia_probability_above_1",
    lambda: attacks.rmia(PROBS + 1.0, KEEP, PROBS_T),
    ValueError,
    r"shadow_conf must hold true-label probabilities",
  ),
  (
    "rmia_gamma_zero",
    lambda: attacks.rmia(PROBS, KEEP, PROBS_T, gamma=0.0),
    ValueError,
    r"gamma must be > 0",
  ),
  (
    "loo_unknown_attack",
    lambda: attacks.leave_one_out(SHADOW, KEEP, attack="lira_magic"),
    ValueError,
    r"attack must be one of",
  ),
  (
    "loo_one_model",
    lambda: attacks.leave_one_out(SHADOW[:1], KEEP[:1]),
    ValueError,
    r"leave_one_out needs at least 2 models",
  ),
  # metrics: fpr outside (0, 1), nan scores, empty, one class, mismatched lengths
  (
    "tpr_at_fpr_zero",
    lambda: metrics.tpr_at_fpr(S, MEMB, 0.0),
    ValueError,
    r"fpr must be in \(0, 1\), got 0",
  ),
  (
    "tpr_at_fpr_above_1",
    lambda: metrics.tpr_at_fpr(S, MEMB, 1.5),
    ValueError,
    r"fpr must be in \(0, 1\)",
  ),
  (
    "tpr_at_fpr_nan_level",
    lambda: metrics.tpr_at_fpr(S, MEMB, float("nan")),
    ValueError,
    r"fpr must be in \(0, 1\), got nan",
  ),
  (
    "tpr_at_fpr_str_level",
    lambda: metrics.tpr_at_fpr(S, MEMB, "0.01"),
    TypeError,
    r"fpr must be a float",
  ),
  (
    "tnr_at_fnr_negative",
    lambda: metrics.tnr_at_fnr(S, MEMB, -0.1),
    ValueError,
    r"fnr must be in \(0, 1\)",
  ),
  (
    "interval_fpr_one",
    lambda: metrics.tpr_at_fpr_interval(S, MEMB, 1.0),
    ValueError,
    r"fpr must be in \(0, 1\)",
  ),
  (
    "auc_nan_scores",
    lambda: metrics.auc(_with(S, 2, np.nan), MEMB),
    ValueError,
    r"scores must be finite",
  ),
  (
    "roc_inf_scores",
    lambda: metrics.roc_curve(_with(S, 0, -np.inf), MEMB),
    ValueError,
    r"scores must be finite",
  ),
  (
    "auc_empty",
    lambda: metrics.auc(np.array([]), np.array([], bool)),
    ValueError,
    r"scores is empty",
  ),
  (
    "auc_only_members",
    lambda: metrics.auc(S, np.ones(6, bool)),
    ValueError,
    r"is_member must contain both members",
  ),
  (
    "bal_acc_only_nonmembers",
    lambda: metrics.balanced_accuracy(S, np.zeros(6, bool)),
    ValueError,
    r"is_member must contain both members",
  ),
  (
    "auc_mismatched_lengths",
    lambda: metrics.auc(S, MEMB[:5]),
    ValueError,
    r"scores and is_member must have the same shape",
  ),
  (
    "auc_is_member_not_binary",
    lambda: metrics.auc(S, np.array([0, 1, 2, 0, 1, 0])),
    ValueError,
    r"is_member must be boolean",
  ),
  (
    "auc_str_scores",
    lambda: metrics.auc(S.astype(str), MEMB),
    TypeError,
    r"scores must be real numbers",
  ),
  (
    "auc_interval_confidence",
    lambda: metrics.auc_interval(S, MEMB, confidence=95),
    ValueError,
    r"confidence must be in \(0, 1\)",
  ),
  (
    "auc_interval_num_bootstrap",
    lambda: metrics.auc_interval(S, MEMB, num_bootstrap=1),
    ValueError,
    r"num_bootstrap must be >= 10",
  ),
  (
    "epsilon_delta_one",
    lambda: metrics.epsilon_lower_bound(S, MEMB, delta=1.0),
    ValueError,
    r"delta must be in \[0, 1\)",
  ),
  # defenses and DP accounting
  (
    "dp_epsilon_negative_noise",
    lambda: defenses.dp_epsilon(
      noise_multiplier=-1.0, sample_rate=0.01, steps=100, delta=1e-5
    ),
    ValueError,
    r"noise_multiplier must lie in",
  ),
  (
    "dp_epsilon_rate_zero",
    lambda: defenses.dp_epsilon(
      noise_multiplier=1.0, sample_rate=0.0, steps=100, delta=1e-5
    ),
    ValueError,
    r"sample_rate must lie in",
  ),
  (
    "dp_epsilon_steps_float",
    lambda: defenses.dp_epsilon(
      noise_multiplier=1.0, sample_rate=0.01, steps=1.5, delta=1e-5
    ),
    TypeError,
    r"steps must be an integer",
  ),
  (
    "dp_epsilon_delta_zero",
    lambda: defenses.dp_epsilon(
      noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=0.0
    ),
    ValueError,
    r"delta must lie in",
  ),
  (
    "dp_epsilon_unknown_accountant",
    lambda: defenses.dp_epsilon(
      noise_multiplier=1.0,
      sample_rate=0.01,
      steps=100,
      delta=1e-5,
      accountant="moments",
    ),
    ValueError,
    r"accountant must be one of",
  ),
  (
    "dp_noise_target_epsilon_zero",
    lambda: defenses.dp_noise_multiplier(
      target_epsilon=0.0, sample_rate=0.01, steps=100, delta=1e-5
    ),
    ValueError,
    r"target_epsilon must lie in",
  ),
  (
    "label_smoothing_above_1",
    lambda: defenses.label_smoothing(1.5),
    ValueError,
    r"eps must lie in",
  ),
  (
    "dropout_rate_one",
    lambda: defenses.dropout(1.0),
    ValueError,
    r"rate must lie in",
  ),
  (
    "dp_sgd_nan_clip",
    lambda: defenses.dp_sgd(float("nan"), 1.0),
    ValueError,
    r"l2_norm_clip must",
  ),
  (
    "dp_sgd_str_noise",
    lambda: defenses.dp_sgd(1.0, "1.0"),
    TypeError,
    r"noise_multiplier must be a real",
  ),
  (
    "chain_not_a_defense",
    lambda: defenses.chain(defenses.label_smoothing(0.1), "dropout"),
    TypeError,
    r"chain argument 1 must be a defense",
  ),
  (
    "chain_duplicate_kind",
    lambda: defenses.chain(defenses.dropout(0.1), defenses.dropout(0.2)),
    ValueError,
    r"dropout\(0.1\) and dropout\(0.2\) both set the model setting",
  ),
  # scores
  (
    "scores_top_k_zero",
    lambda: scores.top_k_probabilities(LOGITS, 0),
    ValueError,
    r"k must be in \[1, 3\] \(the number of classes\), got 0",
  ),
  (
    "scores_top_k_above_classes",
    lambda: scores.top_k_probabilities(LOGITS, 4),
    ValueError,
    r"k must be in \[1, 3\] .*got 4",
  ),
  (
    "scores_max_confidence_bool",
    lambda: scores.max_confidence(LOGITS > 0),
    TypeError,
    r"logits must be real floats, got dtype bool",
  ),
  (
    "scores_labels_negative",
    lambda: scores.confidence(LOGITS, np.array([-1, 0])),
    ValueError,
    r"labels must be in \[0, 3\) for 3 classes, got values in \[-1, 0\]",
  ),
  (
    "scores_signal_labels_out_of_range",
    lambda: scores.membership_signal("cross_entropy", LOGITS, np.array([0, 5])),
    ValueError,
    r"labels must be in \[0, 3\)",
  ),
  (
    "scores_entropy_one_class",
    lambda: scores.entropy(LOGITS[:, :1]),
    ValueError,
    r"logits need at least 2 classes",
  ),
  # attacks
  (
    "lira_offline_keep_shape",
    lambda: attacks.lira_offline(SHADOW, KEEP[:3], TARGET),
    ValueError,
    r"shadow_keep must have shape \(4, 6\) \[models, examples\], got \(3, 6\)",
  ),
  (
    "lira_offline_unknown_variant",
    lambda: attacks.lira_offline(SHADOW, KEEP, TARGET, variant="paper"),
    ValueError,
    r"variant must be one of \('miajax', 'reference'\), got 'paper'",
  ),
  (
    "lira_offline_nan_shadow",
    lambda: attacks.lira_offline(
      _with(SHADOW, (1, 0, 0), np.nan), KEEP, TARGET
    ),
    ValueError,
    r"shadow_scores must be finite; 1 entries are nan/inf \(first at index "
    r"\(1, 0, 0\)\)",
  ),
  (
    "lira_online_target_2d",
    lambda: attacks.lira_online(SHADOW, KEEP, TARGET[..., 0]),
    ValueError,
    r"target_scores must have 3 axes, got shape \(2, 6\)",
  ),
  (
    "lira_online_queries_mismatch",
    lambda: attacks.lira_online(SHADOW, KEEP, TARGET.repeat(2, 2)),
    ValueError,
    r"target_scores must have shape \[targets, 6, 1\] .* got \(2, 6, 2\)",
  ),
  (
    "global_threshold_nan",
    lambda: attacks.global_threshold(_with(TARGET, (1, 2, 0), np.nan)),
    ValueError,
    r"target_scores must be finite",
  ),
  (
    "rmia_gamma_negative",
    lambda: attacks.rmia(PROBS, KEEP, PROBS_T, gamma=-1.0),
    ValueError,
    r"gamma must be > 0, got -1.0",
  ),
  (
    "rmia_offline_a_above_1",
    lambda: attacks.rmia(PROBS, KEEP, PROBS_T, offline=True, a=1.5),
    ValueError,
    r"a must be in \[0, 1\], got 1.5",
  ),
  (
    "rmia_target_above_1",
    lambda: attacks.rmia(PROBS, KEEP, PROBS_T + 1.0),
    ValueError,
    r"target_conf must hold true-label probabilities in \[0, 1\]",
  ),
  (
    "rmia_shadow_negative",
    lambda: attacks.rmia(PROBS - 1.0, KEEP, PROBS_T),
    ValueError,
    r"shadow_conf must hold true-label probabilities in \[0, 1\]",
  ),
  (
    "rmia_target_shape",
    lambda: attacks.rmia(PROBS, KEEP, PROBS_T[:, :5]),
    ValueError,
    r"target_conf must have shape \[targets, 6, 1\] .*got \(2, 5, 1\)",
  ),
  (
    "rmia_keep_int",
    lambda: attacks.rmia(PROBS, KEEP.astype(int), PROBS_T),
    ValueError,
    r"shadow_keep must be a bool array \[models, examples\], got dtype int",
  ),
  (
    "loo_scores_2d",
    lambda: attacks.leave_one_out(SHADOW[..., 0], KEEP),
    ValueError,
    r"scores must have 3 axes, got shape \(4, 6\)",
  ),
  (
    "loo_seed_float",
    lambda: attacks.leave_one_out(SHADOW, KEEP, seed=0.5),
    ValueError,
    r"seed must be an int, got float",
  ),
  (
    "loo_nan_scores",
    lambda: attacks.leave_one_out(_with(SHADOW, (2, 3, 0), np.inf), KEEP),
    ValueError,
    r"scores must be finite; 1 entries are nan/inf",
  ),
  (
    "loo_keep_shape",
    lambda: attacks.leave_one_out(SHADOW, KEEP[:, :5]),
    ValueError,
    r"keep must have shape \(4, 6\) \[models, examples\], got \(4, 5\)",
  ),
  (
    "label_only_zero_copies",
    lambda: label_only.LabelOnlyQueries(sigmas=(0.1,), copies=0),
    ValueError,
    r"copies must be a positive integer, got 0",
  ),
  (
    "label_only_negative_sigma",
    lambda: label_only.LabelOnlyQueries(sigmas=(-0.1,)),
    ValueError,
    r"sigmas must be positive finite floats, got \(-0.1,\)",
  ),
  (
    "label_only_negative_shift",
    lambda: label_only.LabelOnlyQueries(shift=-1),
    ValueError,
    r"shift must be None or a positive integer, got -1",
  ),
  # metrics
  (
    "tpr_at_fpr_bool_level",
    lambda: metrics.tpr_at_fpr(S, MEMB, True),
    TypeError,
    r"fpr must be a float, got bool",
  ),
  (
    "roc_only_nonmembers",
    lambda: metrics.roc_curve(S, np.zeros(6, bool)),
    ValueError,
    r"is_member must contain both members .*got 0 members and 6 non-members",
  ),
  (
    "threshold_at_fpr_zero",
    lambda: metrics.threshold_at_fpr(S, MEMB, 0.0),
    ValueError,
    r"fpr must be in \(0, 1\), got 0.0",
  ),
  (
    "tnr_at_fnr_nan",
    lambda: metrics.tnr_at_fnr(S, MEMB, float("nan")),
    ValueError,
    r"fnr must be in \(0, 1\), got nan",
  ),
  (
    "epsilon_delta_negative",
    lambda: metrics.epsilon_lower_bound(S, MEMB, delta=-0.1),
    ValueError,
    r"delta must be in \[0, 1\), got -0.1",
  ),
  (
    "bal_acc_mismatched_lengths",
    lambda: metrics.balanced_accuracy(S, MEMB[:4]),
    ValueError,
    r"scores and is_member must have the same shape, got \(6,\) and \(4,\)",
  ),
  (
    "precision_recall_nan_scores",
    lambda: metrics.precision_recall_f1(_with(S, 5, np.nan), MEMB, 0.5),
    ValueError,
    r"scores must be finite; found 1 nan/inf",
  ),
  (
    "auc_interval_float_bootstrap",
    lambda: metrics.auc_interval(S, MEMB, num_bootstrap=10.5),
    TypeError,
    r"num_bootstrap must be an int, got float",
  ),
  # data: membership designs
  (
    "lira_keep_zero_models",
    lambda: data.lira_keep(0, 10),
    ValueError,
    r"num_models must be >= 1, got 0",
  ),
  (
    "lira_keep_pkeep_zero",
    lambda: data.lira_keep(4, 10, pkeep=0.0),
    ValueError,
    r"pkeep must be in \(0, 1\), got 0.0",
  ),
  (
    "lira_keep_pkeep_nan",
    lambda: data.lira_keep(4, 10, pkeep=float("nan")),
    ValueError,
    r"pkeep must be in \(0, 1\), got nan",
  ),
  (
    "paired_keep_zero_models",
    lambda: data.paired_keep(0, 10),
    ValueError,
    r"num_models must be >= 2, got 0",
  ),
  (
    "paired_keep_float_examples",
    lambda: data.paired_keep(4, 10.0),
    TypeError,
    r"num_examples must be an int, got float",
  ),
  (
    "disjoint_split_negative_size",
    lambda: data.disjoint_split(10, sizes=(12, -2, 0, 0)),
    ValueError,
    r"sizes\['target_out'\] must be >= 0, got -2",
  ),
  (
    "disjoint_split_zero_examples",
    lambda: data.disjoint_split(0, sizes=(0, 0, 0, 0)),
    ValueError,
    r"num_examples must be >= 1, got 0",
  ),
  # defenses: constructors, outputs, accounting
  (
    "label_smoothing_negative",
    lambda: defenses.label_smoothing(-0.1),
    ValueError,
    r"eps must lie in \[0.0, 1.0\), got -0.1",
  ),
  (
    "label_smoothing_str",
    lambda: defenses.label_smoothing("0.1"),
    TypeError,
    r"eps must be a real number, got str",
  ),
  (
    "label_smoothing_per_model_negative",
    lambda: defenses.label_smoothing(hyperparams.per_model([0.1, -0.1])),
    ValueError,
    r"eps\[1\] must lie in \[0.0, 1.0\), got -0.1",
  ),
  (
    "confidence_penalty_negative",
    lambda: defenses.confidence_penalty(-1.0),
    ValueError,
    r"beta must lie in \[0.0, inf\), got -1.0",
  ),
  (
    "confidence_penalty_inf",
    lambda: defenses.confidence_penalty(float("inf")),
    ValueError,
    r"beta must lie in \[0.0, inf\), got inf",
  ),
  (
    "dropout_negative",
    lambda: defenses.dropout(-0.1),
    ValueError,
    r"rate must lie in \[0.0, 1.0\), got -0.1",
  ),
  (
    "dropout_bool",
    lambda: defenses.dropout(True),
    TypeError,
    r"rate must be a real number, got bool",
  ),
  (
    "dp_sgd_zero_clip",
    lambda: defenses.dp_sgd(0.0, 1.0),
    ValueError,
    r"l2_norm_clip must lie in \(0.0, inf\), got 0.0",
  ),
  (
    "dp_sgd_negative_noise",
    lambda: defenses.dp_sgd(1.0, -1.0),
    ValueError,
    r"noise_multiplier must lie in \[0.0, inf\), got -1.0",
  ),
  (
    "hamp_gamma_above_1",
    lambda: defenses.hamp(1.5, 0.1),
    ValueError,
    r"gamma must lie in \[0.0, 1.0\), got 1.5",
  ),
  (
    "hamp_alpha_negative",
    lambda: defenses.hamp(0.5, -0.1),
    ValueError,
    r"alpha must lie in \[0.0, inf\), got -0.1",
  ),
  (
    "top_k_zero",
    lambda: defenses.top_k(0),
    ValueError,
    r"k must lie in \[1, \d+\], got 0",
  ),
  (
    "top_k_float",
    lambda: defenses.top_k(1.5),
    TypeError,
    r"k must be an integer, got float 1.5",
  ),
  (
    "rounding_negative",
    lambda: defenses.rounding(-1),
    ValueError,
    r"decimals must lie in \[0, 10\], got -1",
  ),
  (
    "temperature_zero",
    lambda: defenses.temperature(0.0),
    ValueError,
    r"t must be a finite number > 0, got 0.0",
  ),
  (
    "temperature_str",
    lambda: defenses.temperature("1"),
    TypeError,
    r"t must be a real number, got str",
  ),
  (
    "chain_int",
    lambda: defenses.chain(42),
    TypeError,
    r"chain argument 0 must be a defense or an output transform",
  ),
  (
    "apply_output_top_k_above_classes",
    lambda: defenses.apply_output(defenses.top_k(5), LOGITS),
    ValueError,
    r"top_k\(k=5\) needs k <= classes = 3",
  ),
  (
    "apply_output_hamp_without_random_logits",
    lambda: defenses.apply_output(defenses.hamp_output(), LOGITS),
    ValueError,
    r"hamp_output needs random_logits",
  ),
  (
    "dp_noise_zero_steps",
    lambda: defenses.dp_noise_multiplier(
      target_epsilon=1.0, sample_rate=0.01, steps=0, delta=1e-5
    ),
    ValueError,
    r"steps must be >= 1, got 0",
  ),
  (
    "dp_epsilon_rate_above_1",
    lambda: defenses.dp_epsilon(
      noise_multiplier=1.0, sample_rate=1.5, steps=10, delta=1e-5
    ),
    ValueError,
    r"sample_rate must lie in \(0.0, 1.0\], got 1.5",
  ),
  # engine: TrainConfig fields (scalar and per model)
  (
    "config_momentum_1_5",
    lambda: engine.TrainConfig(momentum=1.5).validate(),
    ValueError,
    r"momentum must lie in \[0, 1\), got 1.5",
  ),
  (
    "config_momentum_negative",
    lambda: engine.TrainConfig(momentum=-0.1).validate(),
    ValueError,
    r"momentum must lie in \[0, 1\), got -0.1",
  ),
  (
    "config_weight_decay_negative",
    lambda: engine.TrainConfig(weight_decay=-1.0).validate(),
    ValueError,
    r"weight_decay must be >= 0, got -1.0",
  ),
  (
    "config_learning_rate_zero",
    lambda: engine.TrainConfig(learning_rate=0.0).validate(),
    ValueError,
    r"learning_rate must be positive and finite, got 0.0",
  ),
  (
    "config_learning_rate_str",
    lambda: engine.TrainConfig(learning_rate="0.1").validate(),
    ValueError,
    r"learning_rate must be a real number, got '0.1'",
  ),
  (
    "config_per_model_learning_rate_negative",
    lambda: engine.TrainConfig(learning_rate=[0.1, -0.1]).validate(),
    ValueError,
    r"learning_rate\[1\] must be >= 0, got -0.1",
  ),
  (
    "config_per_model_learning_rate_nan",
    lambda: engine.TrainConfig(learning_rate=[0.1, float("nan")]).validate(),
    ValueError,
    r"learning_rate\[1\] must be finite, got nan",
  ),
  (
    "config_per_model_momentum_one",
    lambda: engine.TrainConfig(momentum=[0.9, 1.0]).validate(),
    ValueError,
    r"momentum\[1\] must lie in \[0, 1\), got 1.0",
  ),
  (
    "config_per_model_lengths_differ",
    lambda: engine.TrainConfig(
      learning_rate=[0.1, 0.2], momentum=[0.9, 0.9, 0.9]
    ).num_models(),
    ValueError,
    r"per-model values must all have one length \[models\], got lengths "
    r"\[2, 3\]",
  ),
  (
    "config_per_model_user_optimizer",
    lambda: engine.TrainConfig(
      optimizer=optax.sgd(0.1), learning_rate=[0.1, 0.2]
    ).validate(),
    ValueError,
    r"per-model learning_rate needs a built-in optimizer",
  ),
  (
    "config_hyperparams_builtin_optimizer",
    lambda: engine.TrainConfig(hyperparams={"lr": 0.1}).validate(),
    ValueError,
    r"hyperparams: name the values of a user optimizer",
  ),
  (
    "config_unknown_schedule",
    lambda: engine.TrainConfig(schedule="linear").validate(),
    ValueError,
    r"schedule must be 'cosine' or 'constant', got 'linear'",
  ),
  (
    "config_batch_size_bool",
    lambda: engine.TrainConfig(batch_size=True).validate(),
    ValueError,
    r"batch_size must be a positive integer, got True",
  ),
  (
    "config_epochs_float",
    lambda: engine.TrainConfig(epochs=1.5).validate(),
    ValueError,
    r"epochs must be a positive integer, got 1.5",
  ),
  (
    "config_loss_str",
    lambda: engine.TrainConfig(loss="ce").validate(),
    ValueError,
    r"loss must be a function loss\(logits, labels\)",
  ),
  (
    "config_defense_str",
    lambda: engine.TrainConfig(defense="dropout").validate(),
    ValueError,
    r"defense must be a miajax.defenses.Defense .*got 'dropout'",
  ),
  (
    "config_model_kwargs_dropout",
    lambda: engine.TrainConfig(model_kwargs={"dropout_rate": 0.1}).validate(),
    ValueError,
    r"model_kwargs: set dropout with defense=miajax.defenses.dropout",
  ),
  (
    "config_module_with_model_kwargs",
    lambda: engine.TrainConfig(
      model=_Head(), model_kwargs={"features": 3}
    ).validate(),
    ValueError,
    r"model_kwargs apply to registry models only",
  ),
  (
    "config_module_with_dropout_defense",
    lambda: engine.TrainConfig(
      model=_Head(), defense=defenses.dropout(0.1)
    ).validate(),
    ValueError,
    r"the defense dropout\(0.1\) sets \['dropout_rate'\] of registry models "
    r"only",
  ),
  (
    "config_loss_with_label_smoothing",
    lambda: engine.TrainConfig(
      loss=lambda logits, y: logits.sum(-1),
      defense=defenses.label_smoothing(0.1),
    ).validate(),
    ValueError,
    r"loss: a custom loss takes integer labels",
  ),
  (
    "config_model_int",
    lambda: engine.TrainConfig(model=42).validate(),
    ValueError,
    r"model must be one of \[.*\], a flax.linen.Module or a pair .*got int",
  ),
  (
    "config_optimizer_int",
    lambda: engine.TrainConfig(optimizer=42).validate(),
    ValueError,
    r"optimizer must be one of \('sgd', 'adam'\), .*got int",
  ),
  # engine: Lowering fields
  (
    "lowering_unknown_axis",
    lambda: engine.Lowering(model_axis="diag").validate(),
    ValueError,
    r"model_axis must be one of \('vmap', 'unroll', 'loop'\) or None, got "
    r"'diag'",
  ),
  (
    "lowering_models_per_step_zero",
    lambda: engine.Lowering(models_per_step=0).validate(),
    ValueError,
    r"models_per_step must be a positive integer or None, got 0",
  ),
  (
    "lowering_steps_per_call_negative",
    lambda: engine.Lowering(steps_per_call=-1).validate(),
    ValueError,
    r"steps_per_call must be a positive integer or None, got -1",
  ),
  (
    "lowering_microbatch_bool",
    lambda: engine.Lowering(microbatch=True).validate(),
    ValueError,
    r"microbatch must be a positive integer or None, got True",
  ),
  (
    "lowering_microbatch_not_a_divisor",
    lambda: engine.Lowering(microbatch=3).validate(8),
    ValueError,
    r"microbatch must be a positive divisor of batch_size \(8\) or None, got 3",
  ),
  (
    "lowering_compute_dtype",
    lambda: engine.Lowering(compute_dtype="float64").validate(),
    ValueError,
    r"compute_dtype must be one of \('float32', 'bfloat16'\), got 'float64'",
  ),
  (
    "lowering_backend",
    lambda: engine.Lowering(backend="quantum").validate(),
    ValueError,
    r"backend must be one of \('cpu', 'gpu', 'tpu'\), got 'quantum'",
  ),
  (
    "lowering_conv_impl",
    lambda: engine.Lowering(conv_impl="fft").validate(),
    ValueError,
    r"conv_impl must be one of \[.*'winograd'.*\] or a function, got 'fft'",
  ),
  # engine: train_models arguments
  (
    "train_config_last",
    lambda: engine.train_models(X40, Y40, KEEP40, CFG, num_classes=3),
    ValueError,
    r"config must be a miajax.TrainConfig \(the call is train_models\(config, "
    r"x, y, keep",
  ),
  (
    "train_lowering_not_a_lowering",
    _train(lowering="vmap"),
    ValueError,
    r"lowering must be a miajax.Lowering or None, got 'vmap'",
  ),
  (
    "train_lowering_microbatch_not_a_divisor",
    _train(lowering=engine.Lowering(microbatch=3)),
    ValueError,
    r"microbatch must be a positive divisor of batch_size \(8\)",
  ),
  (
    "train_momentum_1_5",
    _train(config=dataclasses.replace(CFG, momentum=1.5)),
    ValueError,
    r"momentum must lie in \[0, 1\), got 1.5",
  ),
  (
    "train_per_model_momentum_shape",
    _train(config=dataclasses.replace(CFG, momentum=[0.9, 0.9, 0.9])),
    ValueError,
    r"per-model values have 3 entries but keep has 2 models",
  ),
  (
    "train_labels_2d",
    _train(y=Y40[:, None]),
    ValueError,
    r"y must have shape \(40,\), got \(40, 1\)",
  ),
  (
    "train_x_rows_mismatch",
    _train(x=X40[:39]),
    ValueError,
    r"keep has 40 columns but x has 39 examples",
  ),
  (
    "train_num_classes_float",
    _train(num_classes=3.0),
    ValueError,
    r"num_classes must be an integer >= 2, got 3.0",
  ),
  # engine: predict arguments, and variables that do not fit x / num_classes
  (
    "predict_config_not_a_config",
    lambda: engine.predict({}, None, X40, num_classes=3),
    ValueError,
    r"config must be a miajax.TrainConfig \(the call is predict\(config, ",
  ),
  (
    "predict_batch_size_bool",
    lambda: engine.predict(CFG, None, X40, num_classes=3, batch_size=True),
    ValueError,
    r"batch_size must be a positive integer, got True",
  ),
  (
    "predict_variables_none",
    lambda: engine.predict(CFG, None, X40, num_classes=3),
    ValueError,
    r"variables must be stacked on a leading \[models\] axis",
  ),
  (
    "predict_output_without_random_x",
    lambda: engine.predict(
      CFG, None, X40, num_classes=3, output=defenses.hamp_output()
    ),
    ValueError,
    r"output hamp_output needs random_x: random inputs of x's shape \(40, 5\)",
  ),
  (
    "predict_x_wrong_width",
    _predict(x=X40[:, :4]),
    ValueError,
    r"x has examples of shape \(4,\) but these variables were trained on "
    r"examples of shape \(5,\)",
  ),
  (
    "predict_wrong_num_classes",
    _predict(num_classes=5),
    ValueError,
    r"num_classes=5 but these variables were trained with 3 classes",
  ),
  (
    "predict_wrong_x_and_num_classes",
    _predict(x=X40[:, :4], num_classes=5),
    ValueError,
    r"x has examples of shape \(4,\), which these variables do not fit",
  ),
  (
    "predict_cnn_wrong_channels",
    _predict(
      x=np.zeros((2, 28, 28, 3), np.float32),
      config=CNN_CFG,
      trained_on=(28, 28, 1),
      trained_classes=10,
      num_classes=10,
    ),
    ValueError,
    r"x has examples of shape \(28, 28, 3\) but these variables were trained "
    r"on examples of shape \(28, 28, 1\)",
  ),
  (
    "predict_cnn_wrong_image_size",
    _predict(
      x=np.zeros((2, 32, 32, 1), np.float32),
      config=CNN_CFG,
      trained_on=(28, 28, 1),
      trained_classes=10,
      num_classes=10,
    ),
    ValueError,
    r"x has examples of shape \(32, 32, 1\) but these variables were trained "
    r"on examples of shape \(28, 28, 1\)",
  ),
  (
    "predict_cnn_wrong_num_classes",
    _predict(
      x=IMAGES,
      config=CNN_CFG,
      trained_on=(28, 28, 1),
      trained_classes=10,
      num_classes=100,
    ),
    ValueError,
    r"num_classes=100 but these variables were trained with 10 classes",
  ),
  (
    "predict_cnn_flat_x",
    _predict(
      x=X40,
      config=CNN_CFG,
      trained_on=(28, 28, 1),
      trained_classes=10,
      num_classes=10,
    ),
    ValueError,
    r"x: the model cannot take examples of shape \(5,\)",
  ),
  (
    "predict_module_wrong_num_classes",
    _predict(config=MODULE_CFG, num_classes=4),
    ValueError,
    r"num_classes=4 but the model outputs 3 classes",
  ),
  (
    "predict_module_wrong_width",
    _predict(x=X40[:, :4], config=MODULE_CFG),
    ValueError,
    r"x has examples of shape \(4,\) but these variables were trained on "
    r"examples of shape \(5,\)",
  ),
  (
    "predict_pair_wrong_num_classes",
    _predict(config=PAIR_CFG, num_classes=10),
    ValueError,
    r"num_classes=10 but the model outputs 3 classes",
  ),
  (
    "predict_pair_wrong_width",
    _predict(x=np.zeros((3, 6), np.float32), config=PAIR_CFG),
    ValueError,
    r"x has examples of shape \(6,\) but these variables were trained on "
    r"examples of shape \(5,\) \(params/w is \(5, 3\) per model",
  ),
  (
    "predict_params_only",
    _predict(variables=lambda: _stacked(CFG, (5,), 3)["params"]),
    ValueError,
    r"variables do not hold this model's variables: .*not variables\['params'\]",
  ),
  (
    "predict_unstacked_variables",
    _predict(
      variables=lambda: jax.tree.map(lambda a: a[0], _stacked(CFG, (5,), 3))
    ),
    ValueError,
    r"variables must be stacked on a leading \[models\] axis .*these look like "
    r"one model's",
  ),
  (
    "predict_ragged_models_axis",
    _predict(variables=lambda: _ragged()),
    ValueError,
    r"variables must share one leading \[models\] axis, got leading sizes "
    r"\[1, 2\]",
  ),
  # runs: a RunSpec (or run directory) that cannot run; tmp/'run' never appears
  (
    "run_unknown_design",
    _run(_spec(design="random")),
    ValueError,
    r"design must be 'paired' or 'lira', got 'random'",
  ),
  (
    "run_unknown_dataset",
    _run(_spec(dataset="imagenet")),
    ValueError,
    r"unknown dataset 'imagenet'",
  ),
  (
    "run_odd_paired_models",
    _run(_spec(num_models=3)),
    ValueError,
    r"num_models must be even for paired_keep, got 3",
  ),
  (
    "run_zero_models",
    _run(_spec(num_models=0)),
    ValueError,
    r"num_models must be >= 2, got 0",
  ),
  (
    "run_lira_pkeep_above_1",
    _run(_spec(design="lira", pkeep=1.5)),
    ValueError,
    r"pkeep must be in \(0, 1\), got 1.5",
  ),
  (
    "run_zero_examples",
    _run(_spec(num_examples=0)),
    ValueError,
    r"num_examples must be in \[1, \d+\] for digits, got 0",
  ),
  (
    "run_unknown_queries",
    _run(_spec(queries="rot90")),
    ValueError,
    r"queries must be one of",
  ),
  (
    "run_microbatch_not_a_divisor",
    _run(_spec(lowering=engine.Lowering(microbatch=5))),
    ValueError,
    r"microbatch must be a positive divisor of batch_size \(8\)",
  ),
  (
    "run_batch_above_members",
    _run(_spec(train=dataclasses.replace(CFG, batch_size=128))),
    ValueError,
    r"batch_size=128 is larger than model 0's member count 20",
  ),
  (
    "run_negative_checkpoint_interval",
    _run(checkpoint_every_s=-1),
    ValueError,
    r"checkpoint_every_s must be a finite number of seconds >= 0",
  ),
  (
    "load_run_missing",
    lambda: runs.load_run(ROOT / "no-such-run"),
    ValueError,
    r"run_dir '.*no-such-run' has no keep\.npy",
  ),
  (
    "merge_chunks_missing",
    lambda: runs.merge_chunks(ROOT / "no-such-run", 2),
    ValueError,
    r"run directory '.*no-such-run' has no keep\.npy/labels\.npy",
  ),
  (
    "load_store_missing",
    lambda: runs.load_store(ROOT / "no-such-store"),
    ValueError,
    r"'.*no-such-store' is not a shadow store \(no store\.json\)",
  ),
  (
    "process_slice_id_out_of_range",
    lambda: runs.process_slice(10, 2, 2),
    ValueError,
    r"process_id must be in \[0, 2\), got 2",
  ),
  (
    "process_slice_more_processes_than_models",
    lambda: runs.process_slice(2, 0, 3),
    ValueError,
    r"num_processes=3 exceeds num_models=2",
  ),
  # hyperparams.per_model
  (
    "per_model_empty",
    lambda: hyperparams.per_model([]),
    ValueError,
    r"per-model values must be a non-empty 1-D sequence \[models\], got "
    r"shape \(0,\)",
  ),
  (
    "per_model_2d",
    lambda: hyperparams.per_model([[0.1, 0.2]]),
    ValueError,
    r"non-empty 1-D sequence \[models\], got shape \(1, 2\)",
  ),
  (
    "per_model_scalar",
    lambda: hyperparams.per_model(0.1),
    ValueError,
    r"non-empty 1-D sequence \[models\], got shape \(\)",
  ),
  (
    "per_model_strings",
    lambda: hyperparams.per_model(["0.1", "0.2"]),
    ValueError,
    r"per-model values must be real numbers, got <U3",
  ),
  (
    "per_model_bools",
    lambda: hyperparams.per_model([True, False]),
    ValueError,
    r"per-model values must be real numbers, got bool",
  ),
  # the scripts' shared checks, called as a library
  (
    "writable_under_proc",
    _writable("proc"),
    app.UsageError,
    r"--output_dir '/proc/miajax-bad-inputs/out' cannot be created: cannot "
    r"create files in '/proc'",
  ),
  (
    "writable_file_in_the_way",
    _writable("file_in_the_way"),
    app.UsageError,
    r"--output_dir '.*afile/out' cannot be created: '.*afile' is a file, not "
    r"a directory",
  ),
  (
    "writable_is_a_file",
    _writable("is_a_file"),
    app.UsageError,
    r"--output_dir '.*afile' is not a directory",
  ),
  (
    "writable_read_only_filesystem",
    _writable("erofs"),
    app.UsageError,
    r"--output_dir '.*' cannot be written: '.*' is on a read-only filesystem",
  ),
  (
    "writable_permission_denied",
    _writable("eacces"),
    app.UsageError,
    r"--output_dir '.*' cannot be written: permission denied in '.*'",
  ),
  (
    "writable_chmod_read_only",
    _writable("chmod"),
    app.UsageError,
    r"--output_dir '.*ro' cannot be written: permission denied in '.*ro'",
  ),
  (
    "audit_probabilities_as_auto",
    _target(SOFTMAX),
    app.UsageError,
    r"--target_outputs look like probabilities .*pass "
    r"--target_kind=probabilities, or --target_kind=logits",
  ),
  (
    "audit_unknown_target_kind",
    _target(LOGITS[[0, 1, 0, 1, 0, 1]], kind="softmax"),
    app.UsageError,
    r"--target_kind must be one of auto, logits, probabilities, got 'softmax'",
  ),
]


@pytest.fixture
def no_training(monkeypatch):
  """Any attempt to compile the training step fails the test: errors must come first."""

  def fail(*args, **kwargs):
    # The program's own refusals (batch norm with micro-batches, DP with
    # batch norm) come before anything compiles; then training would start.
    step.program(*args, **kwargs)
    raise AssertionError("training started before the bad input was rejected")

  monkeypatch.setattr(loop, "compile_program", fail)


@pytest.mark.parametrize(
  "make,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(make, exc, match, tmp_path, no_training):
  call = make(tmp_path) if getattr(make, "__name__", "") == "build" else make
  with pytest.raises(exc, match=match):
    result = call()
    # Generators and lazy values would hide the error; force them.
    if hasattr(result, "__next__"):
      next(result)
  # A run directory is made only once every input has been checked.
  assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- scripts

FAST = [
  "--num_examples=40",
  "--num_models=2",
  "--epochs=1",
  "--batch_size=8",
  "--widths=8",
]
OUTPUTS = (
  "report.json",
  "logits.npy",
  "keep.npy",
  "labels.npy",
  "models.json",
  "roc.png",
)


PROC = (
  "/proc/miajax-bad-inputs"  # procfs: no file can be made here, even by root
)
SYS = (
  "/sys/miajax-bad-inputs"  # sysfs: permission denied (or read-only) for root
)
PROC_REFUSED = r"cannot be created: cannot create files in '/proc'"
SYS_REFUSED = (
  r"cannot be created: (permission denied in '/sys'|'/sys' is on a read-only "
  r"filesystem)"
)
TM = "train_models.py"

# (kind, script, args, regex for the error line): "OUT" stands for
# --output_dir=<tmp>/out.  Each is a usage error before anything is loaded.
FLAG_CASES = [
  (
    "epochs_not_an_integer",
    TM,
    ["OUT", *FAST, "--epochs=abc"],
    r"--epochs=abc: expected an integer$",
  ),
  (
    "optimizer_not_a_choice",
    TM,
    ["OUT", *FAST, "--optimizer=rmsprop"],
    r"--optimizer=rmsprop: expected one of sgd, adam$",
  ),
  (
    "design_not_a_choice",
    TM,
    ["OUT", *FAST, "--design=random"],
    r"--design=random: expected one of paired, lira$",
  ),
  (
    "bool_flag_not_a_bool",
    TM,
    ["OUT", *FAST, "--augment=maybe"],
    r"--augment=maybe: expected true or false$",
  ),
  (
    "negative_checkpoint_interval",
    TM,
    ["OUT", *FAST, "--checkpoint_every_s=-1"],
    r"--checkpoint_every_s=-1: expected a non-negative number$",
  ),
  (
    "missing_flag_value",
    TM,
    ["OUT", *FAST, "--epochs"],
    r"--epochs: missing value",
  ),
  (
    "misspelt_flag",
    TM,
    ["OUT", *FAST, "--epoch=3"],
    r"--epoch: unknown flag; did you mean --epochs\?$",
  ),
  (
    "unknown_flag",
    TM,
    ["OUT", *FAST, "--no_such_flag=1"],
    r"--no_such_flag: unknown flag",
  ),
  (
    "missing_flagfile",
    TM,
    ["OUT", "--flagfile=/no/such/flags.txt"],
    r"--flagfile: Unable to open flagfile",
  ),
  (
    "positional_argument",
    TM,
    ["OUT", *FAST, "extra"],
    r"unexpected arguments \['extra'\]: every input is a --flag$",
  ),
  ("no_output_dir", TM, FAST, r"--output_dir is required$"),
  (
    "output_dir_in_proc",
    TM,
    [f"--output_dir={PROC}/run", *FAST],
    rf"--output_dir '{PROC}/run' {PROC_REFUSED}",
  ),
  (
    "output_dir_in_sys",
    TM,
    [f"--output_dir={SYS}", *FAST],
    rf"--output_dir '{SYS}' {SYS_REFUSED}",
  ),
  (
    "momentum_above_1",
    TM,
    ["OUT", *FAST, "--momentum=1.5"],
    r"--momentum must lie in \[0, 1\), got 1.5$",
  ),
  (
    "learning_rate_nan",
    TM,
    ["OUT", *FAST, "--learning_rate=nan"],
    r"--learning_rate must be positive and finite, got nan$",
  ),
  (
    "widths_not_integers",
    TM,
    ["OUT", *FAST, "--widths=8,x"],
    r"--widths=8,x: expected comma-separated positive integers$",
  ),
  (
    "unknown_model",
    TM,
    ["OUT", *FAST, "--model=resnet9000"],
    r"--model must be one of \[.*'mlp'.*got 'resnet9000'$",
  ),
  (
    "zero_models",
    TM,
    ["OUT", *FAST, "--num_models=0"],
    r"--num_models must be >= 1, got 0$",
  ),
  (
    "lira_design_pkeep_above_1",
    TM,
    ["OUT", *FAST, "--design=lira", "--pkeep=1.5"],
    r"--pkeep must be in \(0, 1\), got 1.5$",
  ),
  (
    "label_only_sigmas_not_numbers",
    TM,
    ["OUT", *FAST, "--label_only", "--label_only_sigmas=a"],
    r"--label_only_sigmas must be comma-separated numbers",
  ),
  (
    "label_only_negative_shift",
    TM,
    ["OUT", *FAST, "--label_only", "--label_only_shift=-1"],
    r"--label_only_shift must be >= 0, got -1$",
  ),
  (
    "lira_misspelt_flag",
    "lira.py",
    ["OUT", "--num_modles=6"],
    r"--num_modles: unknown flag; did you mean --num_models\?$",
  ),
  (
    "lira_output_dir_in_proc",
    "lira.py",
    [f"--output_dir={PROC}/lira", *FAST, "--num_models=6"],
    rf"--output_dir '{PROC}/lira' {PROC_REFUSED}",
  ),
  (
    "lira_momentum_above_1",
    "lira.py",
    ["OUT", *FAST, "--num_models=6", "--momentum=1.5"],
    r"--momentum must lie in \[0, 1\), got 1.5$",
  ),
  (
    "audit_target_kind_not_a_choice",
    "audit.py",
    ["OUT", "--target_kind=softmax"],
    r"--target_kind=softmax: expected one of auto, logits, probabilities$",
  ),
  (
    "audit_output_dir_in_proc",
    "audit.py",
    [f"--output_dir={PROC}/audit"],
    rf"--output_dir '{PROC}/audit' {PROC_REFUSED}",
  ),
  (
    "audit_shadow_store_in_proc",
    "audit.py",
    ["OUT", f"--shadow_store={PROC}/store"],
    rf"--shadow_store '{PROC}/store' {PROC_REFUSED}",
  ),
  (
    "audit_shadow_store_in_sys",
    "audit.py",
    ["OUT", f"--shadow_store={SYS}"],
    rf"--shadow_store '{SYS}' {SYS_REFUSED}",
  ),
  (
    "audit_lira_design",
    "audit.py",
    ["OUT", "--design=lira"],
    r"--design must be paired for an audit",
  ),
  (
    "audit_odd_models",
    "audit.py",
    ["OUT", "--num_models=5"],
    r"--num_models must be even and >= 4, got 5$",
  ),
  (
    "audit_calibrate_models_odd",
    "audit.py",
    ["OUT", "--calibrate", "--calibrate_models=3"],
    r"--calibrate_models must be even and >= 2, got 3$",
  ),
  (
    "audit_calibrate_models_zero",
    "audit.py",
    ["OUT", "--calibrate_models=0"],
    r"--calibrate_models must be even and >= 2, got 0$",
  ),
  (
    "audit_calibrate_grid_without_calibrate",
    "audit.py",
    ["OUT", "--calibrate_grid=epochs=10,30"],
    r"--calibrate_grid needs --calibrate$",
  ),
  (
    "audit_calibrate_grid_zero_epochs",
    "audit.py",
    ["OUT", "--calibrate", "--calibrate_grid=epochs=0"],
    r"--calibrate_grid: epochs must be a positive integer, got 0$",
  ),
  (
    "audit_calibrate_grid_unknown_field",
    "audit.py",
    ["OUT", "--calibrate", "--calibrate_grid=depth=3"],
    r"--calibrate_grid: grid part 'depth=3': 'depth' is not one of "
    r"learning_rate, .*, batch_size$",
  ),
  (
    "audit_calibrate_grid_epochs_not_integers",
    "audit.py",
    ["OUT", "--calibrate", "--calibrate_grid=epochs=a"],
    r"--calibrate_grid: grid part 'epochs=a': values must be integers$",
  ),
  (
    "audit_calibrate_grid_negative_weight_decay",
    "audit.py",
    ["OUT", "--calibrate", "--calibrate_grid=weight_decay=-1"],
    r"--calibrate_grid: weight_decay must be >= 0, got -1\.0$",
  ),
  (
    "audit_calibrate_grid_unknown_schedule",
    "audit.py",
    ["OUT", "--calibrate", "--calibrate_grid=schedule=linear"],
    r"--calibrate_grid: schedule must be 'cosine' or 'constant', got 'linear'$",
  ),
  (
    "audit_calibrate_grid_momentum_above_1",
    "audit.py",
    ["OUT", "--calibrate", "--calibrate_grid=momentum=1.5"],
    r"--calibrate_grid: momentum must lie in \[0, 1\), got 1\.5$",
  ),
  (
    "defenses_unknown_flag",
    "defenses.py",
    ["OUT", "--no_such_flag"],
    r"--no_such_flag: unknown flag",
  ),
  (
    "defenses_output_dir_in_proc",
    "defenses.py",
    [f"--output_dir={PROC}/defenses"],
    rf"--output_dir '{PROC}/defenses' {PROC_REFUSED}",
  ),
  (
    "shokri_unknown_flag",
    "shokri.py",
    ["OUT", "--no_such_flag"],
    r"--no_such_flag: unknown flag",
  ),
  (
    "shokri_output_dir_in_proc",
    "shokri.py",
    [f"--output_dir={PROC}/shokri"],
    rf"--output_dir '{PROC}/shokri' {PROC_REFUSED}",
  ),
  (
    "mlleaks_unknown_flag",
    "mlleaks.py",
    ["OUT", "--no_such_flag"],
    r"--no_such_flag: unknown flag",
  ),
  (
    "mlleaks_output_dir_in_proc",
    "mlleaks.py",
    [f"--output_dir={PROC}/mlleaks"],
    rf"--output_dir '{PROC}/mlleaks' {PROC_REFUSED}",
  ),
  (
    "benchmark_unknown_flag",
    "benchmark.py",
    ["OUT", "--no_such_flag"],
    r"--no_such_flag: unknown flag",
  ),
  (
    "benchmark_no_output_dir",
    "benchmark.py",
    [],
    r"--output_dir is required$",
  ),
  (
    "benchmark_output_dir_in_proc",
    "benchmark.py",
    [f"--output_dir={PROC}/benchmark"],
    rf"--output_dir '{PROC}/benchmark' {PROC_REFUSED}",
  ),
  (
    "lira_numpy_zero_models",
    "lira_numpy.py",
    ["--models=0"],
    r"--models must be >= 1, got 0$",
  ),
  (
    "lira_numpy_unknown_flag",
    "lira_numpy.py",
    ["--no_such_flag"],
    r"--no_such_flag: unknown flag",
  ),
]
_FLAG_CASES = {kind: rest for kind, *rest in FLAG_CASES}


def _audit_args(tmp, outputs, *more):
  """audit.py on 300 digits with ``outputs`` as the target's outputs."""
  np.save(tmp / "target.npy", outputs)
  np.save(tmp / "members.npy", np.arange(10))
  return [
    f"--output_dir={tmp / 'out'}",
    "--dataset=digits",
    "--num_examples=300",
    "--epochs=2",
    "--widths=32",
    "--num_models=8",
    f"--target_outputs={tmp / 'target.npy'}",
    f"--target_members={tmp / 'members.npy'}",
    *more,
  ]


def _script_case(kind, tmp):
  """(script, args, regex for stderr) for one bad invocation; output goes to tmp/'out'."""
  out = f"--output_dir={tmp / 'out'}"
  if kind in _FLAG_CASES:
    script, args, match = _FLAG_CASES[kind]
    return script, [out if a == "OUT" else a for a in args], match
  if kind == "output_dir_is_a_file":
    (tmp / "afile").write_text("not a directory")
    return (
      TM,
      [f"--output_dir={tmp / 'afile'}", *FAST],
      r"--output_dir '.*afile' is not a directory$",
    )
  if kind == "audit_probabilities_as_logits":
    # --target_kind=auto (the default): softmax rows are refused, not audited as logits.
    logits = np.random.default_rng(0).normal(size=(300, 10))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return (
      "audit.py",
      _audit_args(
        tmp, probs.astype(np.float32), f"--shadow_store={tmp / 'store'}"
      ),
      r"--target_outputs look like probabilities \(every row non-negative, "
      r"summing to 1\): pass --target_kind=probabilities, or "
      r"--target_kind=logits if they are logits$",
    )
  if kind == "audit_shadow_store_under_file":
    (tmp / "afile").write_text("not a directory")
    return (
      "audit.py",
      _audit_args(
        tmp,
        np.zeros((300, 10), np.float32),
        f"--shadow_store={tmp / 'afile' / 'store'}",
      ),
      r"--shadow_store '.*afile/store' cannot be created: '.*afile' is a "
      r"file, not a directory$",
    )
  if kind == "audit_calibrate_grid_batch_above_half":
    # Known only once the pool is read: a candidate's batch above the
    # calibration models' halves (150 of 300) is refused before any shadow.
    return (
      "audit.py",
      _audit_args(
        tmp,
        np.zeros((300, 10), np.float32),
        f"--shadow_store={tmp / 'store'}",
        "--calibrate",
        "--calibrate_grid=batch_size=1000;epochs=2",
      ),
      r"--calibrate_grid: batch_size=1000 is larger than model 0's member "
      r"count 150",
    )
  if kind == "audit_missing_target_members":
    return (
      "audit.py",
      [
        out,
        "--dataset=digits",
        "--num_examples=300",
        "--num_models=8",
        f"--target_outputs={tmp / 'nope.npy'}",
      ],
      r"--target_members is required$",
    )
  if kind == "audit_target_outputs_not_found":
    np.save(tmp / "members.npy", np.arange(10))
    return (
      "audit.py",
      [
        out,
        "--dataset=digits",
        "--num_examples=300",
        "--num_models=8",
        f"--target_outputs={tmp / 'nope.npy'}",
        f"--target_members={tmp / 'members.npy'}",
      ],
      r"--target_outputs: '.*nope\.npy' does not exist$",
    )
  if kind == "unknown_dataset":
    return (
      "train_models.py",
      [out, "--dataset=imagenet", *FAST],
      r"unknown dataset 'imagenet'",
    )
  if kind == "output_dir_under_file":
    (tmp / "afile").write_text("not a directory")
    return (
      "train_models.py",
      [f"--output_dir={tmp / 'afile' / 'run'}", *FAST],
      r"output_dir '.*afile/run' cannot be created",
    )
  if kind == "corrupt_idx":
    d = _fashion_dir(tmp, corrupt="magic")
    return (
      "train_models.py",
      [out, "--dataset=fashion_mnist", f"--data_dir={d}", *FAST],
      r"train-images-idx3-ubyte\.gz: IDX magic",
    )
  if kind == "missing_npz":
    (tmp / "empty").mkdir()
    return (
      "train_models.py",
      [out, "--dataset=purchase100", f"--data_dir={tmp / 'empty'}", *FAST],
      r"purchase100\.npz not found",
    )
  if kind == "odd_models_paired":
    return (
      "train_models.py",
      [out, *FAST, "--num_models=3"],
      r"num_models must be even",
    )
  if kind == "zero_examples":
    return (
      "train_models.py",
      [out, *FAST, "--num_examples=0"],
      r"num_examples must be in \[1, ",
    )
  if kind == "batch_above_members":
    return (
      "train_models.py",
      [out, *FAST, "--batch_size=64"],
      r"batch_size=64 is larger",
    )
  if kind == "microbatch_not_a_divisor":
    return (
      "train_models.py",
      [out, *FAST, "--microbatch_size=3"],
      r"--microbatch_size must be a positive divisor of batch_size \(8\)",
    )
  if kind == "unknown_queries":
    return "train_models.py", [out, *FAST, "--queries=rot90"], r"--queries"
  if kind == "lira_too_few_models":
    return (
      "lira.py",
      [out, *FAST, "--num_models=4"],
      r"--num_models must be >= 6",
    )
  if kind == "lira_missing_run_dir":
    return (
      "lira.py",
      [out, f"--run_dir={tmp / 'nope'}"],
      r"run_dir '.*nope' has no keep\.npy",
    )
  if kind == "lira_output_dir_under_file":
    (tmp / "afile").write_text("not a directory")
    return (
      "lira.py",
      [f"--output_dir={tmp / 'afile' / 'x'}", *FAST, "--num_models=6"],
      r"output_dir '.*afile/x' cannot be created",
    )
  if kind == "lira_odd_num_references":
    return (
      "lira.py",
      [out, *FAST, "--num_models=6", "--num_references=3"],
      r"--num_references must be even",
    )
  if kind == "multi_process_without_coordinator":
    # Checked before jax.distributed.initialize, which would wait for its peers.
    return (
      "train_models.py",
      [out, *FAST, "--num_models=6", "--num_processes=2", "--process_id=0"],
      r"--coordinator_address",
    )
  if kind == "mlleaks_missing_second_dataset":
    return (
      "mlleaks.py",
      [out, "--adv2_dataset=purchase100", f"--adv2_data_dir={tmp}"],
      r"(?s)--adv2_dataset=purchase100 cannot be loaded.*--adv2_dataset=none",
    )
  if kind == "audit_bad_target_file":
    # 12 classes against digits' 10; neither the output nor the shadow store may appear.
    np.save(tmp / "target_logits.npy", np.zeros((300, 12), np.float32))
    np.save(tmp / "members.npy", np.arange(10))
    return (
      "audit.py",
      [
        out,
        "--dataset=digits",
        "--num_examples=300",
        "--epochs=2",
        "--widths=32",
        "--num_models=8",
        f"--target_outputs={tmp / 'target_logits.npy'}",
        f"--target_members={tmp / 'members.npy'}",
        f"--shadow_store={tmp / 'store'}",
      ],
      r"--target_outputs has 12 classes but the pool has 10",
    )
  raise AssertionError(kind)


SCRIPT_CASES = [
  "unknown_dataset",
  "output_dir_under_file",
  "corrupt_idx",
  "missing_npz",
  "odd_models_paired",
  "zero_examples",
  "batch_above_members",
  "microbatch_not_a_divisor",
  "unknown_queries",
  "lira_too_few_models",
  "lira_missing_run_dir",
  "lira_output_dir_under_file",
  "lira_odd_num_references",
  # Moved here from the scripts' own test files (one interpreter for all of them).
  "multi_process_without_coordinator",  # test_devices.py
  "mlleaks_missing_second_dataset",  # test_mlleaks.py
  "audit_bad_target_file",  # test_audit.py
  *_FLAG_CASES,
  "output_dir_is_a_file",
  "audit_probabilities_as_logits",
  "audit_shadow_store_under_file",
  "audit_missing_target_members",
  "audit_target_outputs_not_found",
  "audit_calibrate_grid_batch_above_half",
]
# audit.py checks the target files and the store before it makes the output directory or the store.
ABSENT = {
  "audit_bad_target_file": ("out", "store"),
  "audit_probabilities_as_logits": ("out", "store"),
  "audit_shadow_store_under_file": ("out",),
  "audit_missing_target_members": ("out",),
  "audit_target_outputs_not_found": ("out",),
  # Calibration reads the pool, so after the (empty) output directory is made.
  "audit_calibrate_grid_batch_above_half": ("store",),
}
# Refused from inside the library (a data file, the dataset's size, a run directory):
# a nonzero exit with the library's message, not (yet) a one-line usage error.
LIBRARY_REFUSALS = {
  "corrupt_idx",
  "missing_npz",
  "zero_examples",
  "batch_above_members",
  "lira_missing_run_dir",
}

# Runs every bad invocation in ONE interpreter, one after the other: each case runs the script
# file as ``__main__`` (runpy), as ``python experiments/<script>`` would: its flag definitions,
# its ``__main__`` block (harness.run: flag parsing, main, usage errors and their exit status),
# with its stderr and exit status recorded.  Only the interpreter start-up and the imports are
# shared: the previous case's script flags are dropped and FLAGS reset to their defaults
# before each case.  Compiling the training step fails loudly, so a case that is only refused
# once training has started fails here too.  test_script_refuses_in_its_own_process runs one
# case in its own interpreter.
DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
experiments, cases, results_path = sys.argv[1:]
sys.path.insert(0, experiments)
from absl import app, flags
import common  # noqa: F401  (imported before the snapshot of absl's own flags)
from miajax.engine import loop

def no_training(*args, **kwargs):
  raise AssertionError("training started before the bad input was rejected")

loop.compile_program = no_training
FLAGS = flags.FLAGS
app.define_help_flags()  # before the snapshot: they stay for every case
absl_flags, results = set(FLAGS), {}
for kind, script, args in json.loads(cases):
  for name in set(FLAGS) - absl_flags:  # the script defines them again
    delattr(FLAGS, name)
  FLAGS.unparse_flags()
  sys.argv = [f"{experiments}/{script}", *args]
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      runpy.run_path(sys.argv[0], run_name="__main__")
      status = 0
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else int(e.code is not None)
    except Exception:  # as the interpreter would: traceback on stderr, status 1
      traceback.print_exc()
      status = 1
  results[kind] = [status, err.getvalue()]
with open(results_path, "w") as f:
  json.dump(results, f)
"""


def _python(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def _check_refused(kind, script, tmp_path, status, stderr, match):
  if kind in LIBRARY_REFUSALS:
    assert status != 0, stderr[-3000:]
    assert re.search(match, stderr), stderr[-3000:]
  else:
    # A usage error: status 2 and two lines, "<script>: error: --flag ..." and a pointer
    # to --help, without absl's help text or a traceback.
    assert status == harness.USAGE_ERROR_STATUS, (status, stderr[-3000:])
    lines = stderr.rstrip("\n").splitlines()
    assert lines[-1] == f"see {script} --help", stderr[-3000:]
    prefix = f"{script}: error: "
    assert lines[-2].startswith(prefix), stderr[-3000:]
    error = lines[-2][len(prefix) :]
    assert re.search(match, error), (match, error)
    assert error.startswith("--") or kind == "positional_argument", error
    assert "Traceback" not in stderr and "flags:" not in stderr, stderr[-3000:]
    assert not any(line.startswith("USAGE") for line in lines), stderr
  # No partial output anywhere under tmp: no results, no chunks, no temporaries.
  left = [
    f
    for f in tmp_path.rglob("*")
    if f.is_file()
    and (
      f.name in OUTPUTS or f.suffix in (".npz", ".tmp") or "chunks" in f.parts
    )
  ]
  assert not left, left
  assert not (tmp_path / "out").exists() or not any(
    (tmp_path / "out").rglob("*")
  ), list((tmp_path / "out").rglob("*"))
  # Nothing left by the writability probe either.
  assert not list(tmp_path.rglob(".miajax-probe-*"))
  # Cases that promise more: these paths do not even appear.
  for name in ABSENT.get(kind, ()):
    assert not (tmp_path / name).exists(), name


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory):
  """{kind: (script, case directory, exit status, stderr, regex)} of every case, run by DRIVER."""
  cases, out = {}, {}
  for kind in SCRIPT_CASES:
    tmp = tmp_path_factory.mktemp(kind)
    script, args, match = _script_case(kind, tmp)
    cases[kind] = (script, args)
    out[kind] = (script, tmp, match)
  results = tmp_path_factory.mktemp("driver") / "results.json"
  p = _python(
    "-c",
    DRIVER,
    str(ROOT / "experiments"),
    # Grouped by script.
    json.dumps(
      sorted(
        ([kind, *cases[kind]] for kind in SCRIPT_CASES), key=lambda c: c[1]
      )
    ),
    str(results),
  )
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  done = json.loads(results.read_text())
  return {
    kind: (*out[kind][:2], *done[kind], out[kind][2]) for kind in SCRIPT_CASES
  }


@pytest.mark.slow
@pytest.mark.parametrize("kind", SCRIPT_CASES)
def test_script_bad_input(kind, script_runs):
  _check_refused(kind, *script_runs[kind])


@pytest.mark.slow
def test_script_refuses_in_its_own_process(tmp_path):
  # The script run as a user runs it: its own interpreter (whose __main__ docstring and
  # flags absl's usage text would print) exits with status 2, says why in one line and
  # writes nothing (the cases above share one interpreter).
  script, args, match = _script_case("unknown_dataset", tmp_path)
  p = _python(str(ROOT / "experiments" / script), *args)
  _check_refused(
    "unknown_dataset", script, tmp_path, p.returncode, p.stderr, match
  )
