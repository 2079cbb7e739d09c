"""experiments/defenses.py: the defense table on digits, 16 models per training run."""

from configs import recipes


def get_config() -> dict:
  return dict(
    **recipes.training("digits"),
    **recipes.shadow_models(num_models=16),
    rows=None,  # all of them
    shadow_defense="same",  # defense-aware attacker
    # The ML-Leaks combinations.  k = 1 is the strongest masking; k = 3 would keep all the
    # features of ML-Leaks' attack.
    dropout=0.5,
    label_smoothing=0.1,
    top_k=1,
    # The output rows on the undefended models.
    rounding_decimals=1,
    temperature=4.0,
    # HAMP; alpha in miajax's per-example convention, C x the released code's.
    hamp_gamma=0.95,
    hamp_alpha=0.01,
    # DP-SGD: fewer epochs than the common recipe (per-example gradients are ~25x slower here,
    # and at fixed epsilon fewer steps mean less noise per step), and a smaller learning rate
    # (see the script's docstring for the probe that chose it).
    dp_epsilons=(1, 8),
    dp_delta=1e-5,
    dp_clip=1.0,
    dp_epochs=15,
    dp_learning_rate=0.03,
    l2=5e-3,  # added to weight_decay in the l2 row
    dropout_sweep=(0, 0.25, 0.5, 0.75),
  )
