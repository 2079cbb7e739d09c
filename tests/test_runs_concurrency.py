"""Processes sharing one shadow store or run directory split the work.

Real processes, started together: every model is trained exactly once (the
"pid N trains models [a, b)" lines), every process exits 0, the results are
bit-equal to a process working alone, and nothing half-written is left.
Each worker holds every chunk a little longer than its training takes
(``SLOW_S`` before writing it), so that the processes' work overlaps however
fast this machine compiles and trains.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from miajax import runs
from miajax.runs import claims as claims_lib
from miajax.runs import store

ROOT = pathlib.Path(__file__).resolve().parents[1]
SLOW_S = "0.7"
TRAINS = re.compile(r"pid (\d+) trains models \[(\d+), (\d+)\)")

# Waits until every worker has started (a file per worker), then runs.
BARRIER = """
import os, pathlib, sys, time
def barrier(directory, n):
  d = pathlib.Path(directory)
  d.mkdir(exist_ok=True)
  (d / str(os.getpid())).touch()
  t0 = time.time()
  while len(list(d.iterdir())) < n and time.time() - t0 < 300:
    time.sleep(0.01)
def slowed(module, name):
  write = getattr(module, name)
  def slow(*args, **kwargs):
    time.sleep(float(os.environ.get("SLOW_S", "0")))
    return write(*args, **kwargs)
  setattr(module, name, slow)
"""

STORE_WORKER = (
  BARRIER
  + """
import json
import numpy as np
from miajax import engine, runs
from miajax.runs import store
root, num_models, out, barrier_dir, n = sys.argv[1:6]
spec = runs.RunSpec(
  dataset="digits",
  num_examples=200,
  num_models=int(num_models),
  train=engine.TrainConfig(
    model="mlp", model_kwargs=(("widths", (16,)),), epochs=2, batch_size=32
  ),
  lowering=engine.Lowering(models_per_step=2, microbatch=32),
)
pool = store.pool_from_spec(spec)
slowed(store, "_store_chunk")
barrier(barrier_dir, int(n))
lines = []
shadows = store.ensure_shadows(root, pool, spec, log=lines.append)
np.save(out + ".npy", shadows.logits)
with open(out + ".json", "w") as f:
  json.dump({"log": lines, "trained": shadows.trained}, f)
"""
)

TRAIN_WORKER = (
  BARRIER
  + """
