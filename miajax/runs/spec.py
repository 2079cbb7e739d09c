"""What a run is: :class:`RunSpec` (data, design, recipe) and :class:`RunResult`.

``RunSpec.to_json()`` is what a run directory's ``config.json`` holds and
what its fingerprint is computed from, so its keys and values are part of the
file format: a field left out of it (chunking, devices) must not change a
trained parameter, and a field added to it must be left out when it has its
old default, or existing run directories would be refused.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from miajax import data as data_lib
from miajax import engine as train_lib
from miajax.attacks import label_only as label_only_lib

__all__ = [
  "ConfigMismatchError",
  "RunSpec",
  "RunResult",
  "label_queries",
  "load_dataset",
  "make_keep",
]


class ConfigMismatchError(ValueError):
  """A run directory holds a run of another configuration (nothing was written)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What to train: the data, the membership design and the training recipe."""

  dataset: str = "digits"
  data_dir: str | None = None
  num_examples: int | None = None  # None: the whole training set
  design: str = "paired"  # "paired" or "lira"
  num_models: int = 64
  pkeep: float = 0.5
  queries: str = "identity"
  train: train_lib.TrainConfig = train_lib.TrainConfig()
  # Perturbed copies of every candidate whose predicted labels the run keeps (label-only attacks).
  label_only: label_only_lib.LabelOnlyQueries | None = None
  # How it runs (model axis, models per step, micro-batch, dtype): decided
  # per backend where left None.
  lowering: train_lib.Lowering = train_lib.Lowering()

  def to_json(self, *, input_shape=None, num_classes=None) -> dict:
    """Everything that determines the result, JSON-ready.

    The recipe is :func:`miajax.engine.fingerprint` of ``train`` (with the
    lowering's compute dtype, the one execution choice that changes the
    numbers); a user model is identified by its parameter shapes when
    ``input_shape`` and ``num_classes`` are given. Chunking, devices and
    micro-batches only reassociate floats: they are left out.
    """
    d = {
      f.name: getattr(self, f.name)
      for f in dataclasses.fields(self)
      if f.name not in ("train", "label_only", "lowering")
    }
    d["train"] = train_lib.fingerprint(
      self.train,
      input_shape=input_shape,
      num_classes=num_classes,
      compute_dtype=self.lowering.compute_dtype,
    )
    # Absent otherwise: runs written before label-only views keep their
    # fingerprint.
    if self.label_only is not None:
      d["label_only"] = self.label_only.to_json()
    return d


@dataclasses.dataclass
class RunResult:
  keep: np.ndarray  # bool[models, examples]
  logits: np.ndarray  # float32[models, examples, queries, classes]
  labels: np.ndarray  # int32[examples]
  train_accuracy: np.ndarray  # float[models], on each model's members
  test_accuracy: np.ndarray  # float[models]
  diverged: np.ndarray  # bool[models]
  chunks_trained: int
  chunks_reused: int
  train_seconds: float
  predict_seconds: float
  label_views: np.ndarray | None = (
    None  # int16[models, examples, views], with RunSpec.label_only
  )
  label_only: label_only_lib.LabelOnlyQueries | None = (
    None  # what made label_views
  )
  extra_logits: dict[str, np.ndarray] = dataclasses.field(
    default_factory=dict
  )  # name -> [models, inputs, classes]
  # (first model, last + 1) -> the epoch a chunk resumed from its checkpoint at
  resumed_epochs: dict[tuple[int, int], int] = dataclasses.field(
    default_factory=dict
  )


def label_queries(out: pathlib.Path) -> label_only_lib.LabelOnlyQueries | None:
  """The label-only queries recorded in a run directory's config.json, if any."""
  path = out / "config.json"
  spec = (
    json.loads(path.read_text()).get("label_only") if path.exists() else None
  )
  return (
    None
    if spec is None
    else label_only_lib.LabelOnlyQueries(
      shift=spec["shift"],
      sigmas=tuple(spec["sigmas"]),
      copies=spec["copies"],
      seed=spec["seed"],
      noise_group=spec.get("noise_group", 1),
    )
  )


def make_keep(spec: RunSpec, num_examples: int) -> np.ndarray:
  if spec.design == "paired":
    return data_lib.paired_keep(
      spec.num_models, num_examples, seed=spec.train.seed
    )
  if spec.design == "lira":
    return data_lib.lira_keep(
      spec.num_models, num_examples, pkeep=spec.pkeep, seed=spec.train.seed
    )
  raise ValueError(f"design must be 'paired' or 'lira', got {spec.design!r}")


def load_dataset(spec: RunSpec) -> data_lib.Dataset:
  ds = data_lib.load(spec.dataset, data_dir=spec.data_dir)
  if spec.num_examples is not None:
    ds = data_lib.subset(ds, spec.num_examples)
  return ds
