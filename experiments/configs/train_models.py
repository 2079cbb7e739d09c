"""experiments/train_models.py: 64 shadow models of the digits recipe into a run directory."""

from configs import recipes


def get_config() -> dict:
  return dict(
    **recipes.training("digits"),
    **recipes.shadow_models(num_models=64),
    # One process trains every model; see the script for several hosts.
    coordinator_address=None,
    num_processes=1,
    process_id=0,
    merge_timeout_s=600.0,
    merge_only=False,
  )
