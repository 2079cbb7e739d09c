"""experiments/lira.py: 64 digits models, every one attacked with the others as shadows."""

from configs import recipes


def get_config() -> dict:
  return dict(
    **recipes.training("digits"),
    **recipes.shadow_models(num_models=64),
    run_dir=None,  # train (no run of train_models.py to reuse)
    variant="miajax",
    num_references=None,  # leave-one-out
    null_check=True,
  )
