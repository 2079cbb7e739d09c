"""Membership-inference attacks on per-model scores, never on models.

LiRA (Carlini et al., IEEE S&P 2022), RMIA (Zarifzadeh et al., ICML 2024),
BASE (Lassila et al., NeurIPS 2025), BaVarIA (Brännvall, arXiv:2603.11799),
the global-threshold baseline and leave-one-out over a pool of models, as
pure array functions: `float[models, examples, queries]` shadow scores with
`bool[models, examples]` membership in, `float[targets, examples]` out,
higher = member. docs/attacks.md describes the jit-able cores and the
checking wrappers, docs/lira.md the differences from the released LiRA code.

QMIA (Bertran et al., NeurIPS 2023): `pinball_loss`, `gaussian_nll` and
`qmia_score`, the cores of the quantile-regression attack; its regressors
are trained through the engine by `miajax.qmia`.

Training dynamics (`trajectory`): LiRA over the epochs recorded during
training (`trajectory_lira`) and the LT-IQR vulnerability ranking
(`lt_iqr`, Pollock et al. 2024).

The classic attacks are submodules, loaded on first use: `label_only`
(Choquette-Choo et al. 2021, Li & Zhang 2021), `shokri` (Shokri et al.
2017) and `mlleaks` (Salem et al. 2019).
"""

import importlib

from miajax.attacks._base import (
  BaseFit,
  base,
  base_fit,
  base_score,
  base_signal,
)
from miajax.attacks._bavaria import (
  BavariaFit,
  bavaria,
  bavaria_fit,
  bavaria_score,
)
from miajax.attacks._checks import TOO_FEW_SHADOWS, VARIANTS
from miajax.attacks._leave_one_out import (
  ATTACKS,
  leave_one_out,
  leave_one_out_partners,
)
from miajax.attacks._lira import (
  LiraFit,
  lira_fit,
  lira_offline,
  lira_offline_score,
  lira_online,
  lira_online_score,
  offline_log_odds,
)
from miajax.attacks._qmia import gaussian_nll, pinball_loss, qmia_score
from miajax.attacks._rmia import RmiaFit, rmia, rmia_fit, rmia_score
from miajax.attacks._thresholds import global_threshold
from miajax.attacks.trajectory import (
  TrajectoryFit,
  lt_iqr,
  precision_at_k,
  trajectory_lira,
  trajectory_lira_fit,
  trajectory_lira_score,
)

# Lazy so that `import miajax.attacks` stays at jax + numpy: mlleaks loads
# scipy through miajax.metrics, shokri scikit-learn when it fits.
_SUBMODULES = frozenset({"label_only", "mlleaks", "shokri"})

__all__ = [
  "ATTACKS",
  "TOO_FEW_SHADOWS",
  "VARIANTS",
  "BaseFit",
  "BavariaFit",
  "LiraFit",
  "RmiaFit",
  "base",
  "base_fit",
  "base_score",
  "base_signal",
  "bavaria",
  "bavaria_fit",
  "bavaria_score",
  "gaussian_nll",
  "global_threshold",
  "leave_one_out",
  "leave_one_out_partners",
  "lira_fit",
  "lira_offline",
  "lira_offline_score",
  "lira_online",
  "lira_online_score",
  "offline_log_odds",
  "pinball_loss",
  "qmia_score",
  "rmia",
  "rmia_fit",
  "rmia_score",
  "TrajectoryFit",
  "lt_iqr",
  "precision_at_k",
  "trajectory_lira",
  "trajectory_lira_fit",
  "trajectory_lira_score",
  *sorted(_SUBMODULES),
]


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
