"""absl flags shared by the experiment scripts, and the RunSpec they describe.

Defines no flag on import: a script defines them with its job's config
(``configs/<job>.py``), which gives their defaults.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

from absl import app, flags, logging

import harness
from configs import recipes
from miajax import data, defenses, engine, runs, usability
from miajax.attacks import label_only

FLAGS = flags.FLAGS

# The running job's config (configs/<job>.py), kept when its flags are defined: the recipe
# of its own dataset, which another --dataset replaces by that dataset's.
_job: dict = {}


def list_default(values) -> list[str]:
  """A config's numbers as a list flag's default, written as a user would (1, not 1.0)."""
  return [f"{v:g}" for v in values]


def widths_default(model_kwargs: dict) -> str:
  """A config's MLP widths as ``--widths`` spells them."""
  return ",".join(str(w) for w in model_kwargs["widths"])


def define_recipe_flags(config: dict) -> None:
  """The dataset and the one-model training recipe (used by every script that trains).

  Defaults from ``config`` (the job's ``configs/<job>.py``); the recipe flags
  that depend on the dataset (``recipes.PER_DATASET``) default to None, the
  recipe of ``--dataset``.
  """
  _job.clear()
  _job.update(config)
  flags.DEFINE_string(
    "dataset", config["dataset"], "Dataset name (miajax.data.DATASETS)."
  )
  flags.DEFINE_string(
    "data_dir", config["data_dir"], "Where dataset files live (see README)."
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
  flags.DEFINE_enum(
    "optimizer", config["optimizer"], ["sgd", "adam"], "Optimizer."
  )
  flags.DEFINE_float("momentum", config["momentum"], "SGD momentum.")
  flags.DEFINE_enum(
    "schedule",
    config["schedule"],
    ["cosine", "constant"],
    "Learning-rate schedule: cosine decays the peak rate to 0 over every "
    "step of training (per batch, no warm-up); constant keeps it.",
  )
  flags.DEFINE_float(
    "weight_decay",
    config["weight_decay"],
    "Weight decay, the one L2 regularisation (with SGD: a penalty "
    "0.5 w ||params||^2).",
  )
  flags.DEFINE_integer(
    "seed",
    config["seed"],
    "Seed of the design, initialisation, shuffling, dropout.",
  )
  flags.DEFINE_string("output_dir", None, "Where outputs go.")


def define_training_flags(
  config: dict, *, label_only_views: bool = True
) -> None:
  """The recipe flags, and how the shadow models are trained and queried (``recipes.shadow_models``).

  ``label_only_views=False`` leaves out the label-only views' flags: a script
  that never runs the label-only attacks (audit.py) must not offer them.
  """
  define_recipe_flags(config)
  flags.DEFINE_integer(
    "num_examples",
    config["num_examples"],
    "Use only the first N training examples (default: all).",
  )
  flags.DEFINE_integer(
    "num_models", config["num_models"], "Number of shadow models."
  )
  flags.DEFINE_float(
    "pkeep",
    config["pkeep"],
    "Fraction of models each example is IN for (design=lira).",
  )
  flags.DEFINE_enum(
    "design", config["design"], ["paired", "lira"], "Membership design."
  )
  flags.DEFINE_float(
    "dropout_rate",
    config["dropout_rate"],
    "Dropout rate of every model (the defense miajax.defenses.dropout).",
  )
  flags.DEFINE_bool(
    "augment", config["augment"], "Random flip + reflect-pad-4 crop (images)."
  )
  flags.DEFINE_integer(
    "models_per_step",
    config["models_per_step"],
    "Models trained at once (default: memory planner).",
  )
  flags.DEFINE_integer(
    "microbatch_size",
    config["microbatch_size"],
    "Examples per gradient micro-batch within a step; must divide "
    "the batch size (default: sized to the CPU cache, whole batches on GPU/TPU).",
  )
  flags.DEFINE_enum(
    "queries",
    config["queries"],
    list(engine.QUERY_SETS),
    "Query augmentations at inference.",
  )
  if label_only_views:
    _define_label_only_flags(config)
  flags.DEFINE_float(
    "checkpoint_every_s",
    config["checkpoint_every_s"],
    "Save the training state of the chunk in flight at the first epoch "
    "boundary this many seconds after the last save, so that a killed run "
    "resumes mid-chunk (0: never by time). Not part of the run's "
    "configuration.",
    lower_bound=0.0,
  )
  flags.DEFINE_integer(
    "checkpoint_every_epochs",
    config["checkpoint_every_epochs"],
    "Also save it every this many epochs (0: never by epoch count). Not part "
    "of the run's configuration.",
    lower_bound=0,
  )


def _define_label_only_flags(config: dict) -> None:
  flags.DEFINE_bool(
    "label_only",
    config["label_only"],
    "Also keep every model's predicted labels on perturbed copies of the "
    "candidates, for the label-only attacks (augmentation and noise robustness).",
  )
  flags.DEFINE_integer(
    "label_only_shift",
    config["label_only_shift"],
    "Pixel shift of the label-only augmentation views (0: none; "
    "inputs that are not images get none).",
  )
  flags.DEFINE_list(
    "label_only_sigmas",
    list_default(config["label_only_sigmas"]),
    "Gaussian noise levels (input units) of the "
    "label-only noise-robustness views (empty: none).",
  )
  flags.DEFINE_integer(
    "label_only_copies",
    config["label_only_copies"],
    "Noisy copies per noise level.",
  )
  flags.DEFINE_integer(
    "label_only_noise_group",
    config["label_only_noise_group"],
    "Consecutive candidates that share their noise draws (1: none share). "
    "Sharing lets an MLP map each draw through its first layer once.",
  )


def _recipe() -> dict:
  """The recipe of ``--dataset``: the job's own for its default dataset, else the dataset's."""
  if FLAGS.dataset == _job["dataset"]:
    return _job
  return recipes.for_dataset(FLAGS.dataset)


def _default(name: str):
  value = getattr(FLAGS, name)
  if value is not None:
    return value
  if name in ("widths", "activation"):
    return _recipe()["model_kwargs"][name]
  return _recipe()[name]


def _model_kwargs(model: str) -> dict:
  if model == "mlp":
    widths = _default("widths")
    if isinstance(widths, str):
      widths = widths.split(",")
    try:
      widths = tuple(int(w) for w in widths)
    except ValueError:
      widths = ()
    if not widths or min(widths) < 1:
      raise app.UsageError(
        f"--widths={FLAGS.widths}: expected comma-separated positive integers"
      )
    return dict(widths=widths, activation=_default("activation"))
  recipe = _recipe()
  # A recipe's own arguments belong to its own model, not to one --model names instead.
  return dict(recipe["model_kwargs"]) if model == recipe["model"] else {}


# Library argument names whose flag is spelled otherwise.
_FLAG_NAMES = {"microbatch": "microbatch_size"}


def as_usage_error(error: Exception) -> app.UsageError:
  """A library ValueError about a value the flags gave, as a usage error naming that flag.

  The library's messages start with the argument's name (``momentum must lie
  in [0, 1), got 1.5``); where a flag of that name exists it becomes
  ``--momentum must lie in [0, 1), got 1.5``.
  """
  message = str(error)
  word = re.match(r"\w*", message).group()
  flag = _FLAG_NAMES.get(word, word)
  if word and flag in FLAGS:
    return app.UsageError(f"--{flag}{message[len(word) :]}")
  return app.UsageError(f"recipe: {message}")


def train_config(**extra) -> engine.TrainConfig:
  """The TrainConfig described by the recipe flags (dataset defaults filled in); ``extra`` adds fields."""
  model = _default("model")
  kwargs = _model_kwargs(model)
  if getattr(FLAGS, "dropout_rate", 0.0):
    extra["defense"] = defenses.chain(
      defenses.dropout(FLAGS.dropout_rate), extra.get("defense")
    )
  cfg = engine.TrainConfig(
    model=model,
    model_kwargs=tuple(sorted(kwargs.items())),
    optimizer=FLAGS.optimizer,
    learning_rate=_default("learning_rate"),
    momentum=FLAGS.momentum,
    weight_decay=FLAGS.weight_decay,
    epochs=_default("epochs"),
    batch_size=_default("batch_size"),
    schedule=FLAGS.schedule,
    seed=FLAGS.seed,
    **extra,
  )
  # Now, not when training starts: a bad --momentum is a usage error.
  try:
    cfg.validate()
  except ValueError as e:
    raise as_usage_error(e) from None
  return cfg


def label_only_queries() -> label_only.LabelOnlyQueries | None:
  """The label-only views the flags ask for (None with --label_only=false); a bad value is a usage error."""
  if "label_only" not in FLAGS or not FLAGS.label_only:
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
      noise_group=FLAGS.label_only_noise_group,
    )
  except ValueError as e:
    raise app.UsageError(f"--label_only_*: {e}") from None


