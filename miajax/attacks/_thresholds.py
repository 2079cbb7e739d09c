"""The global-threshold baseline: the score itself is the attack.

Yeom, Giacomelli, Fredrikson, Jha, "Privacy Risk in Machine Learning:
Analyzing the Connection to Overfitting", CSF 2018; the LiRA paper's
baseline.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miajax.attacks._checks import _as_real


def global_threshold(target_scores):
  """The global-threshold baseline: the score itself, averaged over queries.

  Args:
    target_scores: float[targets, examples, queries].

  Returns:
    float[targets, examples], higher = member (same as the reference's
    negated prediction).
  """
  target = _as_real(target_scores, "target_scores", 3)
  return _mean_queries(jnp.asarray(target, dtype=float))


@jax.jit
def _mean_queries(x):
  return jnp.mean(x, axis=-1)
