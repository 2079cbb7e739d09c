"""Membership-inference defenses: what changes training, and what a model releases.

Every public name is importable from here (as from ``optax``)::

    from miajax import defenses

    d = defenses.chain(defenses.dropout(0.5), defenses.label_smoothing(0.1))
    out = defenses.chain(defenses.temperature(2.0), defenses.top_k(3))
    defenses.short_name(d), defenses.short_name(out)

=======================  ====================================================
module                   holds
=======================  ====================================================
:mod:`.base`             what both kinds share: :func:`chain`,
                         :func:`describe`, :func:`short_name`
:mod:`.training`         the :class:`Defense` protocol and the training-time
                         defenses (``label_smoothing``, ``dropout``,
                         ``dp_sgd``, ...)
:mod:`.hooks`            what the engine reads from a defense
                         (``per_example_loss``, ``model_kwargs``, ...)
:mod:`.outputs`          the :class:`OutputTransform` protocol, the output
                         transforms (``top_k``, ``rounding``, ...) and
                         ``apply_output``
:mod:`.hamp_defense`     HAMP, both its training and its output half
:mod:`.privacy`          DP-SGD clipping and noise, DP accounting
                         (``dp_epsilon``, ``dp_noise_multiplier``)
=======================  ====================================================

The package imports neither the training engine (it is plugged into it) nor
optax or Flax, so attack code may use the output transforms on its own.
"""

from miajax.defenses.base import chain, describe, short_name
from miajax.defenses.hamp_defense import (
  Hamp,
  HampOutput,
  hamp,
  hamp_output,
  hamp_top1_probability,
  random_inputs,
)
from miajax.defenses.hooks import (
  dp_summary,
  maps_targets,
  model_kwargs,
  per_example_loss,
  soft_targets,
)
from miajax.defenses.outputs import (
  FLOOR_LOG_PROB,
  LabelOnly,
  OutputChain,
  OutputTransform,
  Release,
  Rounding,
  Temperature,
  TopK,
  apply_output,
  identity_output,
  label_only,
  needs_random_logits,
  released_probabilities,
  rounding,
  temperature,
  top_k,
)
from miajax.defenses.privacy import (
  ACCOUNTANTS,
  clip_and_noise,
  clip_per_example,
  dp_epsilon,
  dp_noise_multiplier,
)
from miajax.defenses.training import (
  Chain,
  ConfidencePenalty,
  Defense,
  DpSgd,
  Dropout,
  LabelSmoothing,
  NoDefense,
  confidence_penalty,
  dp_sgd,
  dropout,
  entropy,
  label_smoothing,
  none,
)

__all__ = [
  # both kinds
  "chain",
  "describe",
  "short_name",
  # training-time defenses
  "Defense",
  "NoDefense",
  "LabelSmoothing",
  "Hamp",
  "ConfidencePenalty",
  "Dropout",
  "DpSgd",
  "Chain",
  "none",
  "label_smoothing",
  "hamp",
  "confidence_penalty",
  "dropout",
  "dp_sgd",
  "entropy",
  "hamp_top1_probability",
  # what the engine reads from a defense
  "per_example_loss",
  "soft_targets",
  "maps_targets",
  "model_kwargs",
  "dp_summary",
  # output transforms
  "OutputTransform",
  "Release",
  "TopK",
  "Rounding",
  "Temperature",
  "LabelOnly",
  "HampOutput",
  "OutputChain",
  "top_k",
  "rounding",
  "temperature",
  "label_only",
  "hamp_output",
  "identity_output",
  "apply_output",
  "released_probabilities",
  "needs_random_logits",
  "random_inputs",
  "FLOOR_LOG_PROB",
  # DP-SGD
  "dp_epsilon",
  "dp_noise_multiplier",
  "clip_per_example",
  "clip_and_noise",
  "ACCOUNTANTS",
]