import runpy
sys.path.insert(0, "experiments")
from miajax.runs import run_dir
slowed(run_dir, "_write_chunk")
barrier(sys.argv[1], int(sys.argv[2]))
sys.argv = ["experiments/train_models.py", *sys.argv[3:]]
runpy.run_path("experiments/train_models.py", run_name="__main__")
"""
)


def _env():
  return {**os.environ, "PYTHONUNBUFFERED": "1", "SLOW_S": SLOW_S}


def _start(args, log_dir, name):
  out = open(log_dir / f"{name}.out", "w")
  err = open(log_dir / f"{name}.err", "w")
  p = subprocess.Popen(
    [sys.executable, "-c", *args], cwd=ROOT, env=_env(), stdout=out, stderr=err
  )
  out.close()
  err.close()
  return p


def _finish(procs, timeout=600):
  try:
    return [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _trained(text: str, pid: int) -> list[range]:
  found = [(int(a), range(int(b), int(c))) for a, b, c in TRAINS.findall(text)]
  assert all(p == pid for p, _ in found), found
  return [r for _, r in found]


def _each_model_once(per_process: list[list[range]], num_models: int):
  models = sorted(m for ranges in per_process for r in ranges for m in r)
  assert models == list(range(num_models)), per_process


def _leftovers(directory: pathlib.Path):
  return [
    p
    for p in directory.rglob("*")
    if p.name.endswith(".tmp")
    or "orbax-checkpoint-tmp" in p.name
    or p.name.startswith("checkpoint_")
    or ".corrupt" in p.name
  ]


@pytest.fixture(scope="module")
def solo_store(tmp_path_factory):
  """12 shadows trained by one process alone: what every sharing must equal."""
  tmp = tmp_path_factory.mktemp("solo_store")
  p = _start(
    [STORE_WORKER, str(tmp / "s"), "12", str(tmp / "o"), str(tmp / "b"), "1"],
    tmp,
    "solo",
  )
  assert _finish([p]) == [0], (tmp / "solo.err").read_text()[-3000:]
  return np.load(tmp / "o.npy")


@pytest.mark.slow
@pytest.mark.parametrize("asked", [(8, 8), (8, 8, 12)])
def test_processes_sharing_a_store_train_each_model_once(
  solo_store, tmp_path, asked
):
  root = tmp_path / "store"
  procs = [
    _start(
      [
        STORE_WORKER,
        str(root),
        str(n),
        str(tmp_path / f"o{i}"),
        str(tmp_path / "barrier"),
        str(len(asked)),
      ],
      tmp_path,
      f"w{i}",
    )
    for i, n in enumerate(asked)
  ]
  codes = _finish(procs)
  errs = [(tmp_path / f"w{i}.err").read_text() for i in range(len(asked))]
  assert codes == [0] * len(asked), [e[-3000:] for e in errs]
  assert not any("Traceback" in e for e in errs), errs
  results = [
    json.loads((tmp_path / f"o{i}.json").read_text()) for i in range(len(asked))
  ]
  per_process = [
    _trained("\n".join(r["log"]), p.pid) for r, p in zip(results, procs)
  ]
  _each_model_once(per_process, max(asked))
  print("models trained per process:", per_process)
  # The work was split, not done by one while the others waited.
  assert sum(1 for ranges in per_process if ranges) >= 2, per_process
  assert sum(r["trained"] for r in results) == max(asked)
  for i, n in enumerate(asked):
    np.testing.assert_array_equal(
      np.load(tmp_path / f"o{i}.npy"), solo_store[:n]
    )
  (entry,) = [d for d in root.iterdir() if d.is_dir()]
  assert not _leftovers(entry), _leftovers(entry)
  files = json.loads((entry / "manifest.json").read_text())["files"]
  blocks = sorted(p.stem for p in (entry / "chunks").glob("chunk_*.npz"))
  assert len(blocks) == max(asked) // 2  # no block written twice
  for name in blocks:
    assert {f"chunks/{name}.npz", f"params/{name}"} <= set(files), name
  # Every file checks out for a reader.
  loaded = store.load_store(entry, num_models=max(asked), log=lambda s: 0)
  np.testing.assert_array_equal(loaded.logits, solo_store[: max(asked)])


ARGS = [
  "--num_models=8",
  "--models_per_step=2",
  "--widths=16",
  "--epochs=2",
  "--batch_size=32",
  "--num_examples=240",
  "--label_only=false",
]


@pytest.mark.slow
def test_two_train_models_runs_into_one_directory_split_the_chunks(tmp_path):
  run = tmp_path / "run"
  procs = [
    _start(
      [
        TRAIN_WORKER,
        str(tmp_path / "barrier"),
        "2",
        f"--output_dir={run}",
        *ARGS,
      ],
      tmp_path,
      f"w{i}",
    )
    for i in range(2)
  ]
  # The same flags, one process alone and unslowed: the reference.
  solo = subprocess.run(
    [
      sys.executable,
      "experiments/train_models.py",
      f"--output_dir={tmp_path / 'solo'}",
      *ARGS,
    ],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  codes = _finish(procs)
  errs = [(tmp_path / f"w{i}.err").read_text() for i in range(2)]
  assert solo.returncode == 0, solo.stderr[-3000:]
  assert codes == [0, 0], [e[-3000:] for e in errs]
  assert not any("Traceback" in e for e in errs), errs
  per_process = [_trained(e, p.pid) for e, p in zip(errs, procs)]
  print("models trained per process:", per_process)
  _each_model_once(per_process, 8)
  assert all(per_process), per_process  # both trained some
  # Both processes merged: one wrote the outputs, the other found them done.
  merges = [e.count("merged 4 chunk files into") for e in errs]
  assert sorted(merges) == [0, 1], merges
  for name in ("logits.npy", "keep.npy", "labels.npy", "models.json"):
    assert (run / name).read_bytes() == (tmp_path / "solo" / name).read_bytes()
  assert sorted(p.name for p in (run / "chunks").iterdir()) == [
    f"chunk_{a:05d}_{a + 2:05d}.npz" for a in range(0, 8, 2)
  ]
  assert not _leftovers(run), _leftovers(run)
  got = runs.load_run(run, log=lambda s: None)
  np.testing.assert_array_equal(
    got.logits, np.load(tmp_path / "solo" / "logits.npy")
  )


HOLD = """
import sys
from miajax.runs import io
held = [io.try_lock(p, holder=True) for p in sys.argv[1:]]
print("held" if all(held) else "taken", flush=True)
sys.stdin.readline()  # holds them until told to exit
"""


def _holder(*paths):
  p = subprocess.Popen(
    [sys.executable, "-c", HOLD, *map(str, paths)],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert p.stdout.readline().strip() == "held"
  return p


def _let_go(p):
  p.stdin.write("\n")
  p.stdin.flush()
  p.wait(timeout=60)


def test_a_process_skips_models_another_holds_then_waits_and_takes_them(
  tmp_path,
):
  lines = []

  def log(line):
    lines.append(line)
    if "waits for" in line:  # the other process finishes, or dies
      _let_go(other)

  claims = claims_lib.Claims(tmp_path, log)
  other = _holder(claims.path(0))
  try:
    done, order = set(), []

    def train(chunks):
      for chunk in chunks:
        order.append(chunk)
        done.update(chunk)

    trained = claims_lib.train_claimed(
      claims,
      lambda: [c for c in ([0, 1], [2, 3], [4, 5]) if not set(c) <= done],
      lambda chunk: bool(set(chunk) & done),
      train,
    )
  finally:
    if other.poll() is None:
      other.kill()
      other.wait()
  assert trained == order == [[2, 3], [4, 5], [0, 1]]
  me = os.getpid()
  assert lines == [
    f"pid {me} trains models [2, 4)",
    f"pid {me} trains models [4, 6)",
    f"pid {me} waits for models [0, 2): pid {other.pid} on "
    f"{socket.gethostname()} is training them",
    f"pid {me} trains models [0, 2)",
  ]
  # Every lock is free again.
  assert claims.take(range(6))
  claims.release()


def test_temporaries_are_swept_only_where_nobody_writes(tmp_path):
  chunks = tmp_path / "chunks"
  chunks.mkdir()
  busy = chunks / ".chunk_00000_00002.npz.a1.tmp"
  stale = chunks / ".chunk_00002_00004.npz.b2.tmp"
  stale_ckpt = chunks / ".checkpoint_00004_00006.npz.c3.tmp"
  for p in (busy, stale, stale_ckpt):
    p.write_bytes(b"half")
  claims = claims_lib.Claims(tmp_path, lambda s: None)
  other = _holder(claims.path(1))  # writing chunk [0, 2) right now
  try:
    assert claims.sweep(chunks) == 2
  finally:
    _let_go(other)
  assert sorted(p.name for p in chunks.iterdir()) == [busy.name]
  assert claims.sweep(chunks) == 1 and not list(chunks.iterdir())
