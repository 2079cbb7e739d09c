"""Trains a target outside the miajax engine (a hand-written JAX loop) and exports what audit.py reads.

  python experiments/external_target.py --dataset=digits --epochs=200 \\
      --weight_decay=0 --output_dir=runs/target_e200

Writes ``target_logits.npy`` (``[examples, classes]``, the whole pool in pool
order) and ``target_members.npy`` (the int pool indices it trained on: a
random half, ``--members_seed``) under ``--output_dir``. The loop is the
PyTorch example of docs/audit.md in plain JAX: an MLP with PyTorch's default
initialisation, SGD with momentum and coupled weight decay
(``torch.optim.SGD``), a per-batch cosine or constant learning rate, a fresh
shuffle every epoch. It stands for a model trained by someone else: nothing
in it comes from the miajax engine (only the pool is read with miajax.load),
so an audit of it tests how well the shadows' recipe matches a stranger's.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

import harness
import miajax

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("dataset", "digits", "Pool: a miajax.load dataset name.")
  flags.DEFINE_integer(
    "num_examples", None, "First N pool examples (default: all)."
  )
  flags.DEFINE_string("output_dir", None, "Where the two .npy files go.")
  flags.DEFINE_integer("epochs", 30, "Epochs.")
  flags.DEFINE_integer("batch_size", 64, "Batch size.")
  flags.DEFINE_float("learning_rate", 0.1, "Peak learning rate.")
  flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
  flags.DEFINE_float("weight_decay", 5e-4, "Coupled weight decay (PyTorch's).")
  flags.DEFINE_enum(
    "schedule", "cosine", ["cosine", "constant"], "Per-batch schedule."
  )
  flags.DEFINE_list("widths", ["256", "128"], "Hidden widths of the ReLU MLP.")
  flags.DEFINE_integer("seed", 0, "Initialisation and shuffling seed.")
  flags.DEFINE_integer(
    "members_seed", 1, "Seed of the random half it trains on."
  )


def _init(key, sizes):
  # PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both.
  params = []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    key, kw, kb = jax.random.split(key, 3)
    bound = 1.0 / np.sqrt(fan_in)
    params.append(
      (
        jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound),
        jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound),
      )
    )
  return params


def _apply(params, x):
  h = x.reshape(x.shape[0], -1)
  for w, b in params[:-1]:
    h = jax.nn.relu(h @ w + b)
  w, b = params[-1]
  return h @ w + b


def train_target(
  x,
  y,
  members,
  *,
  num_classes: int,
  epochs: int = 30,
  batch_size: int = 64,
  learning_rate: float = 0.1,
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  schedule: str = "cosine",
  widths=(256, 128),
  seed: int = 0,
) -> np.ndarray:
  """The trained MLP's logits ``float32[examples, classes]`` on the whole pool ``x``."""
  sizes = [int(np.prod(x.shape[1:])), *map(int, widths), num_classes]
  key = jax.random.PRNGKey(seed)
  params = _init(jax.random.fold_in(key, 0), sizes)
  velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
  steps = -(-len(members) // batch_size)
  total = epochs * steps

  def loss_fn(p, xb, yb):
    logp = jax.nn.log_softmax(_apply(p, xb))
    return -jnp.take_along_axis(logp, yb[:, None], 1).mean()

  @jax.jit
  def step(p, v, xb, yb, t):
    g = jax.grad(loss_fn)(p, xb, yb)
    g = jax.tree_util.tree_map(lambda gi, pi: gi + weight_decay * pi, g, p)
    v = jax.tree_util.tree_map(lambda vi, gi: momentum * vi + gi, v, g)
    lr = learning_rate * (
      0.5 * (1 + jnp.cos(jnp.pi * t / total)) if schedule == "cosine" else 1.0
    )
    return jax.tree_util.tree_map(lambda pi, vi: pi - lr * vi, p, v), v

  xs, ys = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
  members = np.asarray(members)
  t = 0
  for epoch in range(epochs):
    order = np.asarray(
      jax.random.permutation(jax.random.fold_in(key, 1 + epoch), members)
    )
    for s in range(steps):
      batch = order[s * batch_size : (s + 1) * batch_size]
      params, velocity = step(params, velocity, xs[batch], ys[batch], t)
      t += 1
  return np.asarray(_apply(params, xs), np.float32)


def main(argv):
  harness.start(argv)
  ds = miajax.load(FLAGS.dataset)
  x, y = ds.x_train, ds.y_train
  if FLAGS.num_examples:
    x, y = x[: FLAGS.num_examples], y[: FLAGS.num_examples]
  rng = np.random.default_rng(FLAGS.members_seed)
  members = np.sort(rng.permutation(len(x))[: len(x) // 2])
  logits = train_target(
    x,
    y,
    members,
    num_classes=ds.num_classes,
    epochs=FLAGS.epochs,
    batch_size=FLAGS.batch_size,
    learning_rate=FLAGS.learning_rate,
    momentum=FLAGS.momentum,
    weight_decay=FLAGS.weight_decay,
    schedule=FLAGS.schedule,
    widths=[int(w) for w in FLAGS.widths],
    seed=FLAGS.seed,
  )
  out = harness.make_output_dir()
  np.save(out / "target_logits.npy", logits)
  np.save(out / "target_members.npy", members)
  correct = logits.argmax(-1) == y
  is_member = np.zeros(len(y), bool)
  is_member[members] = True
  logging.info(
    "target: train accuracy %.4f, accuracy on the other half %.4f; wrote %s",
    correct[is_member].mean(),
    correct[~is_member].mean(),
    pathlib.Path(out),
  )


if __name__ == "__main__":
  define_flags()
  harness.run(main)
