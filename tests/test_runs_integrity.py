"""A corruption catalogue for run directories and shadow stores.

Every case is either repaired (the rerun's numbers bit-identical to the clean
run's) or refused with a one-line error naming the file; none silently
changes a reported number. Readers (load_run, merge_chunks, load_store)
refuse; writers (run_training, ensure_shadows) repair unless told not to.
"""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from miajax import engine, runs
from miajax.runs import integrity, store

N = 480  # 4 models x 480 x 10 float32 logits: 75 KiB, room to zero 64 KiB
SPEC = runs.RunSpec(
  dataset="digits",
  num_examples=N,
  num_models=4,
  train=engine.TrainConfig(
    model="mlp",
    model_kwargs=(("activation", "relu"), ("widths", (16,))),
    epochs=1,
    batch_size=32,
    learning_rate=0.1,
  ),
  # No micro-batch timing on CPU; two chunks of two models.
  lowering=engine.Lowering(models_per_step=2, microbatch=32),
)
OTHER = dataclasses.replace(
  SPEC, train=dataclasses.replace(SPEC.train, learning_rate=0.05)
)
QUIET = dict(log=lambda s: None, progress=lambda p: None)
OUTPUTS = ("keep.npy", "labels.npy", "logits.npy", "models.json")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  """A clean run directory of SPEC, and one chunk of another recipe's."""
  root = tmp_path_factory.mktemp("clean")
  runs.run_training(SPEC, root / "run", **QUIET)
  runs.run_training(
    dataclasses.replace(OTHER, num_models=2), root / "other", **QUIET
  )
  return root


def _flip(path, offset=None, n=16):
  data = bytearray(path.read_bytes())
  at = len(data) // 2 if offset is None else offset
  data[at : at + n] = bytes(255 - b for b in data[at : at + n])
  path.write_bytes(bytes(data))


