"""A shadow store on disk: its layout, its parameters, and reading it back.

One store directory (``<root>/<fingerprint>/``, see
:func:`miajax.runs.pool.fingerprint`) holds::

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

:func:`load_store` reads one and trains nothing; :mod:`miajax.runs.store`
fills it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Callable, Iterable

import jax
import numpy as np

from miajax import designs
from miajax import engine as train_lib
from miajax.runs import integrity
from miajax.runs import io
from miajax.runs import store_files

__all__ = [
  "Shadows",
  "collect",
  "finished_chunks",
  "load_params",
  "load_store",
  "owners",
  "paired_design",
  "predict_config",
  "save_params",
  "store_json",
]


def finished_chunks(path: pathlib.Path) -> dict[str, range]:
  """Chunk name -> model range, for chunks whose metadata and parameters are both on disk."""
  return {
    f.stem: models
    for f, models in io.chunk_files(path / "chunks").items()
    if (path / "params" / f.stem).is_dir()
  }


def owners(chunks: dict[str, range]) -> dict[int, str]:
  owner: dict[int, str] = {}
  for name, models in chunks.items():
    for m in models:
      owner.setdefault(
        m, name
      )  # overlapping chunks (two writers) hold identical models: keep the first
  return owner


def _orbax():
  import orbax.checkpoint as ocp  # imported on use: the rest of miajax does not need it

  return ocp.PyTreeCheckpointer()


def save_params(path: pathlib.Path, variables) -> None:
  """Saves into ``path``, which must not exist: the store calls it through
  :func:`miajax.runs.io.save_dir_atomic` (a unique temporary directory,
  renamed into place), so concurrent or killed saves never meet."""
  # Host copies: a checkpoint of arrays sharded over this process's devices would need the same mesh to restore.
  _orbax().save(
    path.absolute(),
    jax.tree_util.tree_map(np.asarray, jax.device_get(variables)),
  )


def load_params(path: pathlib.Path):
  return _orbax().restore(path.absolute())


def predict_config(
  cfg: train_lib.TrainConfig, lowering: train_lib.Lowering
) -> dict | None:
  """What :func:`load_store` needs to rebuild a registry model's forward pass (None for a user model)."""
  if not cfg.builtin_model:
    return None
  return {
    "model": cfg.model,
    "model_kwargs": [
      [k, list(v) if isinstance(v, tuple) else v] for k, v in cfg.model_kwargs
    ],
    "compute_dtype": lowering.compute_dtype,
  }


def _config_from_json(d: dict) -> train_lib.TrainConfig:
  kwargs = tuple(
    (k, tuple(v) if isinstance(v, list) else v) for k, v in d["model_kwargs"]
  )
  return train_lib.TrainConfig(model=d["model"], model_kwargs=kwargs)


def _query_lowering(meta: dict) -> train_lib.Lowering:
  """The compute dtype the store's models were trained (and are queried) in."""
  train = meta["identity"].get("recipe", {}).get("train", {})
  return train_lib.Lowering(compute_dtype=train.get("compute_dtype", "float32"))


@dataclasses.dataclass
class Shadows:
  """The first ``M`` models of a store and their logits on the pool."""

  path: pathlib.Path
  fingerprint: str
  config: (
    train_lib.TrainConfig
  )  # enough to query the models (training-only fields may be defaults)
  num_classes: int
  lowering: train_lib.Lowering  # how the models are queried (compute dtype)
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
    owner = owners(finished_chunks(self.path))
    # Every block read is checked (a bad one is refused, naming its file).
    files = store_files.for_reading(self.path, self.fingerprint, lambda s: 0)
    files.check(owner[m] for m in models if m in owner)
    parts, cache = [], {}
    for m in models:
      if m not in owner:
        raise ValueError(f"store {str(self.path)!r} holds no model {m}")
      name = owner[m]
      if name not in cache:
        cache[name] = load_params(self.path / "params" / name)
      start = io.parse_chunk_name(name).start
      parts.append(
        jax.tree_util.tree_map(lambda a, i=m - start: a[i], cache[name])
      )
    return jax.tree_util.tree_map(lambda *a: np.stack(a), *parts)

  def predict(
    self, x, *, queries: str = "identity", batch_size: int = 1024
  ) -> np.ndarray:
    """Logits ``float32[models, n, queries, classes]`` of every model on new inputs, one chunk at a time."""
    owner = owners(finished_chunks(self.path))
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
          lowering=self.lowering,
        )
      )
    return np.concatenate(out, 0)


