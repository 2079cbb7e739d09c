"""miajax: membership-inference auditing with many shadow models trained at once.

The package is the pipeline, each layer importable on its own: ``data`` ->
``models`` / ``engine`` (training and querying many models at once) ->
``scores`` -> ``attacks`` -> ``metrics`` -> ``report`` / ``plots``, with
``defenses`` plugged into the engine and ``runs`` (run directories, the
shadow store, checkpoints) around it. ``scores``, ``attacks``
and ``metrics`` are pure array functions that work on logits from any
framework.

The package is lazy (PEP 562): ``import miajax.metrics`` loads numpy and scipy
only, not Flax, optax, the engine or TensorFlow Datasets. A public name
below is imported from its module the first time it is used.
"""

from miajax import _lazy

__version__ = "0.1.0"

_SUBMODULES = frozenset(
  {
    "attacks",
    "browser",
    "calibration",
    "data",
    "defenses",
    "designs",
    "dp_audit",
    "engine",
    "hyperparams",
    "html_report",
    "match",
    "metrics",
    "models",
    "plots",
    "qmia",
    "report",
    "runs",
    "scores",
    "usability",
  }
)

# Public name -> the module that defines it (relative to miajax).
_EXPORTS = {
  # data and membership designs
  "Dataset": "data",
  "disjoint_split": "data",
  "lira_keep": "data",
  "load": "data",
  "paired_keep": "data",
  # the engine
  "Lowering": "engine",
  "ModelFns": "engine",
  "TrainConfig": "engine",
  "TrainResult": "engine",
  "predict": "engine",
  "train_models": "engine",
  "PerModel": "hyperparams",
  "per_model": "hyperparams",
  "get_model": "models",
  "use_all_cores": "engine.cpu.devices",
  # runs and the shadow store
  "Pool": "runs.pool",
  "RunResult": "runs.spec",
  "RunSpec": "runs.spec",
  "ensure_shadows": "runs.store",
  "load_store": "runs.shadows",
  "use_compilation_cache": "runs.compilation_cache",
  # membership signals
  "confidence": "scores",
  "cross_entropy": "scores",
  "entropy": "scores",
  "logit_scaled": "scores",
  "max_confidence": "scores",
  "modified_entropy": "scores",
  "top_k_probabilities": "scores",
  # attacks
  "LabelOnlyQueries": "attacks.label_only",
  "BaseFit": "attacks",
  "BavariaFit": "attacks",
  "base": "attacks",
  "base_fit": "attacks",
  "base_score": "attacks",
  "base_signal": "attacks",
  "bavaria": "attacks",
  "bavaria_fit": "attacks",
  "bavaria_score": "attacks",
  "LiraFit": "attacks",
  "RmiaFit": "attacks",
  "global_threshold": "attacks",
  "leave_one_out": "attacks",
  "lira_fit": "attacks",
  "lira_offline": "attacks",
  "lira_offline_score": "attacks",
  "lira_online": "attacks",
  "lira_online_score": "attacks",
  "rmia": "attacks",
  "rmia_fit": "attacks",
  "rmia_score": "attacks",
  "trajectory_lira": "attacks",
  "gaussian_nll": "attacks",
  "pinball_loss": "attacks",
  "qmia_score": "attacks",
  "QmiaModels": "qmia",
  "qmia_attack": "qmia",
  "qmia_predict": "qmia",
  "qmia_train": "qmia",
  "lt_iqr": "attacks",
  "precision_at_k": "attacks",
  # which models an audit can use
  "Usability": "usability",
  "model_usability": "usability",
  # defenses and output transforms
  "Defense": "defenses",
  "OutputTransform": "defenses",
  "apply_output": "defenses",
  "chain": "defenses",
  "dp_epsilon": "defenses",
  "dp_noise_multiplier": "defenses",
  # auditing DP-SGD with canaries over many models
  "canary_audit": "dp_audit",
  "epsilon_lower_bound_canaries": "dp_audit",
  "epsilon_lower_bound_gdp": "dp_audit",
  "gradient_canary_audit": "dp_audit",
  "one_run_audit": "dp_audit",
  # metrics
  "Evaluation": "metrics",
  "auc": "metrics",
  "auc_interval": "metrics",
  "balanced_accuracy": "metrics",
  "epsilon_lower_bound": "metrics",
  "evaluate": "metrics",
  "precision_recall_f1": "metrics",
  "roc_curve": "metrics",
  "tnr_at_fnr": "metrics",
  "tpr_at_fpr": "metrics",
  "tpr_at_fpr_interval": "metrics",
  # do the shadows match the target; calibrate their recipe to it
  "match_report": "match",
  "calibrate": "calibration",
  # the HTML report and a headless browser to look at it
  "write_html_report": "html_report",
  "screenshot_html": "browser",
}

# Names of earlier versions -> where they live now (README, "Changes").
REMOVED = {
  "config": "miajax.engine.recipe",
  "cpu": "miajax.engine.cpu.devices",
  "cpu_engine": "miajax.engine.cpu.microbatch and miajax.engine.cpu.unroll",
  "label_only": "miajax.attacks.label_only",
  "lowering": "miajax.engine.lowering",
  "mlleaks": "miajax.attacks.mlleaks",
  "outputs": "miajax.defenses",
  "privacy": "miajax.defenses",
  "query": "miajax.engine.query",
  "shokri": "miajax.attacks.shokri",
  "store": "miajax.runs.store",
  "train": "miajax.engine",
  "winograd": "miajax.engine.cpu.winograd",
  "chain_outputs": "miajax.chain",
  "resolve_lowering": "miajax.engine.resolve_lowering",
}

__getattr__, __dir__, __all__ = _lazy.attach(
  __name__, _SUBMODULES, _EXPORTS, REMOVED
)
