"""Auditing DP-SGD: input canaries over many runs or one run (Steinke et al.), and a white-box gradient canary (Nasr et al. 2023).

Threat model (:func:`canary_audit`): black box, final model. N models of one
DP-SGD recipe are trained on the same data set; each model independently
includes a canary set with probability 1/2. The auditor sees only each final
model's logits on the canaries and must tell the including models from the
others. If the recipe is (eps, delta)-DP with respect to adding or removing
the canary set, every test satisfies ``TPR <= e^eps FPR + delta`` (Kairouz et
al. 2015; Jagielski et al. 2020; Nasr et al. 2021), so one-sided
Clopper-Pearson bounds on TPR and FPR give a lower bound on eps that holds
with the stated confidence. A lower bound above the accountant's epsilon is a
proof (at that confidence) that the implementation, or its accounting, is
broken.

The statistic is DeepMind's ``jax_privacy.auditing.CanaryScoreAuditor``
(``epsilon_clopper_pearson``): by default every threshold with a Bonferroni
correction over the thresholds of the Pareto frontier (no data spent on
choosing the threshold), or a threshold chosen on one random half of the trials
and the bound computed on the other (``threshold_strategy="split"``).
miajax's own :func:`miajax.epsilon_lower_bound` (always split, pooled
scores) stays for one model's train/test scores; see ``docs/dp_audit.md``.

The white-box audit (:func:`gradient_canary_audit`, threat model in
:mod:`miajax.dp_audit.whitebox`) adds the Gaussian-DP bound of Nasr et al.
2023 (:func:`epsilon_lower_bound_gdp`) and :func:`gaussian_audit_cap`, what
a given number of trials can certify at all.
"""

from miajax.dp_audit.bounds import epsilon_lower_bound_canaries, one_run_bound
from miajax.dp_audit.canaries import (
  CANARY_KINDS,
  fixed_init_mlp,
  mislabeled_canaries,
  noise_canaries,
)
from miajax.dp_audit.gdp import (
  epsilon_lower_bound_gdp,
  gaussian_audit_cap,
  gdp_epsilon,
  gdp_mu,
)
from miajax.dp_audit.training import canary_audit, one_run_audit
from miajax.dp_audit.whitebox import (
  GradientCanary,
  canary_coins,
  gradient_canary_audit,
  unused_input_coordinates,
)

__all__ = [
  "epsilon_lower_bound_canaries",
  "one_run_bound",
  "one_run_audit",
  "mislabeled_canaries",
  "noise_canaries",
  "canary_audit",
  "fixed_init_mlp",
  "CANARY_KINDS",
  "epsilon_lower_bound_gdp",
  "gaussian_audit_cap",
  "gdp_epsilon",
  "gdp_mu",
  "GradientCanary",
  "gradient_canary_audit",
  "canary_coins",
  "unused_input_coordinates",
]
