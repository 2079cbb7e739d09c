"""experiments/audit.py and miajax.runs.store: target validation, exact LiRA scores, store reuse and growth."""

import dataclasses
import importlib
import json
import re
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import app

from miajax import attacks, designs, runs, scores, engine
from miajax.runs import checkpoint, store

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
audit = importlib.import_module("audit")  # defines no flags on import

N, C = 300, 10
SMALL = ["--dataset=digits", "--num_examples=300", "--epochs=2", "--widths=32"]
# The RunSpec those flags describe (common.run_spec with the digits defaults), built here without flags.
SPEC = runs.RunSpec(
  dataset="digits",
  num_examples=N,
  num_models=10,
  train=engine.TrainConfig(
    model="mlp",
    model_kwargs=(("activation", "relu"), ("widths", (32,))),
    epochs=2,
    batch_size=64,
    learning_rate=0.1,
  ),
)


def _run(*args, timeout=600):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  return subprocess.run(
    [sys.executable, str(ROOT / "experiments" / "audit.py"), *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
    cwd=ROOT,
  )


def _good():
  rng = np.random.default_rng(0)
  return rng.normal(size=(N, C)).astype(np.float32), np.arange(0, N, 2)


def _check(outputs, members, kind="logits", queries=1):
  return audit.check_target(
    outputs, members, kind=kind, pool_size=N, num_classes=C, num_queries=queries
  )


def test_check_target_accepts_logits_probabilities_and_queries():
  logits, members = _good()
  t = _check(logits, members)
  assert (
    t.logits.shape == (N, 1, C)
    and t.is_member.sum() == N // 2
    and (t.members == members).all()
  )
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  probs[0] = np.eye(C)[
    3
  ]  # exact zeros go through the floored log: finite logits
  tp = _check(probs, members[::-1].copy(), kind="probabilities")
  assert np.isfinite(tp.logits).all() and (tp.members == members).all()
  np.testing.assert_allclose(
    np.asarray(scores.confidence(tp.logits[1:], np.zeros((N - 1, 1), int))),
    probs[1:, None, 0],
    rtol=1e-5,
  )
  assert _check(
    logits[:, None].repeat(2, 1), members, queries=2
  ).logits.shape == (N, 2, C)


@pytest.mark.parametrize(
  "outputs, members, kind, queries, match",
  [
    (
      np.zeros((N,)),
      None,
      "logits",
      1,
      r"--target_outputs must be .*\(rank 1\)",
    ),
    (
      np.zeros((N, 2, 3, C)),
      None,
      "logits",
      1,
      r"--target_outputs must be .*\(rank 4\)",
    ),
    (
      np.zeros((N - 1, C)),
      None,
      "logits",
      1,
      "--target_outputs has 299 rows but the pool has 300",
    ),
    (
      np.zeros((N, C + 1)),
      None,
      "logits",
      1,
      "--target_outputs has 11 classes but the pool has 10",
    ),
    (
      np.zeros((N, C)),
      None,
      "logits",
      2,
      "--target_outputs has 1 queries .* --queries gives the shadows 2",
    ),
    ("nan", None, "logits", 1, "--target_outputs holds 1 NaN/inf"),
    ("inf", None, "logits", 1, "--target_outputs holds 1 NaN/inf"),
    (
      np.full((N, C), "a"),
      None,
      "logits",
      1,
      "--target_outputs must hold real numbers",
    ),
    (
      "logits",
      None,
      "probabilities",
      1,
      "--target_outputs with --target_kind=probabilities must lie in",
    ),
    (
      np.full((N, C), 0.5),
      None,
      "probabilities",
      1,
      "must sum to 1 over classes, a row sums to 5",
    ),
    (None, np.array([], np.int64), "logits", 1, "--target_members is empty"),
    (
      None,
      np.array([0, 5, N]),
      "logits",
      1,
      r"--target_members must lie in \[0, 300\), got \[0, 300\]",
    ),
    (None, np.array([-1, 5]), "logits", 1, r"--target_members must lie in"),
    (
      None,
      np.array([1, 4, 4, 7]),
      "logits",
      1,
      "--target_members repeats 1 indices .first 4",
    ),
    (
      None,
      np.array([1.0, 2.0]),
      "logits",
      1,
      "--target_members must hold integer pool indices, got dtype float64",
    ),
    (
      None,
      np.arange(N) % 2 == 0,
      "logits",
      1,
      "--target_members must hold integer .* np.flatnonzero",
    ),
    (
      None,
      np.arange(N),
      "logits",
      1,
      "--target_members names every pool example",
    ),
    (
      None,
      np.zeros((2, 3), int),
      "logits",
      1,
      "--target_members must be a 1-D array",
    ),
  ],
)
def test_check_target_rejects(outputs, members, kind, queries, match):
  logits, good_members = _good()
  if isinstance(outputs, str) and outputs in ("nan", "inf"):
    logits[7, 3] = np.nan if outputs == "nan" else np.inf
    outputs = logits
  elif isinstance(outputs, str) and outputs == "logits":
    outputs = logits
  with pytest.raises(app.UsageError, match=match):
    _check(
      logits if outputs is None else outputs,
      good_members if members is None else members,
      kind,
      queries,
    )


def test_load_target_file_errors(tmp_path):
  logits, members = _good()
  np.save(tmp_path / "logits.npy", logits)
  np.save(tmp_path / "members.npy", members)
  kw = dict(kind="logits", pool_size=N, num_classes=C, num_queries=1)
  t = audit.load_target(tmp_path / "logits.npy", tmp_path / "members.npy", **kw)
  assert t.logits.shape == (N, 1, C)
  np.savez(tmp_path / "one.npz", whatever=logits)
  assert audit.load_target(
    tmp_path / "one.npz", tmp_path / "members.npy", **kw
  ).logits.shape == (N, 1, C)
  np.savez(tmp_path / "named.npz", logits=logits, other=members)
  assert audit.load_target(
    tmp_path / "named.npz", tmp_path / "members.npy", **kw
  ).logits.shape == (N, 1, C)
  cases = [
    (
      (tmp_path / "missing.npy", tmp_path / "members.npy"),
      "--target_outputs: .*missing.npy' does not exist",
    ),
    (
      (tmp_path / "logits.npy", tmp_path / "nope.npy"),
      "--target_members: .*nope.npy' does not exist",
    ),
    ((None, tmp_path / "members.npy"), "--target_outputs is required"),
    ((tmp_path / "logits.npy", None), "--target_members is required"),
  ]
  (tmp_path / "text.npy").write_text("not numpy")
  cases.append(
    (
      (tmp_path / "text.npy", tmp_path / "members.npy"),
      "--target_outputs: .* not a readable",
    )
  )
  np.savez(tmp_path / "two.npz", a=logits, b=logits)
  cases.append(
    (
      (tmp_path / "two.npz", tmp_path / "members.npy"),
      r"--target_outputs: .* holds arrays \['a', 'b'\]",
    )
  )
  np.save(
    tmp_path / "objects.npy",
    np.array([1, "x"], dtype=object),
    allow_pickle=True,
  )
  cases.append(
    (
      (tmp_path / "logits.npy", tmp_path / "objects.npy"),
      "--target_members: .* not a readable",
    )
  )
  for (o, m), match in cases:
    with pytest.raises(app.UsageError, match=match):
      audit.load_target(o, m, **kw)


# A bad target file makes audit.py exit nonzero before it writes the output or the shadow store:
# test_bad_inputs.py's script case audit_bad_target_file.


def test_paired_design_extends():
  for seed in (0, 3):
    assert (
      designs.paired_keep(16, 301, seed=seed)[:8]
      == designs.paired_keep(8, 301, seed=seed)
    ).all()


@pytest.fixture(scope="module")
def store10(tmp_path_factory):
  """A store of 10 shadows for SPEC: models 0-7 serve as the audit's shadows, model 8 as the 'external' target."""
  root = tmp_path_factory.mktemp("store")
  pool = store.pool_from_spec(SPEC)
  lines = []
  shadows = store.ensure_shadows(root, pool, SPEC, log=lines.append)
  assert (
    shadows.trained == 10
    and "reusing 0 shadow models from the store, training 10" in lines[0]
  )
  return root, pool, shadows


@pytest.mark.slow
def test_store_loads_and_queries_saved_parameters(store10):
  root, pool, shadows = store10
  assert shadows.logits.shape == (10, N, 1, C)
  assert (shadows.keep == designs.paired_keep(10, N, seed=0)).all()
  loaded = store.load_store(root / shadows.fingerprint, num_models=8)
  np.testing.assert_array_equal(loaded.logits, shadows.logits[:8])
  np.testing.assert_array_equal(loaded.keep, shadows.keep[:8])
  # The checkpointed parameters reproduce the stored logits.
  np.testing.assert_allclose(
    loaded.predict(pool.x[:50]), shadows.logits[:8, :50], atol=1e-5
  )
  variables = loaded.variables([2, 9])
  np.testing.assert_allclose(
    engine.predict(loaded.config, variables, pool.x[:20], num_classes=C),
    shadows.logits[[2, 9], :20],
    atol=1e-5,
  )
  # A query set never computed comes from the saved parameters, training nothing.
  lines = []
  mirror = store.ensure_shadows(
    root,
    pool,
    dataclasses.replace(SPEC, num_models=8, queries="mirror"),
    log=lines.append,
  )
  assert mirror.trained == 0 and mirror.logits.shape == (8, N, 2, C)
  assert "training 0" in lines[0] and any(
    "querying the saved parameters" in s for s in lines
  )
  np.testing.assert_allclose(
    mirror.logits[:, :, :1], shadows.logits[:8], atol=1e-5
  )
  # Another recipe is another store.
  other = dataclasses.replace(
    SPEC, train=dataclasses.replace(SPEC.train, epochs=3)
  )
  assert store.fingerprint(pool, other)[0] != shadows.fingerprint
  assert (
    store.fingerprint(
      pool, dataclasses.replace(SPEC, num_models=64, queries="mirror")
    )[0]
    == shadows.fingerprint
  )


def test_store_resumes_a_chunk_from_its_checkpoint(
  store10, tmp_path, monkeypatch
):
  root, pool, shadows = store10
  spec = dataclasses.replace(SPEC, num_models=2)
  save = checkpoint.Checkpointer.save

  def save_then_fail(self, models, epoch, *args, **kw):
    save(self, models, epoch, *args, **kw)
    if epoch == 1:
      raise KeyboardInterrupt("killed after the first checkpoint")

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_fail)
  with pytest.raises(KeyboardInterrupt):
    store.ensure_shadows(
      tmp_path, pool, spec, log=lambda s: None, checkpoint_every_epochs=1
    )
  (saved,) = (tmp_path / shadows.fingerprint / "checkpoints").glob("*.npz")
  monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
  lines = []
  again = store.ensure_shadows(
    tmp_path, pool, spec, log=lines.append, checkpoint_every_epochs=1
  )
  assert any("from the checkpoint at epoch 1 of 2" in s for s in lines), lines
  assert not saved.exists()  # used, then removed once the chunk was stored
  # Bit for bit what an uninterrupted store of the same two models holds.
  whole = store.ensure_shadows(
    tmp_path / "whole", pool, spec, log=lambda s: None
  )
  np.testing.assert_array_equal(again.logits, whole.logits)
  np.testing.assert_allclose(again.logits, shadows.logits[:2], atol=1e-5)


