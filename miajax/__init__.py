"""miajax: membership-inference auditing with many shadow models trained at once.

Layers, each importable on its own: ``data`` -> ``models``/``train`` (the
engine) -> ``scores`` -> ``attacks`` -> ``metrics`` -> ``report``/``plots``,
with ``defenses`` plugged into training and querying.  ``scores``, ``attacks``
and ``metrics`` are pure array functions that work on logits from any
framework.
"""

from miajax import (
  attacks,
  config,
  cpu,
  cpu_engine,
  data,
  defenses,
  designs,
  engine,
  label_only,
  lowering,
  metrics,
  mlleaks,
  models,
  query,
  report,
  runs,
  scores,
  shokri,
  store,
  train,
  winograd,
)
from miajax.cpu import use_all_cores
from miajax.attacks import (
  global_threshold,
  leave_one_out,
  lira_offline,
  lira_online,
  rmia,
)
from miajax.label_only import LabelOnlyQueries
from miajax.data import Dataset, disjoint_split, lira_keep, load, paired_keep
from miajax.defenses import chain, dp_epsilon, dp_noise_multiplier
from miajax.metrics import (
  auc,
  auc_interval,
  balanced_accuracy,
  epsilon_lower_bound,
  precision_recall_f1,
  roc_curve,
  tnr_at_fnr,
  tpr_at_fpr,
  tpr_at_fpr_interval,
)
from miajax.models import get_model
from miajax.store import ensure_shadows, load_store
from miajax.scores import (
  confidence,
  cross_entropy,
  entropy,
  logit_scaled,
  max_confidence,
  modified_entropy,
  top_k_probabilities,
)
from miajax.train import (
  Lowering,
  ModelFns,
  TrainConfig,
  predict,
  resolve_lowering,
  train_models,
)

__version__ = "0.1.0"
