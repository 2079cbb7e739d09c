"""absl flags shared by the experiment scripts, and the RunSpec they describe."""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from miajax import defenses, label_only, runs, train

FLAGS = flags.FLAGS

# Per-dataset recipes that train in seconds on a CPU; every value can be overridden by a flag.
DATASET_DEFAULTS = {
  "digits": dict(
    model="mlp",
    widths="256,128",
    activation="relu",
    epochs=30,
    batch_size=64,
    learning_rate=0.1,
  ),
  "fashion_mnist": dict(
    model="mlp",
    widths="256,128",
    activation="relu",
    epochs=15,
    batch_size=256,
    learning_rate=0.1,
  ),
}
GENERIC_DEFAULTS = dict(
  model="mlp",
  widths="1024,512,256,128",
  activation="tanh",
  epochs=30,
  batch_size=128,
  learning_rate=0.1,
)


def define_recipe_flags() -> None:
  """The dataset and the one-model training recipe (used by every script that trains)."""
  flags.DEFINE_string(
    "dataset", "digits", "Dataset name (miajax.data.DATASETS)."
  )
  flags.DEFINE_string(
    "data_dir", None, "Where dataset files live (see README)."
  )
  flags.DEFINE_string(
    "model",
    None,
    "Model name (miajax.models.MODEL_NAMES); default per dataset.",
  )
  flags.DEFINE_string(
    "widths", None, "MLP hidden widths, comma separated; default per dataset."
  )
  flags.DEFINE_string(
    "activation", None, "MLP activation (relu, tanh, ...); default per dataset."
  )
  flags.DEFINE_integer("epochs", None, "Training epochs; default per dataset.")
  flags.DEFINE_integer("batch_size", None, "Batch size; default per dataset.")
  flags.DEFINE_float(
    "learning_rate", None, "Peak learning rate; default per dataset."
  )
  flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "Optimizer.")
  flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
  flags.DEFINE_float(
    "weight_decay",
    5e-4,
    "Weight decay, the one L2 regularisation (with SGD: a penalty "
    "0.5 w ||params||^2).",
  )
  flags.DEFINE_integer(
    "seed", 0, "Seed of the design, initialisation, shuffling, dropout."
  )
  flags.DEFINE_string("output_dir", None, "Where outputs go.")


def define_training_flags(default_num_models: int = 64) -> None:
  define_recipe_flags()
  flags.DEFINE_integer(
    "num_examples",
    None,
    "Use only the first N training examples (default: all).",
  )
  flags.DEFINE_integer(
    "num_models", default_num_models, "Number of shadow models."
  )
  flags.DEFINE_float(
    "pkeep", 0.5, "Fraction of models each example is IN for (design=lira)."
  )
  flags.DEFINE_enum(
    "design", "paired", ["paired", "lira"], "Membership design."
  )
  flags.DEFINE_float(
    "dropout_rate",
    0.0,
    "Dropout rate of every model (the defense miajax.defenses.dropout).",
  )
  flags.DEFINE_bool(
    "augment", False, "Random flip + reflect-pad-4 crop (images)."
  )
  flags.DEFINE_integer(
    "models_per_step", None, "Models trained at once (default: memory planner)."
  )
  flags.DEFINE_integer(
    "microbatch_size",
    None,
    "Examples per gradient micro-batch within a step; must divide "
    "the batch size (default: sized to the CPU cache, whole batches on GPU/TPU).",
  )
  flags.DEFINE_enum(
    "queries",
    "identity",
    list(train.QUERY_SETS),
    "Query augmentations at inference.",
  )
  flags.DEFINE_bool(
    "label_only",
    True,
    "Also keep every model's predicted labels on perturbed copies of the "
    "candidates, for the label-only attacks (augmentation and noise robustness).",
  )
  flags.DEFINE_integer(
    "label_only_shift",
    1,
    "Pixel shift of the label-only augmentation views (0: none; "
    "inputs that are not images get none).",
  )
  flags.DEFINE_list(
    "label_only_sigmas",
    ["0.1", "0.25", "0.5"],
    "Gaussian noise levels (input units) of the "
    "label-only noise-robustness views (empty: none).",
  )
  flags.DEFINE_integer("label_only_copies", 8, "Noisy copies per noise level.")
  flags.DEFINE_float(
    "checkpoint_every_s",
    300.0,
    "Save the training state of the chunk in flight at the first epoch "
    "boundary this many seconds after the last save, so that a killed run "
    "resumes mid-chunk (0: never by time). Not part of the run's "
    "configuration.",
    lower_bound=0.0,
  )
  flags.DEFINE_integer(
    "checkpoint_every_epochs",
    0,
    "Also save it every this many epochs (0: never by epoch count). Not part "
    "of the run's configuration.",
    lower_bound=0,
  )


