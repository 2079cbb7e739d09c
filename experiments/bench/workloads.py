"""The workloads the benchmark times, and the data every method trains on."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from miajax import engine


@dataclasses.dataclass(frozen=True)
class Workload:
  """One model/data shape to time; ``recipe_*`` describe the full training the models/hour refer to."""

  name: str
  model: str
  model_kwargs: tuple[tuple[str, Any], ...]
  input_shape: tuple[int, ...]
  num_classes: int
  batch_size: int
  num_models: (
    int  # default models per method (with the planner on: at most this many)
  )
  steps: int  # default timed steps per model
  recipe_members: int
  recipe_epochs: int
  recipe: str
  data: str = "synthetic"  # or "digits" (the embedded scikit-learn digits)
  learning_rate: float = 0.1
  weight_decay: float = 5e-4
  loop_models: int | None = (
    None  # models the one-model loops time (None: all); their rates are per model
  )

  def config(self, epochs: int, seed: int) -> engine.TrainConfig:
    return engine.TrainConfig(
      model=self.model,
      model_kwargs=self.model_kwargs,
      optimizer="sgd",
      learning_rate=self.learning_rate,
      momentum=0.9,
      weight_decay=self.weight_decay,
      epochs=epochs,
      batch_size=self.batch_size,
      schedule="cosine",
      seed=seed,
    )

  @property
  def recipe_examples(self) -> int:
    """Examples one model processes in the full recipe (the engine rounds an epoch up to whole batches)."""
    return (
      math.ceil(self.recipe_members / self.batch_size)
      * self.batch_size
      * self.recipe_epochs
    )


WORKLOADS = {
  "mlp_purchase": Workload(
    "mlp_purchase",
    "mlp",
    (("activation", "tanh"), ("widths", (1024, 512, 256, 128))),
    (600,),
    100,
    batch_size=128,
    num_models=16,
    steps=60,
    recipe_members=20_000,
    recipe_epochs=30,
    recipe="Purchase100-shaped (600 features, 100 classes), 20,000 members x 30 epochs, batch 128",
  ),
  "mlp_digits": Workload(
    "mlp_digits",
    "mlp",
    (("activation", "relu"), ("widths", (256, 128))),
    (8, 8, 1),
    10,
    batch_size=64,
    num_models=16,
    steps=200,
    recipe_members=648,
    recipe_epochs=30,
    data="digits",
    recipe="scikit-learn digits, 648 members (half of 1,297) x 30 epochs, batch 64",
  ),
  "cnn_small": Workload(
    "cnn_small",
    "cnn_small",
    (),
    (32, 32, 3),
    10,
    batch_size=128,
    num_models=8,
    steps=5,
    recipe_members=25_000,
    recipe_epochs=100,
    learning_rate=0.05,
    recipe="CIFAR-10-shaped, 25,000 members x 100 epochs, batch 128",
  ),
  "wrn16-4": Workload(
    "wrn16-4",
    "wrn16-4",
    (),
    (32, 32, 3),
    10,
    batch_size=32,
    num_models=2,
    steps=3,
    recipe_members=25_000,
    recipe_epochs=100,
    learning_rate=0.05,
    recipe="CIFAR-10-shaped, 25,000 members x 100 epochs, batch 32",
  ),
}
METHODS = ("engine", "jax_loop", "torch_loop", "torch_vmap")
TORCH_METHODS = ("torch_loop", "torch_vmap")
LOOP_METHODS = (
  "jax_loop",
  "torch_loop",
)  # one model after the other: per-model rates extrapolate

# One H100/H200-class GPU, the engine at 256 models (what the planner allows there): cnn_small
# ~50-100k images/s, i.e. 0.3-0.7 s per step of 256 x 128 images; wrn16-4 ~2.6 GFLOP per image at a
# few tens of TFLOP/s in grouped convolutions, ~0.3-1 s per step of 256 x 32 images; the MLP a few
# ms per step of 256 x 128 rows.  So every timed engine call takes ~2-20 s, three calls per method
# (warm-up + 2 repeats) plus compiling fit the 8 minutes with room for a 2-3x slower GPU.  A
# one-model step is launch-bound (~1-10 ms), so 8-16 models time the loops to within a few seconds.
ACCELERATOR_WORKLOADS = {
  "cnn_small": dataclasses.replace(
    WORKLOADS["cnn_small"], num_models=256, steps=20, loop_models=16
  ),
  "wrn16-4": dataclasses.replace(
    WORKLOADS["wrn16-4"], num_models=256, steps=10, loop_models=8
  ),
  "mlp_purchase": dataclasses.replace(
    WORKLOADS["mlp_purchase"], num_models=256, steps=400, loop_models=16
  ),
}
MEMORY_WORKLOAD = "mlp_purchase"
ART_WORKLOAD = (
  "mlp_digits"  # the demo's recipe, which the ART comparison trains end to end
)


# Every model gets exactly steps_per_epoch * batch members, so all methods take the same steps.
def make_data(wl: Workload, num_models: int, steps: int, seed: int) -> dict:
  """Inputs, labels and a keep mask ``bool[models, examples]`` giving every model the same member count.

  Synthetic data has ``2 * steps * batch`` candidates (one epoch of ``steps``
  steps); the digits have 1,297, so an epoch is shorter and several epochs
  make up ``steps`` (rounded up to whole epochs).
  """
  rng = np.random.default_rng(seed)
  b = wl.batch_size
  if wl.data == "digits":
    from miajax import data as data_lib

    ds = data_lib.load("digits")
    x, y = ds.x_train.astype(np.float32), ds.y_train.astype(np.int32)
    if tuple(x.shape[1:]) != wl.input_shape:
      raise ValueError(
        f"workload {wl.name}: digits are {x.shape[1:]}, not {wl.input_shape}"
      )
    steps_per_epoch = max(1, min(steps, (len(x) // 2) // b))
  elif wl.data == "synthetic":
    steps_per_epoch = steps
    n = 2 * steps * b
    x = rng.standard_normal((n,) + wl.input_shape, dtype=np.float32)
    y = rng.integers(0, wl.num_classes, n).astype(np.int32)
  else:
    raise ValueError(
      f"workload {wl.name}: data must be 'synthetic' or 'digits', got {wl.data!r}"
    )
  members = steps_per_epoch * b
  if members > len(x):
    raise ValueError(
      f"workload {wl.name}: {members} members per model but only {len(x)} examples"
    )
  keep = np.zeros((num_models, len(x)), bool)
  for m in range(num_models):
    keep[m, rng.permutation(len(x))[:members]] = True
  epochs = math.ceil(steps / steps_per_epoch)
  return dict(
    x=x,
    y=y,
    keep=keep,
    steps_per_epoch=steps_per_epoch,
    epochs=epochs,
    steps=epochs * steps_per_epoch,
    members=members,
  )


def epoch_orders(
  keep_row: np.ndarray, epochs: int, steps_per_epoch: int, batch: int, rng
) -> list:
  """``int32[steps_per_epoch, batch]`` member indices per epoch, wrapping around to full batches."""
  members = np.flatnonzero(keep_row)
  pos = np.arange(steps_per_epoch * batch) % len(members)
  return [
    rng.permutation(members)[pos]
    .reshape(steps_per_epoch, batch)
    .astype(np.int32)
    for _ in range(epochs)
  ]


def cosine(t: int, total: int) -> float:
  """The cosine schedule's factor at step ``t`` of ``total`` (the PyTorch peers' LambdaLR)."""
  return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
