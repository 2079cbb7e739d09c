"""Bad input catalogue.

Every case feeds one bad input to a public function or script and checks that
it fails with ValueError/TypeError (scripts: a nonzero exit) whose message
names the offending argument, before any training, and that scripts leave no
partial output behind.
"""

import dataclasses
import gzip
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from miajax import attacks, data, defenses, engine, metrics, scores
from miajax.engine import loop, step

ROOT = pathlib.Path(__file__).resolve().parents[1]

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


def _script_case(kind, tmp):
  """(script, args, regex for stderr) for one bad invocation; output goes to tmp/'out'."""
  out = f"--output_dir={tmp / 'out'}"
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
      r"microbatch must be a positive divisor of batch_size \(8\)",
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
]
# audit.py checks the target files before it makes the output directory or the shadow store.
ABSENT = {"audit_bad_target_file": ("out", "store")}

# Runs every bad invocation in ONE interpreter, one script after the other: each case is the
# script's own absl ``app.run(main, argv)`` (flag parsing, main, usage errors and their exit
# status), with its stderr and exit status recorded.  Only the interpreter start-up and the
# imports are shared: FLAGS are reset to their defaults before each case, and a script's own
# flags are dropped before the next script is imported (the scripts define flags on import).
# Compiling the training step fails loudly, so a case that is only refused once training has
# started fails here too.  test_script_refuses_in_its_own_process runs one case as a user does.
DRIVER = r"""
import contextlib, importlib, io, json, sys, traceback
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
absl_flags, loaded, results = set(FLAGS), None, {}
for kind, script, args in json.loads(cases):
  if loaded is None or loaded.__name__ != script[:-3]:
    for name in set(FLAGS) - absl_flags:
      delattr(FLAGS, name)
    sys.modules.pop(script[:-3], None)  # a fresh import defines the flags again
    loaded = importlib.import_module(script[:-3])
    if hasattr(loaded, "define_flags"):  # audit.py defines its flags when run, not on import
      loaded.define_flags()
  FLAGS.unparse_flags()
  sys.argv = [f"{experiments}/{script}", *args]
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      app.run(loaded.main, argv=sys.argv)
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


def _check_refused(kind, tmp_path, status, stderr, match):
  assert status != 0, stderr[-3000:]
  assert re.search(match, stderr), stderr[-3000:]
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
  # Cases that promise more: these paths do not even appear.
  for name in ABSENT.get(kind, ()):
    assert not (tmp_path / name).exists(), name


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory):
  """{kind: (case directory, exit status, stderr, regex)} of every case, run by DRIVER."""
  cases, out = {}, {}
  for kind in SCRIPT_CASES:
    tmp = tmp_path_factory.mktemp(kind)
    script, args, match = _script_case(kind, tmp)
    cases[kind] = (script, args)
    out[kind] = (tmp, match)
  results = tmp_path_factory.mktemp("driver") / "results.json"
  p = _python(
    "-c",
    DRIVER,
    str(ROOT / "experiments"),
    # Grouped by script: each script is imported once.
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
    kind: (out[kind][0], *done[kind], out[kind][1]) for kind in SCRIPT_CASES
  }


@pytest.mark.slow
@pytest.mark.parametrize("kind", SCRIPT_CASES)
def test_script_bad_input(kind, script_runs):
  _check_refused(kind, *script_runs[kind])


@pytest.mark.slow
def test_script_refuses_in_its_own_process(tmp_path):
  # The script run as a user runs it: its own interpreter exits nonzero, says why on stderr
  # and writes nothing (the cases above share one interpreter).
  script, args, match = _script_case("unknown_dataset", tmp_path)
  p = _python(str(ROOT / "experiments" / script), *args)
  _check_refused("unknown_dataset", tmp_path, p.returncode, p.stderr, match)
