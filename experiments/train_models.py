"""Trains shadow models into a run directory (resumable).

  python experiments/train_models.py --dataset=digits --num_models=64 --output_dir=runs/digits

Writes keep.npy, logits.npy [models, examples, queries, classes], labels.npy,
config.json and models.json (per-model train/test accuracy).
"""

from absl import app, flags, logging

import common
from miajax import runs

FLAGS = flags.FLAGS
common.define_training_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")
  spec = common.run_spec()
  result = runs.run_training(spec, FLAGS.output_dir, log=logging.info)
  logging.info("train accuracy %.3f (mean), test accuracy %.3f (mean); %d chunks trained, %d reused",
               result.train_accuracy.mean(), result.test_accuracy.mean(), result.chunks_trained,
               result.chunks_reused)
  print(f"models: {spec.num_models}  train acc {result.train_accuracy.mean():.4f}  "
        f"test acc {result.test_accuracy.mean():.4f}  train {result.train_seconds:.1f} s  "
        f"predict {result.predict_seconds:.1f} s  -> {FLAGS.output_dir}")


if __name__ == "__main__":
  app.run(main)