def run_spec(defense=None) -> runs.RunSpec:
  """The RunSpec described by the flags (dataset defaults filled in).

  Every value the flags alone decide is checked here, before any data is
  loaded: a bad one is a usage error naming its flag.
  """
  # audit.py's --pool_npz replaces the dataset: --dataset then only names a recipe.
  pool_npz = "pool_npz" in FLAGS and FLAGS.pool_npz
  if FLAGS.dataset not in data.DATASETS and not pool_npz:
    raise app.UsageError(
      f"--dataset: unknown dataset {FLAGS.dataset!r}; expected one of "
      f"{', '.join(data.DATASETS)}"
    )
  cfg = train_config(augment=FLAGS.augment, defense=defense)
  # How it runs, apart from what is trained: None fields are decided.
  low = engine.Lowering(
    models_per_step=FLAGS.models_per_step, microbatch=FLAGS.microbatch_size
  )
  try:
    low.validate(cfg.batch_size)
  except ValueError as e:
    raise as_usage_error(e) from None
  if FLAGS.num_models < 1:
    raise app.UsageError(f"--num_models must be >= 1, got {FLAGS.num_models}")
  if FLAGS.design == "paired" and FLAGS.num_models % 2:
    raise app.UsageError(
      "--num_models must be even for --design=paired (models come in IN/OUT "
      f"pairs), got {FLAGS.num_models}"
    )
  if FLAGS.design == "lira" and not 0 < FLAGS.pkeep < 1:
    raise app.UsageError(f"--pkeep must be in (0, 1), got {FLAGS.pkeep}")
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
    lowering=low,
  )