def _report_numbers(rep):
  return {
    k: (v["auc"], v["tpr_at_fpr"], v["balanced_accuracy"])
    for k, v in rep["attacks"].items()
  }


@pytest.mark.slow
def test_audit_reproduces_lira_online_and_reuses_the_store(store10, tmp_path):
  root, pool, shadows = store10
  # Model 8 of the store is the "external" target: its own logits and members, exported as files.
  np.save(tmp_path / "target.npy", shadows.logits[8, :, 0])
  np.save(tmp_path / "members.npy", np.flatnonzero(shadows.keep[8]))
  args = [
    *SMALL,
    f"--target_outputs={tmp_path / 'target.npy'}",
    f"--target_members={tmp_path / 'members.npy'}",
    f"--shadow_store={root}",
  ]
  # Twice the shadows, side by side with the first audit: the store's 10 are reused, only the
  # 6 missing ones train (into chunks of their own, which the audit of models 0-7 never reads).
  more = subprocess.Popen(
    [
      sys.executable,
      str(ROOT / "experiments" / "audit.py"),
      *args,
      "--num_models=16",
      f"--output_dir={tmp_path / 'c'}",
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "PYTHONUNBUFFERED": "1"},
    cwd=ROOT,
  )
  try:
    proc = _run(*args, "--num_models=8", f"--output_dir={tmp_path / 'a'}")
    _, more_err = more.communicate(timeout=600)
  finally:
    if more.poll() is None:
      more.kill()
  assert more.returncode == 0, more_err[-3000:]
  assert "reusing 10 shadow models from the store, training 6" in more_err
  assert (
    json.loads((tmp_path / "c" / "report.json").read_text())["shadows"][
      "trained"
    ]
    == 6
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "reusing 8 shadow models from the store, training 0" in proc.stderr

  # The same attack in-process on the same shadow logits (models 0-7) and the same target.
  lab = pool.y[None, :, None]
  sc = np.asarray(scores.logit_scaled(shadows.logits[:9], lab))
  expected = np.asarray(attacks.lira_online(sc[:8], shadows.keep[:8], sc[8:9]))[
    0
  ]
  rows = np.genfromtxt(tmp_path / "a" / "scores.csv", delimiter=",", names=True)
  ranked_by = json.loads((tmp_path / "a" / "report.json").read_text())[
    "ranked_by"
  ]["attack"]
  # Most exposed first, by the strongest attack (test_audit_friction.py).
  assert len(rows) == N and (np.diff(rows[ranked_by]) <= 0).all()
  got = np.empty(N)
  got[rows["index"].astype(int)] = rows["lira_online"]
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
  assert (
    rows["is_member"].astype(bool) == shadows.keep[8][rows["index"].astype(int)]
  ).all()

  rep = json.loads((tmp_path / "a" / "report.json").read_text())
  assert set(rep) >= {"config", "target", "attacks", "timing_s", "shadows"}
  for name in (
    "lira_online",
    "lira_online_fixed",
    "lira_offline",
    "lira_offline_fixed",
    "global_threshold",
    "rmia",
    "rmia_offline",
    "loss_threshold",
    "confidence_threshold",
    "entropy_threshold",
    "modified_entropy_threshold",
  ):
    a = rep["attacks"][name]
    assert 0 <= a["auc"] <= 1 and "auc_ci" in a and "epsilon_lower_bound" in a
    assert set(a["tpr_at_fpr"]) == {"0.01", "0.001", "1e-05"}
  correct = shadows.logits[8, :, 0].argmax(-1) == pool.y
  assert rep["target"]["train_accuracy"] == pytest.approx(
    correct[shadows.keep[8]].mean()
  )
  assert rep["target"]["test_accuracy"] == pytest.approx(
    correct[~shadows.keep[8]].mean()
  )
  assert rep["shadows"] == {
    **rep["shadows"],
    "models": 8,
    "trained": 0,
    "reused": 8,
  }
  assert (tmp_path / "a" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # Again, now that the store holds 16: the same 8 shadows, nothing trained, the same numbers.
  again = _run(*args, "--num_models=8", f"--output_dir={tmp_path / 'b'}")
  assert again.returncode == 0 and "training 0" in again.stderr
  assert _report_numbers(
    json.loads((tmp_path / "b" / "report.json").read_text())
  ) == _report_numbers(rep)


def _trained_models(stderr: str) -> list[int]:
  """The models a process's log says it trained ("pid N trains models [a, b)")."""
  out = []
  for a, b in re.findall(r"pid \d+ trains models \[(\d+), (\d+)\)", stderr):
    out.extend(range(int(a), int(b)))
  return out


@pytest.mark.slow
def test_concurrent_audits_on_one_store_train_each_shadow_once(
  store10, tmp_path
):
  # Real audit.py processes, 3 and then 2 at once on an empty store each,
  # against a solo audit on a third: all exit 0, every shadow trained by
  # exactly one process (their logs say which), and every report equal.
  _, _, shadows = store10
  np.save(tmp_path / "target.npy", shadows.logits[8, :, 0])
  np.save(tmp_path / "members.npy", np.flatnonzero(shadows.keep[8]))
  args = [
    *SMALL,
    f"--target_outputs={tmp_path / 'target.npy'}",
    f"--target_members={tmp_path / 'members.npy'}",
    "--num_models=8",
    "--models_per_step=2",
  ]
  audit = [sys.executable, str(ROOT / "experiments" / "audit.py")]
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  reports = {}
  for store_name, count in (("three", 3), ("two", 2), ("solo", 1)):
    procs = [
      subprocess.Popen(
        [
          *audit,
          *args,
          f"--shadow_store={tmp_path / store_name}",
          f"--output_dir={tmp_path / f'{store_name}{i}'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
      )
      for i in range(count)
    ]
    try:
      errs = [p.communicate(timeout=600)[1] for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
    for p, err in zip(procs, errs):
      assert p.returncode == 0, err[-3000:]
    trained = sorted(m for err in errs for m in _trained_models(err))
    assert trained == list(range(8)), (store_name, trained)
    for i in range(count):
      rep = json.loads(
        (tmp_path / f"{store_name}{i}" / "report.json").read_text()
      )
      reports[f"{store_name}{i}"] = rep["attacks"]
  solo = reports.pop("solo0")
  for name, got in reports.items():
    assert got == solo, name
