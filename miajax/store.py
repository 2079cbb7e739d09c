"""A shadow-model store: train reference models once, reuse them for every audit of the same pool.

Shadows depend only on the candidate pool, the membership design and the
training recipe, not on the model being audited, so they are kept under a
fingerprint of exactly those and found again by the next audit::

    <root>/<fingerprint>/
      store.json                     what the fingerprint was computed from
      labels.npy                     int32[examples]
      chunks/chunk_00000_00008.npz   per chunk: model_indices, loss, diverged,
                                     train/test accuracy (written last: it marks
                                     the chunk as finished)
      params/chunk_00000_00008/      the chunk's variables (orbax-checkpoint),
                                     stacked on a leading [models] axis
      logits/<queries>/chunk_00000_00008.npy
                                     float32[models, examples, queries, classes]
                                     on the pool, one folder per query set

The fingerprint is the sha256 of a canonical JSON (sorted keys) of the pool's
identity (name, shape, and sha256 of the bytes of ``x`` and ``y``), the design
and its seed, the number of examples, the recipe (``RunSpec.to_json()``
without ``num_models``, ``queries``, ``label_only`` and ``data_dir``, which do
not change a trained parameter, and without ``dataset``/``num_examples``, which
the pool's identity replaces) and the model (a user model's parameter
shapes).  So asking for more models, or querying other views, reuses what is
there: models missing from the store are trained, logits for a query set not
yet computed come from the saved parameters through :func:`miajax.train.predict`.

Growing a store.  Only ``design="paired"`` is stored: ``paired_keep(M, N,
seed)`` draws its pairs row by row from one generator, so its first ``M``
rows are the same for every larger ``M`` (tested), and model ``m`` trains from
``fold_in(PRNGKey(seed), m)`` whatever its chunk.  Models ``0..M-1`` of a
``2M``-model store are therefore the ``M``-model design, and a store that
holds fewer models than asked trains only the missing ones.  (``lira_keep``
ranks over all models, so its rows change with ``M``: it is refused.)

Use from code::

    shadows = miajax.store.ensure_shadows("store", pool, spec)     # trains what is missing
    shadows = miajax.store.load_store("store/<fingerprint>")       # reads, trains nothing
    shadows.keep, shadows.logits                                    # [M, N], [M, N, Q, C]
    variables = shadows.variables(range(4))                         # stacked, for train.predict
    logits = shadows.predict(x_new)                                 # every stored model on new inputs
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Callable, Iterable

import jax
import numpy as np

from miajax import checkpoint as checkpoint_lib
from miajax import config as config_lib
from miajax import designs
from miajax import runs
from miajax import train as train_lib
from miajax.report import write_json_atomic

__all__ = [
  "Pool",
  "Shadows",
  "pool_from_spec",
  "fingerprint",
  "ensure_shadows",
  "load_store",
  "STORE_VERSION",
]

STORE_VERSION = 1
# RunSpec fields that leave the trained parameters unchanged: a store answers them without training.
# "dataset" and "num_examples" are replaced by the pool's identity (name, content hashes, length), so the same
# data reached through another path or an explicit --num_examples=N is the same store.
_NOT_IN_FINGERPRINT = (
  "num_models",
  "queries",
  "label_only",
  "data_dir",
  "extra_queries",
  "dataset",
  "num_examples",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Pool:
  """The candidate examples shadows are trained on: ``x float32[N, ...]``, ``y int32[N]``.

  ``x_test``/``y_test`` (optional) only give the shadows' test accuracy.
  """

  name: str
  x: np.ndarray
  y: np.ndarray
  num_classes: int
  x_test: np.ndarray | None = None
  y_test: np.ndarray | None = None

  def __post_init__(self):
    x, y = np.asarray(self.x), np.asarray(self.y)
    if x.ndim < 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
      raise ValueError(
        f"pool {self.name!r}: x must be [N, ...] and y [N] with N >= 2, got {x.shape} and {y.shape}"
      )
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(
        f"pool {self.name!r}: y must hold integer labels, got {y.dtype}"
      )
    if y.min() < 0 or y.max() >= self.num_classes:
      raise ValueError(
        f"pool {self.name!r}: labels span [{y.min()}, {y.max()}], outside [0, {self.num_classes})"
      )
    object.__setattr__(self, "x", np.ascontiguousarray(x, np.float32))
    object.__setattr__(self, "y", np.ascontiguousarray(y, np.int32))

  def identity(self) -> dict:
    """Name, shape and content hashes: the same data under the same name is the same pool wherever it lives."""
    return {
      "name": self.name,
      "examples": int(self.x.shape[0]),
      "input_shape": list(self.x.shape[1:]),
      "num_classes": int(self.num_classes),
      "x_sha256": hashlib.sha256(self.x.tobytes()).hexdigest(),
      "y_sha256": hashlib.sha256(self.y.tobytes()).hexdigest(),
    }


def pool_from_spec(spec: runs.RunSpec) -> Pool:
  """The pool a :class:`miajax.runs.RunSpec` trains on (its dataset's first ``num_examples``)."""
  ds = runs.load_dataset(spec)
  return Pool(
    spec.dataset, ds.x_train, ds.y_train, ds.num_classes, ds.x_test, ds.y_test
  )


def fingerprint(pool: Pool, spec: runs.RunSpec) -> tuple[str, dict]:
  """``(sha256 hex, the JSON it hashes)`` of the shadows ``spec`` trains on ``pool``."""
  recipe = spec.to_json()
  for key in _NOT_IN_FINGERPRINT:
    recipe.pop(key, None)
  cfg = spec.train
  if cfg.builtin_model:
    model = {"name": cfg.model, "kwargs": recipe["train"]["model_kwargs"]}
  else:
    model = config_lib.model_fingerprint(
      cfg, tuple(pool.x.shape[1:]), pool.num_classes
    )
  identity = {
    "store_version": STORE_VERSION,
    "pool": pool.identity(),
    "design": spec.design,
    "seed": cfg.seed,
    "num_examples": int(pool.x.shape[0]),
    "recipe": recipe,
    "model": model,
  }
  # A round trip through JSON turns tuples into lists, so the stored copy compares equal to a fresh one.
  identity = json.loads(json.dumps(identity, sort_keys=True))
  canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest(), identity


def _chunk_name(models) -> str:
  return f"chunk_{models[0]:05d}_{models[-1] + 1:05d}"


def _finished_chunks(path: pathlib.Path) -> dict[str, range]:
  """Chunk name -> model range, for chunks whose metadata and parameters are both on disk."""
  found = {}
  for f in sorted((path / "chunks").glob("chunk_*_*.npz")):
    parts = f.stem.split("_")
    try:
      start, stop = int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
      continue
    if stop > start and (path / "params" / f.stem).is_dir():
      found[f.stem] = range(start, stop)
  return found


def _owners(chunks: dict[str, range]) -> dict[int, str]:
  owner: dict[int, str] = {}
  for name, models in chunks.items():
    for m in models:
      owner.setdefault(
        m, name
      )  # overlapping chunks (two writers) hold identical models: keep the first
  return owner


def _save_npz_atomic(path: pathlib.Path, **arrays) -> None:
  fd, tmp = tempfile.mkstemp(
    dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
  )
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _checkpointer():
  import orbax.checkpoint as ocp  # imported on use: the rest of miajax does not need it

  return ocp.PyTreeCheckpointer()


def _save_params(path: pathlib.Path, variables) -> None:
  if (
    path.exists()
  ):  # left by a run killed before its chunk's metadata was written
    shutil.rmtree(path)
  # Host copies: a checkpoint of arrays sharded over this process's devices would need the same mesh to restore.
  _checkpointer().save(
    path.absolute(),
    jax.tree_util.tree_map(np.asarray, jax.device_get(variables)),
  )


def _load_params(path: pathlib.Path):
  return _checkpointer().restore(path.absolute())


def _predict_config(cfg: train_lib.TrainConfig) -> dict | None:
  """What :func:`load_store` needs to rebuild a registry model's forward pass (None for a user model)."""
  if not cfg.builtin_model:
    return None
  return {
    "model": cfg.model,
    "model_kwargs": [
      [k, list(v) if isinstance(v, tuple) else v] for k, v in cfg.model_kwargs
    ],
    "compute_dtype": cfg.compute_dtype,
  }


def _config_from_json(d: dict) -> train_lib.TrainConfig:
  kwargs = tuple(
    (k, tuple(v) if isinstance(v, list) else v) for k, v in d["model_kwargs"]
  )
  return train_lib.TrainConfig(
    model=d["model"], model_kwargs=kwargs, compute_dtype=d["compute_dtype"]
  )


@dataclasses.dataclass
class Shadows:
  """The first ``M`` models of a store and their logits on the pool."""

  path: pathlib.Path
  fingerprint: str
  config: (
    train_lib.TrainConfig
  )  # enough to query the models (training-only fields may be defaults)
  num_classes: int
  keep: np.ndarray  # bool[models, examples]
  logits: np.ndarray  # float32[models, examples, queries, classes]
  labels: np.ndarray  # int32[examples]
  train_accuracy: np.ndarray  # float[models], on each model's members
  test_accuracy: np.ndarray  # float[models]; nan without a test set
  diverged: np.ndarray  # bool[models]
  trained: int = 0  # models this call trained
  reused: int = 0  # models this call found in the store
  train_seconds: float = 0.0
  predict_seconds: float = 0.0

  def variables(self, models: Iterable[int] | None = None):
    """Variables of ``models`` (default: all ``M``) stacked on a leading axis, read from the checkpoints."""
    models = list(range(self.keep.shape[0]) if models is None else models)
    owner = _owners(_finished_chunks(self.path))
    parts, cache = [], {}
    for m in models:
      if m not in owner:
        raise ValueError(f"store {str(self.path)!r} holds no model {m}")
      name = owner[m]
      if name not in cache:
        cache[name] = _load_params(self.path / "params" / name)
      start = int(name.split("_")[1])
      parts.append(
        jax.tree_util.tree_map(lambda a, i=m - start: a[i], cache[name])
      )
    return jax.tree_util.tree_map(lambda *a: np.stack(a), *parts)

  def predict(
    self, x, *, queries: str = "identity", batch_size: int = 1024
  ) -> np.ndarray:
    """Logits ``float32[models, n, queries, classes]`` of every model on new inputs, one chunk at a time."""
    owner = _owners(_finished_chunks(self.path))
    m_total = self.keep.shape[0]
    out = []
    for name in dict.fromkeys(owner[m] for m in range(m_total)):
      models = [m for m in range(m_total) if owner[m] == name]
      out.append(
        train_lib.predict(
          self.config,
          self.variables(models),
          x,
          num_classes=self.num_classes,
          queries=queries,
          batch_size=batch_size,
        )
      )
    return np.concatenate(out, 0)


def _store_json(path: pathlib.Path) -> dict:
  f = path / "store.json"
  if not f.is_file():
    raise ValueError(
      f"{str(path)!r} is not a shadow store (no store.json); stores are made by "
      "miajax.store.ensure_shadows or experiments/audit.py --shadow_store"
    )
  return json.loads(f.read_text())


def _prepare(
  path: pathlib.Path,
  fp: str,
  identity: dict,
  cfg: train_lib.TrainConfig,
  num_classes: int,
) -> None:
  for sub in ("chunks", "params", "logits"):
    (path / sub).mkdir(parents=True, exist_ok=True)
  if (path / "store.json").exists():
    old = _store_json(path)
    if old.get("identity") != identity:
      raise ValueError(
        f"store {str(path)!r} was written for another configuration under the same fingerprint; "
        "delete it"
      )
  else:
    write_json_atomic(
      path / "store.json",
      {
        "fingerprint": fp,
        "identity": identity,
        "num_classes": num_classes,
        "predict_config": _predict_config(cfg),
      },
    )


def _query_logits(
  path: pathlib.Path, name: str, cfg, x, num_classes: int, queries: str
) -> np.ndarray:
  """The chunk's logits for ``queries``, from the saved parameters the first time they are asked for."""
  f = path / "logits" / queries / f"{name}.npy"
  if f.exists():
    return np.load(f)
  f.parent.mkdir(parents=True, exist_ok=True)
  logits = train_lib.predict(
    cfg,
    _load_params(path / "params" / name),
    x,
    num_classes=num_classes,
    queries=queries,
  ).astype(np.float32)
  runs.save_npy_atomic(f, logits)
  return logits


def _collect(
  path: pathlib.Path,
  fp: str,
  cfg,
  x,
  num_classes: int,
  num_models: int,
  queries: str,
  keep: np.ndarray,
  log: Callable[[str], None],
) -> tuple[Shadows, float]:
  owner = _owners(_finished_chunks(path))
  missing = [m for m in range(num_models) if m not in owner]
  if missing:
    raise ValueError(
      f"store {str(path)!r} lacks models {missing[:10]}{'...' if len(missing) > 10 else ''}"
    )
  names = list(dict.fromkeys(owner[m] for m in range(num_models)))
  new = [
    n for n in names if not (path / "logits" / queries / f"{n}.npy").exists()
  ]
  if new:
    log(
      f"querying the saved parameters of {len(new)} chunks on {queries!r} views (not stored yet)"
    )
  t0 = time.perf_counter()
  meta, logits = {}, {}
  for name in names:
    meta[name] = dict(np.load(path / "chunks" / f"{name}.npz"))
    logits[name] = _query_logits(path, name, cfg, x, num_classes, queries)
  predict_s = time.perf_counter() - t0

  def take(get):
    return np.stack(
      [
        get(owner[m], m - int(owner[m].split("_")[1]))
        for m in range(num_models)
      ]
    )

  return Shadows(
    path=path,
    fingerprint=fp,
    config=cfg,
    num_classes=num_classes,
    keep=keep[:num_models],
    logits=take(lambda n, i: logits[n][i]),
    labels=np.load(path / "labels.npy"),
    train_accuracy=take(lambda n, i: meta[n]["train_accuracy"][i]),
    test_accuracy=take(lambda n, i: meta[n]["test_accuracy"][i]),
    diverged=take(lambda n, i: meta[n]["diverged"][i]),
  ), predict_s


def _design(
  design: str, num_models: int, num_examples: int, seed: int
) -> np.ndarray:
  if design != "paired":
    raise ValueError(
      f"the shadow store needs design='paired' (its first M models do not depend on how many are "
      f"trained; see miajax.store), got {design!r}"
    )
  return designs.paired_keep(num_models, num_examples, seed=seed)


def ensure_shadows(
  root,
  pool: Pool,
  spec: runs.RunSpec,
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
  n = pool.x.shape[0]
  keep = _design(spec.design, spec.num_models, n, cfg.seed)
  train_lib.check_inputs(pool.x, pool.y, keep, cfg, pool.num_classes)
  train_lib.query_views(pool.x[:1], spec.queries)
  fp, identity = fingerprint(pool, spec)
  path = pathlib.Path(root) / fp
  _prepare(path, fp, identity, cfg, pool.num_classes)
  if not (path / "labels.npy").exists():
    runs.save_npy_atomic(path / "labels.npy", pool.y)

  owner = _owners(_finished_chunks(path))
  todo = [m for m in range(spec.num_models) if m not in owner]
  reused = spec.num_models - len(todo)
  log(
    f"reusing {reused} shadow models from the store, training {len(todo)} ({path})"
  )
  k = train_lib.plan_models_per_step(
    cfg, pool.num_classes, tuple(pool.x.shape[1:]), spec.num_models
  )
  checkpoints = checkpoint_lib.Checkpointer(
    path / "checkpoints",
    every_s=checkpoint_every_s,
    every_epochs=checkpoint_every_epochs,
    fingerprint=fp[:16],
    log=log,
  )
  in_flight = []
  for ckpt, models in checkpoint_lib.checkpoint_files(
    path / "checkpoints"
  ).items():
    if set(models) <= set(owner):
      ckpt.unlink(missing_ok=True)  # its models were stored since
    else:
      in_flight.append(models)
  train_s = predict_s = 0.0
  t_start = time.perf_counter()
  for result in train_lib.train_chunks(
    pool.x,
    pool.y,
    keep,
    cfg,
    num_classes=pool.num_classes,
    # A checkpointed chunk resumes only with the same models: keep it whole.
    chunks=runs._plan_around(todo, k, in_flight),
    checkpoints=checkpoints,
  ):
    train_s += result.train_seconds
    idx = [int(i) for i in result.model_indices]
    name = _chunk_name(idx)
    t0 = time.perf_counter()
    _save_params(path / "params" / name, result.variables)
    logits = train_lib.predict(
      cfg,
      result.variables,
      pool.x,
      num_classes=pool.num_classes,
      queries=spec.queries,
    ).astype(np.float32)
    (path / "logits" / spec.queries).mkdir(parents=True, exist_ok=True)
    runs.save_npy_atomic(path / "logits" / spec.queries / f"{name}.npy", logits)
    correct = logits[:, :, 0].argmax(-1) == pool.y
    train_acc = (correct & keep[idx]).sum(1) / keep[idx].sum(1)
    if pool.x_test is not None and len(pool.x_test):
      test_logits = train_lib.predict(
        cfg, result.variables, pool.x_test, num_classes=pool.num_classes
      )
      test_acc = (test_logits[:, :, 0].argmax(-1) == pool.y_test).mean(1)
    else:
      test_acc = np.full(len(idx), np.nan)
    predict_s += time.perf_counter() - t0
    # Written last: a chunk counts as stored only once its parameters and logits are on disk.
    _save_npz_atomic(
      path / "chunks" / f"{name}.npz",
      model_indices=np.asarray(idx),
      loss=result.loss,
      diverged=result.diverged,
      train_accuracy=train_acc,
      test_accuracy=test_acc,
    )
    for m in np.flatnonzero(result.diverged):
      log(
        f"  WARNING: model {idx[m]} diverged (non-finite loss); it is flagged and excluded from attacks"
      )
    log(f"  stored models {idx[0]}..{idx[-1]} ({result.train_seconds:.1f} s)")
  if todo:
    log(f"trained {len(todo)} models in {time.perf_counter() - t_start:.1f} s")
  shadows, query_s = _collect(
    path,
    fp,
    cfg,
    pool.x,
    pool.num_classes,
    spec.num_models,
    spec.queries,
    keep,
    log,
  )
  shadows.trained, shadows.reused = len(todo), reused
  shadows.train_seconds, shadows.predict_seconds = train_s, predict_s + query_s
  return shadows


def load_store(
  path,
  *,
  num_models: int | None = None,
  queries: str = "identity",
  config: train_lib.TrainConfig | None = None,
  x=None,
  log: Callable[[str], None] = print,
) -> Shadows:
  """Reads the store at ``path`` (``<root>/<fingerprint>``); trains nothing.

  Args:
    path: one store directory.
    num_models: the first M models (default: every model of the longest
      prefix ``0..M-1`` the store holds).
    queries: the query set of the returned logits; computed from the saved
      parameters (and stored) if needed, which needs ``x``, the pool inputs.
    config: the TrainConfig the models were trained with; needed only for a
      user model (a registry model's forward pass is rebuilt from store.json).
    x: the pool's inputs, only for a query set not stored yet.

  Returns:
    :class:`Shadows` (``keep``, ``logits``, ``variables(models)``, ``predict(x)``).
  """
  path = pathlib.Path(path)
  meta = _store_json(path)
  identity = meta["identity"]
  if config is None:
    if meta.get("predict_config") is None:
      raise ValueError(
        f"store {str(path)!r} holds a user model: pass the TrainConfig it was trained with as config="
      )
    config = _config_from_json(meta["predict_config"])
  owner = _owners(_finished_chunks(path))
  prefix = 0
  while prefix in owner:
    prefix += 1
  if num_models is None:
    num_models = prefix - prefix % 2
  if num_models < 2 or num_models > prefix:
    raise ValueError(
      f"store {str(path)!r} holds models 0..{prefix - 1} (a prefix of {prefix}); asked for "
      f"{num_models}"
    )
  n = identity["num_examples"]
  keep = _design(
    identity["design"], num_models + num_models % 2, n, identity["seed"]
  )
  if x is None:
    missing = [
      nm
      for nm in dict.fromkeys(owner[m] for m in range(num_models))
      if not (path / "logits" / queries / f"{nm}.npy").exists()
    ]
    if missing:
      raise ValueError(
        f"store {str(path)!r} has no {queries!r} logits for {missing}: pass x (the pool inputs)"
      )
    x = np.zeros(
      (1,) + tuple(identity["pool"]["input_shape"]), np.float32
    )  # never queried
  shadows, _ = _collect(
    path,
    meta["fingerprint"],
    config,
    x,
    meta["num_classes"],
    num_models,
    queries,
    keep,
    log,
  )
  return shadows