def store_json(path: pathlib.Path) -> dict:
  f = path / "store.json"
  if not f.is_file():
    raise ValueError(
      f"{str(path)!r} is not a shadow store (no store.json): {f} is "
      "missing; stores are made (and a lost store.json rewritten) by "
      "miajax.ensure_shadows or experiments/audit.py --shadow_store"
    )
  return json.loads(f.read_text())


def _query_logits(
  files, name: str, cfg, x, num_classes: int, queries: str, low
) -> np.ndarray:
  """The chunk's logits for ``queries``, from the saved parameters the first time they are asked for."""
  f = files.path / "logits" / queries / f"{name}.npy"
  if not f.exists():
    # One process computes them; another asking at once waits, then reads.
    with files.holding(io.parse_chunk_name(name)):
      if not f.exists():
        f.parent.mkdir(parents=True, exist_ok=True)
        logits = train_lib.predict(
          cfg,
          load_params(files.path / "params" / name),
          x,
          num_classes=num_classes,
          queries=queries,
          lowering=low,
        ).astype(np.float32)
        files.manifest.save_npy(f, logits)
        return logits
  bad = files.logits_problem(name, queries)
  if bad:
    raise integrity.corrupt(*bad, store_files.REPAIR)
  return np.load(f)


def collect(
  path: pathlib.Path,
  fp: str,
  cfg,
  x,
  num_classes: int,
  num_models: int,
  queries: str,
  keep: np.ndarray,
  log: Callable[[str], None],
  files=None,
) -> tuple[Shadows, float]:
  """The first ``num_models`` models' :class:`Shadows`, every file read
  checked (``files``: the caller's :class:`StoreFiles`, else a reader's,
  which refuses a bad block)."""
  if files is None:
    files = store_files.for_reading(path, fp, log)
  owner = files.owners(num_models, queries, fix=True)
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
  low = _query_lowering(store_json(path))
  meta, logits = {}, {}
  for name in names:
    meta[name] = files.metadata(name).arrays
    logits[name] = _query_logits(files, name, cfg, x, num_classes, queries, low)
  predict_s = time.perf_counter() - t0
  if not files.legacy and (bad := files.manifest.problem(path / "labels.npy")):
    raise integrity.corrupt(path / "labels.npy", bad, store_files.REPAIR)

  def take(get):
    return np.stack(
      [
        get(owner[m], m - io.parse_chunk_name(owner[m]).start)
        for m in range(num_models)
      ]
    )

  return Shadows(
    path=path,
    fingerprint=fp,
    config=cfg,
    num_classes=num_classes,
    lowering=low,
    keep=keep[:num_models],
    logits=take(lambda n, i: logits[n][i]),
    labels=np.load(path / "labels.npy"),
    train_accuracy=take(lambda n, i: meta[n]["train_accuracy"][i]),
    test_accuracy=take(lambda n, i: meta[n]["test_accuracy"][i]),
    diverged=take(lambda n, i: meta[n]["diverged"][i]),
  ), predict_s


def paired_design(
  design: str, num_models: int, num_examples: int, seed: int
) -> np.ndarray:
  if design != "paired":
    raise ValueError(
      f"the shadow store needs design='paired' (its first M models do not depend on how many are "
      f"trained; see miajax.runs.store), got {design!r}"
    )
  return designs.paired_keep(num_models, num_examples, seed=seed)


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
  meta = store_json(path)
  identity = meta["identity"]
  if config is None:
    if meta.get("predict_config") is None:
      raise ValueError(
        f"store {str(path)!r} holds a user model: pass the TrainConfig it was trained with as config="
      )
    config = _config_from_json(meta["predict_config"])
  owner = owners(finished_chunks(path))
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
  keep = paired_design(
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
  shadows, _ = collect(
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
