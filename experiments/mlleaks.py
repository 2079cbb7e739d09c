"""ML-Leaks (Salem et al., NDSS 2019): Adversaries 1, 2 and 3, with and without top-k masking.

  python experiments/mlleaks.py --output_dir=runs/mlleaks_digits

For --dataset (the target's data, default digits) and --adv2_dataset (the
other dataset, default fashion_mnist) the script draws four disjoint blocks of
equal size (target in / target out / shadow in / shadow out, as in ML-Leaks)
and trains a target and a shadow model on the "in" blocks. Then, against the
target of --dataset:

* ``adversary1``: attack model (--attack_model; MLP with 64 hidden units as in
  the paper) fitted on the sorted top-3 posteriors of the same dataset's
  shadow, labelled member / non-member;
* ``adversary2``: the same with the shadow trained on --adv2_dataset;
* ``adversary3``: no shadow: the top posterior is the score; the decision
  threshold is the --random_percentile-th percentile of the target's top
  posterior on --num_random uniform random inputs (range of the training
  inputs), see :func:`miajax.attacks.mlleaks.threshold_from_random_inputs`.

With --reverse (default) the same three adversaries also attack the target
trained on --adv2_dataset; its Adversary 2 uses the --dataset shadow
(Fashion-MNIST -> digits and digits -> Fashion-MNIST).

Every adversary is reported twice: ``none`` (raw posteriors) and ``top_k``
(ML-Leaks' masking defense: only the --top_k largest posteriors are released,
unrenormalised). The defense is applied to every output the adversary sees
in the same way: the target's members and non-members, the random inputs,
and the shadow models' outputs (the adversary knows the defense). The default
k = 1 is the strongest masking that keeps the predicted label; with k >= 3 the
sorted top-3 features are released unchanged, so the defense could not move
any of these attacks (Adversary 3 only reads the top posterior, which top-k
never changes, so its row is the same for every k).

Per row, as the ML-Leaks release reports its attacks (scikit-learn's
classification report): precision and recall of the member and the
non-member class at the attack's own threshold (0.5 on the attack model's
member probability; the random-input percentile for Adversary 3), the
balanced accuracy at that threshold, and the threshold-free AUC, best
balanced accuracy and TPR at low FPR. Members are the target's training block,
non-members its held-out block, equal in size.

report.json: ``adversaries`` (``{adversary: {"shadow_dataset", "none",
"top_k"}}`` for the --dataset target), ``target`` (its train/test accuracy),
``reverse`` (the same for the --adv2_dataset target, or null), ``attacks``
(the flat ``"<adversary>_<defense>"`` view of the common schema),
``models`` (train/test accuracy of every model), ``config`` and ``timing_s``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import jax
import numpy as np
from absl import app, flags, logging

import common
import harness
from configs import mlleaks as mlleaks_config
from miajax import data, designs, engine, report
from miajax import defenses as defenses_lib
from miajax.attacks import mlleaks

FLAGS = flags.FLAGS
CONFIG = mlleaks_config.get_config()
flags.DEFINE_string("dataset", CONFIG["dataset"], "The target's dataset.")
flags.DEFINE_string(
  "data_dir",
  CONFIG["data_dir"],
  "Where --dataset's files live (see miajax.data).",
)
flags.DEFINE_string(
  "adv2_dataset",
  CONFIG["adv2_dataset"],
  "Adversary 2's shadow dataset (and the --reverse target); "
  "'none' skips Adversary 2 and --reverse.",
)
flags.DEFINE_string(
  "adv2_data_dir", CONFIG["adv2_data_dir"], "Where --adv2_dataset's files live."
)
flags.DEFINE_bool(
  "reverse",
  CONFIG["reverse"],
  "Also attack a target trained on --adv2_dataset, its Adversary 2 using the "
  "--dataset shadow.",
)
flags.DEFINE_integer(
  "block_size",
  CONFIG["block_size"],
  "Examples in each of the four disjoint blocks of --dataset "
  "(default: a quarter of its training set).",
)
flags.DEFINE_integer(
  "adv2_block_size",
  CONFIG["adv2_block_size"],
  "Examples in each of the four blocks of --adv2_dataset "
  "(capped at a quarter of its training set).",
)
flags.DEFINE_string(
  "model",
  CONFIG["model"],
  "Target and shadow architecture (miajax.models.MODEL_NAMES).",
)
flags.DEFINE_string(
  "widths", common.widths_default(CONFIG["model_kwargs"]), "MLP hidden widths."
)
flags.DEFINE_string(
  "activation", CONFIG["model_kwargs"]["activation"], "MLP activation."
)
flags.DEFINE_integer(
  "epochs", None, "Training epochs on --dataset (default per dataset: 30)."
)
flags.DEFINE_integer(
  "adv2_epochs",
  None,
  "Training epochs on --adv2_dataset (default per dataset).",
)
flags.DEFINE_integer(
  "batch_size",
  None,
  "Batch size (default per dataset: digits 64, fashion_mnist 256).",
)
flags.DEFINE_float(
  "learning_rate", None, "Peak learning rate (default per dataset: 0.1)."
)
flags.DEFINE_enum(
  "optimizer", CONFIG["optimizer"], ["sgd", "adam"], "Optimizer."
)
flags.DEFINE_float(
  "weight_decay",
  CONFIG["weight_decay"],
  "Weight decay (ML-Leaks: L2 1e-7, in effect none).",
)
flags.DEFINE_integer(
  "top_k",
  CONFIG["top_k"],
  "k of the top-k masking defense (released posteriors).",
)
flags.DEFINE_enum(
  "attack_model",
  CONFIG["attack_model"],
  list(mlleaks.ATTACK_MODELS),
  "Attack model of Adversaries 1 and 2: "
  "'mlp' (the paper) or 'logreg' (the released code).",
)
flags.DEFINE_float(
  "random_percentile",
  CONFIG["random_percentile"],
  "Adversary 3's threshold: this "
  "percentile of the top posterior on random inputs.",
)
flags.DEFINE_integer(
  "num_random",
  CONFIG["num_random"],
  "Random inputs for Adversary 3's threshold.",
)
flags.DEFINE_integer(
  "seed",
  CONFIG["seed"],
  "Seed of the blocks, initialisation, shuffling and random inputs.",
)
flags.DEFINE_string("output_dir", None, "Where report.json goes.")

ROLES = ("target_in", "target_out", "shadow_in", "shadow_out")


@dataclasses.dataclass
class Pair:
  """A target and a shadow model trained on one dataset: their logits on every block."""

  name: str
  logits: dict  # role -> float32[examples, classes]; "random": the target on random inputs
  accuracy: dict
  seconds: float


def _recipe(name: str, epochs_flag) -> engine.TrainConfig:
  defaults = CONFIG["datasets"].get(name, CONFIG["other_datasets"])
  pick = lambda flag, key: defaults[key] if flag is None else flag
  kwargs = {}
  if FLAGS.model == "mlp":
    try:
      widths = tuple(int(w) for w in FLAGS.widths.split(","))
    except ValueError:
      raise app.UsageError(
        f"--widths must be comma-separated integers, got {FLAGS.widths!r}"
      ) from None
    kwargs = {"widths": widths, "activation": FLAGS.activation}
  return engine.TrainConfig(
    model=FLAGS.model,
    model_kwargs=tuple(sorted(kwargs.items())),
    optimizer=FLAGS.optimizer,
    learning_rate=pick(FLAGS.learning_rate, "learning_rate"),
    momentum=CONFIG["momentum"],
    weight_decay=FLAGS.weight_decay,
    epochs=pick(epochs_flag, "epochs"),
    batch_size=pick(FLAGS.batch_size, "batch_size"),
    schedule=CONFIG["schedule"],
    seed=FLAGS.seed,
  )


def _fit_batch(config: engine.TrainConfig, block: int) -> engine.TrainConfig:
  """Each model has ``block`` members: a larger batch is cut to that (and every recipe checked now)."""
  config = dataclasses.replace(config, batch_size=min(config.batch_size, block))
  try:
    config.validate()
  except ValueError as err:
    raise app.UsageError(str(err)) from None
  return config


def _block_size(ds: data.Dataset, requested, flag: str) -> int:
  quarter = len(ds.x_train) // 4
  if requested is None:
    return quarter
  if requested < 2:
    raise app.UsageError(f"--{flag} must be >= 2, got {requested}")
  return min(requested, quarter)


def train_pair(
  ds: data.Dataset, block: int, config: engine.TrainConfig, seed: int
) -> Pair:
  """Trains the target (on target_in) and the shadow (on shadow_in) in one engine call."""
  t0 = time.perf_counter()
  blocks = designs.disjoint_split(len(ds.x_train), [block] * 4, seed=seed)
  pool = np.concatenate([blocks[r] for r in ROLES])
  x, y = ds.x_train[pool], ds.y_train[pool]
  keep = np.zeros((2, 4 * block), bool)
  keep[0, :block] = True  # target_in
  keep[1, 2 * block : 3 * block] = True  # shadow_in
  result = engine.train_models(config, x, y, keep, num_classes=ds.num_classes)
  if result.diverged.any():
    raise RuntimeError(
      f"{ds.name}: training diverged (models {np.flatnonzero(result.diverged)}); "
      "lower --learning_rate"
    )
  # Uniform pixels over the range of the training inputs, as ML-Leaks draws its random images.
  rand = defenses_lib.random_inputs(
    jax.random.PRNGKey(seed),
    (FLAGS.num_random,) + x.shape[1:],
    low=float(ds.x_train.min()),
    high=float(ds.x_train.max()),
  )
  queries = np.concatenate(
    [x, ds.x_test, np.asarray(rand)]
  )  # one predict call: one compiled batch shape
  logits = engine.predict(
    config, result.variables, queries, num_classes=ds.num_classes
  )[:, :, 0]
  per_role = {
    r: logits[0 if r.startswith("target") else 1, i * block : (i + 1) * block]
    for i, r in enumerate(ROLES)
  }
  n_test = len(ds.x_test)
  per_role["random"] = logits[0, 4 * block + n_test :]
  test = logits[:, 4 * block : 4 * block + n_test]
  acc = lambda z, labels: float(np.mean(np.argmax(z, -1) == labels))
  accuracy = {
    "target": {
      "train_accuracy": acc(per_role["target_in"], y[:block]),
      "test_accuracy": acc(test[0], ds.y_test),
    },
    "shadow": {
      "train_accuracy": acc(per_role["shadow_in"], y[2 * block : 3 * block]),
      "test_accuracy": acc(test[1], ds.y_test),
    },
    "block_size": block,
  }
  return Pair(ds.name, per_role, accuracy, time.perf_counter() - t0)


def _labelled(pair: Pair, prefix: str, transform):
  """Attack features of one model on its in/out blocks, one transform call for both groups."""
  z = np.concatenate(
    [pair.logits[f"{prefix}_in"], pair.logits[f"{prefix}_out"]]
  )
  n_in = len(pair.logits[f"{prefix}_in"])
  is_member = np.arange(len(z)) < n_in
  return mlleaks.attack_features(z, transform=transform, k=3), is_member


def _summary(scores, is_member, threshold: float) -> dict:
  with warnings.catch_warnings():
    # levels finer than 1/non-members are reported as None
    warnings.filterwarnings("ignore", message=".*unresolvable.*")
    return {
      **mlleaks.evaluate_attack(scores, is_member, threshold),
      **report.attack_summary(scores, is_member, seed=FLAGS.seed),
    }


def attack_target(target: Pair, shadows: dict, defenses: dict) -> dict:
  """All adversaries against ``target``: ``{adversary: {"shadow_dataset", defense: summary}}``.

  ``shadows`` maps an adversary name ("adversary1", "adversary2") to the Pair whose shadow it uses.
  """
  out = {}
  for adversary, shadow in shadows.items():
    out[adversary] = {"shadow_dataset": shadow.name}
    for defense, transform in defenses.items():
      shadow_x, shadow_member = _labelled(shadow, "shadow", transform)
      fitted = mlleaks.fit_attack(
        shadow_x, shadow_member, model=FLAGS.attack_model, seed=FLAGS.seed
      )
      target_x, is_member = _labelled(target, "target", transform)
      out[adversary][defense] = _summary(
        mlleaks.attack_scores(fitted, target_x), is_member, 0.5
      )
  out["adversary3"] = {"shadow_dataset": None}
  for defense, transform in defenses.items():
    z = np.concatenate(
      [
        target.logits["target_in"],
        target.logits["target_out"],
        target.logits["random"],
      ]
    )
    released = np.asarray(defenses_lib.released_probabilities(transform, z))
    n = 2 * len(target.logits["target_in"])
    threshold = mlleaks.threshold_from_random_inputs(
      released[n:], FLAGS.random_percentile
    )
    scores = mlleaks.top_posterior_score(released[:n])
    out["adversary3"][defense] = _summary(
      scores, np.arange(n) < n // 2, threshold
    )
  return out


def format_rows(target_name: str, adversaries: dict) -> list[str]:
  rows = []
  for adversary, entry in adversaries.items():
    for defense, s in entry.items():
      if defense == "shadow_dataset":
        continue
      m, nm = s["member"], s["non_member"]
      tpr = s["tpr_at_fpr"].get("0.01")
      rows.append(
        "| "
        + " | ".join(
          [
            target_name,
            adversary,
            entry["shadow_dataset"] or "-",
            defense,
            f"{s['auc']:.3f}",
            f"{s['balanced_accuracy']:.3f}",
            f"{s['threshold']:.4g}",
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
            f"{nm['precision']:.3f}",
            f"{nm['recall']:.3f}",
            f"{s['balanced_accuracy_at_threshold']:.3f}",
            "n/a" if tpr is None else f"{tpr:.3f}",
          ]
        )
        + " |"
      )
  return rows


TABLE_HEADER = (
  "| target | adversary | shadow data | defense | AUC | best bal. acc | threshold | member P | "
  "member R | non-member P | non-member R | bal. acc @ thr | TPR@1%FPR |\n"
  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _load_adv2():
  """Loads --adv2_dataset or stops with a message saying how to get it or skip it."""
  name = FLAGS.adv2_dataset
  if name == FLAGS.dataset:
    raise app.UsageError(
      f"--adv2_dataset={name} equals --dataset: a shadow on the target's own dataset is "
      "Adversary 1; pick another dataset or --adv2_dataset=none"
    )
  try:
    return data.load(name, data_dir=FLAGS.adv2_data_dir)
  except ValueError as err:
    hint = (
      " Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or put its IDX files in "
      "--adv2_data_dir."
      if name == "fashion_mnist"
      else ""
    )
    raise app.UsageError(
      f"--adv2_dataset={name} cannot be loaded: {str(err).rstrip('.')}.{hint} Or skip Adversary 2 with "
      "--adv2_dataset=none."
    ) from None


def main(argv):
  harness.start(argv)
  if FLAGS.num_random < 1:
    raise app.UsageError(f"--num_random must be >= 1, got {FLAGS.num_random}")
  if not 0 <= FLAGS.random_percentile <= 100:
    raise app.UsageError(
      f"--random_percentile must lie in [0, 100], got {FLAGS.random_percentile}"
    )
  out = harness.make_output_dir()
  t_start = time.perf_counter()

  # Every dataset is loaded (and every flag checked) before any training.
  main_ds = data.load(FLAGS.dataset, data_dir=FLAGS.data_dir)
  other_ds = None if FLAGS.adv2_dataset == "none" else _load_adv2()
  for ds in filter(None, (main_ds, other_ds)):
    if not 1 <= FLAGS.top_k <= ds.num_classes:
      raise app.UsageError(
        f"--top_k must lie in [1, {ds.num_classes}] for {ds.name}, got {FLAGS.top_k}"
      )
  main_block = _block_size(main_ds, FLAGS.block_size, "block_size")
  main_cfg = _fit_batch(_recipe(main_ds.name, FLAGS.epochs), main_block)
  if other_ds is not None:
    other_block = _block_size(
      other_ds, FLAGS.adv2_block_size, "adv2_block_size"
    )
    other_cfg = _fit_batch(
      dataclasses.replace(
        _recipe(other_ds.name, FLAGS.adv2_epochs), seed=FLAGS.seed + 1
      ),
      other_block,
    )
  t_loaded = time.perf_counter()

  pairs = {main_ds.name: train_pair(main_ds, main_block, main_cfg, FLAGS.seed)}
  logging.info(
    "%s: trained in %.1f s: %s",
    main_ds.name,
    pairs[main_ds.name].seconds,
    pairs[main_ds.name].accuracy,
  )
  if other_ds is not None:
    pairs[other_ds.name] = train_pair(
      other_ds, other_block, other_cfg, FLAGS.seed + 1
    )
    logging.info(
      "%s: trained in %.1f s: %s",
      other_ds.name,
      pairs[other_ds.name].seconds,
      pairs[other_ds.name].accuracy,
    )
  t_trained = time.perf_counter()

  defenses = {"none": None, "top_k": defenses_lib.top_k(FLAGS.top_k)}
  main_pair = pairs[main_ds.name]
  shadows = {"adversary1": main_pair}
  if other_ds is not None:
    shadows["adversary2"] = pairs[other_ds.name]
  adversaries = attack_target(main_pair, shadows, defenses)
  reverse = None
  if other_ds is not None and FLAGS.reverse:
    other_pair = pairs[other_ds.name]
    reverse = {
      "target_dataset": other_ds.name,
      "target": other_pair.accuracy["target"],
      "adversaries": attack_target(
        other_pair,
        {"adversary1": other_pair, "adversary2": main_pair},
        defenses,
      ),
    }
  t_attacked = time.perf_counter()

  flat = {
    f"{adv}_{d}": entry[d]
    for adv, entry in adversaries.items()
    for d in defenses
  }
  rep = {
    "config": common.flag_values(),
    "target": main_pair.accuracy["target"],
    "adversaries": adversaries,
    "reverse": reverse,
    "attacks": flat,
    "models": {name: p.accuracy for name, p in pairs.items()},
    "defenses": {
      "none": defenses_lib.describe(defenses_lib.identity_output()),
      "top_k": defenses_lib.describe(defenses["top_k"]),
    },
    "timing_s": {
      "load": t_loaded - t_start,
      "train": {name: p.seconds for name, p in pairs.items()},
      "attacks": t_attacked - t_trained,
      "total": time.perf_counter() - t_start,
    },
  }
  text = [""]
  for name, p in pairs.items():
    a = p.accuracy
    text.append(
      f"{name}: 4 blocks of {a['block_size']}; target train/test accuracy "
      f"{a['target']['train_accuracy']:.4f} / {a['target']['test_accuracy']:.4f}, shadow "
      f"{a['shadow']['train_accuracy']:.4f} / {a['shadow']['test_accuracy']:.4f}"
    )
  text.append(
    f"\ndefense top_k: only the {FLAGS.top_k} largest posteriors are released; attack model "
    f"{FLAGS.attack_model}; adversary 3 threshold: {FLAGS.random_percentile:g}th percentile of the top "
    f"posterior on {FLAGS.num_random} random inputs\n"
  )
  rows = format_rows(main_ds.name, adversaries)
  if reverse:
    rows += format_rows(reverse["target_dataset"], reverse["adversaries"])
  text.append(TABLE_HEADER + "\n" + "\n".join(rows))
  harness.finish(out, rep, "\n".join(text), wall_s=rep["timing_s"]["total"])


if __name__ == "__main__":
  harness.run(main)
