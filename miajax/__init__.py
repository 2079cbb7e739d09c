"""miajax: membership-inference auditing with many shadow models trained at once.

Layers, each importable on its own: ``data`` -> ``models``/``train`` (the
engine) -> ``scores`` -> ``attacks`` -> ``metrics`` -> ``report``/``plots``,
with ``defenses`` plugged into training and querying. ``scores``, ``attacks``
and ``metrics`` are pure array functions that work on logits from any
framework.

The package is lazy (PEP 562): ``import miajax.metrics`` loads numpy and scipy
only, not Flax, optax, the engine or TensorFlow Datasets. A public name
below is imported from its module the first time it is used.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = frozenset(
  {
    "attacks",
    "config",
    "cpu",
    "cpu_engine",
    "data",
    "defenses",
    "designs",
    "engine",
    "label_only",
    "lowering",
    "metrics",
    "mlleaks",
    "models",
    "outputs",
    "plots",
    "privacy",
    "query",
    "report",
    "runs",
    "scores",
    "shokri",
    "store",
    "train",
    "winograd",
  }
)

# Public name -> the module that defines it.
_EXPORTS = {
  "use_all_cores": "cpu",
  "use_compilation_cache": "compilation_cache",
  "global_threshold": "attacks",
  "leave_one_out": "attacks",
  "lira_offline": "attacks",
  "lira_online": "attacks",
  "rmia": "attacks",
  "LiraFit": "attacks",
  "lira_fit": "attacks",
  "lira_online_score": "attacks",
  "lira_offline_score": "attacks",
  "RmiaFit": "attacks",
  "rmia_fit": "attacks",
  "rmia_score": "attacks",
  "Evaluation": "metrics",
  "evaluate": "metrics",
  "LabelOnlyQueries": "label_only",
  "Dataset": "data",
  "disjoint_split": "data",
  "lira_keep": "data",
  "load": "data",
  "paired_keep": "data",
  "Defense": "defenses",
  "chain": "defenses",
  "OutputTransform": "outputs",
  "apply_output": "outputs",
  "chain_outputs": "outputs",
  "dp_epsilon": "privacy",
  "dp_noise_multiplier": "privacy",
  "auc": "metrics",
  "auc_interval": "metrics",
  "balanced_accuracy": "metrics",
  "epsilon_lower_bound": "metrics",
  "precision_recall_f1": "metrics",
  "roc_curve": "metrics",
  "tnr_at_fnr": "metrics",
  "tpr_at_fpr": "metrics",
  "tpr_at_fpr_interval": "metrics",
  "get_model": "models",
  "ensure_shadows": "store",
  "load_store": "store",
  "confidence": "scores",
  "cross_entropy": "scores",
  "entropy": "scores",
  "logit_scaled": "scores",
  "max_confidence": "scores",
  "modified_entropy": "scores",
  "top_k_probabilities": "scores",
  "Lowering": "train",
  "ModelFns": "train",
  "TrainConfig": "train",
  "predict": "train",
  "resolve_lowering": "train",
  "train_models": "train",
}

__all__ = sorted(_SUBMODULES | set(_EXPORTS))


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  if name in _EXPORTS:
    value = getattr(
      importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name
    )
    globals()[name] = value  # later lookups skip __getattr__
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return __all__
