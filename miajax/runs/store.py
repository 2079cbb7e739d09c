"""A shadow-model store: train reference models once, reuse them for every audit of the same pool.

Shadows depend only on the candidate pool, the membership design and the
training recipe, not on the model being audited, so they are kept under a
fingerprint of exactly those (:func:`miajax.runs.pool.fingerprint`) and found
again by the next audit; :mod:`miajax.runs.shadows` describes the directory.
The fingerprint leaves out what does not change a trained parameter (the
number of models, the query set), so asking for more models, or querying
other views, reuses what is there: models missing from the store are trained,
logits for a query set not yet computed come from the saved parameters
through :func:`miajax.engine.predict`.

Growing a store.  Only ``design="paired"`` is stored: ``paired_keep(M, N,
seed)`` draws its pairs row by row from one generator, so its first ``M``
rows are the same for every larger ``M`` (tested), and model ``m`` trains from
``fold_in(PRNGKey(seed), m)`` whatever its chunk.  Models ``0..M-1`` of a
``2M``-model store are therefore the ``M``-model design, and a store that
holds fewer models than asked trains only the missing ones.  (``lira_keep``
ranks over all models, so its rows change with ``M``: it is refused.)

Use from code::

    shadows = miajax.ensure_shadows("store", pool, spec)  # trains what is missing
    shadows = miajax.load_store("store/<fingerprint>")    # reads, trains nothing
    shadows.keep, shadows.logits                # [M, N], [M, N, Q, C]
    variables = shadows.variables(range(4))     # stacked, for train.predict
    logits = shadows.predict(x_new)             # every stored model on new inputs
"""

from __future__ import annotations

import dataclasses

import pathlib
import time
from typing import Callable

import numpy as np

from miajax import engine as train_lib
from miajax.runs import checkpoint as checkpoint_lib
from miajax.runs import claims as claims_lib
from miajax.runs import decisions
from miajax.runs import integrity
from miajax.runs import io
from miajax.runs import merge as merge_lib
from miajax.runs import store_files
from miajax.runs.pool import (
  STORE_VERSION,
  Pool,
  fingerprint,
  pool_from_spec,
)
from miajax.runs.shadows import (
  Shadows,
  collect,
  load_store,
  paired_design,
  predict_config,
  save_params,
  store_json,
)
from miajax.runs.spec import RunSpec

__all__ = [
  "Pool",
  "Shadows",
  "pool_from_spec",
  "fingerprint",
  "ensure_shadows",
  "load_store",
  "STORE_VERSION",
]


def ensure_shadows(
  root,
  pool: Pool,
  spec: RunSpec,
  *,
  log: Callable[[str], None] = print,
  checkpoint_every_s: float = 300.0,
  checkpoint_every_epochs: int = 0,
) -> Shadows:
  """The first ``spec.num_models`` shadows of ``spec`` on ``pool``, training only those the store lacks.

  Args:
    root: the store's root directory (``<root>/<fingerprint>/`` is this pool
      and recipe's store; created if needed).
    pool: the candidate examples.
    spec: design (``"paired"``), seed, recipe, number of models and query set;
      ``spec.dataset``/``num_examples``/``label_only`` are not read (the pool
      is given).
    log: receives progress lines, including ``"reusing N shadow models from
      the store, training K"``.
    checkpoint_every_s, checkpoint_every_epochs: when the chunk in flight
      saves its training state under ``<fingerprint>/checkpoints/`` (as in
      :func:`miajax.runs.run_training`); a rerun resumes it mid-chunk.
  """
  checkpoint_lib.check_intervals(checkpoint_every_s, checkpoint_every_epochs)
  cfg = spec.train
  keep = paired_design(spec.design, spec.num_models, pool.x.shape[0], cfg.seed)
  train_lib.check_inputs(pool.x, pool.y, keep, cfg, pool.num_classes)
  spec.lowering.validate(cfg.batch_size)
  train_lib.query_views(pool.x[:1], spec.queries)
  fp, identity = fingerprint(pool, spec)
  path = pathlib.Path(root) / fp
  _prepare(path, fp, identity, cfg, pool.num_classes, spec.lowering, log)
  files = store_files.open_store(path, fp, pool.y, log)
  owner = files.owners(spec.num_models, spec.queries, fix=True)
  todo = [m for m in range(spec.num_models) if m not in owner]
  reused = spec.num_models - len(todo)
  log(
    f"reusing {reused} shadow models from the store, training {len(todo)} ({path})"
  )
  if todo:  # decided once per store entry: audits that add models read it back
    spec = dataclasses.replace(
      spec,
      lowering=decisions.for_run(
        spec, pool.x, pool.num_classes, keep, path, log
      ),
    )
  checkpoints = checkpoint_lib.Checkpointer(
    path / "checkpoints",
    every_s=checkpoint_every_s,
    every_epochs=checkpoint_every_epochs,
    fingerprint=fp[:16],
    log=log,
  )
  t_start = time.perf_counter()
  train_s, predict_s, trained = _train(
    files, pool, spec, keep, todo, checkpoints, log
  )
  if trained:
    log(f"trained {trained} models in {time.perf_counter() - t_start:.1f} s")
  shadows, query_s = collect(
    path,
    fp,
    cfg,
    pool.x,
    pool.num_classes,
    spec.num_models,
    spec.queries,
    keep,
    log,
    files=files,
  )
  shadows.trained, shadows.reused = trained, spec.num_models - trained
  shadows.train_seconds, shadows.predict_seconds = train_s, predict_s + query_s
  return shadows