def _default(name: str):
  value = getattr(FLAGS, name)
  if value is not None:
    return value
  return DATASET_DEFAULTS.get(FLAGS.dataset, GENERIC_DEFAULTS)[name]


def train_config(**extra) -> train.TrainConfig:
  """The TrainConfig described by the recipe flags (dataset defaults filled in); ``extra`` adds fields."""
  model = _default("model")
  kwargs = {}
  if model == "mlp":
    kwargs["widths"] = tuple(int(w) for w in _default("widths").split(","))
    kwargs["activation"] = _default("activation")
  if getattr(FLAGS, "dropout_rate", 0.0):
    extra["defense"] = defenses.chain(
      defenses.dropout(FLAGS.dropout_rate), extra.get("defense")
    )
  return train.TrainConfig(
    model=model,
    model_kwargs=tuple(sorted(kwargs.items())),
    optimizer=FLAGS.optimizer,
    learning_rate=_default("learning_rate"),
    momentum=FLAGS.momentum,
    weight_decay=FLAGS.weight_decay,
    epochs=_default("epochs"),
    batch_size=_default("batch_size"),
    seed=FLAGS.seed,
    **extra,
  )


def label_only_queries() -> label_only.LabelOnlyQueries | None:
  """The label-only views the flags ask for (None with --label_only=false); a bad value is a usage error."""
  if not FLAGS.label_only:
    return None
  if FLAGS.label_only_shift < 0:
    raise app.UsageError(
      f"--label_only_shift must be >= 0, got {FLAGS.label_only_shift}"
    )
  try:
    sigmas = tuple(float(s) for s in FLAGS.label_only_sigmas)
  except ValueError:
    raise app.UsageError(
      f"--label_only_sigmas must be comma-separated numbers, got {FLAGS.label_only_sigmas}"
    ) from None
  try:
    return label_only.LabelOnlyQueries(
      shift=FLAGS.label_only_shift or None,
      sigmas=sigmas,
      copies=FLAGS.label_only_copies,
      seed=FLAGS.seed,
    )
  except ValueError as e:
    raise app.UsageError(f"--label_only_*: {e}") from None


def run_spec(defense=None) -> runs.RunSpec:
  """The RunSpec described by the flags (dataset defaults filled in)."""
  cfg = train_config(
    augment=FLAGS.augment,
    models_per_step=FLAGS.models_per_step,
    microbatch_size=FLAGS.microbatch_size,
    defense=defense,
  )
  return runs.RunSpec(
    dataset=FLAGS.dataset,
    data_dir=FLAGS.data_dir,
    num_examples=FLAGS.num_examples,
    design=FLAGS.design,
    num_models=FLAGS.num_models,
    pkeep=FLAGS.pkeep,
    queries=FLAGS.queries,
    train=cfg,
    label_only=label_only_queries(),
  )


def flag_values() -> dict:
  """Every flag of the running script, JSON-safe, for report.json's "config"."""
  out = {}
  for module, flag_list in FLAGS.flags_by_module_dict().items():
    if module.startswith("absl"):
      continue
    for flag in flag_list:
      value = flag.value
      try:
        json.dumps(value)
      except TypeError:
        value = str(value)
      out[flag.name] = value
  return dict(sorted(out.items()))


def usage_error(message: str):
  """Exit with status 2 and one line ``<script>: error: <message>`` (no help text, no traceback)."""
  sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {message}\n")
  sys.exit(2)


def train_run(spec: runs.RunSpec, output_dir, **kwargs):
  """``runs.run_training``; a changed configuration is a usage error.

  The checkpoint intervals come from ``--checkpoint_every_s`` and
  ``--checkpoint_every_epochs`` unless ``kwargs`` gives them.
  """
  for name in ("checkpoint_every_s", "checkpoint_every_epochs"):
    if name in FLAGS:
      kwargs.setdefault(name, FLAGS[name].value)
  try:
    return runs.run_training(spec, output_dir, **kwargs)
  except runs.ConfigMismatchError as e:
    usage_error(str(e))


def make_output_dir(out) -> None:
  """Creates ``--output_dir`` or raises a usage error saying why it cannot be used."""
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise app.UsageError(
      f"--output_dir {str(out)!r} cannot be created: {e}"
    ) from None
  if not os.access(out, os.W_OK):
    raise app.UsageError(f"--output_dir {str(out)!r} is not writable")
