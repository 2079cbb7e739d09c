"""experiments/audit.py: an external target against 64 digits shadow models."""

from configs import recipes


def get_config() -> dict:
  return dict(
    **recipes.training("digits"),
    **recipes.shadow_models(num_models=64),
    pool_npz=None,  # the pool: --dataset's training split
    num_classes=None,
    target_outputs=None,
    target_members=None,
    target_kind="auto",  # logits; outputs that look like probabilities refused
    shadow_store=None,  # <output_dir>/shadow_store
    variant="miajax",
  )