def _prepare(
  path: pathlib.Path,
  fp: str,
  identity: dict,
  cfg: train_lib.TrainConfig,
  num_classes: int,
  lowering: train_lib.Lowering,
  log: Callable[[str], None],
) -> None:
  for sub in ("chunks", "params", "logits"):
    (path / sub).mkdir(parents=True, exist_ok=True)
  with io.lock(path / "locks" / "store.lock"):
    _write_store_json(path, fp, identity, cfg, num_classes, lowering, log)


def _write_store_json(path, fp, identity, cfg, num_classes, lowering, log):
  if (path / "store.json").exists():
    try:
      old = store_json(path)
    except ValueError as e:  # not JSON: it is rewritten from the identity
      old = None
      integrity.set_aside(path / "store.json", str(e), log, "rewriting it")
    if old is not None and old.get("identity") != identity:
      raise ValueError(
        f"store {str(path)!r} was written for another configuration under the same fingerprint; "
        "delete it"
      )
  if not (path / "store.json").exists():
    io.write_json_atomic(
      path / "store.json",
      {
        "fingerprint": fp,
        "identity": identity,
        "num_classes": num_classes,
        "predict_config": predict_config(cfg, lowering),
      },
    )


def _train(
  files: store_files.StoreFiles,
  pool: Pool,
  spec: RunSpec,
  keep: np.ndarray,
  todo: list[int],
  checkpoints: checkpoint_lib.Checkpointer,
  log: Callable[[str], None],
) -> tuple[float, float, int]:
  """Trains the models ``todo`` (then whatever other processes left) into
  the store; returns training and querying seconds, and how many models this
  process trained."""
  cfg = spec.train
  k = train_lib.plan_models_per_step(
    cfg,
    pool.num_classes,
    tuple(pool.x.shape[1:]),
    spec.num_models,
    lowering=spec.lowering,
  )
  stored = lambda fix: files.owners(spec.num_models, spec.queries, fix)

  def plan(todo=None):
    owner = stored(True)
    if todo is None:
      todo = [m for m in range(spec.num_models) if m not in owner]
    in_flight = []
    for ckpt, models in checkpoint_lib.checkpoint_files(
      checkpoints.directory
    ).items():
      if set(models) <= set(owner):
        ckpt.unlink(missing_ok=True)  # its models were stored since
      else:
        in_flight.append(models)
    # A checkpointed chunk resumes only with the same models: keep it whole.
    return merge_lib.plan_around(todo, k, in_flight)

  plans = [plan(todo)]
  seconds = [0.0, 0.0]

  def train(chunks):
    for result in train_lib.train_chunks(
      cfg,
      pool.x,
      pool.y,
      keep,
      num_classes=pool.num_classes,
      lowering=spec.lowering,
      chunks=chunks,
      checkpoints=checkpoints,
    ):
      seconds[0] += result.train_seconds
      seconds[1] += _store_chunk(files, pool, spec, keep, result)
      idx = [int(i) for i in result.model_indices]
      for m in np.flatnonzero(result.diverged):
        log(
          f"  WARNING: model {idx[m]} diverged (non-finite loss); it is flagged and excluded from attacks"
        )
      log(f"  stored models {idx[0]}..{idx[-1]} ({result.train_seconds:.1f} s)")

  trained = claims_lib.train_claimed(
    files.claims,
    lambda: plans.pop() if plans else plan(),
    lambda chunk: bool(set(chunk) & set(stored(False))),
    train,
    files.started,
  )
  return seconds[0], seconds[1], sum(map(len, trained))


def _store_chunk(files, pool: Pool, spec: RunSpec, keep, result) -> float:
  """Writes a trained chunk's parameters, logits and metadata; returns the seconds spent querying."""
  cfg, path, manifest = spec.train, files.path, files.manifest
  idx = [int(i) for i in result.model_indices]
  name = io.chunk_name(idx)
  t0 = time.perf_counter()
  params_sha = manifest.save_dir(
    path / "params" / name, lambda d: save_params(d, result.variables)
  )
  logits = train_lib.predict(
    cfg,
    result.variables,
    pool.x,
    num_classes=pool.num_classes,
    queries=spec.queries,
    lowering=spec.lowering,
  ).astype(np.float32)
  (path / "logits" / spec.queries).mkdir(parents=True, exist_ok=True)
  logits_sha = manifest.save_npy(
    path / "logits" / spec.queries / f"{name}.npy", logits
  )
  correct = logits[:, :, 0].argmax(-1) == pool.y
  train_acc = (correct & keep[idx]).sum(1) / keep[idx].sum(1)
  if pool.x_test is not None and len(pool.x_test):
    test_logits = train_lib.predict(
      cfg,
      result.variables,
      pool.x_test,
      num_classes=pool.num_classes,
      lowering=spec.lowering,
    )
    test_acc = (test_logits[:, :, 0].argmax(-1) == pool.y_test).mean(1)
  else:
    test_acc = np.full(len(idx), np.nan)
  seconds = time.perf_counter() - t0
  # Written last: a chunk counts as stored only once its parameters and
  # logits are on disk; it seals their hashes with its own.
  arrays = dict(
    model_indices=np.asarray(idx),
    loss=result.loss,
    diverged=result.diverged,
    train_accuracy=train_acc,
    test_accuracy=test_acc,
    params_sha256=np.asarray(params_sha),
    queries=np.asarray(spec.queries),
    logits_sha256=np.asarray(logits_sha),
  )
  manifest.save_npz(
    path / "chunks" / f"{name}.npz",
    integrity.seal(arrays, manifest.fingerprint),
  )
  return seconds