_EXPERIMENTS = pathlib.Path(__file__).resolve().parent


def _own_module(name: str) -> bool:
  """Whether the flags of module ``name`` are the scripts' own, not a library's (absl's, orbax's)."""
  module = sys.modules.get(name)
  # absl names the running script by its path (sys.argv[0]), not __main__.
  where = getattr(module, "__file__", None) or name
  try:
    return pathlib.Path(where).resolve().is_relative_to(_EXPERIMENTS)
  except (OSError, ValueError):
    return False


def _json_safe(value):
  try:
    json.dumps(value)
  except TypeError:
    return str(value)
  return value


def recipe_values(cfg: engine.TrainConfig) -> dict:
  """The recipe flags' values a TrainConfig was built from, as the flags spell them: defaults resolved."""
  kwargs = dict(cfg.model_kwargs)
  widths = kwargs.get("widths")
  return {
    "model": _json_safe(cfg.model),
    # Only an MLP has widths and an activation: None where the model takes none.
    "widths": None if widths is None else ",".join(str(w) for w in widths),
    "activation": kwargs.get("activation"),
    "epochs": _json_safe(cfg.epochs),
    "batch_size": cfg.batch_size,
    "learning_rate": _json_safe(cfg.learning_rate),
    "optimizer": _json_safe(cfg.optimizer),
    "momentum": _json_safe(cfg.momentum),
    "weight_decay": _json_safe(cfg.weight_decay),
    "schedule": cfg.schedule,
    "seed": cfg.seed,
  }


def flag_values(train: engine.TrainConfig | None = None, omit=()) -> dict:
  """Every flag of the running script, JSON-safe, for report.json's "config".

  Only the scripts' own flags: those libraries define (absl's, orbax's) say
  nothing about the run.  With ``train``, the TrainConfig the run trained
  with, the recipe flags hold the values it used (``--epochs`` left to the
  dataset's default reads 30, not None); ``omit`` names flags that do not
  apply to the run.
  """
  out = {}
  for module, flag_list in FLAGS.flags_by_module_dict().items():
    if not _own_module(module):
      continue
    for flag in flag_list:
      out[flag.name] = _json_safe(flag.value)
  if train is not None:
    out.update((k, v) for k, v in recipe_values(train).items() if k in out)
  for name in omit:
    out.pop(name, None)
  return dict(sorted(out.items()))


def usage_error(message: str):
  """Exit with status 2 and one line ``<script>: error: <message>`` (no help text, no traceback)."""
  harness.usage_error(message)


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


ROC_ATTACKS = (
  "lira_online",
  "lira_online_fixed",
  "lira_offline",
  "global_threshold",
  "rmia",
  "loss_threshold",
)


def roc_curves(all_scores, summaries, is_member, extra=()) -> dict:
  """The ROC plot's curves: each attack that ran and scored both classes, on its scored examples."""
  return {
    name: usability.scored(all_scores[name], is_member)
    for name in (*ROC_ATTACKS, *extra)
    if name in all_scores and summaries[name]["auc"] is not None
  }


def judge_models(
  logits, labels, keep, train_accuracy, diverged, *, what: str, **kw
):
  """``usability.model_usability`` of a pool, each exclusion logged with ``what`` ("model", "shadow model", ...)."""
  verdict = usability.model_usability(
    logits, labels, keep, train_accuracy, diverged=diverged, **kw
  )
  for e in verdict.excluded():
    logging.warning(
      "excluding %s %d: %s: %s", what, e["model"], e["reason"], e["detail"]
    )
  return verdict


def unscored_lines(summaries: dict) -> list[str]:
  """The summary's line naming the attacks that left examples unscored (none: no line)."""
  unscored = {
    k: v["unscored_examples"]
    for k, v in summaries.items()
    if v["unscored_examples"]
  }
  if not unscored:
    return []
  return [
    "\nexamples left unscored (too few usable shadows): "
    + ", ".join(f"{k} {n}" for k, n in unscored.items())
  ]