def _truncate(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero_logits(run):
  # 64 KiB of exact zeros after the header: finite, plausible logits.
  data = bytearray((run / "logits.npy").read_bytes())
  data[128 : 128 + 65536] = bytes(65536)
  (run / "logits.npy").write_bytes(bytes(data))
  assert np.isfinite(np.load(run / "logits.npy")).all()


def _stale_temporaries(run):
  (run / "chunks" / ".chunk_00000_00002.npz.x1y2.tmp").write_bytes(b"half")
  (run / "chunks" / ".checkpoint_00002_00004.npz.k9.tmp").write_bytes(b"")
  (run / ".logits.npy.a1b2.tmp").write_bytes(b"half")


def _edit_models_json(run):
  info = json.loads((run / "models.json").read_text())
  info["train_accuracy"][0] = 0.99
  (run / "models.json").write_text(json.dumps(info, indent=2) + "\n")


def _alter_keep(run):
  keep = np.load(run / "keep.npy")
  keep[0] = ~keep[0]
  np.save(run / "keep.npy", keep)


CHUNK0 = "chunks/chunk_00000_00002.npz"
CHUNK1 = "chunks/chunk_00002_00004.npz"
# name: (corrupt(run, clean_root), what load_run does, what merge_chunks
# does, what run_training(repair=False) does). "ok": works, the clean
# numbers; a path: refused in one line naming it. run_training (repair=True)
# repairs every case below.
RUN_CASES = {
  "truncated_chunk": (
    lambda r, c: _truncate(r / CHUNK1),
    "ok",
    CHUNK1,
    CHUNK1,
  ),
  "flipped_bytes_in_a_chunk": (
    lambda r, c: _flip(r / CHUNK0),
    "ok",
    CHUNK0,
    CHUNK0,
  ),
  "zeroed_64kib_of_logits": (
    lambda r, c: _zero_logits(r),
    "logits.npy",
    "ok",
    "ok",
  ),
  "foreign_chunk_of_another_recipe": (
    lambda r, c: shutil.copy(c / "other" / CHUNK0, r / CHUNK0),
    "ok",
    CHUNK0,
    CHUNK0,
  ),
  "chunk_holding_other_models": (
    lambda r, c: shutil.copy(r / CHUNK0, r / CHUNK1),
    "ok",
    CHUNK1,
    CHUNK1,
  ),
  "stale_temporaries": (lambda r, c: _stale_temporaries(r), "ok", "ok", "ok"),
  "deleted_manifest": (
    lambda r, c: (r / "manifest.json").unlink(),
    "manifest.json",
    "manifest.json",
    "ok",
  ),
  "truncated_manifest": (
    lambda r, c: _truncate(r / "manifest.json"),
    "manifest.json",
    "manifest.json",
    "manifest.json",
  ),
  "deleted_config_same_recipe": (
    lambda r, c: (r / "config.json").unlink(),
    "ok",
    "ok",
    "ok",
  ),
  "altered_keep": (
    lambda r, c: _alter_keep(r),
    "keep.npy",
    "keep.npy",
    "keep.npy",
  ),
  "truncated_labels": (
    lambda r, c: _truncate(r / "labels.npy"),
    "labels.npy",
    "labels.npy",
    "labels.npy",
  ),
  "edited_models_json": (
    lambda r, c: _edit_models_json(r),
    "models.json",
    "ok",
    "ok",
  ),
}


def _refused(excinfo, run, name):
  message = str(excinfo.value)
  assert "\n" not in message, message
  assert str(run / name) in message or f"{run.name}/{name}" in message, message


def _snapshot(run):
  return {
    p.relative_to(run).as_posix(): p.read_bytes()
    for p in run.rglob("*")
    if p.is_file() and "locks" not in p.parts
  }


@pytest.mark.slow
@pytest.mark.parametrize("case", RUN_CASES)
def test_run_directory_corruption_is_repaired_or_refused(clean, tmp_path, case):
  corrupt, read, merge, strict = RUN_CASES[case]
  ref = clean / "run"
  want = runs.load_run(ref, log=lambda s: None)
  corrupted = tmp_path / "corrupted"
  shutil.copytree(ref, corrupted)
  corrupt(corrupted, clean)

  for name, outcome, call in (
    ("read", read, lambda d: runs.load_run(d, log=lambda s: None)),
    ("merge", merge, lambda d: runs.merge_chunks(d, log=lambda s: None)),
    (
      "strict",
      strict,
      lambda d: runs.run_training(SPEC, d, repair=False, **QUIET),
    ),
  ):
    run = tmp_path / name
    shutil.copytree(corrupted, run)
    before = _snapshot(run)
    if outcome == "ok":
      got = call(run)
      np.testing.assert_array_equal(got.logits, want.logits)
      np.testing.assert_array_equal(got.train_accuracy, want.train_accuracy)
    else:
      with pytest.raises(ValueError) as e:
        call(run)
      _refused(e, run, outcome)
      # A refusal changes no file, and so no number.
      assert _snapshot(run) == before, name

  run = tmp_path / "repaired"
  shutil.copytree(corrupted, run)
  lines = []
  res = runs.run_training(SPEC, run, log=lines.append, progress=lambda p: None)
  for name in OUTPUTS:
    assert (run / name).read_bytes() == (ref / name).read_bytes(), name
  np.testing.assert_array_equal(res.logits, want.logits)
  again = runs.load_run(run, log=lambda s: None)
  np.testing.assert_array_equal(again.logits, want.logits)
  assert not list(run.rglob("*.tmp")), list(run.rglob("*.tmp"))
  if strict in (CHUNK0, CHUNK1):  # retrained: the bad file is kept aside
    assert (run / (strict + ".corrupt")).exists()
    assert any("moved aside as" in s and strict in s for s in lines), lines
    assert res.chunks_trained == 1


@pytest.mark.slow
def test_a_lost_config_json_with_another_recipe_is_refused(clean, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(clean / "run", run)
  (run / "config.json").unlink()
  before = _snapshot(run)
  with pytest.raises(runs.ConfigMismatchError) as e:
    runs.run_training(OTHER, run, **QUIET)
  message = str(e.value)
  assert "\n" not in message
  assert "has no config.json" in message and CHUNK0 in message, message
  assert "another configuration" in message
  assert _snapshot(run) == before  # nothing reused, nothing written


def _strip_seals(path, keys=(integrity.FINGERPRINT, integrity.DIGEST)):
  """Rewrites a chunk file as the previous version wrote it (no seal)."""
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files if k not in keys}
  np.savez(path, **arrays)


@pytest.mark.slow
def test_a_legacy_run_directory_loads_unverified_and_is_adopted(
  clean, tmp_path
):
  run = tmp_path / "run"
  shutil.copytree(clean / "run", run)
  for chunk in (run / "chunks").glob("chunk_*.npz"):
    _strip_seals(chunk)
  (run / "manifest.json").unlink()
  want = runs.load_run(clean / "run", log=lambda s: None)
  lines = []
  got = runs.load_run(run, log=lines.append)
  assert len(lines) == 1 and "legacy run directory" in lines[0], lines
  np.testing.assert_array_equal(got.logits, want.logits)

  lines.clear()
  res = runs.run_training(SPEC, run, log=lines.append, progress=lambda p: None)
  assert res.chunks_trained == 0
  assert any("legacy run directory" in s for s in lines), lines
  np.testing.assert_array_equal(res.logits, want.logits)
  # Adopted: from now on its files are checked like any other's.
  files = json.loads((run / "manifest.json").read_text())["files"]
  assert {CHUNK0, CHUNK1, *OUTPUTS} <= set(files)
  # A well-formed legacy chunk with other numbers: only the record sees it.
  with np.load(run / CHUNK0) as z:
    arrays = {k: z[k] for k in z.files}
  np.savez(run / CHUNK0, **{**arrays, "logits": arrays["logits"] * 0})
  with pytest.raises(ValueError, match="chunk_00000_00002.npz: its sha256"):
    runs.merge_chunks(run, log=lambda s: None)


def test_chunk_seals_detect_foreign_and_changed_arrays(tmp_path):
  arrays = {"model_indices": np.arange(2, 4), "logits": np.ones((2, 3))}
  path = tmp_path / "chunk_00002_00004.npz"
  np.savez(path, **integrity.seal(arrays, "a" * 64))
  read = lambda fp, files=None: integrity.read_chunk(
    path, range(2, 4), fp, files, path.name
  )
  ok = read("a" * 64)
  assert ok.problem == "" and ok.sealed and set(ok.arrays) == set(arrays)
  assert "another configuration" in read("b" * 64).problem
  sealed = integrity.seal(arrays, "a" * 64)
  sealed["logits"] = np.full((2, 3), 2.0)  # resealing needs the digest
  np.savez(path, **sealed)
  assert "differ from the digest" in read("a" * 64).problem
  np.savez(path, **arrays)  # unsealed: legacy only without a manifest
  assert read("a" * 64).problem == ""
  assert "nothing says which run" in read("a" * 64, files={}).problem
  assert (
    "does not hold the models"
    in integrity.read_chunk(
      path, range(0, 2), "a" * 64, None, path.name
    ).problem
  )


# ------------------------------------------------------------------ the store

STORE_SPEC = dataclasses.replace(SPEC, num_examples=200)
Q = "identity"


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
  """A store of STORE_SPEC's 4 models (and their mirror logits, computed
  from the parameters), and another recipe's entry."""
  root = tmp_path_factory.mktemp("store")
  pool = store.pool_from_spec(STORE_SPEC)
  shadows = store.ensure_shadows(root / "s", pool, STORE_SPEC, log=lambda s: 0)
  mirror = store.ensure_shadows(
    root / "s",
    pool,
    dataclasses.replace(STORE_SPEC, queries="mirror"),
    log=lambda s: 0,
  )
  other = store.ensure_shadows(
    root / "o",
    pool,
    dataclasses.replace(STORE_SPEC, train=OTHER.train),
    log=lambda s: 0,
  )
  return root, pool, shadows, mirror, other


def _largest(directory):
  return max(
    (p for p in directory.rglob("*") if p.is_file()),
    key=lambda p: p.stat().st_size,
  )


def _zero_store_logits(entry, queries=Q):
  path = entry / "logits" / queries / "chunk_00000_00002.npy"
  data = bytearray(path.read_bytes())
  data[128:] = bytes(len(data) - 128)
  path.write_bytes(bytes(data))


def _leftovers(entry):
  orbax = entry / "params" / "chunk_00002_00004.orbax-checkpoint-tmp-17"
  (orbax / "d").mkdir(parents=True)
  (orbax / "d" / "x").write_bytes(b"half")
  ours = entry / "params" / ".chunk_00002_00004.k2j.tmp" / "d"
  ours.mkdir(parents=True)
  (ours / "_METADATA").write_bytes(b"{")
  (entry / "chunks" / ".chunk_00000_00002.npz.p9.tmp").write_bytes(b"")


S_CHUNK = "chunks/chunk_00002_00004.npz"
S_PARAMS = "params/chunk_00000_00002"
S_LOGITS = f"logits/{Q}/chunk_00000_00002.npy"
# name: (corrupt(entry, other entry), what load_store does, models the
# repair retrains).
STORE_CASES = {
  "truncated_chunk": (lambda e, o: _truncate(e / S_CHUNK), S_CHUNK, 2),
  "corrupt_params": (
    lambda e, o: _flip(_largest(e / S_PARAMS), n=8),
    S_PARAMS,
    2,
  ),
  "zeroed_logits": (lambda e, o: _zero_store_logits(e), S_LOGITS, 2),
  "foreign_block": (
    lambda e, o: shutil.copy(o / S_CHUNK, e / S_CHUNK),
    S_CHUNK,
    2,
  ),
  "deleted_store_json": (
    lambda e, o: (e / "store.json").unlink(),
    "store.json",
    0,
  ),
  "deleted_manifest": (
    lambda e, o: (e / "manifest.json").unlink(),
    "manifest.json",
    0,
  ),
  "altered_labels": (
    lambda e, o: np.save(e / "labels.npy", np.load(e / "labels.npy")[::-1]),
    "labels.npy",
    0,
  ),
  "leftover_orbax_and_temporaries": (lambda e, o: _leftovers(e), "ok", 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", STORE_CASES)
def test_store_corruption_is_repaired_or_refused(clean_store, tmp_path, case):
  root, pool, shadows, _, other = clean_store
  corrupt, read, retrained = STORE_CASES[case]
  shutil.copytree(root / "s", tmp_path / "s")
  entry = tmp_path / "s" / shadows.fingerprint
  corrupt(entry, root / "o" / other.fingerprint)

  if read == "ok":
    got = store.load_store(entry, num_models=4, log=lambda s: 0)
    np.testing.assert_array_equal(got.logits, shadows.logits)
  else:
    with pytest.raises(ValueError) as e:
      loaded = store.load_store(entry, num_models=4, log=lambda s: 0)
      loaded.variables()  # the parameters are checked when read
    _refused(e, entry, read)

  lines = []
  again = store.ensure_shadows(
    tmp_path / "s", pool, STORE_SPEC, log=lines.append
  )
  assert again.trained == retrained, lines
  np.testing.assert_array_equal(again.logits, shadows.logits)
  np.testing.assert_array_equal(again.train_accuracy, shadows.train_accuracy)
  loaded = store.load_store(entry, num_models=4, log=lambda s: 0)
  np.testing.assert_array_equal(loaded.logits, shadows.logits)
  for a, b in zip(
    jax.tree_util.tree_leaves(loaded.variables()),
    jax.tree_util.tree_leaves(shadows.variables()),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)
  left = [
    p
    for p in entry.rglob("*")
    if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name
  ]
  assert not left, left
  if retrained:
    assert any("moving block" in s and read in s for s in lines), lines
    assert list(entry.rglob("*.corrupt"))


@pytest.mark.slow
def test_store_logits_of_another_query_set_are_computed_again(
  clean_store, tmp_path
):
  root, pool, shadows, mirror, _ = clean_store
  shutil.copytree(root / "s", tmp_path / "s")
  entry = tmp_path / "s" / shadows.fingerprint
  _zero_store_logits(entry, "mirror")
  spec = dataclasses.replace(STORE_SPEC, queries="mirror")
  with pytest.raises(ValueError) as e:
    store.load_store(entry, num_models=4, queries="mirror", log=lambda s: 0)
  _refused(e, entry, "logits/mirror/chunk_00000_00002.npy")
  lines = []
  again = store.ensure_shadows(tmp_path / "s", pool, spec, log=lines.append)
  # Not retrained: computed from the checked parameters, as the first time.
  assert again.trained == 0 and not any("moving block" in s for s in lines)
  np.testing.assert_array_equal(again.logits, mirror.logits)


@pytest.mark.slow
def test_a_legacy_store_loads_unverified_and_is_adopted(clean_store, tmp_path):
  root, pool, shadows, _, _ = clean_store
  shutil.copytree(root / "s", tmp_path / "s")
  entry = tmp_path / "s" / shadows.fingerprint
  for chunk in (entry / "chunks").glob("chunk_*.npz"):
    _strip_seals(
      chunk,
      keys=(
        integrity.FINGERPRINT,
        integrity.DIGEST,
        "params_sha256",
        "queries",
        "logits_sha256",
      ),
    )
  (entry / "manifest.json").unlink()
  lines = []
  got = store.load_store(entry, num_models=4, log=lines.append)
  assert len(lines) == 1 and "legacy store entry" in lines[0], lines
  np.testing.assert_array_equal(got.logits, shadows.logits)
  lines.clear()
  again = store.ensure_shadows(
    tmp_path / "s", pool, STORE_SPEC, log=lines.append
  )
  assert again.trained == 0
  assert any("legacy store entry" in s for s in lines), lines
  np.testing.assert_array_equal(again.logits, shadows.logits)
  files = json.loads((entry / "manifest.json").read_text())["files"]
  assert {S_CHUNK, S_PARAMS, S_LOGITS, "labels.npy"} <= set(files)
  _flip(_largest(entry / S_PARAMS), n=8)
  with pytest.raises(ValueError, match="params/chunk_00000_00002: its files"):
    store.load_store(entry, num_models=4, log=lambda s: 0)
