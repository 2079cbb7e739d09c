"""The training recipes the jobs share: one per dataset, each training in seconds on a CPU."""

from __future__ import annotations

import copy

# What the recipe flags (--model, --widths, --activation, --epochs, --batch_size,
# --learning_rate) default to, per dataset.
DATASETS = {
  "digits": dict(
    model="mlp",
    model_kwargs=dict(widths=(256, 128), activation="relu"),
    epochs=30,
    batch_size=64,
    learning_rate=0.1,
  ),
  "fashion_mnist": dict(
    model="mlp",
    model_kwargs=dict(widths=(256, 128), activation="relu"),
    epochs=15,
    batch_size=256,
    learning_rate=0.1,
  ),
}
# Any other dataset (e.g. one of --data_dir's own).
GENERIC = dict(
  model="mlp",
  model_kwargs=dict(widths=(1024, 512, 256, 128), activation="tanh"),
  epochs=30,
  batch_size=128,
  learning_rate=0.1,
)
# The keys above: the part of a recipe that depends on the dataset.
PER_DATASET = tuple(GENERIC)


def for_dataset(name: str) -> dict:
  """A copy of ``name``'s recipe (:data:`GENERIC` for a dataset without its own)."""
  return copy.deepcopy(DATASETS.get(name, GENERIC))


def training(dataset: str = "digits") -> dict:
  """A job training on ``dataset``: its recipe, SGD with momentum, weight decay and a cosine schedule."""
  return dict(
    dataset=dataset,
    data_dir=None,
    **for_dataset(dataset),
    optimizer="sgd",
    momentum=0.9,
    # The one L2 regularisation (with SGD: a penalty 0.5 w ||params||^2).
    weight_decay=5e-4,
    schedule="cosine",
    seed=0,
  )


def shadow_models(num_models: int = 64) -> dict:
  """How a job trains and queries its shadow models (the flags of common.define_training_flags)."""
  return dict(
    num_examples=None,  # all of the dataset's training split
    num_models=num_models,
    design="paired",
    pkeep=0.5,  # design=lira only
    dropout_rate=0.0,
    augment=False,
    models_per_step=None,  # the memory planner decides
    microbatch_size=None,  # the lowering decides
    queries="identity",
    # Label-only views: shifted copies and Gaussian noise at these levels, 8 copies each.
    label_only=True,
    label_only_shift=1,
    label_only_sigmas=(0.1, 0.25, 0.5),
    label_only_copies=8,
    # G consecutive candidates share their noise draws (1: none share). Sharing lets an MLP map
    # each draw through its first layer once; the attacks' AUC and TPR stay within their 95 %
    # intervals of the per-example design (docs/label_only.md).
    label_only_noise_group=64,
    checkpoint_every_s=300.0,
    checkpoint_every_epochs=0,
  )
